"""Small pieces of an optimizer step shared by the recipes' loops."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from accelerate import Accelerator


def sync_context(accelerator: Accelerator, model: torch.nn.Module, micro: int, num_micro: int):
    """Skip DDP's gradient all-reduce on every micro-batch but the last of an optimizer step."""
    if micro < num_micro - 1 and accelerator.num_processes > 1:
        return accelerator.no_sync(model)
    return nullcontext()


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    max_grad_norm: float,
) -> tuple[float, float]:
    """Clip, step, schedule, zero; returns the gradient norm before clipping and the learning
    rate this update used (the scheduler has moved on to the next one when this returns)."""
    lr = scheduler.get_last_lr()[0]
    if max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:
        # The global L2 norm of whatever gradients exist (0 when none do, e.g. every
        # parameter frozen or no backward this step); fp16's loss scale taken out first.
        accelerator.unscale_gradients()
        grad_norm = torch.nn.utils.get_total_norm(
            [p.grad for p in model.parameters() if p.grad is not None]
        )
    optimizer.step()
    # fp16: the loss scaler skips a step whose gradients overflowed; the schedule waits too (as
    # accelerate's own scheduler wrapper does), so step s's rate stays step s's.
    if not accelerator.optimizer_step_was_skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


def global_sum(accelerator: Accelerator, value: torch.Tensor | float) -> float:
    """Sum a scalar over processes."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=accelerator.device).reshape(1)
    return float(accelerator.reduce(tensor, reduction="sum").item())
