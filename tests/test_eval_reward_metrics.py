"""Reward-model metrics against values worked by hand."""

import math

import pytest

from rlhfkit.eval.reward_metrics import (
    bradley_terry_nll,
    expected_calibration_error,
    head_disagreement,
    length_correlation,
    mean_margin,
    normalization_from_rewards,
    pair_calibration_error,
    pairwise_accuracy,
    pearson_correlation,
    reward_pair_metrics,
)


def close(a, b):
    return a == pytest.approx(b, rel=1e-6, abs=1e-12)


def test_accuracy_counts_ties_half():
    """chosen [1, 2, 3] vs rejected [0, 2, 4]: right, tie, wrong -> (1 + 0.5 + 0) / 3 = 0.5."""
    assert close(pairwise_accuracy([1, 2, 3], [0, 2, 4]), 0.5)
    assert close(pairwise_accuracy([1.0], [0.0]), 1.0)


def test_mean_margin():
    """Gaps 1, 0, -1 -> mean 0; gaps 2, 1 -> mean 1.5."""
    assert close(mean_margin([1, 2, 3], [0, 2, 4]), 0.0)
    assert close(mean_margin([2, 1], [0, 0]), 1.5)


def test_bradley_terry_nll():
    """Gap 0: -log σ(0) = log 2 = 0.6931472.
    Gaps 1 and -1: -log σ(1) = log(1 + e^-1) = 0.3132617, -log σ(-1) = log(1 + e) = 1.3132617,
    mean 0.8132617. A gap of -1000 must stay finite: -log σ(-1000) = 1000."""
    assert close(bradley_terry_nll([0.0], [0.0]), math.log(2))
    assert close(bradley_terry_nll([1.0, 0.0], [0.0, 1.0]), 0.8132616875182228)
    assert close(bradley_terry_nll([0.0], [1000.0]), 1000.0)


def test_bradley_terry_nll_with_soft_labels():
    """Pair 1: Δr = 1, p = 0.8: 0.8 softplus(-1) + 0.2 softplus(1) = 0.8 * 0.3132617
    + 0.2 * 1.3132617 = 0.5132617. Pair 2: Δr = 0, p = 0.5: log 2 = 0.6931472. Mean 0.6032044.
    Hard labels (p = 1) give the plain NLL."""
    nll = bradley_terry_nll([1.0, 0.0], [0.0, 0.0], [0.8, 0.5])
    assert close(nll, (0.5132616875182229 + math.log(2)) / 2)
    assert close(bradley_terry_nll([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]), 0.8132616875182228)
    with pytest.raises(ValueError, match="1 labels for 2 pairs"):
        bradley_terry_nll([1.0, 0.0], [0.0, 1.0], [0.5])


def test_expected_calibration_error_by_hand():
    """probs [0.9, 0.2, 0.6, 0.5], labels [1, 1, 0, 1], 5 bins of width 0.1 over [0.5, 1]:
    0.9 -> confidence 0.9 (bin 4), predicts 1, correct 1;
    0.2 -> confidence 0.8 (bin 3), predicts 0, label 1, correct 0;
    0.6 -> confidence 0.6 (bin 0: [0.5, 0.6) up to rounding, 0.6 - 0.5 = 0.0999...), wrong, 0;
    0.5 -> confidence 0.5 (bin 0), a coin flip, correct 0.5.
    bin 0: n 2, accuracy 0.25, confidence 0.55 -> 2/4 * 0.30 = 0.150
    bin 3: n 1, accuracy 0, confidence 0.8   -> 1/4 * 0.80 = 0.200
    bin 4: n 1, accuracy 1, confidence 0.9   -> 1/4 * 0.10 = 0.025
    ECE = 0.375."""
    ece = expected_calibration_error([0.9, 0.2, 0.6, 0.5], [1, 1, 0, 1], n_bins=5)
    assert close(ece, 0.375)


def test_ece_is_zero_when_calibrated_and_one_bin_perfect():
    """Two examples at p = 0.75 in one bin, one right one wrong: accuracy 0.5 vs 0.75 -> 0.25;
    four at p = 0.75, three right: accuracy 0.75 = confidence -> 0."""
    assert close(expected_calibration_error([0.75, 0.75], [1, 0], n_bins=1), 0.25)
    assert close(expected_calibration_error([0.75] * 4, [1, 1, 1, 0], n_bins=2), 0.0)


def test_pair_calibration_error():
    """Pairs with gaps 2 and 0: p = σ(2) = 0.8807971 (bin 7 of 10, correct 1) and p = 0.5
    (bin 0, correct 0.5). ECE = 1/2 |1 - 0.8807971| + 1/2 |0.5 - 0.5| = 0.0596015."""
    expected = 0.5 * (1 - 1 / (1 + math.exp(-2)))
    assert close(pair_calibration_error([2.0, 0.0], [0.0, 0.0]), expected)
    assert close(expected, 0.05960146101105877)


def test_pearson_and_length_correlation():
    """x [1, 2, 3], y [2, 4, 7]: deviations x (-1, 0, 1), y (-7/3, -1/3, 8/3);
    cov = 7/3 + 8/3 = 5; var x = 2; var y = (49 + 1 + 64)/9 = 114/9;
    r = 5 / sqrt(2 * 114/9) = 5 / 5.0332230 = 0.9933993. Constant input -> None."""
    assert close(pearson_correlation([1, 2, 3], [2, 4, 7]), 0.9933992677987828)
    assert close(length_correlation([2, 4, 7], [1, 2, 3]), 0.9933992677987828)
    assert length_correlation([1.0, 1.0], [3, 4]) is None
    assert length_correlation([1.0], [3]) is None


def test_head_disagreement():
    """Heads [1, 3] -> std 1; heads [2, 2] -> std 0; mean 0.5."""
    assert close(head_disagreement([[1.0, 3.0], [2.0, 2.0]]), 0.5)
    assert close(head_disagreement([[5.0], [7.0]]), 0.0)


def test_normalization_from_rewards():
    """[1, 2, 3]: mean 2, population std sqrt(2/3) = 0.8164966; gain = 1/0.8164966 = 1.2247449,
    bias = -2 * 1.2247449 = -2.4494897; the normalised values are (-1.2247, 0, 1.2247)."""
    gain, bias = normalization_from_rewards([1.0, 2.0, 3.0])
    assert close(gain, 1.224744871391589)
    assert close(bias, -2.449489742783178)
    values = [gain * r + bias for r in [1.0, 2.0, 3.0]]
    assert close(sum(values) / 3, 0.0)
    assert close(sum(v * v for v in values) / 3, 1.0)
    assert normalization_from_rewards([4.0, 4.0]) == (1.0, -4.0)


def test_pair_metrics_bundle_and_errors():
    metrics = reward_pair_metrics([1.0, 0.0], [0.0, 1.0])
    assert set(metrics) == {"accuracy", "margin", "loss", "ece"}
    assert close(metrics["accuracy"], 0.5)
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [])
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
