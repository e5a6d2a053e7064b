"""Bradley-Terry loss, metrics and ranking pairs, against values worked by hand."""

import math

import pytest
import torch

from rlhfkit.losses import bradley_terry_loss, bradley_terry_metrics, ranking_pairs


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def assert_values(actual, expected):
    torch.testing.assert_close(actual, f64(expected), rtol=1e-6, atol=1e-10)


def test_loss_without_margin():
    """Pair 1: r_w=2, r_l=0.5 -> gap 1.5, sigmoid(1.5)=1/(1+e^-1.5)=1/(1+0.2231302)=0.8175745,
    -log 0.8175745 = 0.2014133.
    Pair 2 (the model is wrong): r_w=0, r_l=1 -> gap -1, -log sigmoid(-1) = log(1+e^1)
    = log(3.7182818) = 1.3132617."""
    losses = bradley_terry_loss(f64([2.0, 0.0]), f64([0.5, 1.0]))
    assert_values(losses, [0.2014132779827524, 1.3132616875182228])


def test_loss_with_margin():
    """Margin 1 shrinks the gap: r_w=2, r_l=0.5, m=1 -> 1.5 - 1 = 0.5,
    -log sigmoid(0.5) = log(1+e^-0.5) = log(1.6065307) = 0.4740770.
    A per-pair margin [1, 0] leaves the second pair's loss as without margin:
    r_w=0, r_l=1 -> log(1+e^1) = 1.3132617. A float margin 1 applies to both:
    second pair gap -1 - 1 = -2 -> log(1+e^2) = log(8.3890561) = 2.1269280."""
    chosen, rejected = f64([2.0, 0.0]), f64([0.5, 1.0])
    assert_values(
        bradley_terry_loss(chosen, rejected, margin=f64([1.0, 0.0])),
        [0.4740769841801067, 1.3132616875182228],
    )
    assert_values(
        bradley_terry_loss(chosen, rejected, margin=1.0),
        [0.4740769841801067, 2.1269280110429727],
    )


def test_loss_is_stable_for_huge_gaps():
    """Gap -1000: -log sigmoid(-1000) = 1000 + log(1 + e^-1000) = 1000 (naive log of sigmoid
    gives inf). Gap +1000: log(1 + e^-1000) = 0."""
    losses = bradley_terry_loss(f64([0.0, 1000.0]), f64([1000.0, 0.0]))
    assert_values(losses, [1000.0, 0.0])


def test_loss_gradient():
    """d/d r_w of -log sigmoid(r_w - r_l) = -sigmoid(-(r_w - r_l)); at gap 1.5:
    -sigmoid(-1.5) = -1/(1+e^1.5) = -1/5.4816891 = -0.1824255; d/d r_l = +0.1824255.
    Gradient descent therefore raises the chosen reward and lowers the rejected one."""
    chosen = f64([2.0]).requires_grad_()
    rejected = f64([0.5]).requires_grad_()
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert_values(chosen.grad, [-0.18242552380635635])
    assert_values(rejected.grad, [0.18242552380635635])


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(f64([1.0, 2.0]), f64([1.0]))


def test_metrics():
    """chosen [2, 0, 1], rejected [0.5, 1, 1]: wins 1, 0 and a tie (1/2) -> accuracy 1.5/3 = 0.5;
    gaps 1.5, -1, 0 -> margin 0.5/3 = 0.1666667; chosen mean 3/3 = 1; rejected mean 2.5/3 =
    0.8333333. Metrics carry no gradient."""
    chosen = f64([2.0, 0.0, 1.0]).requires_grad_()
    metrics = bradley_terry_metrics(chosen, f64([0.5, 1.0, 1.0]))
    assert_values(metrics["accuracy"], 0.5)
    assert_values(metrics["margin"], 0.5 / 3)
    assert_values(metrics["chosen_reward"], 1.0)
    assert_values(metrics["rejected_reward"], 2.5 / 3)
    assert not any(value.requires_grad for value in metrics.values())


def test_ranking_pairs():
    """[2, 0, 1] best to worst: 2 beats 0 and 1, 0 beats 1 -> 3 = 3*2/2 pairs.
    Four responses give 4*3/2 = 6 pairs, each (better, worse)."""
    assert ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    pairs = ranking_pairs([3, 1, 0, 2])
    assert pairs == [(3, 1), (3, 0), (3, 2), (1, 0), (1, 2), (0, 2)]
    assert ranking_pairs([5]) == []


def test_ranking_pairs_rejects_repeated_index():
    with pytest.raises(ValueError, match="more than once"):
        ranking_pairs([0, 1, 0])


def test_soft_labels_are_the_expected_loss_over_the_label():
    """loss = p * softplus(-(d - m)) + (1 - p) * softplus(d + m), d = r_w - r_l, m the margin.

    Pair 1: d = log 3, so sigmoid(d) = 3 / (1 + 3) = 0.75; p = 0.75:
        0.75 * (-log 0.75) + 0.25 * (-log 0.25) = 0.75 * 0.2876821 + 0.25 * 1.3862944
        = 0.2157616 + 0.3465736 = 0.5623351 (the label's entropy: the minimum over d).
    Pair 2: d = 0, p = 0.9: 0.9 log 2 + 0.1 log 2 = log 2 = 0.6931472.
    Pair 3: p = 1 is the hard loss: d = 1.5 -> 0.2014133 (as in test_loss_without_margin).
    """
    chosen = f64([math.log(3.0), 0.0, 2.0])
    rejected = f64([0.0, 0.0, 0.5])
    losses = bradley_terry_loss(chosen, rejected, soft_labels=f64([0.75, 0.9, 1.0]))
    assert_values(losses, [0.5623351446188083, math.log(2.0), 0.2014132779827524])


def test_soft_label_gradient_is_sigmoid_gap_minus_label():
    """d/dd [p softplus(-d) + (1-p) softplus(d)] = -p (1 - sigmoid(d)) + (1 - p) sigmoid(d)
    = sigmoid(d) - p. At d = log 3, p = 0.75: 0.75 - 0.75 = 0 (the minimum). At d = 0, p = 0.9:
    0.5 - 0.9 = -0.4 (the chosen reward is pushed up). At d = 0, p = 0.5: 0 (an even label
    teaches no side)."""
    gap = f64([math.log(3.0), 0.0, 0.0]).requires_grad_()
    losses = bradley_terry_loss(
        gap, torch.zeros(3, dtype=torch.float64), soft_labels=f64([0.75, 0.9, 0.5])
    )
    (grad,) = torch.autograd.grad(losses.sum(), gap)
    assert_values(grad, [0.0, -0.4, 0.0])


def test_soft_labels_with_a_margin():
    """d = 1, m = 0.5, p = 0.5: 0.5 softplus(-(1 - 0.5)) + 0.5 softplus(1 + 0.5)
    = 0.5 log(1 + e^-0.5) + 0.5 log(1 + e^1.5) = 0.5 * 0.4740770 + 0.5 * 1.7014132 = 1.0877451.
    Swapping the pair and using 1 - p gives the same loss (the label is about the pair, not its
    order on the page)."""
    loss = bradley_terry_loss(f64([1.0]), f64([0.0]), 0.5, soft_labels=0.5)
    assert_values(loss, [1.0877451310814297])
    chosen, rejected, p = f64([0.3, -1.2]), f64([0.9, 0.4]), f64([0.8, 0.6])
    swapped = bradley_terry_loss(rejected, chosen, soft_labels=1.0 - p)
    assert_values(bradley_terry_loss(chosen, rejected, soft_labels=p), swapped.tolist())
