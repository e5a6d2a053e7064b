"""Reading a decoder's last hidden state at a few positions: the last layer works only there.

A reward model reads the backbone's output at one token per response. Every layer but the last
must run at every position, since the last layer's attention reads their keys and values; in the
last layer, though, only the read-out rows need a query, an attention output and an MLP. Those
modules act on each position alone, so `last_layer_at` runs them on the read-out rows only: a
forward pre-hook gathers the rows ``(B, T, d) -> (N, d)``, a forward hook scatters the result
back into zeros of the full shape ``(N, d') -> (B, T, d')``. The read-out rows come out exact;
every other row of the last layer's output is wrong (zero query, attention output and MLP) and
must not be read. The saving is the last layer's q, o and MLP work at the other positions:

    saved ≈ (d² + d² + 3·d·d_ff) / (d² + 2·d·d_kv + d² + 3·d·d_ff) / L  of the linear work,

about 10% for the `small` preset (L = 8, d = d_kv = 512, d_ff = 1408), 4% for `qwen2-0.5b`
(L = 24, d = 896, d_kv = 128, d_ff = 4864).

Only architectures whose last layer is known to have position-wise `self_attn.q_proj`,
`self_attn.o_proj` and `mlp` take this path (`SUPPORTED_MODEL_TYPES`); others, and a backbone
with gradient checkpointing on (its recomputation in backward would run without the hooks), run
in full. Works under LoRA (the hooks sit on peft's wrappers) and DDP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def readout_modules(backbone: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The position-wise modules of `backbone`'s last layer, or None if it is not supported."""
    config = getattr(backbone, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return None
    if _checkpointing(backbone):
        return None
    layers = getattr(backbone, "layers", None)
    if not layers:
        return None
    last = layers[-1]
    attention = getattr(last, "self_attn", None)
    modules = [getattr(attention, "q_proj", None), getattr(attention, "o_proj", None)]
    modules.append(getattr(last, "mlp", None))
    if any(not isinstance(module, torch.nn.Module) for module in modules):
        return None
    return modules


def _checkpointing(backbone: torch.nn.Module) -> bool:
    """Whether activation checkpointing is on (the property's name depends on the version)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if isinstance(getattr(type(backbone), name, None), property):
            return bool(getattr(backbone, name))
    return False


@contextlib.contextmanager
def last_layer_at(
    backbone: torch.nn.Module,
    rows: torch.Tensor,
    cols: torch.Tensor,
    length: int,
    *,
    enabled: bool = True,
) -> Iterator[bool]:
    """Within the block, `backbone`'s last layer computes q, o and MLP at (rows, cols) only.

    Args:
        backbone: The decoder (e.g. `LlamaModel`) called inside the block, on (B, T) inputs.
        rows: (N,) row of each position read out afterwards.
        cols: (N,) column of each position read out afterwards.
        length: T, the padded length of the rows passed to the backbone.
        enabled: False = a plain full forward (for comparison).

    Yields:
        Whether the shortcut is on (False for unsupported backbones: a full forward).
    """
    modules = readout_modules(backbone) if enabled else None
    if modules is None:
        yield False
        return
    # Unique flat positions: a position read twice must get its gradient once.
    flat = torch.unique(rows.to(torch.long) * length + cols.to(torch.long))  # (N',)
    shapes: dict[int, tuple[int, int]] = {}

    def gather(module, args, kwargs):
        hidden = args[0]  # (B, T, d)
        batch, steps = hidden.shape[:2]
        if steps != length:
            raise RuntimeError(f"last_layer_at: expected length {length}, got {steps}")
        shapes[id(module)] = (batch, steps)
        picked = hidden.reshape(batch * steps, -1).index_select(0, flat.to(hidden.device))
        return (picked, *args[1:]), kwargs  # (N', d)

    def scatter(module, args, kwargs, output):
        batch, steps = shapes.pop(id(module))
        full = output.new_zeros(batch * steps, output.shape[-1])
        return full.index_copy(0, flat.to(output.device), output).view(batch, steps, -1)

    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(gather, with_kwargs=True))
            handles.append(module.register_forward_hook(scatter, with_kwargs=True))
        yield True
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["SUPPORTED_MODEL_TYPES", "last_layer_at", "readout_modules"]
