"""Reward-model metrics against values worked by hand."""

import math

import pytest

from rlhfkit.eval.reward_metrics import (
    bradley_terry_nll,
    ensemble_normalization,
    expected_calibration_error,
    head_disagreement,
    length_correlation,
    mean_margin,
    normalization_from_rewards,
    normalized_disagreement,
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


# Raw rewards of S = 4 samples (rows) by K = 2 heads (columns), used by the two tests below.
TWO_HEADS = [[0.0, 1.0], [2.0, 1.0], [0.0, 5.0], [2.0, 5.0]]


def test_ensemble_normalization_by_hand():
    """Head 1 = (0, 2, 0, 2): mean m_1 = 1, population std s_1 = 1, z_1 = (-1, 1, -1, 1).
    Head 2 = (1, 1, 5, 5): m_2 = 3, s_2 = 2, z_2 = (-1, -1, 1, 1).
    R = (z_1 + z_2)/2 = (-1, 0, 0, 1): mean 0, variance (1 + 0 + 0 + 1)/4 = 1/2, σ_R = 1/√2.
    gain_1 = 1/(s_1 σ_R) = √2 = 1.4142136,  bias_1 = -m_1/(s_1 σ_R) = -√2 = -1.4142136;
    gain_2 = 1/(2/√2) = 1/√2 = 0.7071068,   bias_2 = -3/√2 = -2.1213203.
    Normalised heads: √2 (-1, 1, -1, 1) and √2 (-1, -1, 1, 1), each std √2 (one shared scale);
    their mean (-√2, 0, 0, √2) has mean 0 and variance (2 + 2)/4 = 1. Standardising each head
    on its own instead (the old rule) gave the mean R itself: std 1/√2 = 0.707, not 1."""
    gains, biases = ensemble_normalization(TWO_HEADS)
    root2 = math.sqrt(2.0)
    assert gains == pytest.approx([root2, 1 / root2], rel=1e-12)
    assert biases == pytest.approx([-root2, -3 / root2], rel=1e-12)
    heads = [[g * r + b for g, r, b in zip(gains, row, biases, strict=True)] for row in TWO_HEADS]
    rewards = [sum(h) / 2 for h in heads]
    assert rewards == pytest.approx([-root2, 0.0, 0.0, root2], abs=1e-12)
    for k in range(2):
        column = [h[k] for h in heads]
        assert close(sum(c * c for c in column) / 4, 2.0)  # mean 0, variance 2: std √2 each
    old = [normalization_from_rewards([row[k] for row in TWO_HEADS]) for k in range(2)]
    old_rewards = [
        sum(g * r + b for (g, b), r in zip(old, row, strict=True)) / 2 for row in TWO_HEADS
    ]
    assert close(math.sqrt(sum(r * r for r in old_rewards) / 4), 1 / root2)


def test_ensemble_normalization_one_head_is_the_plain_normalisation():
    """K = 1: exactly `normalization_from_rewards` of the single column (bit for bit), e.g.
    (1, 2, 3) -> gain 1.2247449, bias -2.4494897; a constant head keeps gain 1. A constant
    ensemble (two heads that are constant) keeps σ_R = 1 and only removes the means."""
    column = [0.3, -1.7, 2.9, 0.11, 5.0]
    gain, bias = normalization_from_rewards(column)
    assert ensemble_normalization([[r] for r in column]) == ([gain], [bias])
    (gain_3,), (bias_3,) = ensemble_normalization([[1.0], [2.0], [3.0]])
    assert close(gain_3, 1.224744871391589) and close(bias_3, -2.449489742783178)
    assert ensemble_normalization([[4.0], [4.0]]) == ([1.0], [-4.0])
    assert ensemble_normalization([[4.0, 1.0], [4.0, 1.0]]) == ([1.0, 1.0], [-4.0, -1.0])
    with pytest.raises(ValueError):
        ensemble_normalization([])
    with pytest.raises(ValueError):
        ensemble_normalization([[1.0, 2.0], [1.0]])


def test_normalized_disagreement_by_hand_and_scale_free():
    """After `ensemble_normalization` of TWO_HEADS the heads are √2 (-1, 1, -1, 1) and
    √2 (-1, -1, 1, 1): per sample the population std across the two heads is |a - b| / 2 =
    (0, √2, √2, 0), mean √2/2 = 0.7071068 (in units of the ensemble reward's std). Any per-head
    map a_k r_k + c_k with a_k > 0 (here 10 r_1 - 3 and 0.5 r_2 + 7) gives the same value; one
    head gives 0."""
    assert close(normalized_disagreement(TWO_HEADS), math.sqrt(2.0) / 2)
    rescaled = [[10 * r1 - 3, 0.5 * r2 + 7] for r1, r2 in TWO_HEADS]
    assert close(normalized_disagreement(rescaled), math.sqrt(2.0) / 2)
    assert normalized_disagreement([[1.0], [3.0]]) == 0.0


def test_pair_metrics_bundle_and_errors():
    metrics = reward_pair_metrics([1.0, 0.0], [0.0, 1.0])
    assert set(metrics) == {"accuracy", "margin", "loss", "ece"}
    assert close(metrics["accuracy"], 0.5)
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [])
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
