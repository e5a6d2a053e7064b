"""`rlhfkit STAGE [--config FILE.yaml] [key=value ...]`: parse the config, call a recipe.

Each stage names its config dataclass and its entry point by import path, so `rlhfkit --help`
stays fast and a stage's heavy imports happen only when it runs. A few stages with commands of
their own (`annotate serve|load|export|stats|add-user`) take their own arguments.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from rlhfkit.config import key_lines, split_args
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.recipes.stages import STAGES, Stage, load_target


def _check_single_process(name: str, stage: Stage) -> None:
    """Refuse a stage that runs in one process when a launcher started several (WORLD_SIZE):
    each copy would do the whole job and write the same files at once."""
    launched = os.environ.get("WORLD_SIZE", "1")
    if stage.scales_out or not launched.isdigit() or int(launched) <= 1:
        return
    several = [key for key, value in STAGES.items() if value.scales_out]
    several = ", ".join(several[:-1]) + " and " + several[-1]
    hint = (
        "; to scale a pipeline's training stages out, run each one under accelerate launch "
        "(`rlhfkit STAGE --config OUT/NAME/config.yaml` repeats one)"
        if name in ("pipeline", "demo")
        else ""
    )
    raise ConfigError(
        f"{name} runs in one process, but the launcher started {launched} (WORLD_SIZE="
        f"{launched}): run it without accelerate launch. Only {several} run as several "
        f"processes{hint}"
    )


def _module_exists(path: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(path.split(":")[0]) is not None


def _usage() -> str:
    width = max(len(n) for n in STAGES)
    lines = [
        "usage: rlhfkit STAGE [--config FILE.yaml] [key=value ...]",
        "       rlhfkit STAGE --help    (every key of the stage, with its default)",
        "",
        "stages:",
    ]
    lines += [
        f"  {name.ljust(width)}  {stage.summary}"
        for name, stage in STAGES.items()
        if _module_exists(stage.entry)
    ]
    return "\n".join(lines)


def _stage_help(name: str, stage: Stage) -> str:
    from rlhfkit.config import describe

    cls = load_target(stage.config)
    rows = describe(cls)
    doc = textwrap.dedent(cls.__doc__ or "").strip()
    head = [f"usage: rlhfkit {name} [--config FILE.yaml] [key=value ...]", "", stage.summary]
    if doc and not doc.startswith(cls.__name__ + "("):
        head += ["", doc]
    head += ["", "keys (key=value or --key value; nested keys with dots, e.g. lora.r=8):"]
    return "\n".join(head + key_lines(rows))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no stage: a usage error, as for an unknown stage
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "version"):
        from rlhfkit import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    stage = STAGES.get(name)
    if stage is None:
        import difflib

        close = difflib.get_close_matches(name, STAGES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"rlhfkit: unknown stage {name!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    config = None
    try:
        _check_single_process(name, stage)
        if not _module_exists(stage.entry):
            print(f"rlhfkit: stage {name!r} is not available in this build", file=sys.stderr)
            return 2
        if stage.config is None:
            return int(load_target(stage.entry)(rest) or 0)
        if any(a in ("-h", "--help") for a in rest):
            print(_stage_help(name, stage))
            return 0
        from rlhfkit.config import check_unique_overrides, load_config

        rest = [
            "--from_stage" + a[len("--from") :] if a.split("=")[0] == "--from" else a for a in rest
        ]
        config_file, overrides = split_args(rest, stage.positional)
        check_unique_overrides(overrides)
        config = load_config(load_target(stage.config), config_file, overrides, stage=name)
        if getattr(config, "progress", True) is False:
            from rlhfkit.models.loading import disable_hf_progress_bars

            disable_hf_progress_bars()  # transformers' loading/saving bars too
        result = load_target(stage.entry)(config)
        return result if isinstance(result, int) else 0
    except RlhfkitError as err:
        print(f"rlhfkit {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhfkit {name}: interrupted{_resume_hint(config)}", file=sys.stderr)
        return 130


def _resume_hint(config) -> str:
    """How an interrupted training run continues: from its last checkpoint, if it wrote one."""
    if config is None or not hasattr(config, "resume") or not hasattr(config, "output_dir"):
        return ""
    from rlhfkit.training.checkpoint import latest_checkpoint

    last = latest_checkpoint(Path(config.output_dir) / "checkpoints")
    if last is None:
        return " (no checkpoint was written: save_steps sets how often one is)"
    return f"; rerun the same command with resume=true to continue from {last}"


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
