"""PPO's clipped surrogate policy loss and clipped value loss, as used for RLHF.

Policy (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), per response token,
with ``rho = exp(log pi - log pi_old)`` and advantage ``A``::

    loss = mean_tokens max(-A rho, -A clip(rho, 1 - eps, 1 + eps))

i.e. the negative of the clipped (pessimistic) surrogate objective. The mean is over all response
tokens of the batch (a token-level mean, as OpenAI's lm-human-preferences and TRL's PPO), not a
mean of per-sequence means.

Value (as in OpenAI baselines' PPO2 and lm-human-preferences)::

    V_clip = V_old + clip(V - V_old, -eps_v, eps_v)
    loss   = 0.5 * mean_tokens max((V - R)^2, (V_clip - R)^2)

Metrics (detached 0-dim tensors):

* ``clipfrac`` -- fraction of tokens where the clipped term is the active (strictly larger) one,
  i.e. where the gradient is cut;
* ``approx_kl`` -- ``mean_tokens 0.5 (log pi - log pi_old)^2``, the k2 estimator of
  KL(pi_old || pi) used by OpenAI baselines and TRL for early-stopping diagnostics;
* ``ratio_mean`` -- mean of ``rho``;
* ``vf_clipfrac`` -- fraction of tokens where the clipped value term is the active one.

The reward PPO maximises is the KL-shaped one of Ziegler et al. 2019:
``-kl_coef * KL_t`` on every response token plus the sequence score on the last one
(``kl_shaped_rewards``).

Advantages, returns, old log-probs and old values are targets: they are detached here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhfkit.losses.masked import masked_mean, masked_var


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) != 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {described}")


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_range: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate policy loss.

    Args:
        logprobs: Log-probs of the sampled tokens under the current policy, shape (B, T).
        old_logprobs: Log-probs of the same tokens under the policy that sampled them, (B, T).
        advantages: Per-token advantages, shape (B, T).
        mask: 1 on response tokens, 0 on padding, shape (B, T).
        clip_range: The clipping ``eps`` of the probability ratio.

    Returns:
        ``(loss, metrics)``: the scalar loss, and detached ``clipfrac``, ``approx_kl`` and
        ``ratio_mean``.
    """
    _check_same_shape(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask
    )
    advantages = advantages.detach()  # (B, T)
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped_loss = -advantages * ratio  # (B, T)
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)  # ()

    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped_loss > unclipped_loss).to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, metrics


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range_value: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value (critic) loss.

    Args:
        values: Current critic values, shape (B, T).
        old_values: Critic values at rollout time, shape (B, T).
        returns: Regression targets (GAE returns), shape (B, T).
        mask: 1 on response tokens, 0 on padding, shape (B, T).
        clip_range_value: How far ``values`` may move from ``old_values`` before the clipped
            term takes over.

    Returns:
        ``(loss, metrics)``: the scalar loss and detached ``vf_clipfrac``.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    old_values = old_values.detach()  # (B, T)
    returns = returns.detach()  # (B, T)
    clipped_values = old_values + torch.clamp(
        values - old_values, -clip_range_value, clip_range_value
    )  # (B, T)
    unclipped_error = (values - returns) ** 2  # (B, T)
    clipped_error = (clipped_values - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)  # ()

    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean((clipped_error > unclipped_error).to(values.dtype), mask),
        }
    return loss, metrics


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the returns' variance the critic explains: ``1 - Var(R - V) / Var(R)``.

    Args:
        values: Critic values, shape (B, T).
        returns: Returns, shape (B, T).
        mask: 1 on response tokens, 0 on padding, shape (B, T).

    Returns:
        A detached 0-dim tensor: 1 for a perfect critic, 0 for one that predicts the mean, < 0
        for a worse one. Biased variances over the masked tokens; NaN or -inf if the returns are
        constant.
    """
    _check_same_shape(values=values, returns=returns, mask=mask)
    with torch.no_grad():
        return 1.0 - masked_var(returns - values, mask) / masked_var(returns, mask)


def kl_shaped_rewards(scores: Tensor, kl: Tensor, mask: Tensor, *, kl_coef: float) -> Tensor:
    """Per-token rewards: ``-kl_coef * kl`` on each response token, plus the score on the last.

    Args:
        scores: Sequence-level rewards (e.g. the reward model's), shape (B,).
        kl: Per-token KL estimate (``kl_penalty``), shape (B, T).
        mask: 1 on response tokens, 0 on padding, shape (B, T). A row with no response token
            gets no score.
        kl_coef: The KL coefficient beta (``AdaptiveKLController.value``).

    Returns:
        Rewards, shape (B, T), detached, 0 at masked positions.
    """
    _check_same_shape(kl=kl, mask=mask)
    if scores.shape != kl.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must have shape ({kl.shape[0]},)")
    keep = mask.bool()  # (B, T)
    rewards = torch.where(keep, -kl_coef * kl.detach(), torch.zeros_like(kl))  # (B, T)
    num_tokens = keep.shape[1]
    # argmax returns the first maximum, so flipping finds the last response token.
    last_token = num_tokens - 1 - keep.flip(1).to(torch.uint8).argmax(dim=1)  # (B,)
    has_response = keep.any(dim=1)  # (B,)
    score = torch.where(has_response, scores.detach().to(rewards.dtype), 0.0)  # (B,)
    return rewards.scatter_add(1, last_token[:, None], score[:, None])  # (B, T)


__all__ = ["explained_variance", "kl_shaped_rewards", "ppo_policy_loss", "ppo_value_loss"]
