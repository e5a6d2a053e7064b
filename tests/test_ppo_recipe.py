"""The PPO recipe on the tiny preset: first-step invariants, the EOS trick, adaptive KL wired in,
RLOO/GRPO and value-head paths, the critic built from a reward model, and resume."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import load_config
from rlhfkit.errors import ConfigError
from rlhfkit.losses import kl_penalty, ppo_policy_loss
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.models.value_model import ActorCritic, is_reward_model_dir, load_value_model
from rlhfkit.recipes.ppo import (
    PPOConfig,
    PPOOptions,
    _validate_processes,
    forward_in_chunks,
    rollout,
    shape_scores,
    train,
)
from rlhfkit.synthetic import make_prompts
from tests.conftest import run_cli, run_cli_two_processes, write_jsonl

GOLD = "python:rlhfkit.synthetic.gold:gold_rewards"


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppo") / "prompts.jsonl"
    return write_jsonl(path, [{"prompt": p.text} for p in make_prompts(16, seed=3)])


def ppo_config(model, prompts, out, *overrides):
    base = [
        f"model={model}",
        f"train_data={prompts}",
        f"output_dir={out}",
        f"ppo.reward_model={GOLD}",
        "max_steps=2",
        "max_new_tokens=6",
        "ppo.rollout_batch_size=4",
        "ppo.ppo_epochs=2",
        "ppo.num_minibatches=2",
        "learning_rate=1e-3",
        "progress=false",
    ]
    return load_config(PPOConfig, overrides=base + list(overrides))


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_first_step_kl_is_exactly_zero_and_ratio_exactly_one(tiny_model, prompt_file, tmp_path):
    """Policy == reference at the start: their recomputed log-probs are bitwise equal, so every
    per-token KL estimate is 0.0; the first minibatch (a shuffled subset of rows, as the PPO
    epochs draw them) reproduces the rollout log-probs bitwise, so the ratio is exactly 1."""
    config = ppo_config(tiny_model, prompt_file, tmp_path)
    tokenizer = load_tokenizer(str(tiny_model))
    policy = ActorCritic(load_causal_lm(str(tiny_model)))
    reference = TokenLogprobs(load_causal_lm(str(tiny_model), trainable=False))
    prompts = [p.text for p in make_prompts(6, seed=1)]
    ids = [tokenizer(p).input_ids for p in prompts]
    torch.manual_seed(0)
    batch = rollout(policy.lm, tokenizer, ids, prompts, config, torch.device("cpu"))
    assert batch.input_ids.shape[1] > batch.prompt_length
    old = forward_in_chunks(lambda rows: policy(**rows), batch, 3)["logprobs"]
    ref = forward_in_chunks(lambda rows: reference(**rows), batch, 3)["logprobs"]
    for estimator in ("k1", "k2", "k3"):
        assert torch.count_nonzero(kl_penalty(old, ref, estimator) * batch.mask) == 0
    index = torch.tensor([4, 1, 5])
    new = policy(**batch.rows(index))["logprobs"][:, batch.prompt_length :]
    ratio = torch.exp(new - old[index])[batch.mask[index].bool()]
    assert torch.equal(ratio, torch.ones_like(ratio))
    _, info = ppo_policy_loss(
        new, old[index], torch.randn(3, new.shape[1]), batch.mask[index], clip_range=0.2
    )
    assert float(info["ratio_mean"]) == 1.0 and float(info["approx_kl"]) == 0.0


def test_first_step_kl_is_zero_with_a_non_default_attention_kernel(
    tiny_model, prompt_file, tmp_path
):
    """The frozen reference is loaded with the policy's `attn_implementation` (it took
    transformers' default, so with `eager` the policy and the reference differed by the two
    kernels' rounding and step 1's KL was not 0)."""
    out = tmp_path / "eager"
    train(ppo_config(tiny_model, prompt_file, out, "max_steps=1", "attn_implementation=eager"))
    assert read_metrics(out)[0]["kl"] == 0.0


def test_rollouts_give_the_reward_model_conversations_and_unfinished_rows(tiny_model, tmp_path):
    """An rlhfkit reward model gets each row's prompt as loaded (a conversation, which it renders
    and answers as the assistant's turn, as `rm` trained on it) and whether the row ended with
    EOS; other rewards get the rendered prompt text (`score_samples`)."""
    from rlhfkit.data.tokenize import encode_prompt, render_prompt
    from rlhfkit.models.reward_model import RewardScorer

    class Recorder(RewardScorer):
        def __init__(self):
            self.calls = []

        def __call__(self, prompts, responses, *, ended=None):
            self.calls.append((prompts, responses, ended))
            return [0.0] * len(prompts)

    config = ppo_config(tiny_model, "unused.jsonl", tmp_path)
    tokenizer = load_tokenizer(str(tiny_model))
    chat = [{"role": "user", "content": "Name a fruit."}]
    torch.manual_seed(0)
    batch = rollout(
        load_causal_lm(str(tiny_model), trainable=False), tokenizer,
        [encode_prompt(tokenizer, chat)] * 2, [chat, "User: hi\nBot:"], config,
        torch.device("cpu"),
    )  # fmt: skip
    assert batch.prompts == [render_prompt(tokenizer, chat), "User: hi\nBot:"]
    recorder = Recorder()
    assert batch.score(recorder) == [0.0, 0.0]
    assert recorder.calls == [([chat, "User: hi\nBot:"], batch.responses, batch.has_eos.tolist())]
    seen = []
    batch.score(lambda prompts, responses: seen.append(prompts) or [1.0] * len(prompts))
    assert seen == [batch.prompts]


def test_eos_trick_and_score_shaping_by_hand():
    """raw [2, -3, 0.5], gain 2, bias 1 -> [5, -5, 2]; clip 4 -> [4, -4, 2];
    row 1 has no EOS -> its score becomes the penalty -1: [4, -1, 2]."""
    options = PPOOptions(reward_clip=4.0, missing_eos_penalty=-1.0)
    scores = shape_scores(
        torch.tensor([2.0, -3.0, 0.5]), torch.tensor([True, False, True]), options, (2.0, 1.0)
    )
    assert scores.tolist() == [4.0, -1.0, 2.0]
    plain = shape_scores(torch.tensor([2.0]), torch.tensor([False]), PPOOptions(), (1.0, 0.0))
    assert plain.tolist() == [2.0]


@pytest.mark.slow
def test_cli_run_writes_outputs_and_adapts_the_kl_coefficient(tiny_model, prompt_file, tmp_path):
    """Adaptive KL (Ziegler et al.): beta_{s+1} = beta_s (1 + clip(KL_s / target - 1, +-0.2) n /
    horizon) with n = 4 samples per step; step 1's KL is exactly 0 so e = -0.2 and
    beta_2 = 0.05 (1 - 0.2 * 4 / 100) = 0.0496."""
    from tests.conftest import run_cli

    out = tmp_path / "run"
    run_cli(
        "ppo",
        f"model={tiny_model}",
        f"train_data={prompt_file}",
        f"eval_data={prompt_file}",
        f"output_dir={out}",
        f"ppo.reward_model={GOLD}",
        f"ppo.gold_reward={GOLD}",
        "max_steps=3",
        "max_new_tokens=6",
        "ppo.rollout_batch_size=4",
        "ppo.ppo_epochs=2",
        "ppo.target_kl=0.5",
        "ppo.kl_horizon=100",
        "ppo.missing_eos_penalty=-1",
        "ppo.sample_every=2",
        "learning_rate=1e-3",
    )
    summary = json.loads((out / "summary.json").read_text())
    for key in ("reward_start", "reward_end", "kl_end", "gold_reward_start", "gold_reward_end"):
        assert math.isfinite(summary[key]), key
    rows = [r for r in read_metrics(out) if "kl_coef" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "score_mean", "score_std", "kl", "kl_coef", "entropy", "approx_kl", "clipfrac",
        "value_loss", "explained_variance", "response_length", "no_eos_fraction",
        "gold_reward_mean",
    ):  # fmt: skip
        assert key in rows[0], key
    assert rows[0]["kl"] == 0.0
    assert rows[0]["kl_coef"] == 0.05
    for before, after in zip(rows, rows[1:], strict=False):
        error = min(max(before["kl"] / 0.5 - 1, -0.2), 0.2)
        assert after["kl_coef"] == pytest.approx(before["kl_coef"] * (1 + error * 4 / 100), 1e-9)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [1, 2]
    assert {"prompt", "response", "score", "kl", "gold_reward", "has_eos"} <= set(samples[0])
    # The EOS trick: rows without EOS were trained on the penalty score.
    no_eos = rows[0]["no_eos_fraction"]
    assert no_eos > 0 and rows[0]["shaped_score_mean"] <= (1 - no_eos) * 1.0 - no_eos + 1e-6
    assert (out / "model" / "config.json").is_file()
    assert load_causal_lm(str(out / "model"), trainable=False) is not None


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_estimators_run(tiny_model, prompt_file, tmp_path, estimator):
    config = ppo_config(
        tiny_model,
        prompt_file,
        tmp_path,
        f"ppo.advantage_estimator={estimator}",
        "ppo.samples_per_prompt=2",
        "ppo.rollout_batch_size=2",
    )
    summary = train(config)
    rows = read_metrics(tmp_path)
    assert math.isfinite(summary["reward_end"])
    assert "value_loss" not in rows[-1]
    assert math.isfinite(rows[-1]["policy_loss"])
    if estimator == "grpo":
        assert "kl_loss" in rows[-1]


def test_estimator_needs_k_samples(tiny_model, prompt_file, tmp_path):
    from rlhfkit.errors import ConfigError

    with pytest.raises(ConfigError, match="samples_per_prompt"):
        train(ppo_config(tiny_model, prompt_file, tmp_path, "ppo.advantage_estimator=rloo"))


def test_value_head_on_policy_and_ptx(tiny_model, prompt_file, sft_data, tmp_path):
    summary = train(
        ppo_config(
            tiny_model,
            prompt_file,
            tmp_path,
            "ppo.value_head_on_policy=true",
            "ppo.ptx_coef=0.5",
            f"ppo.ptx_data={sft_data}",
            "batch_size=4",
        )
    )
    rows = read_metrics(tmp_path)
    assert math.isfinite(summary["kl_end"])
    assert math.isfinite(rows[-1]["value_loss"]) and rows[-1]["ptx_loss"] > 0


def test_critic_from_a_reward_model_dir_reads_the_reward_head(tiny_model, tmp_path):
    """The critic built from a reward-model directory applies the same head to the same hidden
    states as AutoModelForSequenceClassification: its value at the last position of a text is
    that model's raw reward (before rlhfkit's normalisation)."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    tokenizer = load_tokenizer(str(tiny_model))
    save_reward_model(build_reward_model(str(tiny_model), seed=1), tokenizer, tmp_path / "rm")
    assert is_reward_model_dir(str(tmp_path / "rm")) and not is_reward_model_dir(str(tiny_model))
    critic = load_value_model(str(tmp_path / "rm"))
    seqcls = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    ids = torch.tensor([tokenizer("User: Hi\nBot: Hello.").input_ids])
    target = torch.ones_like(ids)
    extended = torch.cat([ids, ids[:, :1]], dim=1)  # one more token: its value is the last state
    with torch.no_grad():
        values = critic(extended, torch.cat([target, target[:, :1]], dim=1))
        expected = seqcls(ids).logits[0, 0]
    torch.testing.assert_close(values[0, -1], expected, rtol=1e-5, atol=1e-6)


def test_resume_equals_an_uninterrupted_run(tiny_model, prompt_file, tmp_path):
    """4 steps in one go == 2 steps, then resume=true to 4 (adaptive KL state carried)."""
    common = ["ppo.target_kl=0.2", "ppo.kl_horizon=50", "save_steps=2"]
    train(ppo_config(tiny_model, prompt_file, tmp_path / "full", "max_steps=4", *common))
    train(ppo_config(tiny_model, prompt_file, tmp_path / "split", "max_steps=2", *common))
    train(
        ppo_config(
            tiny_model, prompt_file, tmp_path / "split", "max_steps=4", "resume=true", *common
        )
    )
    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(full, split, strict=True):
        for key in ("score_mean", "kl", "kl_coef", "policy_loss", "value_loss", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_two_processes_equal_one(tiny_model, prompt_file, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo DDP) gives one process's run: the same
    samples (per-row sampling noise), scores, KL and losses at every step, and the same final
    weights. Each process samples 2 of the 4 prompts of a step and trains on 1 row of each
    2-row minibatch."""
    args = [
        f"model={tiny_model}", f"train_data={prompt_file}", f"ppo.reward_model={GOLD}",
        "max_steps=2", "max_new_tokens=6", "ppo.rollout_batch_size=4", "ppo.ppo_epochs=2",
        "ppo.num_minibatches=2", "learning_rate=1e-3", "progress=false", "logging_steps=1",
        "ppo.reward_norm_samples=0",
    ]  # fmt: skip
    run_cli("ppo", *args, f"output_dir={tmp_path / 'one'}")
    run_cli_two_processes("ppo", *args, f"output_dir={tmp_path / 'two'}")
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2]
    keys = ("score_mean", "kl", "entropy", "response_length", "policy_loss", "value_loss")
    for a, b in zip(one, two, strict=True):
        for key in (*keys, "clipfrac", "approx_kl", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=5e-5)


def test_process_count_must_divide_the_prompts_and_the_minibatches():
    _validate_processes(PPOOptions(rollout_batch_size=3, num_minibatches=3), 1)  # one: anything
    _validate_processes(PPOOptions(rollout_batch_size=8, num_minibatches=2), 2)
    with pytest.raises(ConfigError, match="rollout_batch_size: with 2 processes"):
        _validate_processes(PPOOptions(rollout_batch_size=6, num_minibatches=6), 2)  # 1-row mb
    with pytest.raises(ConfigError, match="divide by 4"):
        _validate_processes(PPOOptions(rollout_batch_size=6, num_minibatches=1), 4)


def test_rloo_advantages_are_whitened_over_sequences_not_tokens():
    """K = 2, scores [1, -1, 0.5, -0.5], no KL: RLOO gives r_i - r_other = [2, -2, 1, -1].
    Over sequences: mean 0, biased variance (4 + 4 + 1 + 1) / 4 = 2.5, so the whitened values
    are [2, -2, 1, -1] / sqrt(2.5) = [1.2649, -1.2649, 0.6325, -0.6325], on every token of each
    response. Weighting by tokens (lengths 60, 4, 4, 4) would have shifted them by the mean
    (2·60 - 2·4 + 4 - 4) / 72 = 1.556 and made prompt 2's better answer negative."""
    from rlhfkit.recipes.ppo import AdvantageInputs, _rloo

    lengths = [60, 4, 4, 4]
    mask = torch.zeros(4, 60)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    inputs = AdvantageInputs(
        scores=torch.tensor([1.0, -1.0, 0.5, -0.5]),
        kl=torch.zeros(4, 60),
        values=None,
        mask=mask,
        kl_coef=0.1,
    )
    advantages, returns, _ = _rloo(inputs, PPOOptions(samples_per_prompt=2))
    expected = torch.tensor([2.0, -2.0, 1.0, -1.0]) / math.sqrt(2.5)
    assert returns is None
    for row, n in enumerate(lengths):
        assert torch.allclose(advantages[row, :n], expected[row].expand(n), atol=1e-6)
        assert not advantages[row, n:].any()
    plain, _, _ = _rloo(inputs, PPOOptions(samples_per_prompt=2, whiten_advantages=False))
    assert plain[:, 0].tolist() == [2.0, -2.0, 1.0, -1.0]
