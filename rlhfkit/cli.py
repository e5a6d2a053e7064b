"""`rlhfkit STAGE [--config FILE.yaml] [key=value ...]`: parse the config, call a recipe.

Each stage names its config dataclass and its entry point by import path, so `rlhfkit --help`
stays fast and a stage's heavy imports happen only when it runs. A few stages with commands of
their own (`annotate serve|load|export|stats|add-user`) take their own arguments.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from dataclasses import dataclass

from rlhfkit.errors import ConfigError, RlhfkitError


@dataclass(frozen=True)
class Stage:
    summary: str
    config: str | None  # "module:Class" of the config dataclass
    entry: str  # "module:function"; takes the config (or argv when config is None)
    positional: tuple[str, ...] = ()  # keys that may be given as bare positional arguments
    scales_out: bool = False  # runs as several processes under `accelerate launch`
    # "module:function" that checks a config without models or data (ConfigError), so that a
    # pipeline refuses a bad stage before running any
    check: str | None = None


STAGES: dict[str, Stage] = {
    "sft": Stage(
        "supervised fine-tuning",
        "rlhfkit.recipes.sft:SFTConfig",
        "rlhfkit.recipes.sft:train",
        scales_out=True,
    ),
    "generate": Stage(
        "sample K responses per prompt (JSONL {prompt, responses})",
        "rlhfkit.recipes.generate:GenerateConfig",
        "rlhfkit.recipes.generate:run",
    ),
    "init-model": Stage(
        "write a random-initialised model + byte tokenizer from a preset",
        "rlhfkit.recipes.init_model:InitModelConfig",
        "rlhfkit.recipes.init_model:run",
    ),
    "world": Stage(
        "write the embedded world's SFT corpus and prompt splits (a pipeline's first stage)",
        "rlhfkit.recipes.world:WorldConfig",
        "rlhfkit.recipes.world:run",
    ),
    "demo": Stage(
        "the embedded world end to end",
        "rlhfkit.recipes.demo:DemoConfig",
        "rlhfkit.recipes.demo:run",
    ),
    "rm": Stage(
        "reward model: Bradley-Terry on preference or ranking data",
        "rlhfkit.recipes.rm:RMConfig",
        "rlhfkit.recipes.rm:train",
        scales_out=True,
        check="rlhfkit.recipes.rm:check_config",
    ),
    "dpo": Stage(
        "direct preference optimisation and its family",
        "rlhfkit.recipes.dpo:DPOConfig",
        "rlhfkit.recipes.dpo:train",
        scales_out=True,
        check="rlhfkit.recipes.dpo:check_options",
    ),
    "ppo": Stage(
        "PPO against a reward with a KL penalty to the reference",
        "rlhfkit.recipes.ppo:PPOConfig",
        "rlhfkit.recipes.ppo:train",
        scales_out=True,
        check="rlhfkit.recipes.ppo:check_config",
    ),
    "eval": Stage(
        "score data with a reward model; evaluate policies against a reference",
        "rlhfkit.recipes.evaluate:EvalConfig",
        "rlhfkit.recipes.evaluate:run",
    ),
    "label": Stage(
        "AI or simulated preference labels for generated pairs",
        "rlhfkit.recipes.label:LabelConfig",
        "rlhfkit.recipes.label:run",
    ),
    "cai": Stage(
        "Constitutional AI: `rlhfkit cai revise ...` (critique-and-revise)",
        None,
        "rlhfkit.recipes.cai:main",
    ),
    "serve": Stage(
        "OpenAI-compatible HTTP API over a local model; a reward model as the HTTP scorer",
        "rlhfkit.recipes.serve:ServeConfig",
        "rlhfkit.recipes.serve:run",
    ),
    "pipeline": Stage(
        "all stages from one file, resumable",
        "rlhfkit.recipes.pipeline:PipelineConfig",
        "rlhfkit.recipes.pipeline:run",
        positional=("file",),
    ),
    "report": Stage(
        "self-contained HTML report of runs",
        "rlhfkit.recipes.report:ReportConfig",
        "rlhfkit.recipes.report:run",
    ),
    "annotate": Stage(
        "the annotation server: serve | load | export | stats | add-user",
        None,
        "rlhfkit.feedback.annotation.cli:main",
    ),
}


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


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

    cls = _load(stage.config)
    rows = describe(cls)
    doc = textwrap.dedent(cls.__doc__ or "").strip()
    head = [f"usage: rlhfkit {name} [--config FILE.yaml] [key=value ...]", "", stage.summary]
    if doc and not doc.startswith(cls.__name__ + "("):
        head += ["", doc]
    head += ["", "keys (key=value or --key value; nested keys with dots, e.g. lora.r=8):"]
    return "\n".join(head + key_lines(rows))


def key_lines(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Two lines per config key (`describe`'s rows): its help, then its type and default."""
    width = min(max(len(r[0]) for r in rows), 28)
    lines = []
    for key, type_name, default, help_text in rows:
        lines.append(f"  {key.ljust(width)}  {help_text}")
        lines.append(f"  {''.ljust(width)}  [{type_name}, default {default}]")
    return lines


def split_args(argv: list[str], positional: tuple[str, ...] = ()) -> tuple[str | None, list[str]]:
    """(config file, overrides) from `--config F`, `key=value`, `--key value`, `--key=value`."""
    config_file, overrides, free = None, [], list(positional)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise RlhfkitError("--config needs a file")
            config_file, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config_file, i = arg.split("=", 1)[1], i + 1
            continue
        if arg.startswith("--"):
            key, has_value, value = arg[2:].partition("=")
            key = key.replace("-", "_")  # `--learning-rate` names `learning_rate`, either form
            if has_value:
                overrides.append(f"{key}={value}")
                i += 1
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and "=" not in argv[i + 1]:
                overrides.append(f"{key}={argv[i + 1]}")
                i += 2
            else:
                overrides.append(f"--{key}")  # a bare flag: true for a boolean key, else refused
                i += 1
            continue
        if "=" in arg:
            overrides.append(arg)
        elif free:
            overrides.append(f"{free.pop(0)}={arg}")
        else:
            raise RlhfkitError(f"unexpected argument {arg!r} (expected key=value)")
        i += 1
    return config_file, overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
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
    try:
        _check_single_process(name, stage)
        if not _module_exists(stage.entry):
            print(f"rlhfkit: stage {name!r} is not available in this build", file=sys.stderr)
            return 2
        if stage.config is None:
            return int(_load(stage.entry)(rest) or 0)
        if any(a in ("-h", "--help") for a in rest):
            print(_stage_help(name, stage))
            return 0
        from rlhfkit.config import check_unique_overrides, load_config

        rest = [
            "--from_stage" + a[len("--from") :] if a.split("=")[0] == "--from" else a for a in rest
        ]
        config_file, overrides = split_args(rest, stage.positional)
        check_unique_overrides(overrides)
        config = load_config(_load(stage.config), config_file, overrides, stage=name)
        if getattr(config, "progress", True) is False:
            from rlhfkit.models.loading import disable_hf_progress_bars

            disable_hf_progress_bars()  # transformers' loading/saving bars too
        result = _load(stage.entry)(config)
        return result if isinstance(result, int) else 0
    except RlhfkitError as err:
        print(f"rlhfkit {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhfkit {name}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
