"""Reward-model evaluation metrics: pure functions of plain numbers (lists of floats).

* `pairwise_accuracy`: fraction of pairs with r_chosen > r_rejected (a tie counts half).
* `mean_margin`: mean of r_chosen - r_rejected.
* `bradley_terry_nll`: mean of -log σ(r_chosen - r_rejected) (the training loss without margin),
  or with soft labels p the mean of -p log σ(Δr) - (1 - p) log σ(-Δr).
* `expected_calibration_error`: ECE (Guo et al. 2017) of a binary predictor. For a reward model,
  the prediction for a pair is P(chosen ≻ rejected) = σ(Δr) and the label is 1 (the annotator
  chose it); each pair is scored by its *confidence* max(p, 1 - p) and whether its predicted
  side (p > 1/2) is right, so pairs are not all labelled 1 and the metric is symmetric in the
  order a pair is written. Bins of equal width over confidence [1/2, 1].
* `pearson_correlation`, `length_correlation`: Pearson r of reward with response length; a
  strongly positive value is a classic reward-hacking warning sign (Singhal et al. 2023).
* `heads_std`, `head_disagreement`: the standard deviation across ensemble heads of one example,
  and its mean over examples.
* `normalization_from_rewards`: gain and bias that map rewards to mean 0, std 1.
* `ensemble_normalization`: per-head gains and biases that put K heads on one scale and give
  their mean (the ensemble's reward) mean 0, std 1.
* `normalized_disagreement`: `head_disagreement` after `ensemble_normalization` fitted on the same
  examples: the heads' disagreement in units of the ensemble reward's std (scale-free).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rlhfkit.models.head_scorer import heads_std


def _check_pairs(chosen: Sequence[float], rejected: Sequence[float]) -> None:
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen but {len(rejected)} rejected rewards")
    if not chosen:
        raise ValueError("no pairs")


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Fraction of pairs ranked right; a tie counts as half (chance level 0.5)."""
    _check_pairs(chosen, rejected)
    score = sum(
        1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)
    )
    return score / len(chosen)


def mean_margin(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Mean of r_chosen - r_rejected."""
    _check_pairs(chosen, rejected)
    return sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


def _log_sigmoid(x: float) -> float:
    # Stable for large |x|: log σ(x) = -log(1 + e^-x) = min(x, 0) - log(1 + e^-|x|).
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


def sigmoid(x: float) -> float:
    return math.exp(_log_sigmoid(x))


def bradley_terry_nll(
    chosen: Sequence[float], rejected: Sequence[float], labels: Sequence[float] | None = None
) -> float:
    """Mean of -log σ(r_chosen - r_rejected); with `labels` p = P(chosen beats rejected), the
    mean of -p log σ(Δr) - (1 - p) log σ(-Δr)."""
    _check_pairs(chosen, rejected)
    if labels is None:
        labels = [1.0] * len(chosen)
    if len(labels) != len(chosen):
        raise ValueError(f"{len(labels)} labels for {len(chosen)} pairs")
    total = 0.0
    for c, r, p in zip(chosen, rejected, labels, strict=True):
        total -= p * _log_sigmoid(c - r) + ((1.0 - p) * _log_sigmoid(r - c) if p != 1.0 else 0.0)
    return total / len(chosen)


def expected_calibration_error(
    probs: Sequence[float], labels: Sequence[float], *, n_bins: int = 10
) -> float:
    """Expected calibration error of binary predictions.

    For each example, confidence = max(p, 1 - p) and correct = 1 if the predicted side
    (p > 1/2 predicts label 1) matches the label; p = 1/2 is correct by half. Confidences fall
    in `n_bins` equal bins over [1/2, 1] (the last bin closed). ECE = sum over bins of
    (n_bin / N) |accuracy_bin - mean confidence_bin|.

    Args:
        probs: Predicted P(label = 1), each in [0, 1].
        labels: 0 or 1 (fractions allowed: soft labels count as expected correctness).
        n_bins: Number of confidence bins.
    """
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities but {len(labels)} labels")
    if not probs:
        raise ValueError("no examples")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    sums = [[0, 0.0, 0.0] for _ in range(n_bins)]  # count, confidence sum, correct sum
    for p, y in zip(probs, labels, strict=True):
        confidence = max(p, 1.0 - p)
        if p > 0.5:
            correct = y
        elif p < 0.5:
            correct = 1.0 - y
        else:
            correct = 0.5
        index = min(int((confidence - 0.5) * 2 * n_bins), n_bins - 1)
        sums[index][0] += 1
        sums[index][1] += confidence
        sums[index][2] += correct
    total = len(probs)
    return sum(abs(correct - conf) / total for count, conf, correct in sums if count)


def pair_calibration_error(
    chosen: Sequence[float], rejected: Sequence[float], *, n_bins: int = 10
) -> float:
    """ECE of σ(r_chosen - r_rejected) against the annotators' labels (all 1)."""
    _check_pairs(chosen, rejected)
    probs = [sigmoid(c - r) for c, r in zip(chosen, rejected, strict=True)]
    return expected_calibration_error(probs, [1.0] * len(probs), n_bins=n_bins)


def pearson_correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r; None when fewer than two values or either side is constant."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    if var_x <= 0 or var_y <= 0:
        return None
    return cov / math.sqrt(var_x * var_y)


def length_correlation(rewards: Sequence[float], lengths: Sequence[float]) -> float | None:
    """Pearson correlation of reward with response length (tokens); None if undefined."""
    return pearson_correlation([float(r) for r in rewards], [float(n) for n in lengths])


def head_disagreement(head_rewards: Sequence[Sequence[float]]) -> float:
    """Mean over examples of the population std (ddof 0) of the K heads' rewards (0 for K = 1):
    (1/S) sum_s sqrt((1/K) sum_k (r_sk - mean_k r_sk)^2) of `head_rewards` (S, K)."""
    if not head_rewards:
        raise ValueError("no examples")
    return sum(heads_std(heads) for heads in head_rewards) / len(head_rewards)


def normalization_from_rewards(rewards: Sequence[float]) -> tuple[float, float]:
    """(gain, bias) such that gain * r + bias has mean 0 and (population) std 1 over `rewards`.

    A constant set of rewards (std 0) keeps gain 1 and only removes the mean.
    """
    if not rewards:
        raise ValueError("no rewards to normalise on")
    n = len(rewards)
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    gain = 1.0 / std if std > 1e-12 else 1.0
    return gain, -mean * gain


def ensemble_normalization(
    head_rewards: Sequence[Sequence[float]],
) -> tuple[list[float], list[float]]:
    """Per-head (gains, biases) such that the ensemble's reward has mean 0 and std 1.

    Standardising each head on its own (`normalization_from_rewards` per head) gives every head
    std 1 but their mean, the reward PPO uses, a std below 1 (the heads are not perfectly
    correlated). Instead, over the S samples, with head k's mean m_k and population std s_k::

        z_k = (r_k - m_k) / s_k             each head standardised (s_k = 1 if head k is constant)
        R   = (1/K) sum_k z_k               the ensemble reward, mean 0, population std σ_R
        gain_k = 1 / (s_k σ_R),  bias_k = -m_k / (s_k σ_R)   (σ_R = 1 if R is constant)

    so that (1/K) sum_k (gain_k r_k + bias_k) = R / σ_R has mean 0 and std 1, and all heads share
    one scale (each normalised head has std 1/σ_R >= 1): their disagreement (std across heads)
    is in units of the ensemble reward's std. For K = 1 the result is exactly
    `normalization_from_rewards` (R = z_1, σ_R = 1 up to rounding, which is not applied).

    Args:
        head_rewards: (S, K) raw rewards, one list of K head rewards per sample.

    Returns:
        (gains, biases), K each.
    """
    if not head_rewards:
        raise ValueError("no rewards to normalise on")
    num_heads = len(head_rewards[0])
    if num_heads < 1 or any(len(heads) != num_heads for heads in head_rewards):
        raise ValueError("every sample needs the same number (>= 1) of head rewards")
    columns = [[float(heads[k]) for heads in head_rewards] for k in range(num_heads)]  # (K, S)
    if num_heads == 1:
        gain, bias = normalization_from_rewards(columns[0])
        return [gain], [bias]
    per_head = [normalization_from_rewards(column) for column in columns]  # (1/s_k, -m_k/s_k)
    standardized = [
        [gain * r + bias for r in column]
        for (gain, bias), column in zip(per_head, columns, strict=True)
    ]  # (K, S): z_k
    ensemble = [sum(z) / num_heads for z in zip(*standardized, strict=True)]  # (S,): R
    ensemble_gain, _ = normalization_from_rewards(ensemble)  # 1/σ_R (R has mean 0 already)
    return (
        [gain * ensemble_gain for gain, _ in per_head],
        [bias * ensemble_gain for _, bias in per_head],
    )


def normalized_disagreement(head_rewards: Sequence[Sequence[float]]) -> float:
    """`head_disagreement` of the heads after `ensemble_normalization` fitted on these examples.

    With z_k and σ_R as in `ensemble_normalization`, the mean over examples of
    std_k(z_k / σ_R) (population std across the K heads): the disagreement in units of the
    ensemble reward's std over the same examples. Unchanged by any per-head affine map
    a_k r_k + c_k (a_k > 0) of the raw rewards, so it can be compared across training steps
    and between raw and normalised rewards. 0 for one head.

    Args:
        head_rewards: (S, K) rewards, one list of K head rewards per example.
    """
    gains, biases = ensemble_normalization(head_rewards)
    normed = [
        [g * r + b for g, r, b in zip(gains, heads, biases, strict=True)] for heads in head_rewards
    ]
    return head_disagreement(normed)


def reward_pair_metrics(
    chosen: Sequence[float], rejected: Sequence[float], *, n_bins: int = 10
) -> dict[str, float]:
    """accuracy, margin, loss (BT NLL) and ece of a set of pairs, in one dict."""
    return {
        "accuracy": pairwise_accuracy(chosen, rejected),
        "margin": mean_margin(chosen, rejected),
        "loss": bradley_terry_nll(chosen, rejected),
        "ece": pair_calibration_error(chosen, rejected, n_bins=n_bins),
    }


__all__ = [
    "bradley_terry_nll",
    "ensemble_normalization",
    "expected_calibration_error",
    "head_disagreement",
    "heads_std",
    "length_correlation",
    "mean_margin",
    "normalization_from_rewards",
    "normalized_disagreement",
    "pair_calibration_error",
    "pairwise_accuracy",
    "pearson_correlation",
    "reward_pair_metrics",
    "sigmoid",
]
