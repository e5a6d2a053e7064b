"""Inter-annotator agreement: Cohen's κ, Fleiss' κ, Krippendorff's α (nominal), and the
held-out agreement that bounds what a reward model can reach on a set of labels.

Pure functions of plain Python lists; categories are any hashable values (here the canonical
verdicts ``0``, ``1``, ``"tie"``, ``"both_bad"``). A statistic that is undefined on its input
(no pairs, or no variation at all so that chance agreement is 1) is returned as ``nan``.

Worked example used in the tests (three items, three annotators, categories A and B)::

    item 1: A A A     item 2: A A B     item 3: B B B

Fleiss' κ: P_i = (Σ_j n_ij² − n) / (n(n − 1)) with n = 3:
    P_1 = (9 − 3)/6 = 1,  P_2 = (4 + 1 − 3)/6 = 1/3,  P_3 = 1;  P̄ = (7/3)/3 = 7/9.
    p_A = (3 + 2 + 0)/9 = 5/9,  p_B = 4/9;  P_e = 25/81 + 16/81 = 41/81.
    κ = (7/9 − 41/81) / (1 − 41/81) = (22/81) / (40/81) = 0.55.

Krippendorff's α (nominal): every ordered pair of values within a unit adds 1/(m_u − 1) to the
coincidence matrix o. Item 1 adds o_AA += 6·½ = 3; item 2 adds o_AA += 1, o_AB += 1,
o_BA += 1; item 3 adds o_BB += 3. So n_A = 5, n_B = 4, n = 9 and
    α = 1 − (n − 1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k = 1 − 8·2 / (2·5·4) = 1 − 0.4 = 0.6.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

NAN = float("nan")


def cohen_kappa(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable]) -> float:
    """Cohen's κ of two annotators over the same items (position i = item i).

    κ = (p_o − p_e) / (1 − p_e), p_o the observed agreement, p_e = Σ_c p_a(c) p_b(c) the
    agreement expected by chance from each annotator's own category frequencies.

    Example: a = A A B B A B, b = A B B B A A: they agree on items 1, 3, 4, 5, so
    p_o = 4/6; each says A half the time, so p_e = ½·½ + ½·½ = ½ and κ = (⅔ − ½)/½ = ⅓.
    """
    if len(rater_a) != len(rater_b):
        raise ValueError("cohen_kappa: the two annotators must rate the same items")
    n = len(rater_a)
    if n == 0:
        return NAN
    observed = sum(a == b for a, b in zip(rater_a, rater_b, strict=True)) / n
    counts_a, counts_b = Counter(rater_a), Counter(rater_b)
    expected = sum(counts_a[c] * counts_b[c] for c in counts_a) / (n * n)
    if expected == 1.0:
        return NAN
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' κ over items each rated by several annotators (``ratings[i]`` = item i's labels).

    P_i = (Σ_j n_ij² − n_i) / (n_i (n_i − 1)), P̄ the mean of P_i, p_j the share of all labels
    in category j, P_e = Σ_j p_j², κ = (P̄ − P_e) / (1 − P_e). Items with fewer than two
    labels are left out. Fleiss defined κ for a constant n; with varying n_i this is the usual
    generalisation (each item's P_i with its own n_i), which equals Fleiss' when n_i is
    constant. Worked example in the module docstring (κ = 0.55).
    """
    rated = [list(r) for r in ratings if len(r) >= 2]
    if not rated:
        return NAN
    totals: Counter = Counter()
    agreement_sum = 0.0
    for labels in rated:
        counts = Counter(labels)
        n_i = len(labels)
        agreement_sum += (sum(c * c for c in counts.values()) - n_i) / (n_i * (n_i - 1))
        totals.update(counts)
    mean_agreement = agreement_sum / len(rated)
    n_labels = sum(totals.values())
    chance = sum((c / n_labels) ** 2 for c in totals.values())
    if chance == 1.0:
        return NAN
    return (mean_agreement - chance) / (1.0 - chance)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float:
    """Krippendorff's α for nominal data; ``units[u]`` = the values given to unit u (missing
    ratings are simply absent; units with fewer than two values are not pairable and dropped).

    α = 1 − D_o / D_e = 1 − (n − 1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k, with o the coincidence
    matrix (each ordered pair of values in unit u adds 1/(m_u − 1)), n_c its margins and n the
    number of pairable values. Worked example in the module docstring (α = 0.6).
    """
    coincidence: Counter = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_c - 1) if c == k else n_c * n_k
                coincidence[(c, k)] += pairs / (m - 1)
    margins: Counter = Counter()
    for (c, _k), value in coincidence.items():
        margins[c] += value
    n = sum(margins.values())
    if n <= 1:
        return NAN
    disagree_observed = sum(v for (c, k), v in coincidence.items() if c != k)
    disagree_expected = sum(margins[c] * margins[k] for c in margins for k in margins if c != k)
    if disagree_expected == 0:
        return NAN
    return 1.0 - (n - 1) * disagree_observed / disagree_expected


def majority(values: Sequence[Hashable]) -> Hashable | None:
    """The most frequent value, or None when the top count is shared (no majority)."""
    if not values:
        return None
    ranked = Counter(values).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def held_out_agreement(units: Sequence[Sequence[Hashable]]) -> tuple[float, int]:
    """How often one annotator, held out, agrees with the majority of the others on a unit.

    For every label of every unit with at least two labels: compare it with the majority of
    the unit's other labels (skipped when the others have no majority). Every verdict is a
    value of its own here (tie, both-bad, a ranking's top); the reward-model ceiling of
    `rlhfkit.feedback.annotation.stats.preference_ceiling` counts preferences as export does.
    Returns (rate, number of cases).

    Example: units [A, A, B] and [A, A]: for unit 1, A vs majority(A, B) = none → skipped
    (twice), B vs majority(A, A) = A → disagree; for unit 2, A vs A twice → agree.
    2 agreements out of 3 cases → (2/3, 3).
    """
    agree = total = 0
    for values in units:
        if len(values) < 2:
            continue
        for i, held in enumerate(values):
            rest = [v for j, v in enumerate(values) if j != i]
            consensus = majority(rest)
            if consensus is None:
                continue
            total += 1
            agree += held == consensus
    return (agree / total if total else NAN), total


def binomial_two_sided_p(successes: int, trials: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: the probability, under Binomial(trials, p), of an outcome
    at most as likely as ``successes`` (used for position bias: P(choose slot A) = ½?).

    Example: 9 successes in 10 trials at p = ½: outcomes 0, 1, 9, 10 are at most as likely,
    (1 + 10 + 10 + 1) / 1024 = 22/1024 ≈ 0.0215.
    """
    if trials == 0:
        return 1.0

    def log_pmf(k: int) -> float:
        return (
            math.lgamma(trials + 1)
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * math.log(p)
            + (trials - k) * math.log1p(-p)
        )

    observed = log_pmf(successes)
    total = sum(math.exp(log_pmf(k)) for k in range(trials + 1) if log_pmf(k) <= observed + 1e-9)
    return min(1.0, total)
