"""The DPO recipe's pieces, in process on the tiny preset: pair data, the concatenated and packed
forwards, the reference sources, step-0 values, every loss variant through a step, the batch
plan with length bucketing, and option validation."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from rlhfkit.config import load_config
from rlhfkit.errors import ConfigError
from rlhfkit.losses.dpo import available_dpo_losses
from rlhfkit.models.loading import LoraSettings, load_causal_lm, load_tokenizer
from rlhfkit.models.logprobs import TokenLogprobs, sequence_logprobs
from rlhfkit.recipes.dpo import (
    DPOConfig,
    DPOOptions,
    LengthBucketedPlan,
    Pair,
    check_options,
    load_pairs,
    pair_batch,
    pair_losses,
    sequence_logps,
    train,
)
from rlhfkit.synthetic import default_annotators, label_pairs, make_prompts, sample_response
from rlhfkit.training.batches import BatchPlan
from rlhfkit.training.reference import reference_kind, reference_logprobs


def world_pairs(n_prompts: int, seed: int = 0) -> list[dict]:
    """Preference records from the embedded world, labelled by the simulated annotators."""
    rng = random.Random(seed)
    records = []
    for prompt in make_prompts(n_prompts, seed):
        responses = [sample_response(prompt, rng)[1] for _ in range(2)]
        records.append({"prompt": prompt.text, "responses": responses})
    labelled = label_pairs(records, default_annotators(), seed).records
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in labelled]


@pytest.fixture(scope="module")
def dpo_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("dpo") / "pairs.jsonl", world_pairs(24))


# Pairs of different prompt and response lengths, so padding and packing both matter.
PAIRS = [
    Pair([1, 5, 6], [7, 8, 9, 10], [11, 12]),
    Pair([3, 4, 5, 6, 7], [8], [9, 10, 11, 12, 13, 14]),
    Pair([2], [40, 41, 42], [43, 44, 45, 46, 47]),
]


def _policy(tiny_model, lora: LoraSettings | None = None) -> TokenLogprobs:
    return TokenLogprobs(load_causal_lm(str(tiny_model), lora=lora)).eval()


def _config(tiny_model, data, out, *overrides: str) -> DPOConfig:
    return load_config(
        DPOConfig,
        overrides=[
            f"model={tiny_model}", f"train_data={data}", f"output_dir={out}", "batch_size=4",
            "logging_steps=1", "progress=false", "learning_rate=1e-3", *overrides,
        ],
    )  # fmt: skip


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- data ------------------------------------------------------------------------------------


def test_load_pairs_expands_rankings_and_counts_skips(tiny_model, tmp_path):
    data = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "User: hi\nBot:", "chosen": " Hello.", "rejected": " Go away."},
            {"prompt": "User: hi\nBot:", "chosen": " Same.", "rejected": " Same."},
            {"prompt": "P:", "responses": [" a.", " b.", " c."], "ranking": [2, 0, 1]},
        ],
    )
    tokenizer = load_tokenizer(str(tiny_model))
    pairs, stats = load_pairs(str(data), tokenizer, max_length=64, max_prompt_length=32)
    # 1 pair + 1 identical (skipped) + 3 pairs of the ranking (c > a, c > b, a > b).
    assert stats.examples == 5 and stats.kept == 4
    assert stats.skipped == {"chosen == rejected": 1}
    decoded = [
        (tokenizer.decode(p.chosen_ids, skip_special_tokens=True),
         tokenizer.decode(p.rejected_ids, skip_special_tokens=True))
        for p in pairs[1:]
    ]  # fmt: skip
    assert decoded == [(" c.", " a."), (" c.", " b."), (" a.", " b.")]


# --- forwards --------------------------------------------------------------------------------


def test_concatenated_forward_equals_separate_forwards(tiny_model):
    policy = _policy(tiny_model)
    batch = pair_batch(PAIRS, [0, 1, 2], pad_id=0, device="cpu")
    assert batch["input_ids"].shape[0] == 6  # chosen rows, then rejected rows
    with torch.no_grad():
        logps, lengths = sequence_logps(policy, batch)  # (6,)
        expected, expected_lengths = [], []
        for side in ("chosen_ids", "rejected_ids"):
            for pair in PAIRS:
                # Each sequence on its own, no padding, through the full-logits reference path.
                ids = torch.tensor([pair.prompt_ids + getattr(pair, side)])
                mask = torch.tensor([[0] * len(pair.prompt_ids) + [1] * len(getattr(pair, side))])
                expected.append(sequence_logprobs(policy.lm, ids, mask).sum())
                expected_lengths.append(len(getattr(pair, side)))
    torch.testing.assert_close(logps, torch.stack(expected), rtol=1e-5, atol=1e-5)
    assert lengths.tolist() == expected_lengths


def test_packed_rows_equal_padded_rows(tiny_model):
    """The padding-free layout (one row, restarting positions) gives the padded values; on CPU
    transformers turns the positions into a block-diagonal mask, on a GPU flash-attn varlen."""
    policy = _policy(tiny_model)
    with torch.no_grad():
        padded = sequence_logps(policy, pair_batch(PAIRS, [0, 1, 2], 0, "cpu"))
        packed_batch = pair_batch(PAIRS, [0, 1, 2], 0, "cpu", layout="packed")
        packed = sequence_logps(policy, packed_batch)
    assert packed_batch["input_ids"].shape == (1, sum(p.tokens for p in PAIRS))
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(packed[1], padded[1])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_rows_equal_padded_rows_values_and_gradients(tiny_model, attention):
    """One row `prompt + chosen + rejected` per pair (bool mask for sdpa, additive for eager)
    gives every sequence the log-prob and the gradient of its own padded row, with B rows
    instead of 2B. The last pair has no prompt: its first tokens are predicted by nothing in
    either layout, so both count one token fewer than the response has."""
    pairs = [*PAIRS, Pair([], [20, 21, 22], [23, 24])]
    policy = TokenLogprobs(load_causal_lm(str(tiny_model), attn_implementation=attention))
    results = {}
    for layout in ("padded", "shared_prompt"):
        policy.zero_grad()
        dtype = torch.bool if attention == "sdpa" else torch.float32
        batch = pair_batch(pairs, [0, 1, 2, 3], 0, "cpu", layout=layout, mask_dtype=dtype)
        logps, lengths = sequence_logps(policy, batch)  # (8,), (8,)
        # A loss that weighs each sequence differently, so a mixed-up gradient would show.
        (logps * torch.arange(1.0, 9.0)).sum().backward()
        grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
        results[layout] = (batch, logps.detach(), lengths, grads)
    shared_batch = results["shared_prompt"][0]
    assert shared_batch["input_ids"].shape == (4, max(p.tokens - len(p.prompt_ids) for p in pairs))
    assert shared_batch["attention_mask"].dtype == dtype
    shared_logps, padded_logps = results["shared_prompt"][1], results["padded"][1]
    torch.testing.assert_close(shared_logps, padded_logps, rtol=1e-5, atol=1e-5)
    assert results["shared_prompt"][2].tolist() == results["padded"][2].tolist()
    assert results["padded"][2].tolist() == [4, 1, 3, 2, 2, 6, 5, 1]
    # The prompt's gradient is one sum here and two there: fp32 rounding apart, equal.
    for shared, padded in zip(results["shared_prompt"][3], results["padded"][3], strict=True):
        torch.testing.assert_close(shared, padded, rtol=1e-4, atol=1e-5)


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="layout"):
        pair_batch(PAIRS, [0], 0, "cpu", layout="diagonal")


# --- reference -------------------------------------------------------------------------------


def test_lora_reference_with_adapters_disabled_equals_a_frozen_copy(tiny_model):
    policy = _policy(tiny_model, LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    for name, param in policy.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapters change the outputs
            param.data.normal_(0, 0.5)
    batch = pair_batch(PAIRS, [0, 1, 2], 0, "cpu")
    assert reference_kind(policy, "", initial=False) == "adapters-disabled"
    with reference_logprobs(policy, model_path=str(tiny_model)) as ref:
        adapters_off = sequence_logps(ref, batch)[0]
    frozen = _policy(tiny_model)
    with torch.no_grad():
        copy = sequence_logps(frozen, batch)[0]
        with_adapters = sequence_logps(policy, batch)[0]
    torch.testing.assert_close(adapters_off, copy, rtol=1e-6, atol=1e-6)
    assert (with_adapters - copy).abs().max() > 1e-2  # the adapters do change the policy
    # The context restored the adapters.
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(policy, batch)[0], with_adapters)


def test_reference_sources(tiny_model):
    full = _policy(tiny_model)
    assert reference_kind(full, "", initial=True) == "initial-policy"
    assert reference_kind(full, "", initial=False) == "frozen-copy"
    assert reference_kind(full, "/some/other/model", initial=True) == "frozen-copy"


# --- losses and metrics ----------------------------------------------------------------------


def test_pair_losses_at_equal_policy_and_reference():
    """Policy == reference: rewards 0, margin 0, accuracy 0 (ties do not count), loss log 2."""
    logps = torch.tensor([-10.0, -4.0, -12.0, -3.0])  # chosen (2), rejected (2)
    lengths = torch.tensor([5.0, 2.0, 4.0, 3.0])
    losses, metrics = pair_losses(logps, lengths, logps.clone(), DPOOptions())
    assert torch.equal(metrics["rewards/chosen"], torch.zeros(2))
    assert torch.equal(metrics["rewards/margin"], torch.zeros(2))
    assert torch.equal(metrics["rewards/accuracy"], torch.zeros(2))
    assert torch.equal(metrics["kl"], torch.zeros(2))
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)), rtol=1e-6, atol=0)


def test_pair_losses_sft_term_and_length_averaging():
    """Worked by hand, beta = 0.5.

    Pair: chosen logp -6 over 3 tokens (ref -8), rejected logp -4 over 2 tokens (ref -3).
    sigmoid: h = (-6 + 8) - (-4 + 3) = 3; loss = -log sigmoid(1.5) = log(1 + e^-1.5)
    = 0.2014132779; RPO weight 2 adds 2 * 6/3 = 4 -> 4.2014132779.
    ipo (length-averaged): h = (-2 + 8/3) - (-2 + 1.5) = 2/3 + 1/2 = 7/6;
    loss = (7/6 - 1/(2*0.5))^2 = (1/6)^2 = 0.0277777778; rewards 0.5 * 2/3 and 0.5 * -1/2.
    """
    logps, lengths = torch.tensor([-6.0, -4.0]), torch.tensor([3.0, 2.0])
    ref = torch.tensor([-8.0, -3.0])
    losses, metrics = pair_losses(logps, lengths, ref, DPOOptions(beta=0.5, sft_weight=2.0))
    torch.testing.assert_close(losses, torch.tensor([4.2014132779]), rtol=1e-6, atol=0)
    torch.testing.assert_close(metrics["nll/chosen"], torch.tensor([2.0]))
    losses, metrics = pair_losses(logps, lengths, ref, DPOOptions(beta=0.5, loss_type="ipo"))
    torch.testing.assert_close(losses, torch.tensor([1 / 36]), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["rewards/chosen"], torch.tensor([1 / 3]))
    torch.testing.assert_close(metrics["rewards/rejected"], torch.tensor([-0.25]))
    # kl: mean over both sides of the summed log-ratio: (2 + (-1)) / 2.
    torch.testing.assert_close(metrics["kl"], torch.tensor([0.5]))


# --- options ---------------------------------------------------------------------------------


def test_bad_loss_type_is_a_config_error_listing_the_variants():
    with pytest.raises(ConfigError) as err:
        check_options(DPOConfig(dpo=DPOOptions(loss_type="sigmod")))
    message = str(err.value)
    assert "dpo.loss_type" in message and "'sigmod'" in message
    assert all(name in message for name in available_dpo_losses())


def test_inconsistent_options_are_config_errors():
    with pytest.raises(ConfigError, match="label_smoothing"):
        check_options(DPOConfig(dpo=DPOOptions(loss_type="ipo", label_smoothing=0.1)))
    with pytest.raises(ConfigError, match="beta"):
        check_options(DPOConfig(dpo=DPOOptions(beta=0.0)))
    with pytest.raises(ConfigError, match="flash_attention_2"):
        check_options(DPOConfig(dpo=DPOOptions(padding_free=True)))


# --- batch plan ------------------------------------------------------------------------------


def test_length_bucketed_plan_is_exact_across_layouts_and_groups_lengths():
    lengths = [random.Random(i).randint(10, 200) for i in range(100)]
    plan = LengthBucketedPlan(100, 8, 1, 1, seed=3, epochs=2, lengths=lengths)
    accumulated = LengthBucketedPlan(100, 1, 8, 1, seed=3, epochs=2, lengths=lengths)
    two_procs = LengthBucketedPlan(100, 2, 2, 2, seed=3, epochs=2, lengths=lengths)
    plain = BatchPlan(100, 8, 1, 1, seed=3, epochs=2)
    spread, plain_spread = [], []
    for step in range(plan.total_steps):
        indices = plan.global_indices(step)
        assert sorted(indices) == sorted(accumulated.global_indices(step))
        parts = [i for m in accumulated.micro_batches(step, 0) for i in m]
        parts2 = [i for r in (0, 1) for m in two_procs.micro_batches(step, r) for i in m]
        assert sorted(parts) == sorted(parts2) == sorted(indices)
        spread.append(max(lengths[i] for i in indices) - min(lengths[i] for i in indices))
        plain_indices = plain.global_indices(step)
        plain_spread.append(
            max(lengths[i] for i in plain_indices) - min(lengths[i] for i in plain_indices)
        )
    for epoch in range(2):  # the same pairs as the unbucketed plan are used in each epoch
        steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
        ours = sorted(i for s in steps for i in plan.global_indices(s))
        theirs = sorted(i for s in steps for i in plain.global_indices(s))
        assert ours == theirs and len(set(ours)) == len(ours)
    assert sum(spread) < 0.5 * sum(plain_spread)


# --- the loop --------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", available_dpo_losses())
def test_every_loss_type_trains_a_step(loss_type, tiny_model, dpo_data, tmp_path):
    extra = ["dpo.beta=2.0"] if loss_type == "simpo" else []
    out = tmp_path / loss_type
    summary = train(
        _config(tiny_model, dpo_data, out, "max_steps=2", f"dpo.loss_type={loss_type}", *extra)
    )
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert rows[0]["grad_norm"] > 0
    if loss_type == "simpo":
        assert summary["reference_logps"].startswith("none")
        assert "kl" not in rows[0]
    else:
        assert summary["reference_logps"] == "computed (initial-policy)"
        # Precomputed in other batches than the step's: equal up to float rounding only.
        assert rows[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("precompute", [True, False])
def test_step_zero_rewards_are_exactly_zero_and_loss_is_log2(
    precompute, tiny_model, dpo_data, tmp_path
):
    out = tmp_path / "run"
    summary = train(
        _config(tiny_model, dpo_data, out, "max_steps=1", f"dpo.precompute_ref={precompute}")
    )
    assert summary["reference_logps"] == (
        "computed (initial-policy)" if precompute else "on the fly (frozen-copy)"
    )
    row = _rows(out)[0]
    if precompute:
        # The precompute pass batches pairs by length, not as the first step does, so the
        # reference log-probs equal the policy's up to float rounding (shapes change the
        # summation order), not bit for bit.
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "kl"):
            assert row[key] == pytest.approx(0.0, abs=1e-5)
        assert row["loss"] == pytest.approx(math.log(2), rel=1e-5)
    else:
        # Reference forward on the very same batch: exactly the policy's numbers.
        assert row["rewards/chosen"] == 0.0 and row["rewards/rejected"] == 0.0
        assert row["rewards/margin"] == 0.0 and row["kl"] == 0.0
        assert row["loss"] == pytest.approx(math.log(2), rel=1e-7)


def test_grad_accum_1x4_equals_4x1(tiny_model, dpo_data, tmp_path):
    common = ["max_steps=2", "learning_rate=3e-3"]
    train(_config(tiny_model, dpo_data, tmp_path / "big", *common, "batch_size=4", "grad_accum=1"))
    train(_config(tiny_model, dpo_data, tmp_path / "acc", *common, "batch_size=1", "grad_accum=4"))
    big, acc = _rows(tmp_path / "big"), _rows(tmp_path / "acc")
    assert [r["loss"] for r in big] == pytest.approx([r["loss"] for r in acc], rel=1e-5)
    assert big[1]["rewards/margin"] == pytest.approx(acc[1]["rewards/margin"], rel=1e-4, abs=1e-7)
