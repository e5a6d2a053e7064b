"""Entropy of the policy's next-token distribution, from logits.

``H(p) = -sum_v p_v log p_v`` with ``p = softmax(z)``. Since ``log p_v = z_v - logsumexp(z)``,
``H = logsumexp(z) - sum_v p_v z_v``, which needs no ``log`` of a probability that may underflow
to 0 and stays finite for logits of any size (including ``-inf`` for masked-out tokens, whose
probability is exactly 0). A PPO diagnostic, logged every step (a collapsing entropy signals
mode collapse); `rlhfkit ppo` adds no entropy bonus to its loss, as InstructGPT and TRL add none.
"""

from __future__ import annotations

import torch
from torch import Tensor


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` along the last dimension.

    Args:
        logits: Unnormalised log-probabilities, shape (..., V), e.g. (B, T, V).

    Returns:
        Entropies in nats, shape (...), e.g. (B, T). Computed in ``logits``' dtype; upcast
        bf16 logits first for an accurate value.
    """
    probs = torch.softmax(logits, dim=-1)  # (..., V)
    # A token with p == 0 (z == -inf) contributes 0; 0 * -inf would be nan, in the value or in
    # its gradient, so its logit is replaced before the product.
    finite_logits = torch.where(probs > 0, logits, torch.zeros_like(logits))  # (..., V)
    return torch.logsumexp(logits, dim=-1) - (probs * finite_logits).sum(dim=-1)  # (...)


__all__ = ["entropy_from_logits"]
