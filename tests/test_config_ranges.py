"""Declared ranges and allowed values of config keys (`option(minimum=..., choices=...)`):
refused with one line when the config is built, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from rlhfkit.cli import main
from rlhfkit.config import build, describe, length, load_config, option, to_dict
from rlhfkit.errors import ConfigError
from rlhfkit.recipes.cai import CAIReviseConfig
from rlhfkit.recipes.demo import DemoConfig
from rlhfkit.recipes.generate import GenerateConfig
from rlhfkit.recipes.label import LabelConfig
from rlhfkit.recipes.ppo import PPOConfig
from rlhfkit.recipes.rm import RMConfig
from rlhfkit.recipes.serve import ServeConfig
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.recipes.stages import STAGES, load_target

REFUSED = [
    (SFTConfig, "batch_size=0", "batch_size: must be >= 1, got 0"),
    (SFTConfig, "batch_size=-2", "batch_size: must be >= 1, got -2"),
    (SFTConfig, "grad_accum=0", "grad_accum: must be >= 1, got 0"),
    (SFTConfig, "logging_steps=0", "logging_steps: must be >= 1, got 0"),
    (SFTConfig, "max_steps=.inf", "max_steps: expected an integer, got inf"),
    (SFTConfig, "max_steps=nan", "max_steps: expected an integer, got 'nan'"),
    (SFTConfig, "max_steps=-2", "max_steps: must be >= -1, got -2"),
    (SFTConfig, "learning_rate=-1", "learning_rate: must be >= 0, got -1.0"),
    (SFTConfig, "learning_rate=.nan", "learning_rate: expected a number, got nan"),
    (SFTConfig, "adam_betas=[0.9]", "adam_betas: must have 2 items, got [0.9]"),
    (SFTConfig, "adam_betas=[0.9,1.5]", "adam_betas: must be < 1 (each item), got [0.9, 1.5]"),
    (SFTConfig, "epochs=0", "epochs: must be > 0, got 0.0"),
    (SFTConfig, "warmup_ratio=2", "warmup_ratio: must be <= 1, got 2.0"),
    (SFTConfig, "lora.r=-4", "lora.r: must be >= 0, got -4"),
    (SFTConfig, "lora.dropout=1", "lora.dropout: must be < 1, got 1.0"),
    (GenerateConfig, "batch_size=0", "batch_size: must be >= 1, got 0"),
    (GenerateConfig, "max_new_tokens=0", "max_new_tokens: must be >= 1, got 0"),
    (GenerateConfig, "temperature=-1", "temperature: must be >= 0, got -1.0"),
    (GenerateConfig, "top_p=0", "top_p: must be > 0, got 0.0"),
    (GenerateConfig, "top_p=5", "top_p: must be <= 1, got 5.0"),
    (GenerateConfig, "n=0", "n: must be >= 1, got 0"),
    (CAIReviseConfig, "batch_size=0", "batch_size: must be >= 1, got 0"),
    (CAIReviseConfig, "max_new_tokens=0", "max_new_tokens: must be >= 1, got 0"),
    (CAIReviseConfig, "edit_top_p=0", "edit_top_p: must be > 0, got 0.0"),
    (CAIReviseConfig, "api=grpc", "api: must be one of completions, chat, got 'grpc'"),
    (CAIReviseConfig, "rounds=0", "rounds: must be >= 1, got 0"),
    # demo: an empty output_dir wrote every stage into the current directory
    (DemoConfig, "output_dir=", "output_dir: must name a directory, got ''"),
    (DemoConfig, "threads=-5", "threads: must be >= 0, got -5"),
    # serve: a bad log_level crashed in uvicorn after the model loaded; the others ran
    (
        ServeConfig,
        "log_level=verbose",
        "log_level: must be one of debug, info, warning, error, got 'verbose'",
    ),
    (ServeConfig, "max_batch_size=0", "max_batch_size: must be >= 1, got 0"),
    (ServeConfig, "batch_wait_ms=-5", "batch_wait_ms: must be >= 0, got -5.0"),
    (ServeConfig, "default_max_tokens=-3", "default_max_tokens: must be >= 1, got -3"),
    # label's endpoint keys are cai's: `max_retries=-1` and `timeout=0` used to run
    (LabelConfig, "max_retries=-1", "max_retries: must be >= 0, got -1"),
    (LabelConfig, "timeout=0", "timeout: must be > 0, got 0.0"),
    (LabelConfig, "judge_api=grpc", "judge_api: must be one of completions, chat, got 'grpc'"),
    (LabelConfig, "top_p=0", "top_p: must be > 0, got 0.0"),
    (LabelConfig, "annotators=0", "annotators: must be >= 1, got 0"),
    (
        LabelConfig,
        "clamp=[0.6,0.9]",
        "clamp: expected [low, high] with 0 <= low <= 0.5 <= high <= 1, got [0.6, 0.9]",
    ),
    (RMConfig, "rm.calibration_bins=0", "rm.calibration_bins: must be >= 1, got 0"),
    (ServeConfig, "port=99999", "port: must be <= 65535, got 99999"),
    (ServeConfig, "port=-5", "port: must be >= 1, got -5"),
    # PPOConfig redeclares batch_size and logging_steps with new defaults: the range stays.
    (PPOConfig, "batch_size=0", "batch_size: must be >= 1, got 0"),
    (PPOConfig, "logging_steps=0", "logging_steps: must be >= 1, got 0"),
    (PPOConfig, "top_p=5", "top_p: must be <= 1, got 5.0"),
    # The demo's own keys: each was a traceback (IndexError, ZeroDivisionError) after training.
    (DemoConfig, "dpo_betas=[]", "dpo_betas: must list at least one β, each once, got []"),
    (
        DemoConfig,
        "dpo_betas=[0.1,0.1]",
        "dpo_betas: must list at least one β, each once, got [0.1, 0.1]",
    ),
    (DemoConfig, "dpo_betas=[0]", "dpo_betas: must be > 0 (each item), got [0.0]"),
    (DemoConfig, "eval_prompts=0", "eval_prompts: must be >= 1, got 0"),
    (DemoConfig, "ppo_steps=0", "ppo_steps: must be >= 1, got 0"),
]


@pytest.mark.parametrize(("cls", "override", "message"), REFUSED, ids=[r[1] for r in REFUSED])
def test_out_of_range_values_are_refused_with_one_line(cls, override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(cls, None, [override])
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("cls", "override"),
    [
        (GenerateConfig, "top_p=1"),
        (GenerateConfig, "temperature=0"),
        (SFTConfig, "warmup_ratio=1"),
        (SFTConfig, "max_steps=-1"),
        (SFTConfig, "max_steps=0"),
        (SFTConfig, "lora.r=0"),
        (SFTConfig, "learning_rate=0"),
        (SFTConfig, "adam_betas=[0.0,0.99]"),
        (ServeConfig, "port=65535"),
        (CAIReviseConfig, "api=chat"),
    ],
)
def test_boundary_values_are_accepted(cls, override):
    key, raw = override.split("=")
    node = load_config(cls, None, [override])
    for part in key.split("."):
        node = getattr(node, part)
    assert node == yaml.safe_load(raw)


def test_attn_implementation_is_checked_against_transformers():
    for valid in ("sdpa", "eager", "flash_attention_2", "kernels-community/flash-attn2"):
        assert load_config(SFTConfig, None, [f"attn_implementation={valid}"]).attn_implementation
    with pytest.raises(ConfigError, match=r"^attn_implementation: must be one of eager, .*sdpa"):
        load_config(SFTConfig, None, ["attn_implementation=bogus"])


def test_the_error_comes_before_any_model_loads(capsys):
    """`model` names nothing: had anything loaded, the error would be about the model."""
    code = main(["sft", "model=./no-such-model", "train_data=./no-such.jsonl", "batch_size=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "rlhfkit sft: error: batch_size: must be >= 1, got 0\n"


def test_help_shows_the_ranges(capsys):
    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[int >= 1, default 8]" in out  # batch_size
    assert "[float > 0, <= 1, default 1.0]" not in out  # sft has no top_p
    rows = {row[0]: row for row in describe(GenerateConfig)}
    assert rows["top_p"][1] == "float > 0, <= 1"
    assert rows["n"][1] == "int >= 1"
    assert {row[0]: row for row in describe(CAIReviseConfig)}["api"][1] == (
        "str one of completions, chat"
    )


@pytest.mark.parametrize("stage", [n for n, s in STAGES.items() if s.config is not None])
def test_every_stage_default_meets_its_own_constraints(stage):
    cls = load_target(STAGES[stage].config)
    defaults = cls()  # every stage's config has a default for each key
    assert build(cls, to_dict(defaults)) == defaults


@dataclass
class _Base:
    count: int = option(1, "a count", minimum=1)
    ratio: float = option(0.5, "a ratio", exclusive_minimum=0, exclusive_maximum=1)
    mode: str = option("a", "a mode", choices=("a", "b"))
    pair: list[int] = option([1, 2], "two items", minimum=0, check=length(2))


@dataclass
class _Derived(_Base):
    count: int = option(5, "a count with another default")  # keeps minimum=1
    ratio: float = option(2.0, "a ratio of its own", minimum=1)  # its own range replaces


def test_option_constraints_mechanism():
    assert build(_Base, {"count": 3, "ratio": 0.25, "mode": "b", "pair": [0, 7]}).pair == [0, 7]
    cases = [
        ({"ratio": 1}, "ratio: must be < 1, got 1.0"),
        ({"mode": "c"}, "mode: must be one of a, b, got 'c'"),
        ({"pair": [1, -1]}, "pair: must be >= 0 (each item), got [1, -1]"),
        ({"pair": [1, 2, 3]}, "pair: must have 2 items, got [1, 2, 3]"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError) as caught:
            build(_Base, values)
        assert str(caught.value) == message
    with pytest.raises(ConfigError, match="count: must be >= 1, got 0"):
        build(_Derived, {"count": 0})
    assert build(_Derived, {"ratio": 3}).ratio == 3.0
    with pytest.raises(ConfigError, match="ratio: must be >= 1, got 0.5"):
        build(_Derived, {"ratio": 0.5})


@pytest.mark.parametrize("example", ["embedded_world.yaml", "qwen2_0.5b_dpo_rm_ppo.yaml"])
def test_the_example_pipelines_still_validate(example, monkeypatch, tmp_path):
    """Every stage of the shipped pipeline files builds under the declared ranges."""
    from pathlib import Path

    from rlhfkit.recipes.pipeline import plan

    path = Path(__file__).resolve().parents[1] / "examples" / example
    monkeypatch.chdir(tmp_path)  # a stage directory may not hold the working directory
    assert len(plan(path)) >= 3


@pytest.mark.parametrize(
    ("stage", "args", "message"),
    [
        # Each was a traceback (OverflowError, ValueError from numpy's seed) or wrote elsewhere.
        ("sft", ["epochs=inf"], "epochs: expected a finite number, got 'inf'"),
        ("init-model", ["seed=5000000000", "out=x"], "seed: must be <= 4294967295"),
        ("world", ["corpus_size=0"], "corpus_size: must be >= 1, got 0"),
    ],
)
def test_values_that_crashed_deep_inside_a_run_are_refused_first(stage, args, message):
    assert main([stage, *args]) == 2


def test_world_and_init_model_refuse_what_is_not_theirs(tmp_path, capsys):
    """`world` replaced an sft run's config.yaml and summary.json; init-model built the model,
    then failed with FileExistsError where `out` lies under a file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("stage: sft\n")
    assert main(["world", f"output_dir={run}", "corpus_size=5"]) == 2
    assert "holds a 'sft' run" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["init-model", f"out={tmp_path / 'file' / 'sub'}"]) == 2
    assert "is a file, so" in capsys.readouterr().err
