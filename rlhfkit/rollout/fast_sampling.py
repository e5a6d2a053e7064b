"""A lean decode loop for PPO rollouts: KV cache, left padding, top-p, stop at EOS (any of the
model's end tokens), log-probs.

`transformers`' `generate` spends, per decoding step, more time in its own machinery (logits
processors, stopping criteria, cache bookkeeping, output dataclasses) than a small model spends
in its forward pass. PPO samples every step, so this module keeps only what sampling needs:

1. one prefill forward over the left-padded prompts (position ids from the attention mask, so a
   prompt's positions are the same alone and in a padded batch), keeping the last position's
   logits only;
2. per step: logits / temperature -> top-p filter -> softmax -> `torch.multinomial`, in the same
   order and with the same random draws as `generate(do_sample=True, top_k=0)`; rows that have
   emitted EOS are fed the pad token from then on (their tokens are masked out);
3. the log-prob of every sampled token under the *tempered, unfiltered* distribution
   ``log softmax(logits / T)[token]``, which is what PPO recomputes in its forward pass
   (`TokenLogprobs(temperature=T)`): top-p changes which tokens can be drawn, not the
   probabilities the ratio compares.

With `row_noise` the draw of step 2 is a Gumbel-max draw instead, ``argmax(filtered scores +
Gumbel noise)`` (the same distribution), whose noise comes from a generator seeded for the whole
global batch: row i gets row i of a (total rows, V) draw whatever the process and batch it is
sampled in, so a batch split over processes samples the same responses as one process does.

The loop stops when every row has emitted EOS or after `max_new_tokens` tokens. Asking "has
every row ended?" copies a flag from the GPU, which makes the host wait for the device; on a GPU
the loop asks only every `check_every` steps (default 8), so the host can queue the next steps'
kernels while the device runs, and the columns decoded after the last row ended (pad only) are
cut off. The tokens are the same as with a check at every step.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from rlhfkit.rollout.sampling import as_ids


@dataclass(frozen=True)
class RowNoise:
    """Sampling noise owned by rows of a global batch rather than by the batch sampled.

    Attributes:
        seed: Seeds the generator; decoding step t uses the t-th (total_rows, V) uniform draw.
        first_row: Row of the global batch that this batch's row 0 is.
        total_rows: Rows of the global batch.
    """

    seed: int
    first_row: int
    total_rows: int


def gumbel_max(scores: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One sample per row of softmax(scores), by the Gumbel-max trick.

    ``argmax_v (scores_v - log(-log u_v))`` with ``u ~ U(0, 1)`` is distributed as
    softmax(scores); tokens at -inf (filtered by top-p) are never drawn.

    Args:
        scores: (B, V) logits, filtered.
        uniform: (B, V) draws from U(0, 1).

    Returns:
        (B,) sampled token ids.
    """
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
    return (scores + gumbel).argmax(dim=-1)


@dataclass
class Rollout:
    """A batch of sampled responses, right-padded with the pad id.

    Attributes:
        response_ids: (B, N) sampled tokens; positions after the end token hold the pad id.
        response_mask: (B, N) 1 on response tokens (the end token included), 0 after it.
        logprobs: (B, N) fp32 sampling log-probs ``log softmax(logits / T)[token]``, 0 off-mask.
        has_eos: (B,) bool, True where the response ended with an end token.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    has_eos: torch.Tensor


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the nucleus of mass `top_p` (the most likely token stays).

    Tokens are sorted by increasing logit; a token is removed when the probability mass of it
    and all less likely tokens is at most ``1 - top_p``.

    Args:
        scores: (B, V) logits (already divided by the temperature).
        top_p: Nucleus mass in (0, 1]; 1 keeps everything.

    Returns:
        (B, V) filtered logits.
    """
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)  # (B, V)
    tail_mass = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    remove_sorted = tail_mass <= (1.0 - top_p)  # (B, V)
    remove_sorted[:, -1] = False  # the most likely token always stays
    remove = remove_sorted.scatter(1, order, remove_sorted)  # (B, V) back in vocabulary order
    return scores.masked_fill(remove, float("-inf"))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at each row's first real token; padding gets 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)


def cache_keyword(lm: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: `cache` (transformers >= 5.2x) or the older
    `past_key_values` (still accepted, with a deprecation warning, by newer versions)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    parameters = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@torch.no_grad()
def sample_with_logprobs(
    lm: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_ids: int | Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    check_every: int | None = None,
    row_noise: RowNoise | None = None,
) -> Rollout:
    """Sample responses to left-padded prompts with a KV cache.

    Args:
        lm: A causal LM (`transformers` or peft-wrapped) in eval mode.
        input_ids: (B, P) left-padded prompt ids.
        attention_mask: (B, P) 1 on prompt tokens, 0 on left padding.
        max_new_tokens: Most tokens per response.
        eos_ids: End a response, each (kept in it): `rollout.sampling.end_ids`.
        pad_id: Fills rows that have ended.
        temperature: > 0 samples from softmax(logits / T); 0 is greedy (log-probs at T = 1).
        top_p: Nucleus sampling mass.
        check_every: Test for "every row ended" every this many steps; None = 1 on a CPU
            (no host-device wait to save), 8 on an accelerator.
        row_noise: Draw tokens with per-row noise of a global batch (Gumbel-max; see the module
            docstring) instead of `torch.multinomial` on the global RNG.

    Returns:
        A `Rollout`; N is at most `max_new_tokens` (shorter if every row ended earlier).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    batch = input_ids.shape[0]
    device = input_ids.device
    ends = torch.tensor(as_ids(eos_ids), device=device)  # (E,)
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 8
    greedy = temperature <= 0
    scale = 1.0 if greedy else float(temperature)
    cache = {cache_keyword(lm): DynamicCache()}
    attention_mask = attention_mask.long()
    position_ids = positions_from_mask(attention_mask)  # (B, P)
    next_position = position_ids[:, -1:] + 1  # (B, 1)
    logits = lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]  # (B, V)

    unfinished = torch.ones(batch, dtype=torch.bool, device=device)  # (B,)
    tokens, logps, alive = [], [], []
    ones = torch.ones(batch, 1, dtype=attention_mask.dtype, device=device)
    noise_rows = generator = None
    if row_noise is not None and not greedy:
        generator = torch.Generator(device=device).manual_seed(row_noise.seed)
        noise_rows = slice(row_noise.first_row, row_noise.first_row + batch)
    for step in range(max_new_tokens):
        scores = logits.float() / scale  # (B, V)
        log_probs = scores.log_softmax(dim=-1)  # (B, V) tempered, unfiltered
        if greedy:
            token = scores.argmax(dim=-1)  # (B,)
        else:
            filtered = top_p_filter(scores, top_p)  # (B, V)
            if generator is None:
                token = torch.multinomial(filtered.softmax(dim=-1), num_samples=1).squeeze(1)
            else:
                shape = (row_noise.total_rows, filtered.shape[1])
                uniform = torch.rand(shape, generator=generator, device=device)[noise_rows]
                token = gumbel_max(filtered, uniform)  # (B,)
        token = torch.where(unfinished, token, torch.full_like(token, pad_id))  # (B,)
        tokens.append(token)
        token_logp = log_probs.gather(1, token[:, None]).squeeze(1)  # (B,)
        logps.append(torch.where(unfinished, token_logp, torch.zeros_like(token_logp)))
        alive.append(unfinished.clone())
        unfinished = unfinished & ~torch.isin(token, ends)
        if step == max_new_tokens - 1 or ((step + 1) % check_every == 0 and not unfinished.any()):
            break
        attention_mask = torch.cat([attention_mask, ones], dim=1)  # (B, P + t + 1)
        logits = lm(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            **cache,
            use_cache=True,
        ).logits[:, -1]  # (B, V)
        next_position = next_position + 1

    response_mask = torch.stack(alive, dim=1).long()  # (B, N)
    length = int(response_mask.any(dim=0).sum())  # columns up to the last row's EOS
    response_ids = torch.stack(tokens, dim=1)[:, :length]  # (B, N)
    response_mask = response_mask[:, :length]
    has_eos = (torch.isin(response_ids, ends) & response_mask.bool()).any(dim=1)  # (B,)
    return Rollout(response_ids, response_mask, torch.stack(logps, dim=1)[:, :length], has_eos)


__all__ = [
    "Rollout",
    "RowNoise",
    "gumbel_max",
    "cache_keyword",
    "positions_from_mask",
    "sample_with_logprobs",
    "top_p_filter",
]
