"""Resumable checkpoints, written atomically, and atomic export of the final model.

A checkpoint is `OUT/checkpoints/step-NNNNNNNN/`: accelerate's `save_state` (model, optimizer,
scheduler, every process's RNG states) plus `trainer_state.json` (the step, what the recipe
needs to continue, and the run's config record). It is written to a hidden temporary directory
and renamed into place only when complete, so an interrupted write never leaves a checkpoint
that looks valid.

The config record (`config_record`) is the part of the run's resolved config that decides the
training trajectory: every key except the bookkeeping ones in `BOOKKEEPING_KEYS`. `resume=true`
refuses a checkpoint whose record differs from the current config (`config_differences`), so
a checkpoint of another run or config left in the directory can never silently become the
start of this one; pruning (`save_checkpoint(keep=...)`) only counts the checkpoints this run
could have resumed from, so it never deletes the run's own in favour of a stranger's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator

from rlhfkit.atomic_dirs import replace_dir_atomically

STATE_FILE = "trainer_state.json"
RECORD_FIELD = "run_config"  # the config record's field in trainer_state.json
PROCESSES_FIELD = "num_processes"  # how many processes wrote the checkpoint
LOGS_FIELD = "log_bytes"  # byte length of each append-only log in OUT when it was saved
LOG_FILES = ("metrics.jsonl", "samples.jsonl")
DATA_FIELD = "train_data"  # what the training data was (`setup.data_record`)

# Keys that may change between a run and its resumption without changing what it computes:
# where it writes, what it shows and logs, how often it checkpoints, recomputing activations in
# backward (memory only, the same arithmetic) and compiling the blocks (the same arithmetic in
# fused kernels, equal to rounding).
BOOKKEEPING_KEYS = frozenset(
    {
        "resume",
        "output_dir",
        "progress",
        "report_to",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "gradient_checkpointing",
        "compile",
        # How often the run evaluates or writes samples: evaluation draws no random number
        # that training uses (eval mode; PPO seeds every step's sampling afresh).
        "eval_steps",
        "ppo.sample_every",
        # The reward model's normalisation, fitted after the last step on the final weights:
        # a resume with other samples ends as a fresh run with them would.
        "rm.normalize",
        "rm.normalize_data",
        "rm.normalize_max_samples",
    }
)
# The run's length. It may change on resume only where the learning-rate schedule of the steps
# already taken does not depend on it (see `_length_change_problem`).
LENGTH_KEYS = ("max_steps", "epochs")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested option groups as dotted keys: `{"lora": {"r": 8}}` -> `{"lora.r": 8}`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + str(key)] = value
    return flat


def config_record(resolved: dict[str, Any]) -> dict[str, Any]:
    """The keys of a resolved config (`OUT/config.yaml`: `stage` and every key) that decide the
    training trajectory, as dotted keys in sorted order (so equal configs give equal records)."""
    flat = flatten(resolved)
    return {key: flat[key] for key in sorted(flat) if key not in BOOKKEEPING_KEYS}


def read_config_record(out: Path) -> dict[str, Any] | None:
    """The config record of the run writing into `out`, from its `OUT/config.yaml` (written by
    `Run` at the start of every run, fresh or resumed); None where there is none."""
    path = out / "config.yaml"
    if not path.is_file():
        return None
    return config_record(yaml.safe_load(path.read_text()) or {})


def config_differences(saved: dict[str, Any], current: dict[str, Any], step: int) -> list[str]:
    """What keeps the current config from continuing a checkpoint taken after step `step`:
    `key: saved -> current` for every trajectory key that differs (empty = it may resume).

    `max_steps` / `epochs` may differ when the schedule ignores the run's length (see
    `_length_change_problem`), so a finished run with `lr_scheduler=constant` can be extended.
    """
    missing = "(absent)"
    # A checkpoint from before a key became bookkeeping still records it: not compared.
    keys = (set(saved) | set(current)) - BOOKKEEPING_KEYS - set(LENGTH_KEYS)
    problems = [
        f"{key}: {saved.get(key, missing)!r} -> {current.get(key, missing)!r}"
        for key in sorted(keys)
        if saved.get(key, missing) != current.get(key, missing)
    ]
    length_problem = _length_change_problem(saved, current, step)
    return problems + ([length_problem] if length_problem else [])


def _length_change_problem(saved: dict[str, Any], current: dict[str, Any], step: int) -> str | None:
    """None when the run's length may go from `saved` to `current` at checkpoint step `step`.

    The examples of step s do not depend on the length (`BatchPlan`), but the learning rate
    does: warm-up is a fraction of the total steps, and cosine/linear decay runs to the last
    step, so with those a longer run would have taken the finished steps at other learning
    rates. Only `lr_scheduler=constant` with `warmup_ratio=0` makes "resume with a new
    max_steps" equal to an uninterrupted run of that length, and only if it is not already past
    it.
    """
    if _length(saved) == _length(current):
        return None
    changed = [key for key in LENGTH_KEYS if saved.get(key) != current.get(key)]
    what = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
    if current.get("lr_scheduler") != "constant" or current.get("warmup_ratio", 0) != 0:
        return (
            f"{what} (the {current.get('lr_scheduler')} schedule of the steps already taken "
            "depends on the run's length; only lr_scheduler=constant without warm-up extends)"
        )
    if current.get("max_steps", -1) <= 0:
        return f"{what} (to change the length on resume, give max_steps)"
    if current["max_steps"] < step:
        return f"{what} (the checkpoint is already at step {step})"
    return None


def _length(record: dict[str, Any]) -> Any:
    """The run's length as `BatchPlan` reads it: max_steps, or epochs when max_steps <= 0."""
    max_steps = record.get("max_steps", -1)
    return max_steps if max_steps > 0 else ("epochs", record.get("epochs"))


def read_trainer_state(path: Path) -> dict[str, Any]:
    """`trainer_state.json` of checkpoint `path`, without loading the weights."""
    return json.loads((path / STATE_FILE).read_text())


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The optimizer step of checkpoint directory `step-NNNNNNNN`."""
    return int(path.name.split("-")[1])


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`, whichever run wrote it (the
    caller checks its config record before resuming from it)."""
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def remove_checkpoints(root: Path) -> list[str]:
    """Delete every checkpoint under `root`, complete or half-written; return their names.

    A fresh run (`resume=false`) calls this before its first step: checkpoints of an earlier run
    in the same output directory would otherwise outlive it and be what a later `resume=true`
    continues from.
    """
    if not root.is_dir():
        return []
    prefixes = ("step-", ".tmp-step-", ".old-step-")
    stale = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefixes))
    for path in stale:
        shutil.rmtree(path)
    return [p.name for p in stale]


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    step: int,
    state: dict[str, Any],
    *,
    keep: int = 2,
    data: dict[str, Any] | None = None,
) -> Path:
    """Save a resumable checkpoint after optimizer step `step` (all processes must call this).

    `trainer_state.json` gets the step, `state`, the config record of the run (read from
    `root.parent / "config.yaml"`, which `Run` writes for every run), the number of processes
    the byte length of the run's logs (`LOG_FILES`, cut back to it on resume) and `data`, what
    the training data was (`setup.data_record`, checked on resume). Then all
    but the newest `keep` checkpoints that this run could resume from are deleted; checkpoints
    it could not resume from (another config's) are neither counted nor deleted.
    """
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with _quiet_shared_tensor_warning():
        accelerator.save_state(str(tmp))
    # Every process writes its own RNG state into `tmp`; none may be moved before all are done.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record = read_config_record(root.parent)
        with open(tmp / STATE_FILE, "w") as handle:
            saved = {"step": step, **state, RECORD_FIELD: record}
            saved[PROCESSES_FIELD] = accelerator.num_processes
            logs = [root.parent / name for name in LOG_FILES]
            saved[LOGS_FIELD] = {log.name: log.stat().st_size for log in logs if log.exists()}
            if data is not None:
                saved[DATA_FIELD] = data
            json.dump(saved, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        replace_dir_atomically(tmp, final)
        for old in prunable_checkpoints(root, record, keep):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class _DropSharedTensorNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@contextmanager
def _quiet_shared_tensor_warning():
    """Silence accelerate's "Removed shared tensor ... check by verifying" warning while saving.

    A model with tied input and output embeddings (`tie_word_embeddings`) holds one tensor under
    two names; `save_state` writes it once and warns each time. `load_state` into the same
    model restores both names (the tie is made when the model is built), which the resume
    tests check bit for bit, so in a checkpoint the warning only adds noise to every run.
    """
    logger = logging.getLogger("accelerate.utils.other")
    notice_filter = _DropSharedTensorNotice()
    logger.addFilter(notice_filter)
    try:
        yield
    finally:
        logger.removeFilter(notice_filter)


def prunable_checkpoints(root: Path, record: dict[str, Any] | None, keep: int) -> list[Path]:
    """All but the newest `keep` checkpoints under `root` that a run with config `record` could
    resume from (`keep <= 0`: none). Only those count: pruning by step number alone would delete
    this run's fresh checkpoints and keep a higher-numbered one of another run."""
    if keep <= 0:
        return []
    same_run = [path for path in checkpoint_dirs(root) if _resumable_by(path, record)]
    return same_run[:-keep]


def _resumable_by(path: Path, record: dict[str, Any] | None) -> bool:
    saved = read_trainer_state(path).get(RECORD_FIELD)
    if saved is None or record is None:
        return saved == record
    return not config_differences(saved, record, checkpoint_step(path))


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG from `path`; return its trainer state."""
    accelerator.load_state(str(path))
    return read_trainer_state(path)


def save_model(
    accelerator: Accelerator, model, tokenizer, out_dir: Path, **extra_files: Any
) -> None:
    """Export `model` (unwrapped) + tokenizer with `save_pretrained`, atomically.

    `extra_files` maps file names to JSON-serialisable values written beside the weights.
    """
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, value in extra_files.items():
            (tmp / name).write_text(json.dumps(value, indent=2))
        replace_dir_atomically(tmp, out_dir)
    accelerator.wait_for_everyone()
