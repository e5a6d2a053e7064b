"""The set-up every training recipe repeats before its loop: a checked batch plan, the
optimizer and scheduler handed to accelerate, and resuming from the last checkpoint."""

from __future__ import annotations

import torch

from rlhfkit.config import TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.training.batches import BatchPlan
from rlhfkit.training.checkpoint import latest_checkpoint, load_checkpoint
from rlhfkit.training.optim import build_optimizer, build_scheduler, fused_adamw_supported
from rlhfkit.training.run import Run


def checked_plan(run: Run, plan: BatchPlan, unit: str = "examples") -> BatchPlan:
    """Fail clearly when the data is smaller than one global batch; say what each epoch drops."""
    try:
        plan.check()
    except ValueError as err:
        raise ConfigError(f"train_data: {err}") from None
    if plan.dropped_per_epoch:
        run.print(
            f"each epoch leaves out the last {plan.dropped_per_epoch} {unit} of its shuffled "
            "order (fewer than one global batch)"
        )
    return plan


def prepare_optimization(run: Run, model: torch.nn.Module, config: TrainConfig, total_steps: int):
    """AdamW + warm-up/decay schedule; model and optimizer prepared by accelerate.

    The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step it
    once per process) and registered so that checkpoints carry its state.

    Returns:
        (model, optimizer, scheduler)
    """
    optimizer = build_optimizer(
        model,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=config.adam_betas,
        fused=fused_adamw_supported(run.accelerator),
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_ratio=config.warmup_ratio,
        schedule=config.lr_scheduler,
    )
    model, optimizer = run.accelerator.prepare(model, optimizer)
    run.accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler


def resume_or_start(run: Run, config: TrainConfig, totals: dict) -> tuple[int, dict]:
    """With `resume=true` and a checkpoint: restore it, return (its step, its totals) and cut
    metrics.jsonl back to that step. Otherwise (0, `totals`) and a fresh metrics log."""
    last = latest_checkpoint(run.checkpoints)
    if config.resume and last is not None:
        state = load_checkpoint(run.accelerator, last)
        run.truncate_metrics(state["step"])
        run.print(f"resumed from {last} at step {state['step']}")
        return state["step"], state["totals"]
    if config.resume:
        run.print("resume=true but no checkpoint found: starting from scratch")
    run.reset_metrics()
    return 0, totals
