"""Batched sampling: left padding must not change what a prompt's response is."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.models.presets import build_preset
from rlhfkit.rollout.sampling import SamplingParams, sample_responses


def test_greedy_response_is_the_same_alone_and_in_a_padded_batch():
    model, tokenizer = build_preset("tiny", seed=3)
    prompts = [tokenizer("User: What is 2+2?\nBot:").input_ids, tokenizer("Hi").input_ids]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": tokenizer.eos_token_id}
    together = sample_responses(model, prompts, params, **kwargs)
    alone = [sample_responses(model, [p], params, **kwargs).response_ids[0] for p in prompts]
    assert together.response_ids == alone
    assert all(len(r) <= 12 for r in together.response_ids)


def test_num_samples_and_seed():
    model, tokenizer = build_preset("tiny", seed=1)
    prompts = [tokenizer("abc").input_ids, tokenizer("de").input_ids]
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": tokenizer.eos_token_id, "num_samples": 3}
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
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": tokenizer.eos_token_id}
    plain = sample_responses(model, prompts, params, **kwargs).response_ids
    shipped = GenerationConfig(repetition_penalty=3.0, suppress_tokens=[tokenizer.eos_token_id])
    model.generation_config = shipped
    assert sample_responses(model, prompts, params, **kwargs).response_ids == plain
    assert model.generation_config is shipped


def _always_emits(token: int, seed: int = 3):
    """The tiny preset whose greedy next token is always `token`, which its generation config
    lists as a second end token beside the tokenizer's EOS (as Llama 3.1 Instruct lists
    `<|eom_id|>` and `<|end_of_text|>` beside `<|eot_id|>`)."""
    model, tokenizer = build_preset("tiny", seed=seed)
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 10.0  # one large residual coordinate
        head = model.get_output_embeddings().weight  # tied to the embeddings in `tiny`
        head[token] = 0.0
        head[token, 0] = 50.0
    # pad listed as an end token too, as Qwen2-Instruct lists its pad <|endoftext|>
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, token, tokenizer.pad_token_id]
    return model, tokenizer


def test_every_end_token_of_the_generation_config_ends_a_response():
    """Sampling stopped only at the tokenizer's EOS: a model ending its turn with another of its
    configured end tokens ran on to max_new_tokens ("hit max_new_tokens without EOS"), in
    generate, PPO's sampler and the server alike. `end_ids` lists them all."""
    from rlhfkit.rollout.fast_sampling import sample_with_logprobs
    from rlhfkit.rollout.sampling import end_ids
    from rlhfkit.serving.batching import BatchedGenerator, GenJob

    other = 2  # "<|im_start|>": a special token that is not EOS
    model, tokenizer = _always_emits(other)
    model.eval()
    ends = end_ids(model, tokenizer)
    assert ends == [tokenizer.eos_token_id, other, tokenizer.pad_token_id]
    prompt = tokenizer("Hi").input_ids
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    samples = sample_responses(model, [prompt], params, pad_id=tokenizer.pad_token_id, eos_ids=ends)
    assert samples.response_ids == [[other]] and samples.has_eos == [True]
    rollout = sample_with_logprobs(
        model,
        torch.tensor([prompt]),
        torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=6,
        eos_ids=ends,
        pad_id=tokenizer.pad_token_id,
        temperature=0.0,
    )
    assert rollout.response_ids.tolist() == [[other]] and rollout.has_eos.tolist() == [True]
    batcher = BatchedGenerator(model, tokenizer, max_batch_size=1, wait_s=0.0)
    try:
        (row,) = batcher.submit(GenJob(prompt, 1, 6, 0.0, 1.0, -1)).result(timeout=60)
    finally:
        batcher.close()
    assert row.token_ids == [] and row.finish_reason == "stop"


def test_a_model_without_any_eos_token_is_a_one_line_error():
    from rlhfkit.errors import ConfigError
    from rlhfkit.rollout.sampling import end_ids

    model, tokenizer = build_preset("tiny", seed=0)
    model.generation_config.eos_token_id = None
    tokenizer.eos_token = None
    with pytest.raises(ConfigError, match="names an EOS token"):
        end_ids(model, tokenizer)
