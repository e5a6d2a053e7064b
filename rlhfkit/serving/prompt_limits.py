"""How long a prompt may be: the model's context length (from its config), the `PromptLimits`
a request is checked against (prompt + ``max_tokens`` must fit the context; a prompt is first
checked by its length in characters, before it is tokenised), and `PromptEncoder`, which
tokenises prompts and chat conversations within those limits, off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.data.tokenize import adds_special_tokens
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import CONTEXT_KEYS, model_context_length
from rlhfkit.serving.http_errors import ApiError


@dataclass
class PromptLimits:
    """What a request may ask for, in tokens.

    Args:
        context: The model's context length: prompt + new tokens must fit it.
        max_prompt_tokens: The server's own limit on prompts (0 = as the context allows).
        chars_per_token: The most characters one token can stand for (its longest token
            string), so a prompt with more than ``chars_per_token`` times the budget in
            characters is refused without tokenising it.
    """

    context: int
    max_prompt_tokens: int = 0
    chars_per_token: int = 1

    @property
    def prompt_budget(self) -> int:
        """The most tokens a prompt may have (at least one new token must fit after it)."""
        return self.max_prompt_tokens or self.context - 1

    def _why(self) -> str:
        if self.max_prompt_tokens:
            return f"this server takes prompts of at most {self.max_prompt_tokens} tokens"
        return f"this model's maximum context length is {self.context} tokens"

    def check_chars(self, characters: int, param: str) -> None:
        """Refuse a prompt too long in characters to fit the budget in any tokenisation."""
        if characters > self.prompt_budget * self.chars_per_token:
            raise ApiError(
                f"{self._why()}; the prompt has {characters} characters, more than "
                f"{self.prompt_budget} tokens can hold",
                param,
            )

    def check_prompt(self, prompt_tokens: int, param: str) -> None:
        """Refuse a prompt over ``max_prompt_tokens`` (the context is checked with the new
        tokens, in `new_tokens`)."""
        if self.max_prompt_tokens and prompt_tokens > self.max_prompt_tokens:
            raise ApiError(
                f"the prompt has {prompt_tokens} tokens; {self._why()} (max_prompt_tokens)",
                param,
            )

    def new_tokens(self, prompt_tokens: int, requested: int | None, default: int, param: str):
        """The new tokens of a prompt: ``requested``, or ``default`` capped at the room left
        (as OpenAI and vLLM do); refused (400) where prompt + new tokens overrun the context."""
        new = requested if requested is not None else min(default, self.context - prompt_tokens)
        new = max(new, 1)
        if prompt_tokens + new > self.context:
            raise ApiError(
                f"this model's maximum context length is {self.context} tokens; the request "
                f"needs {prompt_tokens + new} ({prompt_tokens} prompt + {new} new)",
                "max_tokens" if requested is not None and prompt_tokens < self.context else param,
            )
        return new


class PromptEncoder:
    """Prompts to token ids within `PromptLimits`. Its methods are meant to run in a worker
    thread: rendering and tokenising a long prompt on the event loop would stall every other
    request.

    Args:
        tokenizer: The served model's tokenizer.
        limits: The limits each prompt is checked against (characters first, then tokens).
    """

    def __init__(self, tokenizer, limits: PromptLimits):
        self.tokenizer = tokenizer
        self.limits = limits

    def encode(self, text: str, *, special: bool, param: str) -> list[int]:
        """``text``'s token ids (an empty prompt starts from the end-of-text token)."""
        self.limits.check_chars(len(text), param)
        special = special and adds_special_tokens(self.tokenizer, text)  # a rendered chat prompt
        ids = self.tokenizer(text, add_special_tokens=special).input_ids
        if not ids:
            ids = [self.tokenizer.eos_token_id]
        self.limits.check_prompt(len(ids), param)
        return ids

    def completion(self, prompts: list[str]) -> list[list[int]]:
        """The token ids of each prompt of a completion request (special tokens added)."""
        return [self.encode(text, special=True, param="prompt") for text in prompts]

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of a conversation rendered with the chat template, ready for the
        assistant's turn."""
        from jinja2 import TemplateError

        if not self.tokenizer.chat_template:
            raise ApiError("this model's tokenizer has no chat template; use /v1/completions")
        self.limits.check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as err:
            raise ApiError(f"the chat template refused these messages: {err}", "messages") from err
        return self.encode(text, special=False, param="messages")


def _longest_token(tokenizer) -> int:
    """The most characters one token of ``tokenizer`` stands for (its longest token string:
    a byte-level token has a character per byte, a byte-fallback token ``<0xNN>`` six)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def server_prompt_limits(model, tokenizer, *, max_model_len: int, max_prompt_tokens: int):
    """The server's `PromptLimits`: the context from ``max_model_len`` or the model's config."""
    if max_model_len < 0 or max_prompt_tokens < 0:
        raise ConfigError("max_model_len and max_prompt_tokens must be >= 0 (0 = automatic)")
    context = max_model_len or model_context_length(model.config)
    if context is None:
        raise ConfigError(
            "max_model_len: the model's config states no context length "
            f"({', '.join(CONTEXT_KEYS)}); give it, as max_model_len=N"
        )
    if max_prompt_tokens >= context:
        raise ConfigError(
            f"max_prompt_tokens: {max_prompt_tokens} leaves no room for new tokens in the "
            f"model's context of {context} tokens; give less, or 0 for as many as fit"
        )
    return PromptLimits(context, max_prompt_tokens, _longest_token(tokenizer))


__all__ = ["PromptEncoder", "PromptLimits", "model_context_length", "server_prompt_limits"]
