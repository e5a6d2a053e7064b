"""Agreement statistics against values worked by hand (arithmetic in each docstring)."""

from __future__ import annotations

import math

import pytest

from rlhfkit.feedback.annotation.agreement import (
    binomial_two_sided_p,
    cohen_kappa,
    fleiss_kappa,
    held_out_agreement,
    krippendorff_alpha,
    majority,
)
from rlhfkit.feedback.annotation.stats import preference_ceiling

UNITS = [["A", "A", "A"], ["A", "A", "B"], ["B", "B", "B"]]


def test_cohen_kappa_hand_worked():
    """a = A A B B A B, b = A B B B A A: agree on 4 of 6, p_o = 2/3; both say A half the
    time, p_e = 1/2; κ = (2/3 - 1/2) / (1 - 1/2) = 1/3."""
    kappa = cohen_kappa(list("AABBAB"), list("ABBBAA"))
    assert kappa == pytest.approx(1 / 3, rel=1e-9)


def test_cohen_kappa_unequal_marginals():
    """a = A A A B, b = A A B B: p_o = 3/4; p_a(A) = 3/4, p_b(A) = 1/2, p_a(B) = 1/4,
    p_b(B) = 1/2 → p_e = 3/8 + 1/8 = 1/2; κ = (3/4 - 1/2) / (1/2) = 1/2."""
    assert cohen_kappa(list("AAAB"), list("AABB")) == pytest.approx(0.5, rel=1e-9)


def test_cohen_kappa_perfect_and_undefined():
    """Perfect agreement with two categories gives 1; a single category everywhere makes
    p_e = 1 and κ undefined (nan); length mismatch is an error."""
    assert cohen_kappa([0, 1, 0], [0, 1, 0]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["tie"] * 3, ["tie"] * 3))
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError):
        cohen_kappa([0], [0, 1])


def test_fleiss_kappa_hand_worked():
    """Module docstring: P̄ = 7/9, P_e = 41/81 → κ = (22/81) / (40/81) = 0.55."""
    assert fleiss_kappa(UNITS) == pytest.approx(0.55, rel=1e-9)


def test_fleiss_kappa_equals_cohen_like_chance_zero():
    """Items A A B, B B A with 3 raters: P_i = 1/3 each, P̄ = 1/3; p_A = p_B = 1/2,
    P_e = 1/2 → κ = (1/3 - 1/2) / (1/2) = -1/3. Items with one label are ignored."""
    assert fleiss_kappa([["A", "A", "B"], ["B", "B", "A"], ["A"]]) == pytest.approx(-1 / 3)
    assert math.isnan(fleiss_kappa([["A"], []]))


def test_krippendorff_alpha_hand_worked():
    """Module docstring: o_AA = 4, o_AB = o_BA = 1, o_BB = 3; n_A = 5, n_B = 4, n = 9;
    α = 1 - 8·2 / (2·5·4) = 0.6."""
    assert krippendorff_alpha(UNITS) == pytest.approx(0.6, rel=1e-9)


def test_krippendorff_alpha_missing_values_and_three_categories():
    """Units [0, 0], [1, tie], [1] (unpairable, dropped): unit 1 adds o_00 = 2; unit 2 adds
    o_1t = o_t1 = 1. n_0 = 2, n_1 = 1, n_t = 1, n = 4.
    Σ_{c≠k} o_ck = 2; Σ_{c≠k} n_c n_k = 2·(2·1 + 2·1 + 1·1) = 10;
    α = 1 - (4 - 1)·2 / 10 = 0.4."""
    assert krippendorff_alpha([[0, 0], [1, "tie"], [1]]) == pytest.approx(0.4, rel=1e-9)
    assert math.isnan(krippendorff_alpha([["A"], ["B"]]))


def test_majority_and_held_out_agreement():
    """held_out_agreement docstring: units [A, A, B] and [A, A] → 2 agreements in 3 cases."""
    assert majority(["A", "B", "A"]) == "A"
    assert majority(["A", "B"]) is None
    assert majority([]) is None
    rate, n = held_out_agreement([["A", "A", "B"], ["A", "A"]])
    assert (rate, n) == (pytest.approx(2 / 3), 3)


def test_the_reward_model_ceiling_counts_preferences_as_export_does():
    """preference_ceiling docstring: [0, 0, 1] and [0, 1, both_bad] → 0 of 3. The old ceiling
    took both-bad as a vote, so 0 vs (1, both_bad) had no majority and was skipped, though
    export writes response 1 for those labels. Ties are half a vote each: in [0, tie, 1] each
    0/1 held out faces (tie, other) = 0.5 vs 1.5 → the other side, wrong; in [0, 0, tie]
    each 0 faces (0, tie) = 1.5 vs 0.5 → 0, right: 2 of 4 over both units."""
    assert preference_ceiling([[0, 0, 1], [0, 1, "both_bad"]]) == (0.0, 3)
    assert preference_ceiling([[0, "tie", 1], [0, 0, "tie"]]) == (0.5, 4)
    rate, n = preference_ceiling([["both_bad", "tie"]])
    assert math.isnan(rate) and n == 0


def test_binomial_two_sided_p():
    """9 of 10 at p = 1/2: outcomes 0, 1, 9, 10 → (1 + 10 + 10 + 1) / 1024. 5 of 10 → 1."""
    assert binomial_two_sided_p(9, 10) == pytest.approx(22 / 1024, rel=1e-9)
    assert binomial_two_sided_p(5, 10) == pytest.approx(1.0)
    assert binomial_two_sided_p(0, 0) == 1.0


def _ranking_label(item_id: int, annotator: str, ranking: list[int], k: int):
    """A label ranking responses `ranking` (original indices, best first), shown in order."""
    from rlhfkit.feedback.annotation.export import LabelRow
    from rlhfkit.feedback.annotation.labels import SLOTS

    return LabelRow(
        label_id=0, item_id=item_id, annotator=annotator, prompt="p",
        responses=[f"r{i}" for i in range(k)], gold=None, display_order=list(range(k)),
        overall_choice=None, strength=None, criteria={}, ranking=[SLOTS[i] for i in ranking],
        rationale="", is_gold=False, created_at=0.0,
    )  # fmt: skip


def test_majority_export_of_tied_rankings_keeps_only_the_pairs_they_order():
    """Borda points (K-1 for first ... 0 for last, summed). Item 1, K = 3: [0, 1, 2] and
    [1, 0, 2] give r0 2+1 = 3, r1 1+2 = 3, r2 0: r0 and r1 tie, so no ranking (its order
    between them would be made up by index, as it was) but the pairs r0 > r2 and r1 > r2.
    Item 2, K = 4: [2, 1, 0, 3] and [3, 0, 1, 2] give every response 3 points: nothing.
    Item 3, K = 3: [2, 0, 1] twice gives r2 4, r0 2, r1 0: the ranking [2, 0, 1]."""
    from rlhfkit.feedback.annotation.export import build_records

    rows = [
        _ranking_label(1, "a", [0, 1, 2], 3),
        _ranking_label(1, "b", [1, 0, 2], 3),
        _ranking_label(2, "a", [2, 1, 0, 3], 4),
        _ranking_label(2, "b", [3, 0, 1, 2], 4),
        _ranking_label(3, "a", [2, 0, 1], 3),
        _ranking_label(3, "b", [2, 0, 1], 3),
    ]
    for aggregate in ("majority", "soft"):
        records, summary = build_records(rows, aggregate)
        pairs = [(r["chosen"], r["rejected"]) for r in records if r["item_id"] == 1]
        assert pairs == [("r0", "r2"), ("r1", "r2")]
        assert [r for r in records if r["item_id"] == 2] == []
        (ranked,) = [r for r in records if r["item_id"] == 3]
        assert ranked["ranking"] == [2, 0, 1]
        assert summary["tied_rankings"] == 2 and summary["pairs_from_tied_rankings"] == 2
        assert summary["rankings"] == 1 and summary["records"] == 3
