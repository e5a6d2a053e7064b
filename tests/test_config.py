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
    from rlhfkit.config import write_config
    from rlhfkit.recipes.rm import RMConfig

    out = tmp_path / "out"
    config = load_config(SFTConfig, None, [f"output_dir={out}", "learning_rate=0.003", "lora.r=4"])
    write_config(out, "sft", config)  # what a run writes as OUT/config.yaml
    written = str(out / "config.yaml")
    assert load_config(SFTConfig, written, stage="sft") == config
    with pytest.raises(ConfigError, match="stage: the file is a 'sft' config, not 'rm'"):
        load_config(RMConfig, written, stage="rm")
    with pytest.raises(ConfigError, match="unknown key 'stage'"):
        load_config(SFTConfig, written)  # without a stage to check against, `stage` is unknown


def test_dotted_keys_in_a_config_file(tmp_path):
    """A stage block pasted from a pipeline file (`sft.packing: true`) loads through --config."""
    path = tmp_path / "run.yaml"
    path.write_text("sft.packing: true\nlora.r: 4\nlora:\n  alpha: 8\nbatch_size: 2\n")
    config = load_config(SFTConfig, str(path), ["lora.dropout=0.1"])
    assert config.sft.packing is True
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (4, 8, 0.1)
    assert config.batch_size == 2
    twice = tmp_path / "twice.yaml"
    twice.write_text("lora.r: 4\nlora:\n  r: 8\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: lora.r: given twice"):
        load_config(SFTConfig, str(twice), [])


def test_unknown_keys_in_a_config_file_name_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("sft.pakcing: true\n")
    with pytest.raises(ConfigError) as caught:
        load_config(SFTConfig, str(path), [])
    assert str(caught.value) == (
        f"{path}: unknown key 'sft.pakcing'; did you mean 'sft.packing'? (see --help for every key)"
    )
    # An unknown key given on the command line is not blamed on the file.
    path.write_text("batch_size: 2\n")
    with pytest.raises(ConfigError, match=r"^unknown key 'lerning_rate'"):
        load_config(SFTConfig, str(path), ["lerning_rate=0.1"])


def test_flag_forms_are_equivalent():
    from rlhfkit.cli import split_args

    spaced = split_args(["--learning-rate", "1e-3", "--lora.target-modules", "q_proj"])
    joined = split_args(["--learning-rate=1e-3", "--lora.target-modules=q_proj"])
    assert spaced == joined == (None, ["learning_rate=1e-3", "lora.target_modules=q_proj"])
    assert split_args(["--config=a.yaml", "--resume"]) == ("a.yaml", ["--resume"])  # a bare flag
    config = load_config(SFTConfig, None, split_args(["--learning-rate=1e-3"])[1])
    assert config.learning_rate == pytest.approx(1e-3)


def test_cai_without_a_command_is_a_usage_error(capsys):
    from rlhfkit.cli import main

    assert main(["cai"]) == 2
    assert "usage: rlhfkit cai" in capsys.readouterr().err
    assert main(["cai", "--help"]) == 0
    assert "revise" in capsys.readouterr().out


def test_a_key_given_twice_on_the_command_line_is_an_error(capsys):
    """`lr=1e-3 ... lr=1e-4` typed on one command line kept the last silently; now both items
    are named. The `--key=value` spelling is the same key. `load_config` called by a program
    (base overrides + changes) keeps last-wins."""
    from rlhfkit.cli import main
    from rlhfkit.config import check_unique_overrides

    twice = ["lora.r=4", "seed=1", "--lora.r=8"]
    message = r"lora.r: given twice on the command line \('lora.r=4' and '--lora.r=8'\)"
    with pytest.raises(ConfigError, match=message):
        check_unique_overrides(twice)
    check_unique_overrides(["lora.r=4", "seed=1"])
    assert main(["sft", *twice]) == 2
    assert "given twice on the command line" in capsys.readouterr().err
    assert load_config(SFTConfig, None, twice).lora.r == 8  # programs compose: the last wins


def test_a_key_given_twice_in_a_yaml_file_is_an_error(tmp_path):
    """PyYAML keeps the last of two equal keys; a config file that sets `model` twice is far
    more likely a mistake than a wish, so it is refused with both lines named (and so is a
    pipeline file, which is read the same way)."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("model: a\nlearning_rate: 0.001\nmodel: b\n")
    with pytest.raises(
        ConfigError, match=r"twice.yaml:3: .*key 'model' given twice \(lines 1 and 3\)"
    ):
        load_config(SFTConfig, str(twice), [])
    nested = tmp_path / "nested.yaml"
    nested.write_text("lora:\n  r: 4\n  r: 8\n")
    with pytest.raises(ConfigError, match="key 'r' given twice"):
        load_config(SFTConfig, str(nested), [])
    from rlhfkit.recipes.pipeline import plan

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("output_dir: a\nstages: []\noutput_dir: b\n")
    with pytest.raises(ConfigError, match="key 'output_dir' given twice"):
        plan(pipeline)


@pytest.mark.parametrize("stage", ["pipeline", "demo", "eval", "label", "report", "world"])
def test_one_process_stages_refuse_a_multi_process_launch(stage, monkeypatch, capsys, tmp_path):
    """Under `accelerate launch --num_processes 2` every process would run the whole pipeline
    (or eval, or labelling) and write the same files at once; such stages say so before doing
    anything. Only the training stages scale out."""
    from rlhfkit.cli import STAGES, main

    assert sorted(k for k, v in STAGES.items() if v.scales_out) == ["dpo", "ppo", "rm", "sft"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([stage, f"output_dir={tmp_path / 'out'}"]) == 2
    error = capsys.readouterr().err
    assert f"{stage} runs in one process, but the launcher started 2" in error
    assert "Only sft, rm, dpo and ppo run as several processes" in error
    assert ("run each one under accelerate launch" in error) == (stage in ("pipeline", "demo"))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_values_are_read_as_their_keys_type(tmp_path):
    """`mixed_precision=no` (that key's default, listed in its help) was refused as 'False':
    YAML 1.1 reads no/yes/on/off as booleans. A string key now keeps the text as typed
    (`model=0755` was '493', `train_data=a #x` was 'a'); files read only true/false as booleans;
    `lora={r: 8}` sets lora.r and keeps the file's lora.alpha (it replaced the whole group);
    `compile=1` is true (it was refused as an integer)."""
    from rlhfkit.recipes.sft import SFTConfig

    config = load_config(
        SFTConfig,
        None,
        ["mixed_precision=no", "model=0755", "train_data=a #x", "compile=1", "eval_data=a: b"],
    )
    assert (config.mixed_precision, config.model, config.train_data) == ("no", "0755", "a #x")
    assert config.eval_data == "a: b"  # text, not a mapping, for a string key
    assert config.compile is True and config.learning_rate == SFTConfig().learning_rate
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\nprogress: off\nlora: {r: 4, alpha: 32}\n")
    from_file = load_config(SFTConfig, path, ["lora={r: 8}", "learning_rate=1e-3"])
    assert from_file.mixed_precision == "no" and from_file.progress is False
    assert (from_file.lora.r, from_file.lora.alpha, from_file.learning_rate) == (8, 32, 1e-3)


def test_a_bare_flag_is_true_for_a_boolean_key_and_refused_for_any_other():
    """`--output_dir --corpus_size 10` wrote into ./True: a `--key` without a value was read as
    `key=true` whatever the key's type."""
    from rlhfkit.cli import split_args

    _, overrides = split_args(["--progress", "--output_dir", "--max_steps", "3"])
    with pytest.raises(ConfigError, match=r"--output_dir needs a value"):
        load_config(SFTConfig, None, overrides)
    _, overrides = split_args(["--progress", "--max_steps", "3"])
    config = load_config(SFTConfig, None, ["progress=false", *overrides])
    assert config.progress is True and config.max_steps == 3


def test_a_bad_value_in_the_config_file_names_the_file(tmp_path):
    """An unknown key in a --config file named the file, a bad value there did not
    (`batch_size: expected an integer`): the same value typed on the command line is named
    without a file, and one the command line overrides is no error."""
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: eight\nlora: [{r: 8}]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: batch_size: expected an integer"):
        load_config(SFTConfig, str(path))
    with pytest.raises(ConfigError, match=rf"^{path}: lora: expected a group of keys"):
        load_config(SFTConfig, str(path), ["batch_size=4"])
    path.write_text("batch_size: eight\n")
    assert load_config(SFTConfig, str(path), ["batch_size=4"]).batch_size == 4
    with pytest.raises(ConfigError, match=r"^batch_size: expected an integer, got 'four'"):
        load_config(SFTConfig, str(path), ["batch_size=four"])
