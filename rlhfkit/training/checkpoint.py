"""Resumable checkpoints, written atomically, and atomic export of the final model.

A checkpoint is `OUT/checkpoints/step-NNNNNNNN/`: accelerate's `save_state` (model, optimizer,
scheduler, every process's RNG states) plus `trainer_state.json` (the step and what the recipe
needs to continue). It is written to a hidden temporary directory and renamed into place only
when complete, so an interrupted write never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(
    accelerator: Accelerator, root: Path, step: int, state: dict[str, Any], *, keep: int = 2
) -> Path:
    """Save a resumable checkpoint after optimizer step `step` (all processes must call this)."""
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        with open(tmp / STATE_FILE, "w") as handle:
            json.dump({"step": step, **state}, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG from `path`; return its trainer state."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def replace_dir_atomically(tmp: Path, final: Path) -> None:
    """Move a fully written directory `tmp` to `final`, replacing what was there."""
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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
