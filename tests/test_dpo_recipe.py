"""The DPO recipe's pieces, in process on the tiny preset: pair data, the concatenated and packed
forwards, the rows the LM head sees, the reference sources (a separate reference model, LoRA with
a precomputed reference), step-0 and eval values, length-averaged variants read from the
registry, every loss variant through a step, the batch plan with length bucketing, and option
validation."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from torch.overrides import TorchFunctionMode
from transformers import AutoModelForCausalLM

from rlhfkit.config import load_config
from rlhfkit.errors import ConfigError
from rlhfkit.losses.dpo import (
    DPO_LOSSES,
    available_dpo_losses,
    is_length_normalised,
    register_dpo_loss,
)
from rlhfkit.models.loading import LoraSettings, load_causal_lm, load_tokenizer
from rlhfkit.models.logprobs import TokenLogprobs, sequence_logprobs
from rlhfkit.recipes.dpo import (
    REFERENCE_CACHE,
    DPOConfig,
    DPOOptions,
    LengthBucketedPlan,
    Pair,
    check_options,
    forward_chunks,
    load_pairs,
    pair_batch,
    pair_losses,
    sequence_logps,
    train,
)
from rlhfkit.recipes.init_model import InitModelConfig
from rlhfkit.recipes.init_model import run as init_model
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
    assert stats.summary().startswith("4/5 pairs kept")  # 3 records: the count is of pairs
    decoded = [
        (tokenizer.decode(p.chosen_ids, skip_special_tokens=True),
         tokenizer.decode(p.rejected_ids, skip_special_tokens=True))
        for p in pairs[1:]
    ]  # fmt: skip
    assert decoded == [(" c.", " a."), (" c.", " b."), (" a.", " b.")]


def test_load_pairs_skips_pairs_identical_after_truncation(tiny_model, tmp_path):
    """ " Same start. A" and " Same start. B" differ only in their last characters; with room
    for 4 completion tokens (max_length = prompt + 4) both truncate to the same 4 ids, so the
    model sees one sequence twice and the pair's log-ratio gap is 0 whatever the weights. It is
    skipped and counted, not trained; a pair that differs within the room is kept."""
    tokenizer = load_tokenizer(str(tiny_model))
    prompt = "P:"
    room = len(tokenizer(prompt).input_ids) + 4
    data = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": prompt, "chosen": " Same start. A", "rejected": " Same start. B"},
            {"prompt": prompt, "chosen": " Yes", "rejected": " No"},
        ],
    )
    pairs, stats = load_pairs(str(data), tokenizer, max_length=room, max_prompt_length=32)
    assert stats.examples == 2 and stats.kept == 1 and len(pairs) == 1
    assert stats.skipped == {"chosen == rejected after truncation to max_length": 1}
    assert pairs[0].chosen_ids != pairs[0].rejected_ids


def test_a_rankings_pairs_train_together_and_count_as_one_record(tiny_model, tmp_path, monkeypatch):
    """DESIGN.md: a ranking's K(K-1)/2 pairs train together. Records [ranking of 3 (3 pairs),
    preference, ranking of 3] with batch_size=1 give 3 steps of 3, 1 and 3 pairs (not 7 steps
    of one pair), and each pair of a record with n pairs weighs 1/n: with every pair's loss set
    to 1, each step's loss is 1 (unweighted, a ranking's step would read 3)."""
    from rlhfkit.recipes import dpo as dpo_module

    data = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "P:", "responses": [" a.", " b.", " c."], "ranking": [2, 0, 1]},
            {"prompt": "User: hi\nBot:", "chosen": " Hello.", "rejected": " Go away."},
            {"prompt": "Q:", "responses": [" x.", " yy.", " z."], "ranking": [0, 1, 2]},
        ],
    )
    step_pairs = []
    real_soft_labels, real_losses = dpo_module.soft_label_tensor, dpo_module.pair_losses

    def soft_labels(pairs, indices, device, *, use):
        step_pairs.append(len(indices))
        return real_soft_labels(pairs, indices, device, use=use)

    def unit_losses(*args):
        losses, metrics = real_losses(*args)
        ones = losses * 0 + 1.0  # keeps the graph
        return ones, {**metrics, "loss": ones.detach()}

    monkeypatch.setattr(dpo_module, "soft_label_tensor", soft_labels)
    monkeypatch.setattr(dpo_module, "pair_losses", unit_losses)
    out = tmp_path / "out"
    summary = train(_config(tiny_model, data, out, "batch_size=1", "dpo.precompute_ref=false"))
    assert summary["steps"] == 3 and sorted(step_pairs) == [1, 3, 3]
    assert [row["loss"] for row in _rows(out) if "loss" in row] == [1.0, 1.0, 1.0]


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


class LMHeadCalls(TorchFunctionMode):
    """Records, for every torch call, the rows the LM head's weight is applied to, and the shape
    of every tensor produced whose last dimension is the vocabulary.

    A module forward hook on `lm.get_output_embeddings()` would never fire: `TokenLogprobs`
    applies the head's *weight* with `F.linear` chunk by chunk (`chunked_token_logprobs`) and
    never calls the module, so the calls are watched at the level of torch functions.
    """

    def __init__(self, head_weight: torch.Tensor):
        super().__init__()
        self.head_weight = head_weight
        self.vocab = head_weight.shape[0]
        self.head_rows: list[int] = []  # rows of hidden states per LM-head call
        self.vocab_shapes: list[tuple[int, ...]] = []  # every (..., V) tensor produced

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (
            func is F.linear
            and (args[1] if len(args) > 1 else kwargs["weight"]) is self.head_weight
        ):
            self.head_rows.append(math.prod(args[0].shape[:-1]))  # input (n, H)
        for value in out if isinstance(out, tuple | list) else (out,):
            if (
                isinstance(value, torch.Tensor)
                and value.ndim >= 2
                and value.shape[-1] == self.vocab
            ):
                self.vocab_shapes.append(tuple(value.shape))
        return out


@pytest.mark.parametrize("layout", ["padded", "shared_prompt"])
def test_lm_head_sees_only_completion_rows_in_chunks(tiny_model, layout):
    """One DPO loss computation (forward, pair losses, backward) on `PAIRS` with chunks of 4 rows.

    Completion tokens: chosen 4 + 1 + 3, rejected 2 + 6 + 5 = 21 (every pair has a prompt, so
    every completion token is predicted). Padded rows: 2B x T = 6 x 11 = 66 positions (the
    longest sequence is prompt 5 + rejected 6); shared-prompt rows: B x T = 3 x 12 = 36 (the
    longest row is 5 + 1 + 6). The head must see exactly 21 rows, in calls of at most 4
    (21 = 5 x 4 + 1), and no tensor with the vocabulary as last dimension may have more than
    4 rows: no (B, T, V) logits exist.
    """
    lm = load_causal_lm(str(tiny_model))
    policy = TokenLogprobs(lm, chunk_size=4)
    batch = pair_batch(PAIRS, [0, 1, 2], 0, "cpu", layout=layout)
    completion_tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in PAIRS)
    assert completion_tokens == 21
    rows, length = batch["input_ids"].shape
    assert (rows, length) == ((6, 11) if layout == "padded" else (3, 12))
    calls = LMHeadCalls(lm.get_output_embeddings().weight)
    with calls:
        logps, lengths = sequence_logps(policy, batch)  # (6,), (6,)
        losses, _ = pair_losses(logps, lengths, logps.detach() - 1.0, DPOOptions())
        losses.sum().backward()
    assert lengths.sum().item() == completion_tokens
    assert calls.head_rows == [4, 4, 4, 4, 4, 1]
    assert calls.vocab_shapes and all(math.prod(shape[:-1]) <= 4 for shape in calls.vocab_shapes), (
        calls.vocab_shapes
    )


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


@pytest.fixture(scope="module")
def other_tiny_model(tmp_path_factory) -> Path:
    """A second tiny model, another random initialisation (seed 1) with the same tokenizer."""
    out = tmp_path_factory.mktemp("models") / "tiny-seed1"
    init_model(InitModelConfig(preset="tiny", out=str(out), seed=1))
    return out


def _recipe_pairs(tiny_model: Path, data: Path) -> list[Pair]:
    """The pairs of `data` tokenised as `train` does with `_config`'s lengths."""
    config = _config(tiny_model, data, "unused")
    pairs, _ = load_pairs(
        str(data), load_tokenizer(str(tiny_model)), max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
    )  # fmt: skip
    return pairs


def _summed_logps(model_dir: Path, pairs: list[Pair]) -> torch.Tensor:
    """(N, 2) summed completion log-probs (chosen, rejected) of `pairs` under the model at
    `model_dir`, loaded with plain transformers and scored one unpadded sequence at a time
    through the full-logits reference path (`sequence_logprobs`)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    table = torch.zeros(len(pairs), 2)
    with torch.no_grad():
        for i, pair in enumerate(pairs):
            for side, completion in enumerate((pair.chosen_ids, pair.rejected_ids)):
                ids = torch.tensor([pair.prompt_ids + completion])
                mask = torch.tensor([[0] * len(pair.prompt_ids) + [1] * len(completion)])
                table[i, side] = sequence_logprobs(model, ids, mask).sum()
    return table


@pytest.mark.parametrize("precompute", [True, False])
def test_a_separate_reference_model_is_loaded_and_used(
    precompute, tiny_model, other_tiny_model, tmp_path
):
    """`dpo.reference` names another model (seed 1); the policy starts from seed 0. Four pairs,
    batch 4: step 1 holds every pair, before any update, so with beta = 0.3 its row must be

        rewards/chosen   = 0.3 * mean_i (logp_policy(w_i) - logp_ref(w_i))
        rewards/rejected = 0.3 * mean_i (logp_policy(l_i) - logp_ref(l_i))
        kl               = mean_i (1/2) [(logp_policy(w_i) - logp_ref(w_i))
                                          + (logp_policy(l_i) - logp_ref(l_i))]
        loss             = mean_i softplus(-(r_w,i - r_l,i))

    with both models' log-probs computed here independently (`_summed_logps`); had the
    starting model been used as the reference, every reward would be 0.
    """
    data = write_jsonl(tmp_path / "pairs.jsonl", world_pairs(24)[:4])
    out = tmp_path / "run"
    summary = train(
        _config(tiny_model, data, out, "max_steps=1", "dpo.beta=0.3",
                f"dpo.reference={other_tiny_model}", f"dpo.precompute_ref={precompute}")
    )  # fmt: skip
    assert summary["reference_logps"] == (
        "computed (frozen-copy)" if precompute else "on the fly (frozen-copy)"
    )
    pairs = _recipe_pairs(tiny_model, data)
    assert len(pairs) == 4
    logratios = _summed_logps(tiny_model, pairs) - _summed_logps(other_tiny_model, pairs)  # (4, 2)
    rewards = 0.3 * logratios.mean(0)  # (2,): chosen, rejected
    per_pair = 0.3 * (logratios[:, 0] - logratios[:, 1])  # (4,)
    row = _rows(out)[0]
    assert abs(row["rewards/chosen"]) > 0.1 and abs(row["rewards/rejected"]) > 0.1
    assert row["rewards/chosen"] == pytest.approx(rewards[0].item(), rel=1e-5, abs=1e-5)
    assert row["rewards/rejected"] == pytest.approx(rewards[1].item(), rel=1e-5, abs=1e-5)
    assert row["kl"] == pytest.approx(logratios.mean().item(), rel=1e-5, abs=1e-5)
    expected_loss = F.softplus(-per_pair).mean().item()
    assert row["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_lora_with_precomputed_reference_caches_the_base_models_logps(
    tiny_model, dpo_data, tmp_path
):
    """LoRA with the default `dpo.precompute_ref=true`: the reference pass runs the policy with
    its adapters switched off, and the cached (N, 2) table equals the base model's own summed
    log-probs (computed here with plain transformers, one sequence at a time). LoRA starts as
    the identity (B = 0), so step 1's rewards are 0 up to float rounding (other batches) and its
    loss is log 2 = 0.6931472."""
    out = tmp_path / "lora"
    summary = train(_config(tiny_model, dpo_data, out, "max_steps=1", "lora.r=4", "lora.alpha=8"))
    assert summary["reference_logps"] == "computed (adapters-disabled)"
    cache = torch.load(out / REFERENCE_CACHE, weights_only=True)
    pairs = _recipe_pairs(tiny_model, dpo_data)
    assert cache["train"].shape == (len(pairs), 2) and cache["eval"].shape == (0, 2)
    torch.testing.assert_close(
        cache["train"], _summed_logps(tiny_model, pairs), rtol=1e-5, atol=1e-4
    )
    row = _rows(out)[0]
    for key in ("rewards/chosen", "rewards/rejected", "kl"):
        assert row[key] == pytest.approx(0.0, abs=1e-5)
    assert row["loss"] == pytest.approx(math.log(2), rel=1e-5)


def test_a_frozen_reference_runs_under_the_policys_bf16_autocast(tiny_model, dpo_data, tmp_path):
    """`mixed_precision=bf16`: accelerate runs the prepared policy under bf16 autocast. The
    frozen reference copy (`dpo.precompute_ref=false`), not prepared, ran in fp32, so at step 1,
    where policy == reference on the same batch, the rewards were ~1e-2 instead of 0."""
    from accelerate.state import AcceleratorState

    out = tmp_path / "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)  # other tests made one without bf16
    try:
        train(_config(tiny_model, dpo_data, out, "max_steps=1", "mixed_precision=bf16",
                      "dpo.precompute_ref=false", "dpo.beta=1.0"))  # fmt: skip
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    row = _rows(out)[0]
    for key in ("rewards/chosen", "rewards/rejected", "kl"):
        assert row[key] == pytest.approx(0.0, abs=1e-6)


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


def test_a_registered_length_normalised_variant_gets_averaged_logps():
    """A user variant declares `length_normalised=True` when it is registered; the recipe reads
    the flag from the registry. Both test variants return h = chosen - rejected log-ratio.
    beta = 0.5; pair as above: chosen -6 over 3 tokens (ref -8), rejected -4 over 2 (ref -3).

    Averaged: chosen (-6 + 8) / 3 = 2/3, rejected (-4 + 3) / 2 = -1/2; h = 7/6;
    rewards 0.5 * 2/3 = 1/3 and 0.5 * -1/2 = -1/4.
    Summed (no flag): chosen 2, rejected -1; h = 3; rewards 1 and -0.5.
    """

    def logratio_gap(chosen_logratios, rejected_logratios, *, beta, label_smoothing):
        return chosen_logratios - rejected_logratios  # (B,)

    register_dpo_loss("test_gap_averaged", length_normalised=True)(logratio_gap)
    register_dpo_loss("test_gap_summed")(logratio_gap)
    logps, lengths = torch.tensor([-6.0, -4.0]), torch.tensor([3.0, 2.0])
    ref = torch.tensor([-8.0, -3.0])
    try:
        assert is_length_normalised("test_gap_averaged")
        assert not is_length_normalised("test_gap_summed")
        options = DPOOptions(beta=0.5, loss_type="test_gap_averaged")
        check_options(DPOConfig(dpo=options))
        losses, metrics = pair_losses(logps, lengths, ref, options)
        torch.testing.assert_close(losses, torch.tensor([7 / 6]), rtol=1e-6, atol=0)
        torch.testing.assert_close(metrics["rewards/chosen"], torch.tensor([1 / 3]))
        torch.testing.assert_close(metrics["rewards/rejected"], torch.tensor([-0.25]))
        # logps/* stay the summed log-probs whatever the variant.
        torch.testing.assert_close(metrics["logps/chosen"], torch.tensor([-6.0]))
        losses, metrics = pair_losses(
            logps, lengths, ref, DPOOptions(beta=0.5, loss_type="test_gap_summed")
        )
        torch.testing.assert_close(losses, torch.tensor([3.0]), rtol=1e-6, atol=0)
        torch.testing.assert_close(metrics["rewards/chosen"], torch.tensor([1.0]))
        torch.testing.assert_close(metrics["rewards/rejected"], torch.tensor([-0.5]))
    finally:
        del DPO_LOSSES["test_gap_averaged"], DPO_LOSSES["test_gap_summed"]


def test_pair_losses_simpo_uses_length_averages_and_the_configured_gamma():
    """SimPO through the recipe, options from the config keys `dpo.beta=2 dpo.simpo_gamma=0.8`
    (not the default 0.5); no reference (the recipe passes None). Rows: chosen then rejected.

    Pair 1: chosen -3 over 3 tokens (avg -1), rejected -6 over 4 (avg -1.5):
      z = 2 (-1 + 1.5) - 0.8 = 0.2; loss = softplus(-0.2) = log(1 + e^-0.2)
      = log(1 + 0.8187308) = log(1.8187308) = 0.5981389.
    Pair 2: chosen -2 over 1 token (avg -2), rejected -2 over 2 (avg -1):
      z = 2 (-2 + 1) - 0.8 = -2.8; loss = softplus(2.8) = 2.8 + log(1 + e^-2.8)
      = 2.8 + log(1.0608101) = 2.8 + 0.0590324 = 2.8590324.
    Rewards beta * avg: (-2, -4) chosen, (-3, -2) rejected; margins 1, -2; accuracy 1, 0.
    Summed log-probs would give pair 1 z = 2 * 3 - 0.8 = 5.2 (loss 0.0055), and the default
    gamma z = 0.5 (loss 0.4740770): both ruled out by the first value.
    """
    options = load_config(
        DPOConfig, overrides=["dpo.loss_type=simpo", "dpo.beta=2.0", "dpo.simpo_gamma=0.8"]
    ).dpo
    logps = torch.tensor([-3.0, -2.0, -6.0, -2.0])  # (2B,)
    lengths = torch.tensor([3.0, 1.0, 4.0, 2.0])  # (2B,)
    losses, metrics = pair_losses(logps, lengths, None, options)
    torch.testing.assert_close(
        losses, torch.tensor([0.5981388693815918, 2.859032420713449]), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(metrics["rewards/chosen"], torch.tensor([-2.0, -4.0]))
    torch.testing.assert_close(metrics["rewards/rejected"], torch.tensor([-3.0, -2.0]))
    torch.testing.assert_close(metrics["rewards/margin"], torch.tensor([1.0, -2.0]))
    assert metrics["rewards/accuracy"].tolist() == [1.0, 0.0]
    torch.testing.assert_close(metrics["logps/chosen"], torch.tensor([-3.0, -2.0]))
    assert "kl" not in metrics  # reference-free: no reference, no KL estimate


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
    # each ran and was silently ignored
    with pytest.raises(ConfigError, match="^dpo.simpo_gamma: not used by dpo.loss_type=sigmoid"):
        check_options(DPOConfig(dpo=DPOOptions(simpo_gamma=5.0)))
    with pytest.raises(ConfigError, match="^dpo.reference: dpo.loss_type=simpo is reference-free"):
        check_options(DPOConfig(dpo=DPOOptions(loss_type="simpo", reference="/nonexistent")))
    check_options(DPOConfig(dpo=DPOOptions(loss_type="simpo", simpo_gamma=1.0)))


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


def test_eval_metrics_at_equal_policy_and_reference(tiny_model, dpo_data, tmp_path):
    """learning_rate=0: after its one step the policy still equals the reference, and the eval
    pass (the same length-ordered batches as the precompute pass) sees
    rewards 0, margin 0, accuracy 0 (ties do not count), kl 0 and eval_loss = -log sigmoid(0)
    = log 2 = 0.6931472; eval_logps/* are the mean summed log-probs of the 24 eval pairs under
    the starting model (computed here independently, one sequence at a time)."""
    out = tmp_path / "eval"
    summary = train(
        _config(tiny_model, dpo_data, out, "max_steps=1", "learning_rate=0",
                f"eval_data={dpo_data}")
    )  # fmt: skip
    evaluation = _rows(out)[-1]
    assert set(evaluation) == {
        "step", "eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/rejected",
        "eval_rewards/accuracy", "eval_rewards/margin", "eval_logps/chosen", "eval_logps/rejected",
    }  # fmt: skip
    assert evaluation["step"] == 1
    for key in ("eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margin", "eval_kl"):
        assert evaluation[key] == pytest.approx(0.0, abs=1e-6), key
    assert evaluation["eval_rewards/accuracy"] == 0.0
    assert evaluation["eval_loss"] == pytest.approx(math.log(2), rel=1e-6)
    pairs = _recipe_pairs(tiny_model, dpo_data)
    mean_logps = _summed_logps(tiny_model, pairs).mean(0)  # (2,): chosen, rejected
    assert evaluation["eval_logps/chosen"] == pytest.approx(mean_logps[0].item(), rel=1e-5)
    assert evaluation["eval_logps/rejected"] == pytest.approx(mean_logps[1].item(), rel=1e-5)
    assert mean_logps.max() < 0
    assert summary["eval_loss"] == evaluation["eval_loss"]
    assert summary["eval_reward_accuracy"] == evaluation["eval_rewards/accuracy"]
    assert summary["eval_reward_margin"] == evaluation["eval_rewards/margin"]
    assert summary["eval_kl"] == evaluation["eval_kl"]


def test_forward_chunks_cut_micro_batches_in_order():
    micro = [[5, 1, 7, 2], [9, 3, 4]]
    assert forward_chunks(micro, 2) == [[5, 1], [7, 2], [9, 3], [4]]
    assert forward_chunks(micro, 3) == [[5, 1, 7], [2], [9, 3, 4]]
    assert forward_chunks(micro, 0) == micro
    assert forward_chunks(micro, 8) == micro
    assert forward_chunks([[], [1]], 2) == [[1]]


def test_pairs_per_forward_gives_the_same_steps(tiny_model, dpo_data, tmp_path):
    """Chunked passes sum to the whole micro-batch's gradient: 4 pairs in one pass, in passes
    of 1, and in passes of 3 + 1 take the same steps (loss at step 2 depends on step 1's update,
    the gradient norm on the whole gradient)."""
    common = ["max_steps=2", "learning_rate=3e-3", "batch_size=4"]
    runs = {}
    for size in (0, 1, 3):
        out = tmp_path / f"chunks{size}"
        train(_config(tiny_model, dpo_data, out, *common, f"dpo.pairs_per_forward={size}"))
        runs[size] = _rows(out)
    for size in (1, 3):
        for whole, chunked in zip(runs[0], runs[size], strict=True):
            for key in ("loss", "grad_norm", "rewards/margin", "rewards/accuracy"):
                assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), (size, key)


def test_grad_accum_1x4_equals_4x1(tiny_model, dpo_data, tmp_path):
    common = ["max_steps=2", "learning_rate=3e-3", "dpo.pairs_per_forward=0"]
    train(_config(tiny_model, dpo_data, tmp_path / "big", *common, "batch_size=4", "grad_accum=1"))
    train(_config(tiny_model, dpo_data, tmp_path / "acc", *common, "batch_size=1", "grad_accum=4"))
    big, acc = _rows(tmp_path / "big"), _rows(tmp_path / "acc")
    assert [r["loss"] for r in big] == pytest.approx([r["loss"] for r in acc], rel=1e-5)
    assert big[1]["rewards/margin"] == pytest.approx(acc[1]["rewards/margin"], rel=1e-4, abs=1e-7)


def test_shared_prompt_rows_are_not_used_where_rows_outrun_a_sliding_window():
    """Mistral v0.1, Gemma 2 and 3 and Phi-3 attend within a window; the shared-prompt layout's
    4-D mask replaces the mask the model builds, so tokens saw past the window (log-probs off by
    0.04-0.18 per token, a reward model's training rewards off its scoring by up to 1.5, on tiny
    stand-ins with a 16-token window). Where rows can be longer than the window, DPO and the
    reward model use ordinary rows and say why; Qwen2's unused `sliding_window` changes nothing."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rlhfkit.models.shared_prompt import unsupported_reason
    from rlhfkit.recipes.dpo import DPOOptions, batch_layout

    shape = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    mistral = MistralForCausalLM(MistralConfig(sliding_window=16, **shape))
    assert "sliding window of 16 tokens" in unsupported_reason(mistral, max_length=64)
    assert unsupported_reason(mistral, max_length=16) is None  # rows never pass the window
    assert (
        unsupported_reason(MistralForCausalLM(MistralConfig(sliding_window=None, **shape)), 64)
        is None
    )
    qwen = Qwen2ForCausalLM(Qwen2Config(sliding_window=16, use_sliding_window=False, **shape))
    assert unsupported_reason(qwen, max_length=64) is None

    said = []
    run = type("Run", (), {"print": staticmethod(said.append)})()
    assert batch_layout(run, DPOOptions(), mistral, 64) == ("padded", torch.bool)
    assert said and "dpo.shared_prompt is turned off" in said[0]
    assert batch_layout(run, DPOOptions(), qwen, 64)[0] == "shared_prompt"
