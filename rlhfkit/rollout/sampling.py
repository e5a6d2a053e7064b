"""Batched sampling with a KV cache: K responses per prompt, stopped at an end token (EOS).

One small interface for every stage that samples (`generate`, `ppo`, `eval`, `cai`, `label`):
`sample_responses(model, prompt_ids, params, ...) -> Samples`. Prompts are left-padded so every
row's next token sits at the same position; position ids follow the attention mask, so padding
never shifts a prompt's positions. Responses stop at the first end token (kept in the ids,
flagged in `has_eos`) or at `max_new_tokens`; `end_ids` lists the end tokens of a model (its
tokenizer's EOS and every id of its generation config's EOS list). Only the settings given here
apply: the checkpoint's own `generation_config.json` is set aside for the call
(`only_given_settings`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from rlhfkit.data.collate import pad_left
from rlhfkit.errors import ConfigError


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Samples:
    """`prompt_index[i]` is the prompt that response `i` answers; K responses of a prompt are
    consecutive."""

    prompt_index: list[int]
    response_ids: list[list[int]]  # each ends with an end token iff has_eos
    has_eos: list[bool]


def end_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """The token ids that end a response: the tokenizer's EOS, then each id of the model's
    `generation_config.eos_token_id` (an int or a list: Llama 3.1 Instruct ends a turn with
    `<|eot_id|>` or `<|eom_id|>` and text with `<|end_of_text|>`; Gemma's instruct models with
    `<end_of_turn>` or `<eos>`). Sampling stops at any of them, as `generate` does."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    configured = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = []
    elif isinstance(configured, int):
        configured = [configured]
    ids = list(
        dict.fromkeys(int(i) for i in [tokenizer.eos_token_id, *configured] if i is not None)
    )
    if not ids:
        raise ConfigError(
            "model: neither the tokenizer nor the generation config names an EOS token, so no "
            "response could end: give the tokenizer an eos_token"
        )
    return ids


def as_ids(eos_ids: int | Sequence[int]) -> list[int]:
    """One end-token id or several, as a list."""
    return [int(eos_ids)] if isinstance(eos_ids, int) else [int(i) for i in eos_ids]


@contextmanager
def only_given_settings(model: torch.nn.Module) -> Iterator[None]:
    """Run `generate` with only the settings passed to it: a checkpoint's own
    `generation_config.json` (Qwen2-Instruct's `repetition_penalty: 1.1`, a `min_new_tokens`,
    `no_repeat_ngram_size`, `suppress_tokens`, ...) would otherwise fill in every setting the call
    leaves unset, and the samples would come from another distribution than the one asked for:
    PPO would train on log-probs of a distribution it did not sample from."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    saved = lm.generation_config
    lm.generation_config = GenerationConfig()
    try:
        yield
    finally:
        lm.generation_config = saved


def _generation_kwargs(params: SamplingParams, pad_id: int, eos_ids: list[int]) -> dict:
    kwargs = {
        "max_new_tokens": params.max_new_tokens,
        "pad_token_id": pad_id,
        "eos_token_id": eos_ids,
        "use_cache": True,
    }
    if params.temperature > 0:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False)
    return kwargs


@torch.no_grad()
def sample_responses(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    params: SamplingParams,
    *,
    pad_id: int,
    eos_ids: int | Sequence[int],
    num_samples: int = 1,
    batch_size: int = 64,
    seed: int | None = None,
    progress=None,
) -> Samples:
    """Sample `num_samples` responses for each prompt, `batch_size` rows per generate call;
    a response ends at the first of `eos_ids` (`end_ids(model, tokenizer)`)."""
    eos_ids = as_ids(eos_ids)
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    rows = [(i, ids) for i, ids in enumerate(prompt_ids) for _ in range(num_samples)]
    was_training = model.training
    model.eval()
    out = Samples([], [], [])
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        input_ids = pad_left([ids for _, ids in chunk], pad_id).to(device)  # (B, P)
        attention_mask = pad_left([[1] * len(ids) for _, ids in chunk], 0).to(device)  # (B, P)
        with only_given_settings(model):
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **_generation_kwargs(params, pad_id, eos_ids),
            )[:, input_ids.shape[1] :]  # (B, N)
        for (prompt_index, _), row in zip(chunk, generated.tolist(), strict=True):
            response, ended = _cut_at_end(row, eos_ids, pad_id)
            out.prompt_index.append(prompt_index)
            out.response_ids.append(response)
            out.has_eos.append(ended)
        if progress is not None:
            progress(len(chunk))
    model.train(was_training)
    return out


def _cut_at_end(row: list[int], eos_ids: list[int], pad_id: int) -> tuple[list[int], bool]:
    """The response up to its first end token (kept), and whether it has one."""
    for index, token in enumerate(row):
        if token in eos_ids:
            return row[: index + 1], True
    while row and row[-1] == pad_id and pad_id not in eos_ids:
        row = row[:-1]
    return row, False
