"""Batched sampling: left padding must not change what a prompt's response is."""

from __future__ import annotations

import torch

from rlhfkit.models.presets import build_preset
from rlhfkit.rollout.sampling import SamplingParams, sample_responses


def test_greedy_response_is_the_same_alone_and_in_a_padded_batch():
    model, tokenizer = build_preset("tiny", seed=3)
    prompts = [tokenizer("User: What is 2+2?\nBot:").input_ids, tokenizer("Hi").input_ids]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id}
    together = sample_responses(model, prompts, params, **kwargs)
    alone = [sample_responses(model, [p], params, **kwargs).response_ids[0] for p in prompts]
    assert together.response_ids == alone
    assert all(len(r) <= 12 for r in together.response_ids)


def test_num_samples_and_seed():
    model, tokenizer = build_preset("tiny", seed=1)
    prompts = [tokenizer("abc").input_ids, tokenizer("de").input_ids]
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id, "num_samples": 3}
    a = sample_responses(model, prompts, params, seed=7, **kwargs)
    b = sample_responses(model, prompts, params, seed=7, **kwargs)
    assert a.prompt_index == [0, 0, 0, 1, 1, 1]
    assert a.response_ids == b.response_ids
    assert torch.is_grad_enabled()


def test_a_checkpoints_own_generation_config_does_not_change_the_samples():
    """A hub checkpoint may ship `repetition_penalty`, `min_new_tokens`, `suppress_tokens`, ...
    in its generation_config.json; `generate` filled every setting the call left unset from it,
    so sampling drew from another distribution than asked (and PPO with `sampler=hf` trained on
    log-probs of one it did not sample). Greedy with a repetition penalty of 3 and a ban on EOS
    must give exactly the responses of the same model without them; the model's own config is
    back in place afterwards."""
    from transformers import GenerationConfig

    model, tokenizer = build_preset("tiny", seed=3)
    prompts = [tokenizer("User: What is 2+2?\nBot:").input_ids, tokenizer("Hi").input_ids]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id}
    plain = sample_responses(model, prompts, params, **kwargs).response_ids
    shipped = GenerationConfig(repetition_penalty=3.0, suppress_tokens=[tokenizer.eos_token_id])
    model.generation_config = shipped
    assert sample_responses(model, prompts, params, **kwargs).response_ids == plain
    assert model.generation_config is shipped
