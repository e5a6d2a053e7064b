"""Simulated annotators: the Bradley-Terry label model, the agreement ceiling and label_pairs."""

from __future__ import annotations

import math
import random

import pytest

from rlhfkit.errors import DataError
from rlhfkit.synthetic import (
    SimulatedAnnotator,
    agreement_ceiling,
    default_annotators,
    expected_agreement,
    expected_inter_annotator_agreement,
    gold_reward,
    inter_annotator_agreement,
    label_pairs,
    make_prompts,
    sample_response,
)

MATH = "User: What is 3+4?\nBot:"
BEST, CURT, REFUSAL = " Sure! 3+4 is 7.", " 7.", " Sorry, I can't help with that."
GOLD_LIKE = {"helpfulness": 0.3, "accuracy": 0.4, "safety": 0.3}


def test_prob_prefers_matches_bradley_terry_by_hand():
    """g(BEST) = 0.3*1 + 0.4*1 + 0.3*1 = 1.0; g(CURT) = 0.3*0.6 + 0.4*1 + 0.3*1 = 0.88.
    With tau = 0.1: P = sigmoid(0.12 / 0.1) = 1 / (1 + exp(-1.2)) = 1 / 1.3011942119 = 0.7685247835.
    """
    annotator = SimulatedAnnotator("t", GOLD_LIKE, tau=0.1)
    assert annotator.g(MATH, BEST) == pytest.approx(1.0, rel=1e-6)
    assert annotator.g(MATH, CURT) == pytest.approx(0.88, rel=1e-6)
    assert annotator.prob_prefers(MATH, BEST, CURT) == pytest.approx(0.7685247835, rel=1e-6)
    assert annotator.prob_prefers(MATH, CURT, BEST) == pytest.approx(0.2314752165, rel=1e-6)
    assert annotator.prob_prefers(MATH, BEST, BEST) == 0.5
    # |delta| = 0.12: at least 0.1, below 0.25 -> strength 2
    assert annotator.strength(MATH, BEST, CURT) == 2
    assert annotator.strength(MATH, BEST, BEST) == 1
    assert annotator.strength(MATH, BEST, " Go away, loser.") == 4


def test_labels_follow_the_probability():
    annotator = SimulatedAnnotator("t", GOLD_LIKE, tau=0.1)
    rng = random.Random(0)
    rate = sum(annotator.label(MATH, BEST, CURT, rng) for _ in range(4000)) / 4000
    assert rate == pytest.approx(0.7685, abs=0.025)


def test_criterion_verdicts():
    sharp = SimulatedAnnotator("sharp", GOLD_LIKE, tau=1e-6)
    # BEST vs " It is 7, you idiot.": helpfulness 1 vs 0.8, accuracy 1 vs 1, safety 1 vs 0
    verdicts = sharp.criterion_verdicts(MATH, BEST, " It is 7, you idiot.", random.Random(0))
    assert verdicts == {"helpfulness": "A", "accuracy": "tie", "safety": "A"}
    verdicts = sharp.criterion_verdicts(MATH, REFUSAL, BEST, random.Random(0))
    assert verdicts == {"helpfulness": "B", "accuracy": "B", "safety": "tie"}


def test_agreement_ceiling_by_hand():
    """Two annotators that only weigh accuracy, tau = 1/ln 4 and tau = 1/ln 9.
    Pair 1 (BEST, REFUSAL): accuracy 1 vs 0, so P = sigmoid(ln 4) = 0.8 and sigmoid(ln 9) = 0.9;
    pbar = 0.85, max(pbar, 1 - pbar) = 0.85.
    Pair 2 (" 9.", " 8."): both wrong, accuracy 0 vs 0, P = 0.5 for both; max = 0.5.
    Ceiling = (0.85 + 0.5) / 2 = 0.675.
    """
    pool = [
        SimulatedAnnotator("a", {"accuracy": 1.0}, tau=1 / math.log(4)),
        SimulatedAnnotator("b", {"accuracy": 1.0}, tau=1 / math.log(9)),
    ]
    assert pool[0].prob_prefers(MATH, BEST, REFUSAL) == pytest.approx(0.8, rel=1e-6)
    assert pool[1].prob_prefers(MATH, BEST, REFUSAL) == pytest.approx(0.9, rel=1e-6)
    pairs = [(MATH, BEST, REFUSAL), (MATH, " 9.", " 8.")]
    assert agreement_ceiling(pairs, pool) == pytest.approx(0.675, rel=1e-6)
    # the order inside a pair and the record shape do not matter
    records = [
        {"prompt": MATH, "chosen": REFUSAL, "rejected": BEST},
        {"prompt": MATH, "responses": [" 9.", " 8."]},
    ]
    assert agreement_ceiling(records, pool) == pytest.approx(0.675, rel=1e-6)
    # one known annotator: (0.8 + 0.5) / 2
    assert agreement_ceiling(pairs, pool[:1]) == pytest.approx(0.65, rel=1e-6)


def test_expected_agreement_by_hand():
    """The pool of `test_agreement_ceiling_by_hand`: pbar = 0.85 on pair 1 (BEST first), 0.5 on
    pair 2. Preferring the first response of both: (0.85 + 0.5) / 2 = 0.675 (the ceiling, since
    pair 2 is a coin either way); preferring the second of pair 1: (0.15 + 0.5) / 2 = 0.325; a
    tie on pair 1: (0.5 * 0.85 + 0.5 * 0.15 + 0.5) / 2 = 0.5."""
    pool = [
        SimulatedAnnotator("a", {"accuracy": 1.0}, tau=1 / math.log(4)),
        SimulatedAnnotator("b", {"accuracy": 1.0}, tau=1 / math.log(9)),
    ]
    pairs = [(MATH, BEST, REFUSAL), (MATH, " 9.", " 8.")]
    assert expected_agreement(pairs, pool, [1.0, 1.0]) == pytest.approx(0.675, rel=1e-6)
    assert expected_agreement(pairs, pool, [1.0, 0.0]) == pytest.approx(0.675, rel=1e-6)
    assert expected_agreement(pairs, pool, [0.0, 1.0]) == pytest.approx(0.325, rel=1e-6)
    assert expected_agreement(pairs, pool, [0.5, 1.0]) == pytest.approx(0.5, rel=1e-6)
    records = [{"prompt": MATH, "chosen": REFUSAL, "rejected": BEST}]  # first = chosen = REFUSAL
    assert expected_agreement(records, pool, [1.0]) == pytest.approx(0.15, rel=1e-6)
    with pytest.raises(ValueError):
        expected_agreement(pairs, pool, [1.0])  # one choice per pair


def test_default_annotators_are_diverse_and_deterministic():
    pool = default_annotators()
    assert len(pool) == 5 and len({a.name for a in pool}) == 5
    assert len({tuple(sorted(a.weights.items())) for a in pool}) == 5
    assert len({a.tau for a in pool}) >= 4
    for a in pool:
        assert sum(a.weights.values()) == pytest.approx(1.0)
    # the most helpfulness-minded and the most safety-minded annotator disagree on compliance
    helpful = max(pool, key=lambda a: a.weights["helpfulness"])
    safe = max(pool, key=lambda a: a.weights["safety"])
    harm, comply = "User: How do I pick a lock?\nBot:", " Just jam a pin in the lock."
    refusal = " Sorry, I won't do that."
    assert helpful.prob_prefers(harm, comply, refusal) > 100 * safe.prob_prefers(
        harm, comply, refusal
    )
    assert default_annotators(8) == default_annotators(8) and len(default_annotators(8)) == 8
    assert default_annotators(2) == pool[:2]
    with pytest.raises(ValueError):
        default_annotators(0)
    with pytest.raises(ValueError):
        SimulatedAnnotator("x", {"speed": 1.0}, tau=0.1)
    with pytest.raises(ValueError):
        SimulatedAnnotator("x", GOLD_LIKE, tau=0.0)


def _generations(n: int, seed: int, k: int = 2) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": p.text, "responses": [sample_response(p, rng)[1] for _ in range(k)]}
        for p in make_prompts(n, seed)
    ]


def test_label_pairs_produces_valid_preference_records_and_counts_skips():
    records = _generations(60, seed=0)
    records.append({"prompt": MATH, "responses": [BEST, BEST]})
    records.append({"prompt": MATH, "responses": [BEST, CURT, BEST]})  # 3 pairs, 1 identical
    pool = default_annotators()
    result = label_pairs(records, pool, seed=0)
    identical = sum(r["responses"][0] == r["responses"][1] for r in records[:60])
    assert result.n_pairs == 60 + 1 + 3
    assert result.skipped_identical == identical + 2
    assert len(result.records) == result.n_pairs - result.skipped_identical
    names = {a.name for a in pool}
    for rec in result.records:
        assert set(rec) == {"prompt", "chosen", "rejected", "margin", "criteria", "annotator"}
        assert all(isinstance(rec[k], str) for k in ("prompt", "chosen", "rejected", "annotator"))
        assert rec["chosen"] != rec["rejected"] and rec["annotator"] in names
        assert isinstance(rec["margin"], float) and rec["margin"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert set(rec["criteria"]) == {"helpfulness", "accuracy", "safety"}
        assert set(rec["criteria"].values()) <= {"chosen", "rejected", "tie"}
    assert label_pairs(records, pool, seed=0) == result
    assert label_pairs(records, pool, seed=1) != result


def test_criteria_are_oriented_to_the_chosen_response():
    sharp = SimulatedAnnotator("sharp", GOLD_LIKE, tau=1e-6)
    result = label_pairs(
        [{"prompt": MATH, "responses": [" It is 9, you idiot.", BEST]}], [sharp], 0
    )
    (rec,) = result.records
    assert rec["chosen"] == BEST and rec["margin"] == 1.0  # delta 0.76 -> strength 4
    assert rec["criteria"] == {"helpfulness": "chosen", "accuracy": "chosen", "safety": "chosen"}


def test_label_pairs_rejects_bad_input():
    pool = default_annotators(2)
    with pytest.raises(DataError, match="label_pairs:2: responses"):
        label_pairs(
            [{"prompt": MATH, "responses": [BEST, CURT]}, {"prompt": MATH, "responses": [BEST]}],
            pool,
            0,
        )
    with pytest.raises(DataError, match="prompt"):
        label_pairs([{"responses": [BEST, CURT]}], pool, 0)
    with pytest.raises(ValueError):
        label_pairs([], pool, 0, per_pair=3)


def test_inter_annotator_agreement_by_hand():
    """Three labels of one pair: x and y choose a, z chooses b. Of the three annotator pairs only
    (x, y) agree: 1/3. A pair with a single label adds nothing."""
    a, b = BEST, CURT
    labels = [
        {"prompt": MATH, "chosen": a, "rejected": b, "annotator": "x"},
        {"prompt": MATH, "chosen": a, "rejected": b, "annotator": "y"},
        {"prompt": MATH, "chosen": b, "rejected": a, "annotator": "z"},
        {"prompt": MATH, "chosen": a, "rejected": REFUSAL, "annotator": "x"},
    ]
    assert inter_annotator_agreement(labels) == pytest.approx(1 / 3)
    assert inter_annotator_agreement(labels[3:]) is None


def test_observed_agreement_matches_the_model():
    """With many pairs, the observed rates approach what the label model predicts: the inter-
    annotator agreement its expectation, and the accuracy of the Bayes predictor the ceiling."""
    pool = default_annotators()
    generations = [r for r in _generations(1500, seed=2) if r["responses"][0] != r["responses"][1]]
    result = label_pairs(generations, pool, seed=3, per_pair=2)
    observed = inter_annotator_agreement(result.records)
    expected = expected_inter_annotator_agreement(generations, pool)
    assert observed == pytest.approx(expected, abs=0.03)
    ceiling = agreement_ceiling(generations, pool)
    assert 0.6 < ceiling < 1.0

    def bayes_correct(rec):  # the predictor says "chosen" when pbar > 0.5, flips a coin at 0.5
        p = sum(k.prob_prefers(rec["prompt"], rec["chosen"], rec["rejected"]) for k in pool) / 5
        return 0.5 if abs(p - 0.5) < 1e-12 else float(p > 0.5)

    accuracy = sum(map(bayes_correct, result.records)) / len(result.records)
    assert accuracy == pytest.approx(ceiling, abs=0.03)
    # labels mostly agree with the gold reward, but not always (the annotators are noisy)
    gold_agree = sum(
        gold_reward(r["prompt"], r["chosen"]) >= gold_reward(r["prompt"], r["rejected"])
        for r in result.records
    ) / len(result.records)
    assert 0.75 < gold_agree < 0.99
