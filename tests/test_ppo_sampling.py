"""The PPO rollout sampler (`rollout/fast_sampling.py`): same draws as `generate`, log-probs that
a forward pass reproduces, left padding that changes nothing, EOS handling, top-p by hand."""

import math

import pytest
import torch

from rlhfkit.data.collate import pad_left
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.rollout.fast_sampling import (
    RowNoise,
    gumbel_max,
    positions_from_mask,
    sample_with_logprobs,
    top_p_filter,
)

PROMPTS = ["User: What is 3+4?\nBot:", "User: Hi\nBot:", "User: Name a fruit please.\nBot:"]


@pytest.fixture(scope="module")
def lm_and_tokenizer(tiny_model):
    return load_causal_lm(str(tiny_model), trainable=False), load_tokenizer(str(tiny_model))


def left_padded(tokenizer, prompts):
    ids = [tokenizer(p).input_ids for p in prompts]
    return pad_left(ids, tokenizer.pad_token_id), pad_left([[1] * len(i) for i in ids], 0)


def recomputed_logprobs(lm, query, query_mask, rollout, temperature):
    input_ids = torch.cat([query, rollout.response_ids], dim=1)
    attention_mask = torch.cat([query_mask, rollout.response_mask], dim=1)
    target_mask = torch.cat([torch.zeros_like(query_mask), rollout.response_mask], dim=1)
    with torch.no_grad():
        out = TokenLogprobs(lm)(
            input_ids,
            target_mask,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            temperature=temperature,
        )
    return out["logprobs"][:, query.shape[1] :]


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_same_tokens_as_hf_generate_for_the_same_seed(lm_and_tokenizer, top_p):
    """The lean loop applies temperature, top-p, softmax and multinomial in generate's order, so
    with the same RNG state it draws exactly the same tokens."""
    lm, tokenizer = lm_and_tokenizer
    query, query_mask = left_padded(tokenizer, PROMPTS)
    torch.manual_seed(5)
    expected = lm.generate(
        input_ids=query,
        attention_mask=query_mask,
        max_new_tokens=24,
        do_sample=True,
        temperature=0.7,
        top_p=top_p,
        top_k=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, query.shape[1] :]
    torch.manual_seed(5)
    rollout = sample_with_logprobs(
        lm,
        query,
        query_mask,
        max_new_tokens=24,
        eos_ids=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        temperature=0.7,
        top_p=top_p,
    )
    assert torch.equal(rollout.response_ids, expected)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_match_a_forward_pass(lm_and_tokenizer, temperature):
    lm, tokenizer = lm_and_tokenizer
    query, query_mask = left_padded(tokenizer, PROMPTS)
    torch.manual_seed(0)
    rollout = sample_with_logprobs(
        lm,
        query,
        query_mask,
        max_new_tokens=20,
        eos_ids=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        temperature=temperature,
        top_p=0.95,
    )
    recomputed = recomputed_logprobs(lm, query, query_mask, rollout, temperature)
    torch.testing.assert_close(recomputed, rollout.logprobs, rtol=0, atol=1e-5)
    assert bool((rollout.logprobs[rollout.response_mask.bool()] < 0).all())


def test_a_prompt_is_scored_the_same_alone_and_in_a_left_padded_batch(lm_and_tokenizer):
    """Position ids follow the attention mask: left padding must not shift the short prompt."""
    lm, tokenizer = lm_and_tokenizer
    short, long_ = PROMPTS[1], PROMPTS[2]
    response = tokenizer(" Sure! 7.", add_special_tokens=False).input_ids
    rows = [tokenizer(p).input_ids + response for p in (short, long_)]
    prompt_lengths = [len(tokenizer(p).input_ids) for p in (short, long_)]
    model = TokenLogprobs(lm)

    def score(row_list, plens):
        ids = pad_left(row_list, tokenizer.pad_token_id)
        attention = pad_left([[1] * len(r) for r in row_list], 0)
        target = pad_left(
            [[0] * p + [1] * (len(r) - p) for r, p in zip(row_list, plens, strict=True)], 0
        )
        with torch.no_grad():
            out = model(ids, target, attention, positions_from_mask(attention))["logprobs"]
        return out[:, -len(response) :]

    alone = score(rows[:1], prompt_lengths[:1])[0]
    batched = score(rows, prompt_lengths)[0]
    assert len(rows[0]) < len(rows[1])  # the short prompt really is padded in the batch
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_decoding_feeds_one_new_token_per_step_through_the_kv_cache(lm_and_tokenizer):
    """With a KV cache the prompt goes through the model once (3 rows x its padded length) and
    every later step feeds one token per row: 5 new tokens = 1 prefill + 4 decode calls, whose
    inputs are (3, 1), and the cache the decode calls see grows by one position per step."""
    lm, tokenizer = lm_and_tokenizer
    query, query_mask = left_padded(tokenizer, PROMPTS)
    calls = []

    def record(_module, args, kwargs):
        cache = next((v for k, v in kwargs.items() if "past_key" in k or k == "cache"), None)
        calls.append((tuple(kwargs["input_ids"].shape), cache.get_seq_length()))

    handle = lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        sample_with_logprobs(
            lm, query, query_mask, max_new_tokens=5, eos_ids=-1, pad_id=tokenizer.pad_token_id
        )
    finally:
        handle.remove()
    prompt_length = query.shape[1]
    assert calls[0] == ((3, prompt_length), 0)
    assert calls[1:] == [((3, 1), prompt_length + t) for t in range(4)]


def test_stops_at_eos_and_pads_after_it(lm_and_tokenizer):
    """Forcing EOS (bias on the LM head) ends every row at its first token: mask 1 there,
    has_eos True, and the loop stops instead of running to max_new_tokens."""
    lm, tokenizer = lm_and_tokenizer
    query, query_mask = left_padded(tokenizer, PROMPTS)
    eos = tokenizer.eos_token_id
    head = lm.get_output_embeddings()

    def force_eos(_module, _inputs, output):
        output[..., eos] += 1e4
        return output

    handle = head.register_forward_hook(force_eos)
    try:
        rollout = sample_with_logprobs(
            lm, query, query_mask, max_new_tokens=10, eos_ids=eos, pad_id=tokenizer.pad_token_id
        )
    finally:
        handle.remove()
    assert rollout.response_ids.shape == (3, 1)
    assert rollout.response_ids[:, 0].tolist() == [eos] * 3
    assert rollout.has_eos.tolist() == [True] * 3
    assert rollout.response_mask.tolist() == [[1]] * 3


@pytest.mark.parametrize("check_every", [3, 8])
def test_checking_for_the_end_less_often_changes_nothing(lm_and_tokenizer, check_every):
    """Every row is forced to EOS at its 2nd token. Checked at every step the loop stops after
    2 columns; checked every 3 or 8 steps it decodes a few pad-only columns more and cuts them
    off: same tokens, mask, log-probs and has_eos (what a GPU run gets by default)."""
    lm, tokenizer = lm_and_tokenizer
    query, query_mask = left_padded(tokenizer, PROMPTS)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    calls = {"n": 0}

    def force(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] == 2:  # the first decode step: the second token
            output[..., eos] += 1e4
        return output

    handle = lm.get_output_embeddings().register_forward_hook(force)
    rollouts = []
    try:
        for every in (1, check_every):
            calls["n"] = 0
            torch.manual_seed(2)
            rollouts.append(
                sample_with_logprobs(
                    lm,
                    query,
                    query_mask,
                    max_new_tokens=12,
                    eos_ids=eos,
                    pad_id=pad,
                    check_every=every,
                )  # fmt: skip
            )
    finally:
        handle.remove()
    every_step, sparse = rollouts
    assert every_step.response_ids.shape == (3, 2)
    assert torch.equal(sparse.response_ids, every_step.response_ids)
    assert torch.equal(sparse.response_mask, every_step.response_mask)
    assert torch.equal(sparse.logprobs, every_step.logprobs)
    assert torch.equal(sparse.has_eos, every_step.has_eos)


def test_rows_that_end_early_are_padded_and_masked(lm_and_tokenizer):
    """Row 0 is forced to EOS on its 2nd token; the others run on. After the EOS row 0 holds
    the pad id, mask 0 and log-prob 0 (0, not 0 x -inf = nan, though the model gives the pad
    token no probability at all); pad id != EOS id."""
    lm, tokenizer = lm_and_tokenizer
    query, query_mask = left_padded(tokenizer, PROMPTS)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert eos != pad
    calls = {"n": 0}

    def force(_module, _inputs, output):
        calls["n"] += 1
        output[..., eos] -= 1e4  # nobody ends by chance
        output[..., pad] = float("-inf")  # log p(pad) = -inf on every row
        if calls["n"] == 2:  # the first decode step: the second token
            output[0, -1, eos] += 2e4
        return output

    handle = lm.get_output_embeddings().register_forward_hook(force)
    try:
        torch.manual_seed(1)
        rollout = sample_with_logprobs(
            lm, query, query_mask, max_new_tokens=6, eos_ids=eos, pad_id=pad
        )
    finally:
        handle.remove()
    assert rollout.response_ids.shape == (3, 6)
    assert rollout.response_ids[0, 1] == eos
    assert rollout.response_ids[0, 2:].tolist() == [pad] * 4
    assert rollout.response_mask.tolist() == [[1, 1, 0, 0, 0, 0], [1] * 6, [1] * 6]
    assert rollout.logprobs[0, 2:].tolist() == [0.0] * 4
    assert rollout.has_eos.tolist() == [True, False, False]


def test_top_p_filter_by_hand():
    """probs [0.5, 0.3, 0.15, 0.05] (logits = log probs). Ascending: 0.05, 0.15, 0.3, 0.5 with
    tail masses 0.05, 0.20, 0.50, 1.0. top_p = 0.75 removes tail mass <= 0.25: tokens 3 and 2.
    top_p = 0.5 removes <= 0.5: tokens 3, 2, 1 (only the most likely stays).
    top_p = 0.9 removes <= 0.1: token 3 only."""
    logits = torch.tensor([[math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]], dtype=torch.float64)
    kept = {p: torch.isfinite(top_p_filter(logits, p))[0].tolist() for p in (0.75, 0.5, 0.9, 1.0)}
    assert kept[0.75] == [True, True, False, False]
    assert kept[0.5] == [True, False, False, False]
    assert kept[0.9] == [True, True, True, False]
    assert kept[1.0] == [True] * 4


def test_positions_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_gumbel_max_draws_from_the_softmax_and_skips_filtered_tokens():
    """argmax(s + Gumbel) is distributed as softmax(s). Scores log([0.5, 0.3, 0.2]) and a token
    at -inf: over 40,000 draws the frequencies are 0.5 / 0.3 / 0.2 / 0 within 0.01 (3.5 binomial
    standard deviations: sqrt(0.25 / 40,000) = 0.0025)."""
    torch.manual_seed(0)
    scores = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2), float("-inf")]])
    draws = 40_000
    tokens = gumbel_max(scores.expand(draws, 4), torch.rand(draws, 4))
    frequencies = torch.bincount(tokens, minlength=4).float() / draws
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.01)
    assert frequencies[3] == 0


def test_row_noise_makes_a_row_sample_the_same_in_any_batch(lm_and_tokenizer):
    """With `RowNoise`, the rows of a global batch sampled in two halves get the tokens (and
    log-probs) they get when the whole batch is sampled at once: what makes PPO on two processes
    sample what one process samples."""
    lm, tokenizer = lm_and_tokenizer
    prompts = PROMPTS + ["User: Pick a color.\nBot:"]
    common = {"max_new_tokens": 12, "eos_ids": tokenizer.eos_token_id}
    common.update(pad_id=tokenizer.pad_token_id, temperature=1.0, top_p=0.95)
    query, query_mask = left_padded(tokenizer, prompts)
    whole = sample_with_logprobs(lm, query, query_mask, **common, row_noise=RowNoise(7, 0, 4))
    for first in (0, 2):
        half_query, half_mask = left_padded(tokenizer, prompts[first : first + 2])
        half = sample_with_logprobs(
            lm, half_query, half_mask, **common, row_noise=RowNoise(7, first, 4)
        )
        width = half.response_ids.shape[1]
        assert torch.equal(half.response_ids, whole.response_ids[first : first + 2, :width])
        assert not whole.response_mask[first : first + 2, width:].any()
        torch.testing.assert_close(
            half.logprobs, whole.logprobs[first : first + 2, :width], rtol=1e-5, atol=1e-6
        )
    other = sample_with_logprobs(lm, query, query_mask, **common, row_noise=RowNoise(8, 0, 4))
    assert not torch.equal(other.response_ids, whole.response_ids)  # the seed matters
