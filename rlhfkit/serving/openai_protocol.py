"""OpenAI's API shapes for the text-generation server: request parameters checked (numbers in
range, stop strings, ``max_tokens``, parameters this server does not implement refused unless
at their default), chat messages read as ``{role, content}`` text, and responses shaped:
log-probs of completions and of chat messages (`TokenTable` names each token and gives its
bytes) and the chunks of a stream.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from rlhfkit.models.tokenizer import _byte_alphabet
from rlhfkit.serving.http_errors import ApiError
from rlhfkit.serving.text_stream import Choice

# ---------------------------------------------------------------------------------------------
# Responses: log-probs and stream chunks
# ---------------------------------------------------------------------------------------------


_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_BYTE_OF_CHAR = {char: byte for byte, char in enumerate(_byte_alphabet())}


def _decoder_types(tokenizer) -> set[str]:
    """The types of the decoders of a fast tokenizer's backend (nested ones too); empty for a
    slow tokenizer."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return set()
    return set(re.findall(r'"type":\s*"(\w+)"', decoder.__getstate__().decode()))


class TokenTable:
    """What each token id is on its own, for log-probs: its bytes, and a label that names it.

    Bytes: an added or special token is its text (UTF-8); a token of a byte-level tokenizer is
    one byte per character of GPT-2's byte alphabet; a SentencePiece byte-fallback token
    ``<0xNN>`` is byte NN, and ``▁`` is a space; an id the tokenizer does not know (a row of the
    output layer past the vocabulary) has none. The label is the token's text where its bytes are
    whole UTF-8 characters, ``bytes:\\xNN...`` where they are not (OpenAI's convention), and
    ``token_id:N`` where it has no bytes (vLLM's).

    Args:
        tokenizer: The served model's tokenizer.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        self.byte_level = "ByteLevel" in _decoder_types(tokenizer)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.added = {int(i): token.content for i, token in added.items()}
        self._bytes: dict[int, bytes | None] = {}

    def token_bytes(self, token_id: int) -> bytes | None:
        """The bytes token ``token_id`` stands for; None if it stands for none."""
        if token_id not in self._bytes:
            self._bytes[token_id] = self._lookup(token_id)
        return self._bytes[token_id]

    def _lookup(self, token_id: int) -> bytes | None:
        if token_id in self.added:
            return self.added[token_id].encode()
        if not 0 <= token_id < self.size:
            return None
        token = self.tokenizer.convert_ids_to_tokens(token_id)
        if token is None:
            return None
        if self.byte_level and all(char in _BYTE_OF_CHAR for char in token):
            return bytes(_BYTE_OF_CHAR[char] for char in token)
        match = _SENTENCEPIECE_BYTE.fullmatch(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("\u2581", " ").encode()

    def label(self, token_id: int) -> str:
        """The token's text, ``bytes:\\xNN...`` or ``token_id:N`` (see the class)."""
        data = self.token_bytes(token_id)
        if data is None:
            return f"token_id:{token_id}"
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{byte:02x}" for byte in data)

    def alternatives(self, top: list[tuple[int, float]]) -> list[tuple[str, bytes | None, float]]:
        """(label, bytes, log-prob) of each alternative, in the given order, with labels made
        unique within the list: a label already taken (two ids with the same text) becomes
        ``token_id:N``, so a dict keyed by label keeps every alternative."""
        seen: set[str] = set()
        out = []
        for token_id, value in top:
            label = self.label(token_id)
            if label in seen:
                label = f"token_id:{token_id}"
            seen.add(label)
            out.append((label, self.token_bytes(token_id), value))
        return out


def _byte_list(data: bytes | None) -> list[int] | None:
    return None if data is None else list(data)


def completion_logprobs(choice: Choice, table: TokenTable, offset: int = 0) -> dict | None:
    """The legacy log-probs of a completion choice: ``tokens`` (the text each token adds, so
    they join to the choice's text), ``token_logprobs``, ``top_logprobs`` (one dict per token,
    label -> log-prob, best first, one entry per alternative asked for) and ``text_offset``."""
    if choice.logprobs is None:
        return None
    offsets, position = [], offset
    for piece in choice.tokens:
        offsets.append(position)
        position += len(piece)
    return {
        "tokens": choice.tokens,
        "token_logprobs": choice.logprobs,
        "top_logprobs": [
            {label: value for label, _, value in table.alternatives(alts)}
            for alts in choice.top_logprobs or []
        ],
        "text_offset": offsets,
    }


def chat_logprobs(choice: Choice, table: TokenTable) -> dict | None:
    """The chat log-probs of a choice: per token its text (what it adds to the message), its
    log-prob, its own ``bytes`` (so a character split over tokens is whole once their bytes are
    joined), and its alternatives (label, log-prob, bytes), best first."""
    if choice.logprobs is None:
        return None
    content = []
    for i, (piece, token_id, value) in enumerate(
        zip(choice.tokens, choice.token_ids, choice.logprobs, strict=True)
    ):
        alts = choice.top_logprobs[i] if choice.top_logprobs else []
        content.append(
            {
                "token": piece,
                "logprob": value,
                "bytes": _byte_list(table.token_bytes(token_id)),
                "top_logprobs": [
                    {"token": label, "logprob": v, "bytes": _byte_list(data)}
                    for label, data, v in table.alternatives(alts)
                ],
            }
        )
    return {"content": content}


def chunk_event(rid: str, created: int, model: str, obj: str, choice: dict) -> dict:
    """One event of a stream: an ``obj`` object (a chunk) with the one choice ``choice``."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


# ---------------------------------------------------------------------------------------------
# Requests: parameters and chat messages
# ---------------------------------------------------------------------------------------------


def number_param(body: dict, key: str, default: Any, cast: type, low: float, high: float) -> Any:
    """``body[key]`` (``default`` where absent or null) as ``cast``; a 400 unless it is a number
    in [low, high]."""
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"{key} must be a number", key)
    # JSON lets through NaN, Infinity and numbers too large for a float (1e400, 400 digits).
    if not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
        shown = value if isinstance(value, float) or abs(value) < 10**15 else "a larger integer"
        raise ApiError(f"{key} must be between {low} and {high}, got {shown}", key)
    if cast is int and value != int(value):
        raise ApiError(f"{key} must be an integer, got {value}", key)
    return cast(value)


def bool_param(body: dict, key: str) -> bool:
    """``body[key]`` as a boolean (false where absent or null); a 400 for anything else, as
    OpenAI answers: the string "false" must not switch a feature on."""
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"{key} must be true or false, got {json.dumps(value)}", key)
    return value


def stream_usage(body: dict) -> bool:
    """Whether a streamed request asks for a last chunk with its usage
    (``stream_options: {"include_usage": true}``)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError("stream_options must be an object", "stream_options")
    return bool_param(options, "include_usage")


# OpenAI's limit on stop strings: each is looked for after every generated token, so an unbounded
# list would hold the event loop.
MAX_STOP = 4


def stop_list(body: dict) -> list[str]:
    """The request's ``stop`` (a string or a list of at most `MAX_STOP` strings) as a list."""
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOP:
            raise ApiError(f"stop takes at most {MAX_STOP} strings, got {len(stop)}", "stop")
        return [s for s in stop if s]
    raise ApiError("stop must be a string or a list of strings", "stop")


# OpenAI's limit on ``n``.
MAX_N = 128


def choices_per_prompt(body: dict, prompts: int, max_choices: int) -> int:
    """The request's ``n`` (1 to `MAX_N`); a 400 where ``prompts`` × ``n`` choices are more than
    ``max_choices`` (the server's limit per request), naming ``prompt`` where the prompts alone
    are too many, else ``n``."""
    n = number_param(body, "n", 1, int, 1, MAX_N)
    if prompts * n > max_choices:
        asked = f"{prompts} prompts × n={n}" if prompts > 1 else f"n={n}"
        raise ApiError(
            f"the request asks for {prompts * n} choices ({asked}); this server gives at most "
            f"{max_choices} per request (max_choices)",
            "prompt" if prompts > max_choices else "n",
        )
    return n


def requested_max_tokens(body: dict) -> int | None:
    """``max_completion_tokens`` or ``max_tokens`` as the request gives it; None if neither."""
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            return number_param(body, key, None, int, 1, 1 << 20)
    return None


# OpenAI parameters this server does not implement, each with the values that leave it off (what
# clients send by default): those, and null, are accepted; any other value is refused, so that no
# request is silently served differently from what it asked for.
_UNSUPPORTED: dict[str, tuple] = {
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
}


def check_unsupported(body: dict) -> None:
    """Refuse (400) an unimplemented parameter set to anything but its default."""
    for key, accepted in _UNSUPPORTED.items():
        value = body.get(key)
        if value is None or any(_same(value, default) for default in accepted):
            continue
        hint = f"leave it out or send {json.dumps(accepted[0])}" if accepted else "leave it out"
        raise ApiError(f"{key}={json.dumps(value)} is not supported by rlhfkit serve; {hint}", key)


def _same(value: Any, default: Any) -> bool:
    """Whether ``value`` is ``default`` in JSON terms (0 and 0.0 are; 0 and false are not)."""

    def isnumber_param(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    comparable = type(value) is type(default) or (isnumber_param(value) and isnumber_param(default))
    return comparable and value == default


# Roles a chat request may use, and the role the chat template gets: OpenAI's "developer"
# messages are its newer name for system messages.
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """The request's messages as ``{role, content}`` with text content, or a 400 saying which
    message is wrong and why. Content is a string or a list of text parts, which are joined
    with newlines (as vLLM joins them)."""
    if not (isinstance(messages, list) and messages):
        raise ApiError("messages must be a non-empty list of {role, content}", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(f"{where} must be an object with role and content", "messages")
        role = message.get("role")
        if role not in _CHAT_ROLES:
            why = "; tool calls are not supported" if role in ("tool", "function") else ""
            raise ApiError(
                f"{where}.role must be one of {', '.join(_CHAT_ROLES)}, got {role!r}{why}",
                "messages",
            )
        out.append({"role": _CHAT_ROLES[role], "content": _message_text(message, where)})
    return out


def _message_text(message: dict, where: str) -> str:
    """A message's content as text: a string, or its text parts joined with newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not (isinstance(content, list) and content):
        raise ApiError(f"{where}.content must be a string or a list of text parts", "messages")
    texts = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise ApiError(
                f"{where}.content[{k}]: only text parts are supported, got type {kind!r}",
                "messages",
            )
        if not isinstance(part.get("text"), str):
            raise ApiError(f"{where}.content[{k}].text must be a string", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


__all__ = [
    "MAX_N",
    "MAX_STOP",
    "TokenTable",
    "chat_logprobs",
    "chat_messages",
    "check_unsupported",
    "choices_per_prompt",
    "chunk_event",
    "completion_logprobs",
    "number_param",
    "requested_max_tokens",
    "stop_list",
]
