"""PPO policy and value losses, explained variance and KL-shaped rewards, worked by hand.

Policy cases use clip_range eps = 0.2, old log-prob 0 and log-prob log(rho), so the ratio is rho.
"""

import math

import pytest
import torch

from rlhfkit.losses import explained_variance, kl_shaped_rewards, ppo_policy_loss, ppo_value_loss


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def assert_values(actual, expected):
    torch.testing.assert_close(actual, f64(expected), rtol=1e-6, atol=1e-10)


def policy_case(ratios, advantages, mask=None):
    logprobs = f64([[math.log(ratio) for ratio in ratios]]).requires_grad_()
    old_logprobs = torch.zeros_like(logprobs)
    mask = f64([[1.0] * len(ratios)]) if mask is None else f64([mask])
    loss, metrics = ppo_policy_loss(logprobs, old_logprobs, f64([advantages]), mask, clip_range=0.2)
    return loss, metrics, logprobs


def test_policy_loss_clipped_high():
    """A = +1, rho = 1.5 > 1.2: unclipped -1 * 1.5 = -1.5, clipped -1 * 1.2 = -1.2;
    max = -1.2, the clipped term is active: clipfrac 1, and no gradient flows.
    approx_kl = 0.5 * log(1.5)^2 = 0.5 * 0.4054651^2 = 0.5 * 0.1644020 = 0.0822010."""
    loss, metrics, logprobs = policy_case([1.5], [1.0])
    assert_values(loss, -1.2)
    assert_values(metrics["clipfrac"], 1.0)
    assert_values(metrics["approx_kl"], 0.5 * math.log(1.5) ** 2)
    assert_values(metrics["ratio_mean"], 1.5)
    loss.backward()
    assert_values(logprobs.grad, [[0.0]])


def test_policy_loss_clipped_low():
    """A = -1, rho = 0.5 < 0.8: unclipped -(-1) * 0.5 = 0.5, clipped -(-1) * 0.8 = 0.8;
    max = 0.8, clipped term active: clipfrac 1."""
    loss, metrics, _ = policy_case([0.5], [-1.0])
    assert_values(loss, 0.8)
    assert_values(metrics["clipfrac"], 1.0)


def test_policy_loss_unclipped():
    """A = 2, rho = 1.1 inside [0.8, 1.2]: both terms -2 * 1.1 = -2.2: clipfrac 0.
    Gradient d/d logp of -A rho = -A rho = -2.2.
    A = +1, rho = 0.5 (outside, but the pessimistic max picks the unclipped term):
    -0.5 vs -0.8 -> -0.5, clipfrac 0, gradient -1 * 0.5 = -0.5."""
    loss, metrics, logprobs = policy_case([1.1], [2.0])
    assert_values(loss, -2.2)
    assert_values(metrics["clipfrac"], 0.0)
    loss.backward()
    assert_values(logprobs.grad, [[-2.2]])

    loss, metrics, logprobs = policy_case([0.5], [1.0])
    assert_values(loss, -0.5)
    assert_values(metrics["clipfrac"], 0.0)
    loss.backward()
    assert_values(logprobs.grad, [[-0.5]])


def test_policy_loss_token_mean_over_mask():
    """The three cases above as one row plus a padding token (rho = 7, A = 100, ignored):
    mean(-1.2, 0.8, -2.2) = -2.6/3 = -0.8666667; clipfrac 2/3; ratio_mean (1.5+0.5+1.1)/3
    = 3.1/3 = 1.0333333. Metrics are detached."""
    loss, metrics, _ = policy_case([1.5, 0.5, 1.1, 7.0], [1.0, -1.0, 2.0, 100.0], [1, 1, 1, 0])
    assert_values(loss, -2.6 / 3)
    assert_values(metrics["clipfrac"], 2.0 / 3.0)
    assert_values(metrics["ratio_mean"], 3.1 / 3)
    assert not any(value.requires_grad for value in metrics.values())


def test_policy_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes must match"):
        ppo_policy_loss(
            f64([[0.0, 0.0]]), f64([[0.0]]), f64([[1.0, 1.0]]), f64([[1, 1]]), clip_range=0.2
        )


def value_case(values, old_values, returns):
    values = f64([values]).requires_grad_()
    mask = torch.ones_like(values)
    loss, metrics = ppo_value_loss(
        values, f64([old_values]), f64([returns]), mask, clip_range_value=0.2
    )
    return loss, metrics, values


def test_value_loss_unclipped():
    """V_old = 1, V = 1.1 (moved 0.1 < 0.2), R = 2: (1.1 - 2)^2 = 0.81 both ways;
    loss 0.5 * 0.81 = 0.405, vf_clipfrac 0, gradient (V - R) = -0.9."""
    loss, metrics, values = value_case([1.1], [1.0], [2.0])
    assert_values(loss, 0.405)
    assert_values(metrics["vf_clipfrac"], 0.0)
    loss.backward()
    assert_values(values.grad, [[-0.9]])


def test_value_loss_clipped():
    """V_old = 1, V = 1.5, R = 2: V_clip = 1 + 0.2 = 1.2; (1.5 - 2)^2 = 0.25, (1.2 - 2)^2 = 0.64;
    max 0.64 (the clipped term): loss 0.5 * 0.64 = 0.32, vf_clipfrac 1, no gradient.
    Second case V_old = 1, V = 1.5, R = 1: 0.25 vs (1.2 - 1)^2 = 0.04 -> 0.25 unclipped,
    loss 0.125, vf_clipfrac 0."""
    loss, metrics, values = value_case([1.5], [1.0], [2.0])
    assert_values(loss, 0.32)
    assert_values(metrics["vf_clipfrac"], 1.0)
    loss.backward()
    assert_values(values.grad, [[0.0]])

    loss, metrics, _ = value_case([1.5], [1.0], [1.0])
    assert_values(loss, 0.125)
    assert_values(metrics["vf_clipfrac"], 0.0)


def test_explained_variance():
    """V = [1, 2, 3], R = [1, 2, 4], padding ignored. Var(R): mean 7/3, deviations -4/3, -1/3,
    5/3, squares 16/9 + 1/9 + 25/9 = 42/9, / 3 = 14/9. R - V = [0, 0, 1]: mean 1/3,
    (1/9 + 1/9 + 4/9)/3 = 2/9. EV = 1 - (2/9)/(14/9) = 1 - 1/7 = 6/7 = 0.8571429."""
    values = f64([[1.0, 2.0, 3.0, 50.0]])
    returns = f64([[1.0, 2.0, 4.0, -50.0]])
    mask = f64([[1, 1, 1, 0]])
    assert_values(explained_variance(values, returns, mask), 6.0 / 7.0)
    assert_values(explained_variance(returns, returns, mask), 1.0)


def test_kl_shaped_rewards():
    """kl_coef 0.1. Row 1 (3 tokens), kl [0.5, -1, 2], score 3: -0.1*kl = [-0.05, 0.1, -0.2],
    plus 3 on the last token -> [-0.05, 0.1, 2.8]. Row 2 (mask [1, 1, 0]), kl [1, 1, 9],
    score -1: [-0.1, -0.1 - 1, 0] = [-0.1, -1.1, 0]. Row 3, no response token: all 0."""
    scores = f64([3.0, -1.0, 5.0])
    kl = f64([[0.5, -1.0, 2.0], [1.0, 1.0, 9.0], [4.0, 4.0, 4.0]])
    mask = f64([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    assert_values(
        kl_shaped_rewards(scores, kl, mask, kl_coef=0.1),
        [[-0.05, 0.1, 2.8], [-0.1, -1.1, 0.0], [0.0, 0.0, 0.0]],
    )
