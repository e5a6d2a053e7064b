"""Stage keys of ppo, eval, label and dpo: out-of-range and unused values are one-line errors
before any model loads, loader errors name the stage's own key, and what is left out is said."""

from __future__ import annotations

import json

import pytest

from rlhfkit.config import load_config
from rlhfkit.errors import ConfigError, DataError, relabel_error
from rlhfkit.recipes.evaluate import EvalConfig, check_mode_keys
from rlhfkit.recipes.evaluate import run as run_eval
from rlhfkit.recipes.label import LabelConfig, label
from rlhfkit.recipes.ppo import PPOConfig, check_config
from rlhfkit.recipes.ppo import train as train_ppo
from rlhfkit.synthetic import make_prompts
from tests.conftest import run_cli, write_jsonl

GOLD = "python:rlhfkit.synthetic.gold:gold_rewards"


def _ppo(*overrides: str) -> PPOConfig:
    base = ["model=unused", "train_data=prompts.jsonl", f"ppo.reward_model={GOLD}"]
    return load_config(PPOConfig, overrides=base + list(overrides))


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.kl_estimator=k9", "ppo.kl_estimator: unknown 'k9'; choose k1, k2, k3"),
        ("grad_accum=8", "grad_accum: not used by ppo (got 8); each PPO epoch takes ppo.num"),
        ("eval_steps=5", "eval_steps: not used by ppo (got 5); eval_data is evaluated once"),
        ("eval_batch_size=4", "eval_batch_size: not used by ppo (got 4); the evaluation runs"),
        ("compile=true", "compile: not used by ppo (got true); sampling grows the sequence"),
        # Range checks: config.py may refuse these first with its own wording; either way the
        # one-line error names the key and the value.
        ("ppo.rollout_batch_size=0", "ppo.rollout_batch_size: must be"),
        ("ppo.ppo_epochs=0", "ppo.ppo_epochs: must be"),
        ("ppo.samples_per_prompt=0", "ppo.samples_per_prompt: must be"),
        ("max_new_tokens=0", "max_new_tokens: must be"),
        ("batch_size=0", "batch_size: must be"),
        ("top_p=0", "top_p: must be"),
        ("top_p=5", "top_p: must be"),
        ("temperature=0", "temperature: must be"),
        ("temperature=-1", "temperature: must be"),
        # a negative β or horizon crashed with a traceback after the models loaded
        ("ppo.kl_coef=-0.1", "ppo.kl_coef: must be >= 0"),
        ("ppo.kl_horizon=0", "ppo.kl_horizon: must be > 0"),
        ("ppo.target_kl=-1", "ppo.target_kl: must be >= 0"),
        ("ppo.ptx_coef=-1", "ppo.ptx_coef: must be >= 0"),
        ("ppo.sample_every=-1", "ppo.sample_every: must be >= 0"),
        ("ppo.clip_range=0", "ppo.clip_range: must be > 0"),
        ("ppo.gamma=1.5", "ppo.gamma: must be <= 1"),
    ],
)
def test_ppo_refuses_bad_values_up_front(override, message):
    with pytest.raises(ConfigError) as caught:
        check_config(_ppo(override))
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text
    assert override.split("=")[1].lstrip("-") in text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ppo.ptx_data=sft.jsonl"], "ppo.ptx_data: given, but ppo.ptx_coef is 0"),
        (
            ["ppo.advantage_estimator=rloo", "ppo.samples_per_prompt=2", "ppo.value_model=nope"],
            "ppo.value_model: not used by ppo.advantage_estimator=rloo, which has no critic",
        ),
        (
            ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=2", "ppo.lam=0.9"],
            "ppo.lam: not used by ppo.advantage_estimator=grpo",
        ),
        (
            ["ppo.advantage_estimator=rloo", "ppo.samples_per_prompt=2", "ppo.whiten_rewards=true"],
            "ppo.whiten_rewards: not used by ppo.advantage_estimator=rloo",
        ),
    ],
)
def test_ppo_refuses_keys_it_would_ignore(overrides, message):
    """Each of these ran and was silently ignored (ptx_data without ptx_coef; a critic's keys,
    even a value_model that does not exist, without a critic)."""
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        check_config(_ppo(*overrides))


@pytest.mark.parametrize("spelling", ["", "none", "None", "null", "~"])
def test_an_optional_key_is_turned_off_by_none_null_or_empty(spelling):
    """`ppo.missing_eos_penalty` says "null = off", and `=none` or `=` were refused with
    "'' is not a valid float | None", so a penalty inherited from a config.yaml could only be
    turned off with the YAML word null."""
    base = _ppo("ppo.missing_eos_penalty=-1")
    assert base.ppo.missing_eos_penalty == -1.0
    assert _ppo("ppo.missing_eos_penalty=-1", f"ppo.missing_eos_penalty={spelling}")
    config = load_config(
        PPOConfig,
        overrides=[
            "model=unused",
            "train_data=prompts.jsonl",
            f"ppo.reward_model={GOLD}",
            f"ppo.missing_eos_penalty={spelling}",
        ],
    )
    assert config.ppo.missing_eos_penalty is None


def test_ppo_checks_declared_limits_of_a_config_built_in_python():
    """`train(PPOConfig(...))` skips the command line's parsing; `check_config` checks the same
    declared limits (`config.check_limits`), nested groups included."""
    config = _ppo()
    config.ppo.ppo_epochs = 0
    with pytest.raises(ConfigError, match=r"^ppo.ppo_epochs: must be >= 1, got 0$"):
        check_config(config)
    config = _ppo()
    config.temperature = 0.0
    with pytest.raises(ConfigError, match=r"^temperature: must be > 0, got 0.0$"):
        check_config(config)


def test_ppo_accepts_the_defaults_and_valid_edges():
    check_config(_ppo())
    check_config(_ppo("top_p=1", "temperature=0.01", "ppo.kl_estimator=k3", "max_new_tokens=1"))


def test_ppo_help_says_max_steps_counts_ppo_iterations():
    result = run_cli("ppo", "--help")
    line = next(row for row in result.stdout.splitlines() if row.strip().startswith("max_steps"))
    assert "PPO iterations" in line and "optimizer steps" in line
    grad_accum = next(r for r in result.stdout.splitlines() if r.strip().startswith("grad_accum"))
    assert "not used by ppo" in grad_accum


def test_relabel_error_replaces_only_the_loaders_key():
    err = relabel_error(ConfigError("model: cannot load 'x'"), "dpo.reference", ("model",))
    assert str(err) == "dpo.reference: cannot load 'x'"
    other = ConfigError("dtype: unknown dtype 'x'")
    assert relabel_error(other, "dpo.reference", ("model",)) is other


def test_ppo_gold_reward_error_names_its_key(tiny_model, tmp_path):
    """The reward loader speaks of `reward_model`; for ppo.gold_reward the error names that."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(8)])
    config = load_config(
        PPOConfig,
        overrides=[
            f"model={tiny_model}",
            f"train_data={prompts}",
            f"ppo.reward_model={GOLD}",
            "ppo.gold_reward=python:rlhfkit.synthetic.gold:nope",
            f"output_dir={tmp_path / 'out'}",
            "progress=false",
        ],
    )
    with pytest.raises(ConfigError, match=r"^ppo\.gold_reward: rlhfkit\.synthetic\.gold has no"):
        train_ppo(config)


def test_ppo_says_how_many_prompts_each_epoch_leaves_out(tiny_model, tmp_path):
    """16 prompts, 5 per step: each epoch leaves out 1 prompt, and the console says so."""
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": p.text} for p in make_prompts(16, seed=3)]
    )
    result = run_cli(
        "ppo", f"model={tiny_model}", f"train_data={prompts}", f"ppo.reward_model={GOLD}",
        "ppo.rollout_batch_size=5", "max_steps=1", "max_new_tokens=3", "ppo.ppo_epochs=1",
        f"output_dir={tmp_path / 'out'}", "progress=false",
    )  # fmt: skip
    console = " ".join((result.stdout + result.stderr).split())
    assert "each epoch leaves out the last 1 prompts" in console
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 1


def test_dpo_reference_error_names_dpo_reference(tiny_model, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pref.jsonl",
        [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(4)],
    )
    not_a_model = tmp_path / "not_a_model"
    result = run_cli(
        "dpo", f"model={tiny_model}", f"train_data={pairs}", f"dpo.reference={not_a_model}/x",
        "batch_size=2", "max_steps=1", f"output_dir={tmp_path / 'out'}", "progress=false",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: dpo.reference: '{not_a_model}/x' is not a model directory" in result.stderr
    assert "Traceback" not in result.stderr


# --- eval ------------------------------------------------------------------------------------


def _eval(*overrides: str) -> EvalConfig:
    return load_config(EvalConfig, overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("model=doesnotexist", f"reward_model={GOLD}", "data=x.jsonl"), "model: not used by eval"),
        (("policies=a", "reference=b", "prompts=p", "data=x.jsonl"), "data: a key of scoring mode"),
        (("policies=a", "reference=b", "prompts=p", "batch_size=0"), "batch_size: a key of scor"),
        (("policies=a", "reference=b", "prompts=p", "normalized=false"), "normalized: a key of"),
        (("policies=a", "reference=b", "prompts=p", "max_length=9"), "max_length: a key of scor"),
        (("policies=a", "reference=b", "prompts=p", "output=o.jsonl"), "output: a key of scoring"),
        (("policies=a", "reference=b", "prompts=p", "dtype=float99"), "dtype: must be one of"),
        ((f"reward_model={GOLD}", "data=x.jsonl", "best_of_n=3"), "best_of_n: a key of policy"),
        ((f"reward_model={GOLD}", "data=x.jsonl", "prompts=p"), "prompts: a key of policy"),
        (("policies=a", "reference=b", "prompts=p", "best_of_n=-3"), "best_of_n: must be >= 0"),
        ((f"reward_model={GOLD}", "data=x.jsonl", "batch_size=0"), "batch_size: must be >= 1"),
        ((f"reward_model={GOLD}", "data=x.jsonl", "dtype=float99"), "dtype: must be one of"),
    ],
)
def test_eval_refuses_keys_it_would_not_use(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=f"^{message}"):  # as the config is read, or at start
        run_eval(_eval(*overrides, f"output_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out" / "config.yaml").exists()  # refused before the run starts


def test_eval_mode_keys_accept_each_modes_own_keys():
    check_mode_keys(_eval(f"reward_model={GOLD}", "data=x", "batch_size=4", "dtype=float32"), False)
    check_mode_keys(
        _eval("policies=a", "best_of_n=0", "top_p=0.9", f"reward_model={GOLD}", "dtype=bfloat16"),
        True,
    )


def test_eval_scoring_uses_dtype_and_scores(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "What is 2+2?", "completion": "4"}])
    summary = run_eval(
        _eval(
            f"reward_model={GOLD}",
            f"data={data}",
            "dtype=float32",
            f"output_dir={tmp_path / 'out'}",
            "progress=false",
        )  # fmt: skip
    )
    assert summary["scored"] == 1


# --- label -----------------------------------------------------------------------------------


def _label(tmp_path, train_data, **kw) -> LabelConfig:
    return LabelConfig(
        judge=kw.pop("judge", "simulated"),
        train_data=str(train_data),
        output=str(tmp_path / "labels.jsonl"),
        constitution="world",
        progress=False,
        **kw,
    )


def test_label_refuses_an_empty_input(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no pairs to label"):
        label(_label(tmp_path, empty))
    assert not (tmp_path / "labels.jsonl").exists()


def test_label_refuses_zero_annotators(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ConfigError, match=r"^annotators: must be >= 1, got 0$"):
        label(_label(tmp_path, pairs, annotators=0))


def test_label_names_the_judge_key_for_a_judge_it_cannot_load(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    not_a_model = tmp_path / "nope"
    not_a_model.mkdir()
    with pytest.raises(ConfigError, match=r"^judge: "):
        label(_label(tmp_path, pairs, judge=str(not_a_model)))


def test_label_prints_the_pairs_skipped_as_identical(tmp_path):
    prompt = make_prompts(1, seed=0)[0].text
    pairs = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": prompt, "chosen": "Sure.", "rejected": "Sure."},
            {"prompt": prompt, "chosen": "Sure, here it is.", "rejected": "No."},
        ],
    )
    out = tmp_path / "labels.jsonl"
    result = run_cli(
        "label", "judge=simulated", f"train_data={pairs}", f"output={out}", "constitution=world"
    )
    console = " ".join((result.stdout + result.stderr).split())
    assert "1 pair(s) skipped: the two responses are identical" in console
    summary = json.loads((tmp_path / "labels.summary.json").read_text())
    assert summary["skipped_identical"] == 1 and summary["pairs"] == 1


@pytest.mark.parametrize("stage", ["ppo", "dpo", "rm"])
def test_stages_with_ratios_refuse_lora_dropout_before_loading(stage, tmp_path, capsys):
    """peft's LoRA dropout was left on (the model's dropout was turned off before the adapters
    existed): with lora.dropout=0.1 PPO's ratio was 0.9994 before any update. ppo, dpo and rm
    refuse it before anything loads (the model named does not even exist); without LoRA (r=0)
    the key does nothing and is not what stops the run."""
    from rlhfkit.cli import main

    out = tmp_path / "out"
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    keys = [f"model={tmp_path / 'missing'}", f"train_data={data}", f"output_dir={out}"]
    if stage == "ppo":
        keys.append(f"ppo.reward_model={GOLD}")
    assert main([stage, *keys, "lora.r=4", "lora.dropout=0.1"]) != 0
    assert "lora.dropout: 0.1 is for sft only" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()
    assert main([stage, *keys, "lora.dropout=0.1"]) != 0  # stopped by the missing model
    assert "lora.dropout" not in capsys.readouterr().err


def test_sft_keeps_lora_dropout_on_its_adapters(tiny_model):
    """SFT is where `lora.dropout` regularises: its adapters keep p, the base model's own
    dropout is off."""
    import torch

    from rlhfkit.models.loading import LoraSettings, load_causal_lm

    model = load_causal_lm(
        str(tiny_model), lora=LoraSettings(4, 8, 0.1, ["q_proj", "v_proj"]), dtype="float32"
    )
    rates = {
        name: module.p
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Dropout)
    }
    assert rates and all((p == 0.1) == ("lora_dropout" in name) for name, p in rates.items()), rates
