"""Tokenisation: prompts and completions to ids, with the truncation policy and its bookkeeping.

Policy (as TRL and OpenRLHF do it): a prompt longer than `max_prompt_length` loses its *start*
(the end of a prompt, next to the response, matters most); then the completion is cut at the
*end* so prompt + completion fit `max_length`. An example whose completion has no token left is
skipped. Everything truncated or skipped is counted in `TokenStats` and reported at the start of
training; nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from rlhfkit.data.formats import Text, is_conversational
from rlhfkit.errors import RlhfkitError


@dataclass
class TokenStats:
    """Counts of what tokenisation changed, reported to the user."""

    examples: int = 0
    kept: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    unit: str = "examples"  # what `examples` counts, as the summary names it (DPO: pairs)

    def summary(self) -> str:
        parts = [f"{self.kept}/{self.examples} {self.unit} kept"]
        if self.prompt_truncated:
            parts.append(f"{self.prompt_truncated} prompts truncated (left)")
        if self.completion_truncated:
            parts.append(f"{self.completion_truncated} completions truncated (right)")
        for reason, count in sorted(self.skipped.items()):
            parts.append(f"{count} skipped: {reason}")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {
            "examples": self.examples,
            "kept": self.kept,
            "prompt_truncated": self.prompt_truncated,
            "completion_truncated": self.completion_truncated,
            "skipped": dict(self.skipped),
        }


def apply_chat_template(
    tokenizer: PreTrainedTokenizerBase, messages: list, *, add_generation_prompt: bool = False
) -> str:
    """`tokenizer.apply_chat_template` as text, with a one-line error where the tokenizer has no
    template or its template refuses the conversation (some refuse a system turn)."""
    from jinja2 import TemplateError

    if not tokenizer.chat_template:
        raise RlhfkitError(
            "the model's tokenizer has no chat template, so conversational records (lists of "
            "{role, content} messages) cannot be rendered: give text prompts and responses, or "
            "a model whose tokenizer has a chat template"
        )
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except (TemplateError, ValueError) as err:
        raise RlhfkitError(
            f"the model's chat template refused a conversation: {err} (roles: "
            f"{', '.join(str(m.get('role')) for m in messages)})"
        ) from err


def adds_special_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether plain `text` gets the tokenizer's special tokens (its BOS) when encoded: not
    where it already starts with BOS (a prompt a chat template rendered), which would double it."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text) -> str:
    """The text the model sees before its response (chat template + generation prompt)."""
    if is_conversational(prompt):
        return apply_chat_template(tokenizer, list(prompt), add_generation_prompt=True)
    return prompt


def render_completion(tokenizer: PreTrainedTokenizerBase, prompt: Text, completion: Text) -> str:
    """The response text that follows `render_prompt(prompt)` (chat template's closing tokens
    included for conversations)."""
    if not is_conversational(completion):
        return completion
    prompt_text = render_prompt(tokenizer, prompt)
    full = apply_chat_template(tokenizer, list(prompt) + list(completion))
    if not full.startswith(prompt_text):
        # The records are valid (`formats` checks that a response opens with the assistant's
        # turn); the template rewrites earlier turns once a later one follows (some drop past
        # reasoning), so the prompt's tokens are not those the response is trained after.
        raise RlhfkitError(
            "the tokenizer's chat template renders a prompt differently once a response follows "
            f"(prompt alone: {prompt_text[-60:]!r}; with the response: "
            f"{full[: len(prompt_text)][-60:]!r}); conversational responses cannot be trained "
            "with this template: give text prompts and responses, or a template that renders "
            "the prompt as a prefix of the dialogue"
        )
    return full[len(prompt_text) :]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text) -> list[int]:
    """Token ids of the prompt. Chat templates already hold their special tokens; plain prompts
    get the tokenizer's BOS, the empty prompt of a `{"text"}` record included: a Llama-style
    tokenizer encodes "" as `[bos]`, so a text's first token is trained as following BOS, as in
    pretraining (tokenizers without BOS, as GPT-2's and Qwen2's, encode "" as `[]`)."""
    text = render_prompt(tokenizer, prompt)
    special = not is_conversational(prompt) and adds_special_tokens(tokenizer, text)
    return tokenizer(text, add_special_tokens=special).input_ids


def keep_end(ids: list[int], length: int, bos_id: int | None = None) -> list[int]:
    """`ids` cut from the left to `length` tokens (the end of a prompt, next to the response,
    matters most), keeping a leading `bos_id`: a model trained with BOS first (Llama, Gemma)
    sees it first still, and the cut comes after it. Rows of `length` tokens or fewer stay."""
    if len(ids) <= length:
        return ids
    if bos_id is not None and length >= 2 and ids[0] == bos_id:
        return ids[:1] + ids[len(ids) - length + 1 :]
    return ids[len(ids) - length :]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[Text], max_prompt_length: int
) -> tuple[list[list[int]], int]:
    """Prompts to sample from: ids of each, cut to `max_prompt_length` tokens by `keep_end`, and
    how many were cut."""
    ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    truncated = sum(len(row) > max_prompt_length for row in ids)
    bos_id = tokenizer.bos_token_id
    return [keep_end(row, max_prompt_length, bos_id) for row in ids], truncated


def encode_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: Text, completion: Text
) -> list[int]:
    """Token ids of the response to `prompt`, ending with the tokenizer's EOS.

    Sampling stops at an end token (`rollout.sampling.end_ids`: the tokenizer's EOS and those of
    the model's generation config), so every trained response must end with one, or a policy
    never learns to stop; EOS is the one every model has. A plain completion gets EOS appended
    (unless it already ends with it). A conversational completion ends with the chat template's
    end of turn, which is EOS for many instruct tokenizers but not for every tokenizer: Qwen2
    *base* models end turns with `<|im_end|>` and use `<|endoftext|>` as EOS. There EOS is
    appended after the template's closing tokens (`...<|im_end|>\n<|endoftext|>`), unless the
    rendered turn already holds it.
    """
    ids = tokenizer(
        render_completion(tokenizer, prompt, completion), add_special_tokens=False
    ).input_ids
    eos = tokenizer.eos_token_id
    if is_conversational(completion):
        return ids if eos in ids else ids + [eos]
    if not ids or ids[-1] != eos:
        ids = ids + [eos]
    return ids


@dataclass
class Encoded:
    prompt_ids: list[int]
    completion_ids: list[int]
    prompt_truncated: bool = False
    completion_truncated: bool = False


def truncate(
    prompt_ids: list[int],
    completion_ids: list[int],
    *,
    max_length: int,
    max_prompt_length: int,
    bos_id: int | None = None,
) -> Encoded:
    """Apply the truncation policy: prompt from the left (a leading `bos_id` kept, `keep_end`),
    then completion from the right."""
    prompt_truncated = len(prompt_ids) > max_prompt_length
    prompt_ids = keep_end(prompt_ids, max_prompt_length, bos_id)
    room = max(max_length - len(prompt_ids), 0)
    completion_truncated = len(completion_ids) > room
    return Encoded(prompt_ids, completion_ids[:room], prompt_truncated, completion_truncated)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Text,
    completion: Text,
    *,
    max_length: int,
    max_prompt_length: int,
    stats: TokenStats | None = None,
) -> Encoded | None:
    """Encode one prompt/completion pair; None (and counted) when nothing of the completion fits."""
    encoded = truncate(
        encode_prompt(tokenizer, prompt),
        encode_completion(tokenizer, prompt, completion),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        bos_id=tokenizer.bos_token_id,
    )
    if stats is not None:
        stats.examples += 1
        stats.prompt_truncated += encoded.prompt_truncated
        stats.completion_truncated += encoded.completion_truncated
    if not encoded.completion_ids:
        if stats is not None:
            stats.skipped["no completion token fits max_length"] += 1
        return None
    if stats is not None:
        stats.kept += 1
    return encoded
