"""The PPO recipe on the tiny preset: first-step invariants, the EOS trick, adaptive KL wired in,
RLOO/GRPO and value-head paths, the critic built from a reward model, and resume."""

import json
import math
import statistics
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import load_config
from rlhfkit.errors import ConfigError
from rlhfkit.losses import kl_penalty, ppo_policy_loss
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.models.reward_fn import load_reward_function
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


def test_first_step_kl_is_zero_under_bf16_mixed_precision(tiny_model, prompt_file, tmp_path):
    """accelerate runs the prepared policy under bf16 autocast; the frozen reference copy, not
    prepared, ran in fp32, so step 1's KL was ~1e-2 instead of 0. It now runs under the same
    autocast."""
    from accelerate.state import AcceleratorState

    out = tmp_path / "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)  # other tests made one without bf16
    try:
        train(ppo_config(tiny_model, prompt_file, out, "max_steps=1", "mixed_precision=bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
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
            self.model = SimpleNamespace(num_heads=1)  # a one-head reward model's shape

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
        "gold_reward_mean", "samples_per_s", "generation_share", "score_s", "update_s",
    ):  # fmt: skip
        assert key in rows[0], key
    assert all(r["score_s"] >= 0 and r["update_s"] > 0 for r in rows)
    assert "reward_disagreement" not in rows[0]  # a python: reward has no heads
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


def test_adaptive_kl_from_a_zero_coefficient_is_refused_before_loading(prompt_file, tmp_path):
    """β ← β(1 + e·n/horizon) stays 0 from 0: `ppo.target_kl` with `ppo.kl_coef=0` was a
    ValueError traceback after every model had loaded; now one line naming the key, first
    (the model path does not even exist)."""
    from rlhfkit.errors import ConfigError

    config = ppo_config(tmp_path / "no-model", prompt_file, tmp_path, "ppo.kl_coef=0",
                        "ppo.target_kl=6")  # fmt: skip
    with pytest.raises(ConfigError, match=r"ppo\.kl_coef: the adaptive controller .* got 0\.0"):
        train(config)


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


def test_critic_from_a_reward_model_dir_starts_at_its_normalised_score(tiny_model, tmp_path):
    """The critic built from a reward-model directory applies the same head to the same hidden
    states as AutoModelForSequenceClassification, with the stored normalisation folded in: its
    value at the last position of a text is the score PPO is given, gain x raw + bias (it was
    the raw reward, on another scale than the returns it regresses to)."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    tokenizer = load_tokenizer(str(tiny_model))
    reward_model = build_reward_model(str(tiny_model), seed=1)
    reward_model.set_normalization([2.0], [0.5], "a test")
    save_reward_model(reward_model, tokenizer, tmp_path / "rm")
    assert is_reward_model_dir(str(tmp_path / "rm")) and not is_reward_model_dir(str(tiny_model))
    critic = load_value_model(str(tmp_path / "rm"))
    seqcls = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    ids = torch.tensor([tokenizer("User: Hi\nBot: Hello.").input_ids])
    target = torch.ones_like(ids)
    extended = torch.cat([ids, ids[:, :1]], dim=1)  # one more token: its value is the last state
    with torch.no_grad():
        values = critic(extended, torch.cat([target, target[:, :1]], dim=1))
        expected = 2.0 * seqcls(ids).logits[0, 0] + 0.5
    torch.testing.assert_close(values[0, -1], expected, rtol=1e-5, atol=1e-6)


def test_reward_head_averages_the_normalised_heads():
    """Two heads w = [1, 2] and [3, 4], raw biases 1 and -1, gains 2 and 0.5, biases 0.1 and
    0.3: the scorer's reward mean_k(g_k (w_k·h + b_k) + β_k) is one linear map with weight
    mean([2, 4], [1.5, 2]) = [1.75, 3.0] and bias mean(2·1 + 0.1, 0.5·(-1) + 0.3) =
    mean(2.1, -0.2) = 0.95. Folding a later normalisation (gain 2, bias -1) gives weight
    [3.5, 6.0] and bias 2 · 0.95 - 1 = 0.9. Without gains the heads are just averaged, and a
    head without a bias gets one (0)."""
    from rlhfkit.models.value_model import fold_normalization, reward_head

    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        head.bias.copy_(torch.tensor([1.0, -1.0]))
    folded = reward_head(head, [2.0, 0.5], [0.1, 0.3])
    torch.testing.assert_close(folded.weight, torch.tensor([[1.75, 3.0]]))
    torch.testing.assert_close(folded.bias, torch.tensor([0.95]))
    fold_normalization(folded, 2.0, -1.0)
    torch.testing.assert_close(folded.weight, torch.tensor([[3.5, 6.0]]))
    torch.testing.assert_close(folded.bias, torch.tensor([0.9]))
    plain = reward_head(torch.nn.Linear(2, 2, bias=False), [], [])
    assert plain.bias is not None and float(plain.bias) == 0.0


def record_critic_sources(monkeypatch) -> list[str]:
    """The directories PPO loads its critic from, in order, appended as it loads them."""
    import rlhfkit.recipes.ppo as ppo_recipe

    sources = []
    real = ppo_recipe.load_value_model

    def recording(source, **kwargs):
        sources.append(str(source))
        return real(source, **kwargs)

    monkeypatch.setattr(ppo_recipe, "load_value_model", recording)
    return sources


def test_the_critic_starts_from_the_reward_model_unless_told_otherwise(
    tiny_model, prompt_file, tmp_path, monkeypatch
):
    """Where the critic's weights come from: `ppo.value_model` if given; else the reward model
    when `ppo.reward_model` is an rlhfkit reward-model directory (InstructGPT's choice); else the
    policy (a python: or http reward has no weights to start from). The normalisation of
    `ppo.reward_norm_samples` is folded into a critic started from the reward model only."""
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    rm = tmp_path / "rm"
    save_reward_model(
        build_reward_model(str(tiny_model), seed=1), load_tokenizer(str(tiny_model)), rm
    )
    sources = record_critic_sources(monkeypatch)
    import rlhfkit.recipes.ppo as ppo_recipe

    folded = []  # the normalisation PPO fits is folded into a critic that predicts scores only
    real_fold = ppo_recipe.fold_normalization
    monkeypatch.setattr(
        ppo_recipe,
        "fold_normalization",
        lambda head, g, b: folded.append(g) or real_fold(head, g, b),
    )
    one_step = ["max_steps=1", "ppo.ppo_epochs=1", "ppo.num_minibatches=1"]
    one_step += ["ppo.reward_norm_samples=4"]
    train(ppo_config(tiny_model, prompt_file, tmp_path / "a", *one_step))
    assert folded == []  # a new head on the policy predicts no score
    train(ppo_config(tiny_model, prompt_file, tmp_path / "b", *one_step, f"ppo.reward_model={rm}"))
    assert len(folded) == 1 and folded[0] > 0
    explicit = [f"ppo.reward_model={rm}", f"ppo.value_model={tiny_model}"]
    train(ppo_config(tiny_model, prompt_file, tmp_path / "c", *one_step, *explicit))
    assert sources == [str(tiny_model), str(rm), str(tiny_model)] and len(folded) == 1


def test_uncertainty_penalty_scores_mean_minus_std_of_the_ensemble(
    tiny_model, prompt_file, tmp_path
):
    """`ppo.uncertainty_coef=c` with a 3-head reward model: every score PPO logs in
    samples.jsonl is mean - c x std over the heads of that sample (recomputed here with the
    saved scorer's heads); with a python: reward it is a one-line config error."""
    from rlhfkit.models.reward_model import (
        build_reward_model,
        ensemble_reward,
        load_reward_scorer,
        save_reward_model,
    )

    rm = tmp_path / "rm"
    tokenizer = load_tokenizer(str(tiny_model))
    save_reward_model(build_reward_model(str(tiny_model), num_heads=3, seed=1), tokenizer, rm)
    out = tmp_path / "ppo"
    train(
        ppo_config(
            tiny_model,
            prompt_file,
            out,
            "max_steps=1",
            f"ppo.reward_model={rm}",
            "ppo.uncertainty_coef=2.0",
            "ppo.sample_every=1",
            "ppo.reward_norm_samples=0",
        )  # fmt: skip
    )
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    scorer = load_reward_scorer(rm)
    heads = scorer.score_heads(
        [r["prompt"] for r in rows], [r["response"] for r in rows],
        ended=[r["has_eos"] for r in rows],
    )  # fmt: skip
    spread = [max(h) - min(h) for h in heads]
    assert max(spread) > 0  # three differently initialised heads
    expected = [ensemble_reward(h, 2.0) for h in heads]
    assert [r["score"] for r in rows] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # The step's disagreement: the mean over its responses of the heads' population std.
    (logged,) = [r for r in read_metrics(out) if "score_mean" in r]
    stds = [statistics.pstdev(h) for h in heads]
    assert logged["reward_disagreement"] == pytest.approx(statistics.fmean(stds), rel=1e-4)

    with pytest.raises(ConfigError, match="ppo.uncertainty_coef: 0.5 needs ppo.reward_model"):
        train(ppo_config(tiny_model, prompt_file, tmp_path / "bad", "ppo.uncertainty_coef=0.5"))


def test_ppo_against_an_ensemble_of_reward_model_directories(
    tiny_model, prompt_file, tmp_path, monkeypatch
):
    """`ppo.reward_model=A,B` (two one-head reward models, seeds 1 and 2) with
    `ppo.uncertainty_coef=1`: every logged score is mean - 1 x std over (A's head, B's head),
    the step logs their mean std as `reward_disagreement`, and the critic starts from A."""
    from rlhfkit.models.reward_model import build_reward_model, ensemble_reward, save_reward_model

    tokenizer = load_tokenizer(str(tiny_model))
    members = [tmp_path / "rm_a", tmp_path / "rm_b"]
    for seed, path in enumerate(members, start=1):
        save_reward_model(build_reward_model(str(tiny_model), seed=seed), tokenizer, path)
    sources = record_critic_sources(monkeypatch)
    out = tmp_path / "ppo"
    spec = ",".join(str(p) for p in members)
    overrides = [
        "max_steps=1", f"ppo.reward_model={spec}", "ppo.uncertainty_coef=1.0",
        "ppo.sample_every=1", "ppo.reward_norm_samples=0",
    ]  # fmt: skip
    train(ppo_config(tiny_model, prompt_file, out, *overrides))
    assert sources == [str(members[0])]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    ensemble = load_reward_function(spec)
    heads = ensemble.score_heads(
        [r["prompt"] for r in rows], [r["response"] for r in rows],
        ended=[r["has_eos"] for r in rows],
    )  # fmt: skip
    assert all(len(h) == 2 for h in heads) and max(abs(a - b) for a, b in heads) > 0
    expected = [ensemble_reward(h, 1.0) for h in heads]
    assert [r["score"] for r in rows] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    (logged,) = [r for r in read_metrics(out) if "score_mean" in r]
    stds = [statistics.pstdev(h) for h in heads]
    assert logged["reward_disagreement"] == pytest.approx(statistics.fmean(stds), rel=1e-4)


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


# ---------------------------------------------------------------------------------------------
# Paths of the loop: temperature, reward normalisation, whitening, minibatches, PPO-ptx, LoRA,
# the hf sampler, the value head on the policy, pad == EOS.
# ---------------------------------------------------------------------------------------------

ONE_UPDATE = ("max_steps=1", "ppo.ppo_epochs=1", "ppo.num_minibatches=1")


def built_models(monkeypatch) -> dict:
    """Record the recipe's `ActorCritic` (and a copy of its weights) when it is built, and a copy
    of its weights when training ends (before `export_policy`, which merges LoRA adapters)."""
    from rlhfkit.recipes import ppo as ppo_module

    built = {}
    real_build, real_export = ppo_module.ActorCritic, ppo_module.export_policy

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built["model"] = model
        built["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model

    def export(run, model, tokenizer):
        state = run.accelerator.unwrap_model(model).state_dict()
        built["final"] = {k: v.detach().clone() for k, v in state.items()}
        real_export(run, model, tokenizer)

    monkeypatch.setattr(ppo_module, "ActorCritic", build)
    monkeypatch.setattr(ppo_module, "export_policy", export)
    return built


def test_sampling_temperature_reaches_every_logprob_computation(
    tiny_model, prompt_file, tmp_path, monkeypatch
):
    """temperature=0.7: the sampler, the rollout's policy forward (old log-probs, entropy), the
    reference forward and the training forward all run at 0.7 (every call of the LM-head
    log-softmax records its temperature), so step 1's KL is exactly 0 and its single update's
    ratio exactly 1 (approx_kl 0, nothing clipped). A forward left at 1 would either show here
    (a KL or ratio off) or, had all of them stayed at 1, in the recorded temperatures."""
    from rlhfkit.models import logprobs as logprobs_module
    from rlhfkit.recipes import ppo as ppo_module

    seen = {"logits": [], "sampler": []}
    real_logits = logprobs_module._chunk_logits
    real_sampler = ppo_module.sample_with_logprobs

    def logits(hidden, weight, bias, temperature, softcap=None):
        seen["logits"].append(temperature)
        return real_logits(hidden, weight, bias, temperature, softcap)

    def sampler(*args, **kwargs):
        seen["sampler"].append(kwargs["temperature"])
        return real_sampler(*args, **kwargs)

    monkeypatch.setattr(logprobs_module, "_chunk_logits", logits)
    monkeypatch.setattr(ppo_module, "sample_with_logprobs", sampler)
    train(ppo_config(tiny_model, prompt_file, tmp_path, "temperature=0.7", *ONE_UPDATE))
    row = read_metrics(tmp_path)[0]
    assert row["kl"] == 0.0
    assert row["ratio_mean"] == 1.0 and row["approx_kl"] == 0.0 and row["clipfrac"] == 0.0
    # One LM-head pass each (4 rows: one chunk): old log-probs with the entropy from the same
    # logits, reference log-probs, the update.
    assert seen["logits"] == [0.7, 0.7, 0.7] and seen["sampler"] == [0.7]


def test_reward_normalisation_fits_gain_and_bias_on_the_initial_samples(
    tiny_model, prompt_file, tmp_path, monkeypatch
):
    """ppo.reward_norm_samples=6 with batch_size=4: two scoring passes (4 + 2 rows) before the
    loop. The reward counts its calls' rows, 1, 2, ..., so the fitting scores are 1..6: mean
    3.5, biased variance (2.5² + 1.5² + 0.5²) · 2 / 6 = 35/12, std 1.70783; gain 1 / 1.70783 =
    0.585540, bias -3.5 · 0.585540 = -2.049390 (the fitting scores become mean 0, std 1). Step 1
    scores 7, 8, 9, 10, which the loop sees as (x - 3.5) / 1.70783 = 2.04939, 2.63493, 3.22047,
    3.80601 (mean 2.92770); score_mean logs the raw 8.5."""
    from rlhfkit.recipes import ppo as ppo_module

    counter = iter(range(1, 1000))
    passes = []

    def reward(prompts, responses):
        passes.append(len(responses))
        return [float(next(counter)) for _ in responses]

    shaped = []
    real_shape = ppo_module.shape_scores

    def shape(raw, has_eos, options, norm):
        shaped.append((norm, real_shape(raw, has_eos, options, norm)))
        return shaped[-1][1]

    monkeypatch.setattr(ppo_module, "load_reward_function", lambda spec, **kwargs: reward)
    monkeypatch.setattr(ppo_module, "shape_scores", shape)
    config = ppo_config(
        tiny_model, prompt_file, tmp_path, "ppo.reward_norm_samples=6", "batch_size=4", *ONE_UPDATE
    )
    train(config)
    assert passes == [4, 2, 4]
    [(norm, scores)] = shaped
    gain, bias = norm
    assert gain == pytest.approx(1 / math.sqrt(35 / 12), rel=1e-9)
    assert gain == pytest.approx(0.585540, rel=1e-5) and bias == pytest.approx(-2.049390, rel=1e-5)
    fitted = torch.arange(1.0, 7.0, dtype=torch.float64) * gain + bias
    assert float(fitted.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(fitted.std(correction=0)) == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(
        scores, torch.tensor([2.04939, 2.63493, 3.22047, 3.80601]), rtol=1e-5, atol=0
    )
    row = read_metrics(tmp_path)[0]
    assert row["score_mean"] == 8.5
    assert row["shaped_score_mean"] == pytest.approx(2.92770, rel=1e-5)


def test_gae_path_whitens_rewards_by_scale_and_advantages_by_hand():
    """Scores [1, -1], no KL, masks [1, 1, 1] and [1, 1, 0], values 0, gamma = lam = 1.
    Rewards (score on the last token): [0, 0, 1], [0, -1, 0].
    whiten_rewards (scale only): masked mean 0, biased variance (1 + 1) / 5 = 0.4, so rewards /
    sqrt(0.4) = [0, 0, 1.58114], [0, -1.58114, 0].
    GAE with gamma = lam = 1 and V = 0: advantages = rewards to go = returns:
    [1.58114] * 3, [-1.58114, -1.58114, 0] (without reward whitening: [1, 1, 1], [-1, -1, 0]).
    Advantage whitening over the 5 response tokens (3 of a, 2 of -a): mean a/5, deviations
    4a/5 and -6a/5, variance (3·16 + 2·36) a² / 125 = 0.96 a², whitened sqrt(2/3) = 0.816497 and
    -sqrt(3/2) = -1.224745 whatever a is; the padding stays 0. Returns come from the advantages
    before whitening; the rewards returned are the shaped ones, unscaled."""
    from rlhfkit.recipes.ppo import AdvantageInputs, _gae

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    inputs = AdvantageInputs(
        scores=torch.tensor([1.0, -1.0]),
        kl=torch.zeros(2, 3),
        values=torch.zeros(2, 3),
        mask=mask,
        kl_coef=0.1,
    )
    a = 1 / math.sqrt(0.4)
    plain = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    whitened = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    whitened[0] *= math.sqrt(2 / 3)
    whitened[1] *= math.sqrt(3 / 2)

    options = PPOOptions(gamma=1.0, lam=1.0, whiten_rewards=True, whiten_advantages=True)
    advantages, returns, rewards = _gae(inputs, options)
    # The rewards returned (logged as reward_mean) are the shaped ones, before the scaling.
    assert rewards.tolist() == [[0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]
    torch.testing.assert_close(returns, plain * a, rtol=1e-5, atol=0)
    torch.testing.assert_close(advantages, whitened, rtol=1e-5, atol=1e-7)
    assert advantages[1, 2] == 0

    options = PPOOptions(gamma=1.0, lam=1.0, whiten_rewards=False, whiten_advantages=False)
    advantages, returns, rewards = _gae(inputs, options)
    assert rewards.tolist() == [[0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]
    assert advantages.tolist() == plain.tolist() and returns.tolist() == plain.tolist()


@pytest.mark.parametrize("whiten_rewards", [False, True])
@pytest.mark.parametrize("whiten_advantages", [False, True])
def test_gae_path_equals_the_library_functions_composed(whiten_rewards, whiten_advantages):
    """Random KL, values, scores and ragged masks, gamma 0.9, lam 0.8: `_gae` is
    kl_shaped_rewards -> (masked_whiten, scale only) -> gae_advantages -> (masked_whiten), the
    returns taken before the advantages are whitened."""
    from rlhfkit.losses import gae_advantages, kl_shaped_rewards, masked_whiten
    from rlhfkit.recipes.ppo import AdvantageInputs, _gae

    generator = torch.Generator().manual_seed(0)
    lengths = [5, 2, 4]
    mask = torch.zeros(3, 5)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    kl = torch.randn(3, 5, generator=generator) * 0.1 * mask
    values = torch.randn(3, 5, generator=generator) * mask
    scores = torch.randn(3, generator=generator)
    inputs = AdvantageInputs(scores, kl, values, mask, kl_coef=0.2)
    options = PPOOptions(
        gamma=0.9, lam=0.8, whiten_rewards=whiten_rewards, whiten_advantages=whiten_advantages
    )
    advantages, returns, rewards = _gae(inputs, options)

    expected_rewards = kl_shaped_rewards(scores, kl, mask, kl_coef=0.2)
    gae_rewards = expected_rewards
    if whiten_rewards:
        gae_rewards = masked_whiten(expected_rewards, mask, shift_mean=False)
    expected_advantages, expected_returns = gae_advantages(
        gae_rewards, values, mask, gamma=0.9, lam=0.8
    )
    if whiten_advantages:
        expected_advantages = masked_whiten(expected_advantages, mask)
    torch.testing.assert_close(rewards, expected_rewards, rtol=0, atol=0)
    torch.testing.assert_close(returns, expected_returns, rtol=0, atol=0)
    torch.testing.assert_close(advantages, expected_advantages, rtol=0, atol=0)
    if whiten_advantages:
        kept = advantages[mask.bool()]
        assert float(kept.mean()) == pytest.approx(0.0, abs=1e-6)
        assert float(kept.var(correction=0)) == pytest.approx(1.0, rel=1e-5)


def test_each_step_takes_epochs_times_minibatches_updates_over_the_whole_batch(
    tiny_model, prompt_file, tmp_path, monkeypatch
):
    """ppo.ppo_epochs=3, ppo.num_minibatches=2, 4 rows per step: 3 x 2 = 6 optimizer steps, each
    after a training forward over 2 rows; the two minibatches of each epoch are a partition of
    the step's 4 rollout rows (the rows of the no-gradient rollout forward)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    calls = []
    real_forward = ActorCritic.forward

    def forward(self, input_ids, *args, **kwargs):
        calls.append((torch.is_grad_enabled(), input_ids.detach().clone()))
        return real_forward(self, input_ids, *args, **kwargs)

    steps = []
    handle = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: steps.append(optimizer)
    )
    monkeypatch.setattr(ActorCritic, "forward", forward)
    try:
        train(
            ppo_config(
                tiny_model,
                prompt_file,
                tmp_path,
                "max_steps=1",
                "ppo.ppo_epochs=3",
                "ppo.num_minibatches=2",
            )
        )
    finally:
        handle.remove()
    assert len(steps) == 3 * 2
    rollout_rows = torch.cat([ids for grad, ids in calls if not grad])
    training = [ids for grad, ids in calls if grad]
    assert rollout_rows.shape[0] == 4
    assert [ids.shape[0] for ids in training] == [2] * 6

    def sorted_rows(ids):
        return sorted(map(tuple, ids.tolist()))

    for epoch in range(3):
        seen = torch.cat(training[2 * epoch : 2 * epoch + 2])
        assert sorted_rows(seen) == sorted_rows(rollout_rows), epoch


def test_ptx_loss_is_the_policy_nll_on_the_sft_rows(tiny_model, prompt_file, sft_data, tmp_path):
    """One update (1 epoch, 1 minibatch) with ppo.ptx_coef=0.5 and batch_size=4: the logged
    ptx_loss is the token-mean NLL of the first 4 SFT rows' completion tokens under the initial
    policy, -sum log p / count, computed here with a plain full-logits forward per row."""
    from rlhfkit.data.datasets import load_sft
    from rlhfkit.models.logprobs import sequence_logprobs

    config = ppo_config(
        tiny_model,
        prompt_file,
        tmp_path,
        "ppo.ptx_coef=0.5",
        f"ppo.ptx_data={sft_data}",
        "batch_size=4",
        *ONE_UPDATE,
    )
    tokenizer = load_tokenizer(str(tiny_model))
    examples, _ = load_sft(
        str(sft_data),
        tokenizer,
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
    )
    lm = load_causal_lm(str(tiny_model), trainable=False)
    nll, count = 0.0, 0
    with torch.no_grad():
        for example in examples[:4]:
            ids = torch.tensor([example.prompt_ids + example.completion_ids])
            target = torch.tensor(
                [[0] * len(example.prompt_ids) + [1] * len(example.completion_ids)]
            )
            nll -= float(sequence_logprobs(lm, ids, target).sum())
            count += int(target[:, 1:].sum())
    train(config)
    row = read_metrics(tmp_path)[0]
    assert row["ptx_loss"] == pytest.approx(nll / count, rel=1e-5)


def test_ptx_rows_are_cycled_in_order(tiny_model, tmp_path):
    """6 SFT rows, batch_size 4: the first call averages rows 0-3 (cursor -> 4), the second rows
    4, 5, 0, 1 (cursor -> (4 + 4) mod 6 = 2), each a token mean over its 4 rows."""
    from rlhfkit.data.datasets import load_sft
    from rlhfkit.models.logprobs import sequence_logprobs
    from rlhfkit.recipes.ppo import _ptx_loss
    from tests.conftest import arithmetic_sft

    config = ppo_config(tiny_model, "unused.jsonl", tmp_path, "batch_size=4")
    tokenizer = load_tokenizer(str(tiny_model))
    data = write_jsonl(tmp_path / "sft.jsonl", arithmetic_sft(6, seed=4))
    examples, _ = load_sft(str(data), tokenizer, max_length=64, max_prompt_length=32)
    rows = [e.prompt_ids + e.completion_ids for e in examples]
    masks = [[0] * len(e.prompt_ids) + [1] * len(e.completion_ids) for e in examples]
    lm = load_causal_lm(str(tiny_model))
    model = ActorCritic(lm)

    def expected(picked):
        nll, count = 0.0, 0
        for i in picked:
            target = torch.tensor([masks[i]])
            nll -= float(sequence_logprobs(lm, torch.tensor([rows[i]]), target).sum())
            count += int(target[:, 1:].sum())
        return nll / count

    state = {"ptx_cursor": 0}
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        first = _ptx_loss(model, rows, masks, state, config, pad, torch.device("cpu"))
        assert state["ptx_cursor"] == 4
        second = _ptx_loss(model, rows, masks, state, config, pad, torch.device("cpu"))
        assert state["ptx_cursor"] == 2
        assert float(first) == pytest.approx(expected([0, 1, 2, 3]), rel=1e-5)
        assert float(second) == pytest.approx(expected([4, 5, 0, 1]), rel=1e-5)


def test_lora_reference_is_the_base_model_and_only_adapters_and_critic_train(
    tiny_model, prompt_file, tmp_path, monkeypatch
):
    """lora.r=4: no frozen copy is loaded; the reference is the policy with its adapters
    disabled. LoRA's B starts at 0, so at step 1 the policy is the base model bitwise and the KL
    is exactly 0 (ratio 1 at the first update); after two steps the adapters have moved, so
    step 2's KL (policy with adapters vs base without) is not 0. Training changed the LoRA
    weights and the critic, and no base weight of the policy."""
    from rlhfkit.recipes import ppo as ppo_module

    built = built_models(monkeypatch)
    loaded = []
    real_load = ppo_module.load_causal_lm

    def load(*args, **kwargs):
        loaded.append(kwargs.get("trainable", True))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ppo_module, "load_causal_lm", load)
    train(
        ppo_config(
            tiny_model, prompt_file, tmp_path, "lora.r=4", "ppo.num_minibatches=1", "max_steps=2"
        )
    )
    rows = read_metrics(tmp_path)
    assert loaded == [True]  # the policy only: no frozen reference copy
    assert rows[0]["kl"] == 0.0
    assert rows[1]["kl"] != 0.0
    initial, final = built["initial"], built["final"]
    assert initial.keys() == final.keys()
    changed = {name for name in initial if not torch.equal(initial[name], final[name])}
    lora_names = {name for name in initial if "lora_" in name}
    critic_names = {name for name in initial if name.startswith("critic.")}
    assert lora_names and critic_names
    assert changed <= lora_names | critic_names, sorted(changed - lora_names - critic_names)[:5]
    assert changed & lora_names and changed & critic_names
    assert all(torch.count_nonzero(initial[n]) == 0 for n in lora_names if "lora_B" in n)


def test_hf_sampler_runs_a_step_with_zero_first_kl(tiny_model, prompt_file, tmp_path):
    """ppo.sampler=hf (transformers' generate): its tokens and masks feed the same forwards, so
    step 1's KL is exactly 0 and the single update's ratio exactly 1."""
    config = ppo_config(
        tiny_model, prompt_file, tmp_path, "ppo.sampler=hf", "temperature=0.7", *ONE_UPDATE
    )
    train(config)
    row = read_metrics(tmp_path)[0]
    assert row["kl"] == 0.0 and row["ratio_mean"] == 1.0 and row["approx_kl"] == 0.0
    assert row["response_length"] > 0


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_rollout_masks_keep_the_eos_and_drop_what_follows(tiny_model, tmp_path, pad_is_eos):
    """Rows are forced to EOS at their 2nd, 3rd and 1st token (an LM-head hook; no other EOS):
    both samplers (fast, and hf = `generate`, same seed) give the same rollout, 3 columns wide,
    mask [1, 1, 0], [1, 1, 1], [1, 0, 0]: the EOS is a response token, what follows is not,
    also when the pad id is the EOS id (`load_tokenizer` sets pad = EOS for a tokenizer without
    a pad token), where the filler after an EOS is itself an EOS token."""
    tokenizer = load_tokenizer(str(tiny_model))
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert (pad == eos) == pad_is_eos
    lm = load_causal_lm(str(tiny_model), trainable=False)
    prompts = ["User: What is 3+4?\nBot:", "User: Hi\nBot:", "User: Name a fruit please.\nBot:"]
    ids = [tokenizer(p).input_ids for p in prompts]
    ends_at = {1: [2], 2: [0], 3: [1]}  # token number -> rows forced to EOS there
    calls = {"n": 0}

    def force(_module, _inputs, output):
        calls["n"] += 1
        output[..., eos] -= 1e4  # nobody ends by chance
        for row in ends_at.get(calls["n"], []):
            output[row, -1, eos] += 2e4
        return output

    batches = {}
    handle = lm.get_output_embeddings().register_forward_hook(force)
    try:
        for sampler in ("fast", "hf"):
            calls["n"] = 0
            config = ppo_config(
                tiny_model, "unused.jsonl", tmp_path, f"ppo.sampler={sampler}", "temperature=0.7"
            )
            torch.manual_seed(3)
            batches[sampler] = rollout(lm, tokenizer, ids, prompts, config, torch.device("cpu"))
    finally:
        handle.remove()
    fast, hf = batches["fast"], batches["hf"]
    for name in ("input_ids", "attention_mask", "position_ids", "target_mask", "mask", "has_eos"):
        assert torch.equal(getattr(fast, name), getattr(hf, name)), name
    assert fast.responses == hf.responses
    assert fast.mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert fast.has_eos.tolist() == [True, True, True]
    response = fast.input_ids[:, fast.prompt_length :]
    assert [response[row, n - 1].item() for row, n in enumerate([2, 3, 1])] == [eos] * 3
    assert response[0, 2:].tolist() == [pad] and response[2, 1:].tolist() == [pad, pad]
    assert (response[fast.mask.bool()] == eos).sum() == 3  # one EOS per row inside the mask
    torch.testing.assert_close(fast.target_mask[:, fast.prompt_length :], fast.mask, rtol=0, atol=0)
    assert all(tokenizer.eos_token not in text for text in fast.responses)


def test_value_head_on_the_policy_adds_one_linear_and_learns(
    tiny_model, prompt_file, tmp_path, monkeypatch
):
    """ppo.value_head_on_policy=true: no critic is loaded; the model is the policy plus a
    Linear(160, 1) on its hidden states (tiny preset: hidden size 160), 160 + 1 = 161 more
    parameters, trained with it. Every response scores 5 while the new head's values start near
    0: over four epochs on the one rollout batch (value clipping off, lr 1e-4) the value loss
    falls to under a tenth of the first update's (seen: 9.95 -> 1.10 -> 0.16 -> 0.24). With
    the default clip range 0.2 it could fall only to mean((R - V_old - 0.2)^2), as PPO's value
    clipping intends."""
    from rlhfkit.recipes import ppo as ppo_module

    built = built_models(monkeypatch)

    def no_critic(*args, **kwargs):
        raise AssertionError("a separate critic was loaded")

    value_losses = []
    real_value_loss = ppo_module.ppo_value_loss

    def value_loss(*args, **kwargs):
        loss, info = real_value_loss(*args, **kwargs)
        value_losses.append(float(loss.detach()))
        return loss, info

    monkeypatch.setattr(ppo_module, "load_value_model", no_critic)
    monkeypatch.setattr(ppo_module, "ppo_value_loss", value_loss)
    monkeypatch.setattr(
        ppo_module, "load_reward_function", lambda spec, **kwargs: lambda p, r: [5.0] * len(r)
    )
    train(
        ppo_config(
            tiny_model,
            prompt_file,
            tmp_path,
            "ppo.value_head_on_policy=true",
            "ppo.clip_range_value=100",
            "learning_rate=1e-4",
            "max_steps=1",
            "ppo.ppo_epochs=4",
            "ppo.num_minibatches=1",
        )
    )
    model = built["model"]
    assert model.critic is None
    head = model.value_head
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (160, 1)
    policy_size = sum(p.numel() for p in model.lm.parameters())
    assert sum(p.numel() for p in model.parameters()) == policy_size + 161
    assert sum(p.numel() for p in load_causal_lm(str(tiny_model)).parameters()) == policy_size
    initial, final = built["initial"], built["final"]
    assert not torch.equal(initial["value_head.weight"], final["value_head.weight"])
    assert len(value_losses) == 4
    assert value_losses[-1] < value_losses[0] / 10, value_losses


def test_a_positive_missing_eos_penalty_is_warned_about(tiny_model, prompt_file, tmp_path, capsys):
    """TRL subtracts its `missing_eos_penalty` (a positive number) from the score; here it is
    the score itself, so a TRL config's 1.0 would reward responses that never end: warned."""
    one_step = ["max_steps=1", "ppo.ppo_epochs=1", "ppo.num_minibatches=1"]
    train(
        ppo_config(
            tiny_model, prompt_file, tmp_path / "a", *one_step, "ppo.missing_eos_penalty=1.0"
        )
    )
    assert (
        "ppo.missing_eos_penalty=1.0 is the score a response without EOS" in capsys.readouterr().err
    )
    train(
        ppo_config(tiny_model, prompt_file, tmp_path / "b", *one_step, "ppo.missing_eos_penalty=-1")
    )
    assert "missing_eos_penalty" not in capsys.readouterr().err


def test_a_reward_model_that_would_cut_the_rollouts_is_warned_about(
    tiny_model, prompt_file, tmp_path, capsys
):
    """A reward model trained with max_length=16 cuts prompt + response there when it scores:
    a rollout of a prompt plus up to max_new_tokens tokens is longer, so it would score the
    responses' starts only, without their EOS; PPO says so before it trains."""
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    reward_model = build_reward_model(str(tiny_model), seed=1)
    reward_model.info.max_length = 16
    save_reward_model(reward_model, load_tokenizer(str(tiny_model)), tmp_path / "rm")
    one_step = ["max_steps=1", "ppo.ppo_epochs=1", "ppo.num_minibatches=1"]
    train(
        ppo_config(
            tiny_model,
            prompt_file,
            tmp_path / "a",
            *one_step,
            f"ppo.reward_model={tmp_path / 'rm'}",
        )
    )
    assert (
        "ppo.reward_model reads at most 16 tokens of prompt + response" in capsys.readouterr().err
    )


def test_a_critic_from_a_model_with_another_tokenizer_is_refused(tiny_model, prompt_file, tmp_path):
    """The critic reads the policy's token ids: started from a reward model whose tokenizer has
    another vocabulary (a learned BPE here, the policy's is bytes) it would read other tokens.
    A one-line error names the key and the ways out, before any training."""
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model
    from rlhfkit.models.tokenizer import learn_byte_bpe

    other = learn_byte_bpe(["the cat sat on the mat", "a dog ran in the fog"] * 20, vocab_size=300)
    save_reward_model(build_reward_model(str(tiny_model), seed=1), other, tmp_path / "rm")
    one_step = ["max_steps=1", f"ppo.reward_model={tmp_path / 'rm'}"]
    with pytest.raises(ConfigError, match=r"ppo.reward_model: the critic would start from .*rm, "):
        train(ppo_config(tiny_model, prompt_file, tmp_path / "a", *one_step))
    # the policy itself as the critic's start is fine with any reward model's tokenizer
    train(
        ppo_config(
            tiny_model,
            prompt_file,
            tmp_path / "b",
            *one_step,
            f"ppo.value_model={tiny_model}",
            "ppo.ppo_epochs=1",
        )
    )
