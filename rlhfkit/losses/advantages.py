"""Advantage estimators: GAE with a learned critic, and the critic-free RLOO and GRPO baselines.

Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
Using Generalized Advantage Estimation"), per response token ``t``::

    delta_t = r_t + gamma V_{t+1} - V_t
    A_t     = delta_t + gamma lam A_{t+1}
    R_t     = A_t + V_t          (the critic's regression target)

computed backwards in time, vectorised over the batch. The episode ends at the last response
token: a position where ``mask`` is 0 has value 0 and no advantage, so nothing bootstraps from
padding (``V_{T}`` past the last token is 0). ``mask`` is expected to be one contiguous block per
row (left or right padding); a hole inside a row ends the episode there.

RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
from Human Feedback in LLMs"; Kool et al. 2019): with K samples per prompt, each sample's
baseline is the mean score of the other K - 1::

    A_i = s_i - (sum_j s_j - s_i) / (K - 1)

GRPO (Shao et al. 2024, "DeepSeekMath"), outcome supervision: the group-normalised score::

    A_i = (s_i - mean(s)) / (std(s) + eps)

with the *unbiased* (Bessel-corrected, ``n - 1``) standard deviation, as DeepSeekMath's reference
and TRL compute it, and ``eps = 1e-4``. ``scale_by_std=False`` drops the division (Dr. GRPO, Liu
et al. 2025).

Scores are grouped as K consecutive samples per prompt: ``[p0s0, p0s1, ..., p0s(K-1), p1s0, ...]``.

Every result here is a regression or policy-gradient target, so it is returned detached.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns over padded response tokens.

    Args:
        rewards: Per-token rewards, shape (B, T).
        values: Critic values of the states before each token, shape (B, T).
        mask: 1 on response tokens, 0 on padding, shape (B, T).
        gamma: Discount factor.
        lam: GAE lambda (0: one-step TD, 1: Monte Carlo minus the value).

    Returns:
        ``(advantages, returns)``, each shape (B, T), detached, 0 at masked positions;
        ``returns = advantages + values`` on the response tokens.
    """
    if not rewards.shape == values.shape == mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must all have the same shape (B, T)"
        )
    keep = mask.bool()  # (B, T)
    zeros = torch.zeros_like(values)
    values = torch.where(keep, values.detach(), zeros)  # (B, T)
    rewards = torch.where(keep, rewards.detach().to(values.dtype), zeros)  # (B, T)

    num_tokens = rewards.shape[1]
    next_value = zeros[:, 0]  # (B,)  V past the end is 0
    next_advantage = zeros[:, 0]  # (B,)
    advantages_reversed = []
    for t in reversed(range(num_tokens)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage  # (B,)
        advantage = torch.where(keep[:, t], advantage, zeros[:, 0])  # (B,)
        advantages_reversed.append(advantage)
        next_value = values[:, t]  # (B,)  already 0 on padding
        next_advantage = advantage  # (B,)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = torch.where(keep, advantages + values, zeros)  # (B, T)
    return advantages, returns


def _group_scores(scores: Tensor, k: int, minimum_k: int) -> Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape (B*K,), got {tuple(scores.shape)}")
    if k < minimum_k:
        raise ValueError(f"k must be >= {minimum_k}, got {k}")
    if scores.numel() % k != 0:
        raise ValueError(f"{scores.numel()} scores cannot be split into groups of k={k}")
    return scores.detach().reshape(-1, k)  # (B, K)


def rloo_advantages(scores: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out advantages.

    Args:
        scores: Sequence-level scores, shape (B*K,), K consecutive samples per prompt.
        k: Samples per prompt, >= 2.

    Returns:
        Each score minus the mean of the other K - 1 scores of its group, shape (B*K,), detached.
    """
    grouped = _group_scores(scores, k, minimum_k=2)  # (B, K)
    leave_one_out_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)  # (B, K)
    return (grouped - leave_one_out_mean).reshape(-1)  # (B*K,)


def grpo_advantages(
    scores: Tensor, k: int, *, scale_by_std: bool = True, eps: float = 1e-4
) -> Tensor:
    """GRPO group-relative advantages.

    Args:
        scores: Sequence-level scores, shape (B*K,), K consecutive samples per prompt.
        k: Samples per prompt, >= 2.
        scale_by_std: Divide by the group's unbiased standard deviation plus ``eps``.
        eps: Keeps the division finite for a group whose scores are all equal.

    Returns:
        ``(s - group mean) / (group std + eps)``, shape (B*K,), detached.
    """
    grouped = _group_scores(scores, k, minimum_k=2)  # (B, K)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # (B, K)
    if scale_by_std:
        group_std = grouped.std(dim=1, keepdim=True, correction=1)  # (B, 1)
        advantages = advantages / (group_std + eps)  # (B, K)
    return advantages.reshape(-1)  # (B*K,)


__all__ = ["gae_advantages", "grpo_advantages", "rloo_advantages"]
