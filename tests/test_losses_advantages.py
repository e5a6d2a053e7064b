"""GAE, masked statistics and whitening, RLOO and GRPO, against values worked by hand."""

import math

import pytest
import torch

from rlhfkit.losses import (
    gae_advantages,
    grpo_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    rloo_advantages,
)


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def assert_values(actual, expected):
    torch.testing.assert_close(actual, f64(expected), rtol=1e-6, atol=1e-10)


def test_gae_three_tokens_by_hand():
    """gamma = 0.9, lam = 0.8, gamma*lam = 0.72.
    Row 1, all 3 tokens real: r = [0, 0, 1], V = [0.5, 0.6, 0.7].
      delta_2 = 1 + 0.9*0 - 0.7 = 0.3                      A_2 = 0.3
      delta_1 = 0 + 0.9*0.7 - 0.6 = 0.03                   A_1 = 0.03 + 0.72*0.3 = 0.246
      delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04                   A_0 = 0.04 + 0.72*0.246 = 0.21712
      returns = A + V = [0.71712, 0.846, 1.0]
    Row 2, mask [1, 1, 0], garbage 5 and 9 in the padded reward and value:
      delta_1 = 1 + 0.9*0 - 0.6 = 0.4 (no bootstrap from padding)   A_1 = 0.4
      delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04                   A_0 = 0.04 + 0.72*0.4 = 0.328
      returns = [0.828, 1.0, 0]; padding is 0 in both outputs."""
    rewards = f64([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = f64([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]])
    mask = f64([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_values(advantages, [[0.21712, 0.246, 0.3], [0.328, 0.4, 0.0]])
    assert_values(returns, [[0.71712, 0.846, 1.0], [0.828, 1.0, 0.0]])


def reference_gae(rewards, values, mask, gamma, lam):
    """GAE from its forward definition, A_t = sum_l (gamma lam)^l delta_{t+l} over the response
    tokens from t on, in plain Python: independent of the library's backward recursion."""
    batch, length = len(rewards), len(rewards[0])
    advantages = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        for t in range(length):
            if not mask[b][t]:
                continue
            for step, u in enumerate(range(t, length)):
                if not mask[b][u]:
                    break
                next_value = values[b][u + 1] if u + 1 < length and mask[b][u + 1] else 0.0
                delta = rewards[b][u] + gamma * next_value - values[b][u]
                advantages[b][t] += (gamma * lam) ** step * delta
    returns = [
        [advantages[b][t] + values[b][t] if mask[b][t] else 0.0 for t in range(length)]
        for b in range(batch)
    ]
    return advantages, returns


def test_gae_matches_python_loop_on_ragged_masks():
    """Random rewards and values, rows of length 7, 4, 1, 0 (right padded) and 5 (left padded),
    with large garbage in the padding."""
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    values = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    mask = f64(
        [
            [1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 1],
        ]
    )
    rewards = torch.where(mask.bool(), rewards, 1e6)
    values = torch.where(mask.bool(), values, -1e6)
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.95, lam=0.9)
    expected_advantages, expected_returns = reference_gae(
        rewards.tolist(), values.tolist(), mask.tolist(), 0.95, 0.9
    )
    assert_values(advantages, expected_advantages)
    assert_values(returns, expected_returns)


def test_gae_lambda_extremes_and_detached_outputs():
    """lam = 0: A_t = delta_t (one-step TD). gamma = lam = 1: A_t = sum of future rewards - V_t.
    r = [1, 2], V = [0.5, 1.5]: lam 0 -> delta_1 = 2 - 1.5 = 0.5, delta_0 = 1 + 1.5 - 0.5 = 2;
    lam 1 -> A_1 = 2 - 1.5 = 0.5, A_0 = 1 + 2 - 0.5 = 2.5. Outputs carry no gradient."""
    rewards = f64([[1.0, 2.0]])
    values = f64([[0.5, 1.5]]).requires_grad_()
    mask = torch.ones(1, 2, dtype=torch.bool)
    td, _ = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.0)
    assert_values(td, [[2.0, 0.5]])
    monte_carlo, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert_values(monte_carlo, [[2.5, 0.5]])
    assert_values(returns, [[3.0, 2.0]])
    assert not monte_carlo.requires_grad and not returns.requires_grad


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        gae_advantages(f64([[0.0, 1.0]]), f64([[0.0]]), f64([[1.0, 1.0]]), gamma=1.0, lam=1.0)


def test_masked_mean_and_var():
    """x = [[1, 2], [3, 1000]], mask [[1, 1], [1, 0]]: kept 1, 2, 3 -> mean 2;
    biased var (1 + 0 + 1)/3 = 0.6666667, unbiased 2/2 = 1. Row means (dim=1): [1.5, 3].
    An inf in the padding changes nothing."""
    x = f64([[1.0, 2.0], [3.0, math.inf]])
    mask = f64([[1, 1], [1, 0]])
    assert_values(masked_mean(x, mask), 2.0)
    assert_values(masked_mean(x, mask, dim=1), [1.5, 3.0])
    assert_values(masked_var(x, mask), 2.0 / 3.0)
    assert_values(masked_var(x, mask, unbiased=True), 1.0)


def test_masked_whiten_shifting_the_mean():
    """x = [1, 2, 3, pad 10]: mean 2, biased var 2/3, rsqrt(2/3 + 1e-8) = 1.2247449
    (sqrt(3/2); the 1e-8 moves the 9th digit). (x - 2) * 1.2247449 = [-1.2247449, 0, 1.2247449],
    padding 0. (The unbiased variance 1 would give [-1, 0, 1].)"""
    x = f64([[1.0, 2.0, 3.0, 10.0]])
    mask = f64([[1, 1, 1, 0]])
    scale = 1.224744871391589
    assert_values(masked_whiten(x, mask), [[-scale, 0.0, scale, 0.0]])


def test_masked_whiten_keeping_the_mean():
    """Same x with shift_mean=False: the mean 2 is added back:
    [2 - 1.2247449, 2, 2 + 1.2247449] = [0.7752551, 2, 3.2247449], padding 0."""
    x = f64([[1.0, 2.0, 3.0, 10.0]])
    mask = f64([[1, 1, 1, 0]])
    scale = 1.224744871391589
    assert_values(masked_whiten(x, mask, shift_mean=False), [[2.0 - scale, 2.0, 2.0 + scale, 0.0]])


def test_rloo_on_groups_by_hand():
    """k = 4. Group 1 scores [1, 2, 3, 6], sum 12; leave-one-out means (12 - s)/3:
    11/3, 10/3, 3, 2 -> advantages 1 - 11/3 = -8/3, 2 - 10/3 = -4/3, 0, 6 - 2 = 4.
    Group 2 [0, 0, 0, 4], sum 4: means 4/3, 4/3, 4/3, 0 -> [-4/3, -4/3, -4/3, 4]."""
    scores = f64([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    assert_values(
        rloo_advantages(scores, k=4),
        [-8 / 3, -4 / 3, 0.0, 4.0, -4 / 3, -4 / 3, -4 / 3, 4.0],
    )


def test_grpo_on_a_group_by_hand():
    """k = 4, scores [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], squares 4 + 1 + 0 + 9 = 14,
    unbiased std sqrt(14/3) = 2.1602469; + eps 1e-4 = 2.1603469.
    -2/2.1603469 = -0.9257772, -1/2.1603469 = -0.4628886, 0, 3/2.1603469 = 1.3886659.
    (The biased std sqrt(14/4) = 1.8708287 would give -1.069, ... instead.)
    Second group [5, 5, 5, 5]: all deviations 0 -> 0, not nan.
    scale_by_std=False: just the deviations."""
    scores = f64([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    assert_values(
        grpo_advantages(scores, k=4),
        [-0.9257772446135025, -0.46288862230675126, 0.0, 1.3886658669202538, 0, 0, 0, 0],
    )
    assert_values(
        grpo_advantages(scores, k=4, scale_by_std=False), [-2.0, -1.0, 0.0, 3.0, 0, 0, 0, 0]
    )


def test_group_advantages_reject_bad_groups():
    with pytest.raises(ValueError, match="groups of k=3"):
        rloo_advantages(f64([1.0, 2.0, 3.0, 4.0]), k=3)
    with pytest.raises(ValueError, match="k must be >= 2"):
        grpo_advantages(f64([1.0, 2.0]), k=1)
