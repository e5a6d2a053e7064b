"""Shared-prompt rows: one prompt followed by several responses, each seeing only the prompt.

A pair (or a ranking) repeats its prompt once per response when every response gets its own
row. Writing the prompt once, ``prompt + y_1 + ... + y_K``, with an attention mask that lets
each response see the prompt and itself but not the other responses, and positions that restart
at ``len(prompt)`` for every response, gives every response token exactly the hidden states of
its own row, at ``len(prompt) * (K - 1)`` fewer tokens per prompt. The reward model
(`reward_model.pack_responses`) and DPO (`recipes.dpo.pair_batch`) use it.

The mask is a dense (B, 1, T, T) tensor, so the attention kernel must accept a 4-D mask:
sdpa, flex and eager do; flash-attention's kernels do not (`mask_dtype` returns None for them).
And it replaces the mask the model would build, so a model that attends within a sliding window
(Mistral v0.1, Gemma 2 and 3, Phi-3) would see past its window: where rows can be longer than
the window, the layout is not used (`unsupported_reason`).
"""

from __future__ import annotations

import torch


def mask_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """dtype of the 4-D mask `model`'s attention takes; None if it takes none.

    `torch.bool` for sdpa and flex attention (True = attend), the parameters' dtype for eager
    attention (an additive mask), None for flash-attention kernels.
    """
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation in ("sdpa", "flex_attention"):
        return torch.bool
    if implementation == "eager":
        return next(p for p in model.parameters() if p.is_floating_point()).dtype
    return None


def sliding_window(config) -> int | None:
    """The window a model's attention is limited to, if it applies one (Mistral v0.1, Gemma 2
    and 3 on their sliding layers, Phi-3); None otherwise (Qwen2 and Qwen3 carry a
    `sliding_window` they use only with `use_sliding_window`)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def unsupported_reason(model: torch.nn.Module, max_length: int) -> str | None:
    """Why shared-prompt rows cannot stand for ordinary rows of up to `max_length` tokens on
    `model`, or None when they can."""
    if mask_dtype(model) is None:
        return "this attention kernel takes no 4-D mask"
    window = sliding_window(model.config)
    if window is not None and window < max_length:
        return (
            f"the model attends within a sliding window of {window} tokens, which the 4-D mask "
            f"would lift, and rows reach max_length={max_length}"
        )
    return None


def shared_prompt_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Attention mask for rows `prompt + y_1 + ... + y_K + padding`.

    Args:
        segments: (B, T) 0 on prompt tokens, i on tokens of response i (1-based), -1 on padding.
        dtype: `torch.bool` for a boolean mask (sdpa, flex), else the model's compute dtype for
            an additive mask (eager attention adds it to the scores).

    Returns:
        (B, 1, T, T): where query t may attend to key s (s <= t, and s is a prompt token or in
        t's own segment): True / 0; elsewhere False / the dtype's minimum. Padding attends to
        padding (never read).
    """
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    to_prompt = (segments == 0)[:, None, :]  # (B, 1, T)
    allowed = causal & (same | to_prompt)  # (B, T, T)
    if dtype == torch.bool:
        return allowed[:, None]  # (B, 1, T, T), True = attend (sdpa's convention)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (B, 1, T, T)


__all__ = ["mask_dtype", "shared_prompt_mask", "sliding_window", "unsupported_reason"]
