"""What every stage shares around its loop: the accelerator, the output directory, metrics,
progress, the final summary.

```
OUT/config.yaml      resolved config          OUT/summary.json   final metrics
OUT/metrics.jsonl    one object per log step  OUT/model/         save_pretrained + tokenizer
OUT/checkpoints/     resumable state
```

The JSON written here is strict (RFC 8259): a NaN or infinite metric is written as `null`, with
a printed note naming it, never as the bare `NaN` that Python's `json` emits and other readers
reject. Files rewritten in place (metrics.jsonl cut back on resume) are replaced atomically.

OUT/config.yaml is written when the run really starts (after the resume check, or at its first
metrics line or summary), never by a run refused before then. An output directory whose
config.yaml names another stage is refused at once: one stage's run never replaces another's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rlhfkit.atomic_dirs import blocking_file, holds_working_directory, within
from rlhfkit.config import write_config
from rlhfkit.data.io import strict_json, write_json
from rlhfkit.errors import ConfigError, TrainingDiverged
from rlhfkit.models.loading import disable_hf_progress_bars

console = Console(stderr=True)


def make_accelerator(
    mixed_precision: str = "no", report_to: list[str] | None = None
) -> Accelerator:
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision: expected no, bf16 or fp16, got {mixed_precision!r}")
    trackers = [t for t in (report_to or []) if _tracker_available(t)]
    # One process may run several stages (`rlhfkit pipeline`, the demo, the Python API), each
    # with its own mixed precision, and accelerate keeps one process-wide state that refuses a
    # second setting. No earlier stage's Accelerator is in use any more, so a state of another
    # precision is dropped (the process group, held apart in PartialState, stays).
    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with=trackers or None)
    check_processes_joined(accelerator, os.environ.get("WORLD_SIZE"))
    if mixed_precision == "fp16" and not accelerator.native_amp and accelerator.is_main_process:
        # accelerate has no fp16 autocast on a CPU: it runs the step in fp32, silently.
        console.print(
            f"[yellow]mixed_precision=fp16 has no effect on {accelerator.device.type}: the run "
            "computes in fp32 there (mixed_precision=bf16 autocasts on CPUs)[/]"
        )
    return accelerator


def check_processes_joined(accelerator: Accelerator, world_size: str | None) -> None:
    """Refuse processes that a launcher started together but accelerate left apart.

    `accelerate launch` with an FSDP or DeepSpeed config on a machine without GPUs starts
    `--num_processes` processes (WORLD_SIZE set) that each come up alone (distributed type NO):
    each would train on all the data and write the same output directory.
    """
    launched = int(world_size) if world_size and world_size.isdigit() else 1
    if launched > accelerator.num_processes:
        joined = f"{accelerator.num_processes} ({accelerator.distributed_type.value})"
        raise ConfigError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but accelerate "
            f"joined {joined}: each would train alone and write the same output_dir. FSDP and "
            "DeepSpeed configs need GPUs; on CPUs run 'ACCELERATE_USE_CPU=1 accelerate launch "
            "--multi_gpu --num_processes N -m rlhfkit ...' (DDP over gloo)"
        )


def _tracker_available(name: str) -> bool:
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(name)
    if module is None:
        raise ConfigError(f"report_to: unknown tracker {name!r}; use tensorboard or wandb")
    try:
        __import__(module)
    except ImportError:
        console.print(f"[yellow]report_to: {name} is not installed; skipping it[/]")
        return False
    return True


class Run:
    """One stage's run: output directory, accelerator, metrics log and progress bar."""

    def __init__(self, config: Any, stage: str, *, accelerator: Accelerator | None = None):
        self.config = config
        self.stage = stage
        self.out = Path(config.output_dir)
        self.accelerator = accelerator or make_accelerator(
            getattr(config, "mixed_precision", "no"), getattr(config, "report_to", None)
        )
        self.is_main = self.accelerator.is_main_process
        if not getattr(config, "progress", True):
            disable_hf_progress_bars()
        check_output_stage(self.out, stage, getattr(config, "model", "") or "")
        set_seed(config.seed)
        self._config_written = False
        self.data_record: dict[str, Any] | None = None  # set by `setup.checked_plan`
        if getattr(config, "report_to", None) and self.accelerator.log_with:
            self.accelerator.init_trackers(
                f"rlhfkit-{stage}", config=_flat(dataclasses.asdict(config))
            )
        self.metrics_path = self.out / "metrics.jsonl"
        self._progress: Progress | None = None
        self._task = None
        self._t0 = time.perf_counter()
        self._null_metrics: set[str] = set()  # keys already reported as non-finite in the log

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def resolved_config(self) -> dict[str, Any]:
        """The run's config as `OUT/config.yaml` holds it: `stage` first, then every key."""
        return {"stage": self.stage, **dataclasses.asdict(self.config)}

    def write_config(self) -> None:
        """Write `OUT/config.yaml` (main process, once per run).

        Called when the run really starts (`setup.resume_state`, after its resume check) or at
        its first output (`log`, `summary`), so a run refused before then (bad data, a refused
        resume) leaves the config.yaml of the run already in OUT as it was.
        """
        if self.is_main and not self._config_written:
            write_config(self.out, self.stage, self.config)
        self._config_written = True

    def print(self, *args: Any) -> None:
        if self.is_main:
            console.print(*args)

    # --- metrics -----------------------------------------------------------------------------
    def truncate_metrics(self, after_step: int, size: int | None = None) -> None:
        """On resume, cut metrics.jsonl back to the checkpoint (`cut_log`)."""
        if self.is_main:
            cut_log(self.metrics_path, after_step, size)

    def reset_metrics(self) -> None:
        if self.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one line to metrics.jsonl (non-finite values as null, noted once per key)."""
        row, non_finite = strict_json({"step": step, **{k: _plain(v) for k, v in metrics.items()}})
        self.write_config()
        if self.is_main:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(row, allow_nan=False) + "\n")
            for key in sorted(set(non_finite) - self._null_metrics):
                console.print(
                    f"[yellow]metrics.jsonl: {key} is not finite at step {step}; written as null[/]"
                )
            self._null_metrics.update(non_finite)
        if self.accelerator.log_with:
            self.accelerator.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        """Write summary.json as strict JSON (a non-finite value becomes null, and is named)."""
        self.write_config()
        if self.is_main:
            plain, non_finite = strict_json({k: _plain(v) for k, v in values.items()})
            if non_finite:
                console.print(
                    f"[yellow]summary.json: {', '.join(non_finite)} not finite; written as null[/]"
                )
            write_json(self.out / "summary.json", plain)
        if self.accelerator.log_with:
            self.accelerator.end_training()

    # --- progress ----------------------------------------------------------------------------
    def progress(self, total: int, start: int = 0, description: str | None = None):
        enabled = self.is_main and getattr(self.config, "progress", True)
        if not enabled:
            return nullcontext()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(
            description or self.stage, total=total, completed=start, info=""
        )
        return self._progress

    def advance(self, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=info)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


def check_output_stage(out: Path, stage: str, model: str = "") -> None:
    """Refuse, in one line, an output directory the run cannot or must not write: a file (or
    under one), the working directory or one holding it, one holding the `model` the run starts
    from (exporting OUT/model would replace it), or one whose config.yaml was written by another
    stage (running there would replace that run's model and delete its checkpoints) or by
    something that is not rlhfkit."""
    if (blocking := blocking_file(out)) is not None:
        raise ConfigError(f"output_dir: {blocking} is a file; give a directory")
    if holds_working_directory(out):
        raise ConfigError(
            f"output_dir: {str(out) or '.'} holds the working directory; give a directory of "
            "its own (e.g. runs/NAME)"
        )
    if model and os.path.isdir(model) and within(Path(model).resolve(), out.resolve()):
        raise ConfigError(
            f"output_dir: {out} holds the model this run starts from ({model}), which the run's "
            "export would replace; give another output_dir"
        )
    written_by = output_stage(out)
    if written_by is not None and written_by != stage:
        raise ConfigError(
            f"output_dir: {out} holds a {written_by!r} run, not {stage!r}; give another "
            "output_dir, or delete that one first"
        )


def output_stage(out: Path) -> str | None:
    """The stage named by `OUT/config.yaml`; None where there is no such file.

    A config.yaml that is not readable YAML, or names no stage, is an error: the directory holds
    something that no rlhfkit stage wrote, and running there would overwrite it."""
    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"output_dir: {path} is not a readable config ({type(err).__name__}); give another "
            "output_dir, or delete that one first"
        ) from None
    stage = loaded.get("stage") if isinstance(loaded, dict) else None
    if stage is None:
        raise ConfigError(
            f"output_dir: {path} is not the config of an rlhfkit run (it names no stage); give "
            "another output_dir, or move that file"
        )
    return str(stage)


def check_finite(loss_value: float, step: int, run: Run) -> None:
    """Stop the run, leaving the last good checkpoint as it is, if the loss is NaN or inf."""
    if not math.isfinite(loss_value):
        from rlhfkit.training.checkpoint import latest_checkpoint

        last = latest_checkpoint(run.checkpoints)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"the loss became {loss_value} at step {step}; stopping ({where}). "
            "Try a lower learning_rate, max_grad_norm, or fp32."
        )


def cut_log(path: Path, after_step: int, size: int | None) -> None:
    """On resume, cut an append-only JSONL log (metrics.jsonl, samples.jsonl) back to what it
    held when the checkpoint was saved, so it ends as an uninterrupted run's would.

    `size` is the file's byte length then (`trainer_state.json`'s `log_bytes`): cutting there
    also drops what was logged after the checkpoint at the same step (the final evaluation of a
    run resumed at its last step, or extended past it) and a last line torn by a kill. Without
    it (an older checkpoint, or a log shorter than recorded) lines past `after_step` are
    dropped, and so are lines that do not parse."""
    if not path.exists():
        return
    data = path.read_bytes()
    if size is not None and len(data) >= size:
        kept = data[:size].decode()
    else:
        lines = []
        for line in data.decode(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn by a kill mid-write
            if isinstance(row, dict) and row.get("step", 0) <= after_step:
                lines.append(line + "\n")
        kept = "".join(lines)
    write_text_atomically(path, kept)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` through a temporary file in the same directory and
    `os.replace`, so a reader or a crash never sees it half-written."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            out[prefix + key] = value
    return out
