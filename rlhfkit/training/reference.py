"""The frozen reference policy of DPO and PPO, without a second copy of the model where possible.

Three sources give `log π_ref(x_t | x_<t)`:

* ``adapters-disabled`` -- the policy is a LoRA (peft) model: its base weights never change, so
  the reference is the same module run with the adapters switched off. No extra memory.
* ``initial-policy`` -- full fine-tuning before the first optimizer step: the policy *is* the
  reference, so precomputing reference log-probs needs no copy either. Valid only until the
  first update; the recipe uses it for the one precompute pass at step 0.
* ``frozen-copy`` -- a second model loaded with gradients off (a different `reference` path, or
  full fine-tuning with reference log-probs computed on the fly).

Every source is used the same way: ``with reference_logprobs(...) as ref: ref(**batch)`` returns
``{"logprobs": (B, T)}`` under ``torch.no_grad()``; a frozen copy is released when the block ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, nullcontext

import torch

from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.logprobs import TokenLogprobs

RefFn = Callable[..., dict[str, torch.Tensor]]


def has_adapters(policy: TokenLogprobs) -> bool:
    """True if the wrapped LM is a peft model whose adapters can be switched off."""
    return hasattr(policy.lm, "disable_adapter")


def load_frozen_reference(
    path: str,
    *,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    device: torch.device | str = "cpu",
) -> TokenLogprobs:
    """A frozen copy of the causal LM at `path` (eval mode, no gradients), wrapped for log-probs."""
    lm = load_causal_lm(
        path, dtype=dtype, trainable=False, attn_implementation=attn_implementation
    ).to(device)
    return TokenLogprobs(lm).eval()


def _no_grad_call(module: TokenLogprobs, autocast: Callable[[], ContextManager]) -> RefFn:
    def call(**batch: torch.Tensor) -> dict[str, torch.Tensor]:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), autocast():
                return module(**batch)
        finally:
            module.train(was_training)

    return call


def _adapters_off_call(policy: TokenLogprobs, autocast: Callable[[], ContextManager]) -> RefFn:
    base_call = _no_grad_call(policy, autocast)

    def call(**batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with policy.lm.disable_adapter():
            return base_call(**batch)

    return call


def reference_kind(policy: TokenLogprobs, reference: str, *, initial: bool) -> str:
    """Which source `reference_logprobs` will use (see the module docstring).

    Args:
        policy: The (unwrapped) policy.
        reference: Path of a separate reference model; "" = the starting policy.
        initial: True if the policy has not been updated yet (step 0, not resumed).
    """
    if reference:
        return "frozen-copy"
    if has_adapters(policy):
        return "adapters-disabled"
    return "initial-policy" if initial else "frozen-copy"


@contextmanager
def reference_logprobs(
    policy: TokenLogprobs,
    *,
    model_path: str,
    reference: str = "",
    initial: bool = False,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    autocast: Callable[[], ContextManager] = nullcontext,
) -> Iterator[RefFn]:
    """Yield a function `(**batch) -> {"logprobs": (B, T)}` of the reference policy.

    Args:
        policy: The unwrapped policy (`accelerator.unwrap_model(model)`).
        model_path: The starting model (the reference when `reference` is empty).
        reference: A separate reference model path, or "" for the starting model.
        initial: The policy still holds the starting weights (allows `initial-policy`).
        dtype: Weight dtype of a frozen copy.
        attn_implementation: Attention kernel of a frozen copy.
        autocast: The policy's mixed-precision context (`accelerator.autocast`): a frozen copy
            is not prepared by accelerate, and computed in fp32 next to a bf16-autocast policy
            its log-probs differ from the starting policy's (a non-zero KL at step 0).
    """
    kind = reference_kind(policy, reference, initial=initial)
    if kind == "adapters-disabled":
        yield _adapters_off_call(policy, autocast)
        return
    if kind == "initial-policy":
        yield _no_grad_call(policy, autocast)
        return
    device = next(policy.parameters()).device
    frozen = load_frozen_reference(
        reference or model_path,
        dtype=dtype,
        attn_implementation=attn_implementation,
        device=device,
    )
    try:
        yield _no_grad_call(frozen, autocast)
    finally:
        del frozen
