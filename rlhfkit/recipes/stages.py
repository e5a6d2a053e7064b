"""The stages `rlhfkit STAGE` runs: each names its config dataclass, its entry point and its
model-free check by import path (`load_target`), so listing them imports no recipe and
`rlhfkit --help` stays fast. The command line (`rlhfkit.cli`) and the pipeline read it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


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
    # "module:function" listing the files a config makes the stage write outside its output_dir
    # (generate's and label's JSONL, the files label writes beside it, the report's HTML): the
    # pipeline records them and reruns the stage when one has been removed
    writes: str | None = None
    # the key naming the directory the stage writes (where a pipeline gives it the stage's own)
    directory_key: str = "output_dir"
    # whether a pipeline may run it: not a server (it never returns) nor a pipeline of stages
    in_pipeline: bool = True


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
        writes="rlhfkit.recipes.generate:written_files",
    ),
    "init-model": Stage(
        "write a random-initialised model + byte tokenizer from a preset",
        "rlhfkit.recipes.init_model:InitModelConfig",
        "rlhfkit.recipes.init_model:run",
        directory_key="out",
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
        in_pipeline=False,
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
        writes="rlhfkit.recipes.evaluate:written_files",
    ),
    "label": Stage(
        "AI or simulated preference labels for generated pairs",
        "rlhfkit.recipes.label:LabelConfig",
        "rlhfkit.recipes.label:run",
        writes="rlhfkit.recipes.label:written_files",
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
        in_pipeline=False,
    ),
    "pipeline": Stage(
        "all stages from one file, resumable",
        "rlhfkit.recipes.pipeline:PipelineConfig",
        "rlhfkit.recipes.pipeline:run",
        positional=("file",),
        in_pipeline=False,
    ),
    "report": Stage(
        "self-contained HTML report of runs",
        "rlhfkit.recipes.report:ReportConfig",
        "rlhfkit.recipes.report:run",
        writes="rlhfkit.recipes.report:written_files",
    ),
    "annotate": Stage(
        "the annotation server: serve | load | export | stats | add-user",
        None,
        "rlhfkit.feedback.annotation.cli:main",
    ),
}


def load_target(path: str):
    """The object a `"module:name"` path names (a stage's config class, entry or check)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)
