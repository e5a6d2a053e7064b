from __future__ import annotations

import pytest

from rlhfkit.config import describe, load_config
from rlhfkit.errors import ConfigError
from rlhfkit.recipes.sft import SFTConfig


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.001\nbatch_size: 4\nlora:\n  r: 8\n  alpha: 32\n")
    config = load_config(
        SFTConfig, str(path), ["batch_size=2", "lora.alpha=64", "sft.packing=true"]
    )
    assert config.learning_rate == pytest.approx(0.001)  # from the file
    assert config.batch_size == 2  # override beats file
    assert (config.lora.r, config.lora.alpha) == (8, 64)
    assert config.sft.packing is True
    assert config.output_dir == "runs/sft"  # stage default


def test_types_are_checked_and_coerced():
    config = load_config(SFTConfig, None, ["epochs=2", "lora.target_modules=q_proj,v_proj"])
    assert config.epochs == 2.0 and isinstance(config.epochs, float)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        load_config(SFTConfig, None, ["batch_size=two"])
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        load_config(SFTConfig, None, ["batch_size=1.5"])
    with pytest.raises(ConfigError, match="resume: expected true or false"):
        load_config(SFTConfig, None, ["resume=maybe"])


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(
        ConfigError, match="unknown key 'learning_rte'; did you mean 'learning_rate'"
    ):
        load_config(SFTConfig, None, ["learning_rte=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'lora.alpha'"):
        load_config(SFTConfig, None, ["lora.alpah=3"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, str(tmp_path / "nope.yaml"), [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SFTConfig, str(bad), [])


def test_every_key_is_described():
    rows = describe(SFTConfig)
    keys = [r[0] for r in rows]
    for key in (
        "model",
        "train_data",
        "learning_rate",
        "lora.r",
        "lora.target_modules",
        "sft.packing",
    ):
        assert key in keys
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]


def test_a_runs_config_file_loads_back(tmp_path):
    """OUT/config.yaml (with its `stage:` line) repeats the run through `--config`."""
    from rlhfkit.recipes.rm import RMConfig
    from rlhfkit.training.run import Run

    out = tmp_path / "out"
    config = load_config(SFTConfig, None, [f"output_dir={out}", "learning_rate=0.003", "lora.r=4"])
    Run(config, "sft")
    written = str(out / "config.yaml")
    assert load_config(SFTConfig, written, stage="sft") == config
    with pytest.raises(ConfigError, match="stage: the file is a 'sft' config, not 'rm'"):
        load_config(RMConfig, written, stage="rm")
    with pytest.raises(ConfigError, match="unknown key 'stage'"):
        load_config(SFTConfig, written)  # without a stage to check against, `stage` is unknown
