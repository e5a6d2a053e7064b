"""The set-up every training recipe repeats before its loop: a checked batch plan, the
optimizer and scheduler handed to accelerate, and resuming from the last checkpoint.

Resuming is checked, never guessed: `resume=true` continues only from a checkpoint whose config
record (`checkpoint.config_record`) matches the current config, and refuses any other with a
one-line error naming the keys that differ; a fresh run (`resume=false`, or `resume=true` with
no checkpoint) first removes the checkpoints an earlier run left in `OUT/checkpoints`, so none
of them can be picked up by a later resume.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import yaml

from rlhfkit.config import TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.training.batches import BatchPlan
from rlhfkit.training.checkpoint import (
    DATA_FIELD,
    LOGS_FIELD,
    PROCESSES_FIELD,
    RECORD_FIELD,
    checkpoint_step,
    config_differences,
    config_record,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    remove_checkpoints,
)
from rlhfkit.training.optim import build_optimizer, build_scheduler, fused_adamw_supported
from rlhfkit.training.run import Run


def checked_plan(run: Run, plan: BatchPlan, unit: str = "examples") -> BatchPlan:
    """Fail clearly when the data is smaller than one global batch; say what each epoch drops.
    Records what checkpoints store of the data (`data_record`) on `run`."""
    try:
        plan.check(unit)
    except ValueError as err:
        raise ConfigError(f"train_data: {err}") from None
    run.data_record = data_record(run.config.train_data, plan.num_examples, unit)
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
    """With `resume=true` and a checkpoint of this config: restore it, return (its step, its
    totals) and cut metrics.jsonl back to that step. Otherwise (0, `totals`), a fresh metrics
    log and no checkpoints of an earlier run (see `resume_state`)."""
    state = resume_state(run, config)
    if state is None:
        return 0, totals
    return state["step"], state["totals"]


def resume_state(run: Run, config: TrainConfig) -> dict | None:
    """Restore the last checkpoint when `config.resume` asks for it; return its trainer state.

    Resuming: the latest checkpoint must have been written with this config (its trainer
    state's config record against `current_record(run)`, from the config in memory), else a
    `ConfigError` names the keys that differ, before anything is loaded or written: the
    config.yaml of the run in OUT stays as it was. Then `OUT/config.yaml` is written, model,
    optimizer, scheduler and RNG states are restored and metrics.jsonl is cut back to the
    checkpoint's step, so the run ends as an uninterrupted one would.

    Starting fresh (None is returned): `OUT/config.yaml` is written, the checkpoints of an
    earlier run in `OUT/checkpoints` are removed (they are what a later `resume=true` would
    continue from) and metrics.jsonl is reset.
    """
    last = latest_checkpoint(run.checkpoints)
    if config.resume and last is not None:
        check_resumable(last, current_record(run))
        check_process_count(last, run.accelerator.num_processes)
        check_same_data(last, run.data_record)
        run.write_config()
        state = load_checkpoint(run.accelerator, last)
        run.truncate_metrics(state["step"], state.get(LOGS_FIELD, {}).get("metrics.jsonl"))
        run.print(f"resumed from {last} at step {state['step']}")
        return state
    if config.resume:
        run.print("resume=true but no checkpoint found: starting from scratch")
    run.write_config()
    if run.is_main:
        removed = remove_checkpoints(run.checkpoints)
        if removed:
            run.print(
                f"fresh run: removed {len(removed)} checkpoint(s) of an earlier run from "
                f"{run.checkpoints}: {', '.join(removed)}"
            )
    run.accelerator.wait_for_everyone()
    run.reset_metrics()
    return None


def current_record(run: Run) -> dict:
    """The config record of `run` as `save_checkpoint` will store it: from the config in memory,
    through the same YAML round trip as `OUT/config.yaml` (tuples become lists), so that it
    equals the record read back from the file the run writes once this check has passed."""
    resolved = yaml.safe_load(yaml.safe_dump(run.resolved_config(), sort_keys=False))
    return config_record(resolved)


def data_record(spec: str, examples: int, unit: str) -> dict[str, Any]:
    """What a checkpoint stores of its training data: the number of examples the batches are
    drawn from and, for a local file, the sha256 of its bytes (a hub dataset or a directory is
    known by its name only, in the config record)."""
    record: dict[str, Any] = {"examples": examples, "unit": unit}
    path = Path(spec)
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        record["sha256"] = digest.hexdigest()
    return record


def check_same_data(checkpoint: Path, current: dict[str, Any] | None) -> None:
    """Raise a one-line `ConfigError` when the training data changed since `checkpoint` was
    written (same `train_data` path, other content): step s would then read other examples and
    an `epochs` run would have another length, so continuing is not the run it claims to be.
    Checkpoints of an older rlhfkit record no data and are not checked."""
    saved = read_trainer_state(checkpoint).get(DATA_FIELD)
    if not saved or not current:
        return
    fresh = "restore it to continue, or start a fresh run with resume=false"
    if saved.get("examples") != current["examples"]:
        raise ConfigError(
            f"train_data: {checkpoint} was written for {saved.get('examples')} training "
            f"{current['unit']} and the data now gives {current['examples']}; {fresh}"
        )
    if "sha256" in saved and "sha256" in current and saved["sha256"] != current["sha256"]:
        raise ConfigError(
            f"train_data: its content changed since {checkpoint} was written (same number of "
            f"{current['unit']}, other bytes); {fresh}"
        )


def check_process_count(checkpoint: Path, num_processes: int) -> None:
    """Raise a one-line `ConfigError` when `checkpoint` was written by another number of
    processes. Each process's RNG state (PPO samples its responses with it) is
    restored from its own file, so another count cannot continue the same random streams; and
    for sft, rm and dpo a step's global batch is batch_size x grad_accum x processes, so step s
    would also read other examples (and an `epochs` run would have another length).
    Checkpoints of an older rlhfkit record no count and are not checked."""
    saved = read_trainer_state(checkpoint).get(PROCESSES_FIELD)
    if saved is not None and saved != num_processes:
        raise ConfigError(
            f"resume: {checkpoint} was written by {saved} process(es) and this run has "
            f"{num_processes}; each process's random state is restored from its own file (and "
            "the global batch of sft, rm and dpo is batch_size x grad_accum x processes), so "
            f"relaunch with {saved} process(es) to continue it, or start a fresh run with "
            "resume=false (it removes these checkpoints)"
        )


def check_resumable(checkpoint: Path, current: dict | None) -> None:
    """Raise a one-line `ConfigError` unless the config record saved in `checkpoint` allows the
    current config record `current` to continue from it (`config_differences`)."""
    saved = read_trainer_state(checkpoint).get(RECORD_FIELD)
    fresh = "start a fresh run with resume=false (it removes these checkpoints)"
    if saved is None or current is None:
        raise ConfigError(
            f"resume: {checkpoint} records no config (written by an older rlhfkit), so it cannot "
            f"be checked against this run; {fresh}"
        )
    differences = config_differences(saved, current, checkpoint_step(checkpoint))
    if differences:
        raise ConfigError(
            f"resume: {checkpoint} was written with another config ({'; '.join(differences)}); "
            f"rerun with its values to continue it, or {fresh}"
        )
