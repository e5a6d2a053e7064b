"""Per-token estimators of KL(pi || pi_ref) from log-probs of sampled tokens.

A token ``y_t`` sampled from the policy ``pi`` gives ``d = log pi(y_t) - log pi_ref(y_t)``. Three
single-sample estimators of ``KL(pi || pi_ref) = E_pi[d]`` (Schulman 2020, "Approximating KL
divergence", http://joschu.net/blog/kl-approx.html), with ``r = pi_ref / pi = exp(-d)``:

* ``k1 = d`` -- unbiased, high variance, can be negative for a single token. This is the penalty
  of Ziegler et al. 2019 and InstructGPT, and the default.
* ``k2 = 0.5 d^2`` -- biased (low bias when pi and pi_ref are close), always >= 0.
* ``k3 = (r - 1) - log r = exp(-d) - 1 + d`` -- unbiased and always >= 0 (``log r <= r - 1``);
  computed with ``expm1`` so that it stays exact for small ``d``.

Estimators are registered with ``@register_kl_estimator``; ``kl_penalty`` looks them up by name.
The functions do not mask: the caller multiplies by the response mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlhfkit.losses.registry import Registry

KLEstimator = Callable[[Tensor, Tensor], Tensor]

KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


def register_kl_estimator(*names: str) -> Callable[[KLEstimator], KLEstimator]:
    """Decorator that registers ``fn(logprobs (B,T), ref_logprobs (B,T)) -> (B,T)`` by name."""
    return KL_ESTIMATORS.decorator(*names)


def available_kl_estimators() -> list[str]:
    """The registered estimator names, sorted."""
    return KL_ESTIMATORS.names()


@register_kl_estimator("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k1 = log pi - log pi_ref``; shapes (B, T) -> (B, T)."""
    return logprobs - ref_logprobs  # (B, T)


@register_kl_estimator("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k2 = 0.5 (log pi - log pi_ref)^2``; shapes (B, T) -> (B, T)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2  # (B, T)


@register_kl_estimator("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k3 = exp(log pi_ref - log pi) - 1 - (log pi_ref - log pi)``; shapes (B, T) -> (B, T)."""
    log_ratio = ref_logprobs - logprobs  # (B, T)  log r
    return torch.expm1(log_ratio) - log_ratio  # (B, T)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token KL estimate between the policy and the reference at the sampled tokens.

    Args:
        logprobs: Policy log-probs of the sampled tokens, shape (B, T).
        ref_logprobs: Reference log-probs of the same tokens, shape (B, T).
        estimator: ``"k1"``, ``"k2"``, ``"k3"`` or another registered name.

    Returns:
        The per-token estimate, shape (B, T), unmasked.

    Raises:
        ValueError: For an unknown estimator (the message lists the registered ones) or
            mismatched shapes.
    """
    estimate = KL_ESTIMATORS.lookup(estimator)
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} "
            "must have the same shape"
        )
    return estimate(logprobs, ref_logprobs)  # (B, T)


__all__ = [
    "KL_ESTIMATORS",
    "KLEstimator",
    "available_kl_estimators",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "register_kl_estimator",
]
