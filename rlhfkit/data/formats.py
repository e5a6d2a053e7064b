"""The dataset formats of DESIGN.md, validated and normalised into small dataclasses.

Formats follow TRL's conventions, each either plain text or conversational
(`[{"role": ..., "content": ...}]`, rendered later with the tokenizer's chat template):

- SFT: `{"prompt", "completion"}`, `{"messages"}` (the last assistant turn is the completion),
  or `{"text"}` (plain language modelling: every token is trained);
- prompts: `{"prompt"}`;
- preference: `{"prompt", "chosen", "rejected"}`, optional `margin` (float), `criteria`
  (per-criterion verdicts) and `soft_label` (P(chosen beats rejected) in [0, 1], as `rlhfkit
  label` and `annotate export --aggregate soft` write it); conversations may leave the prompt
  implicit (the shared prefix), and a text `prompt` beside whole dialogues that repeat it
  (ultrafeedback_binarized) is read as that shared prefix;
- ranking: `{"prompt", "responses": [...], "ranking": [best ... worst]}` (indices into responses).

A response (completion, chosen, rejected, each of responses) follows its prompt's format: after a
conversation a plain string is read as the assistant's reply (`as_reply`), and messages must open
with the assistant's turn; after a text prompt messages are refused.

Each parser takes a `Record` and raises `DataError` as `file:line: field: problem`. A record
holding the fields of two formats (`text` and `prompt`, `messages` and `completion`, `chosen` and
`ranking`) is refused as ambiguous rather than read as one of them, except a text `prompt` that
only repeats the first user turn of `messages` (ultrachat_200k), which is a copy; a field whose
value is None (how Parquet gives a column a row does not use) counts as absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from rlhfkit.data.io import Record

Message = dict[str, str]
Text = Union[str, list[Message]]  # noqa: UP007 - runtime alias used on Python 3.10
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class SFTExample:
    prompt: Text  # "" for plain-text LM data
    completion: Text
    source: str = ""
    line: int = 0


@dataclass
class PromptExample:
    prompt: Text
    source: str = ""
    line: int = 0


@dataclass
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    criteria: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0
    soft_label: float | None = None  # P(chosen beats rejected); None = a hard win for chosen


@dataclass
class RankingExample:
    prompt: Text
    responses: list[Text]
    ranking: list[int]  # indices into responses, best first
    source: str = ""
    line: int = 0


def _require(record: Record, name: str) -> Any:
    """``record[name]``, or an error: missing, or null (JSON's null; Parquet's absent cell)."""
    if record.data.get(name) is None:
        keys = ", ".join(sorted(k for k, v in record.data.items() if v is not None)) or "none"
        problem = "null" if name in record.data else "missing field"
        raise record.error(name, f"{problem} (record has: {keys})")
    return record.data[name]


def _text(record: Record, name: str, value: Any, *, allow_empty: bool = False) -> Text:
    """Validate a plain string or a list of messages."""
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise record.error(name, "empty text")
        return value
    if isinstance(value, list):
        if not value and not allow_empty:
            raise record.error(name, "empty list of messages")
        for i, message in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(message, dict):
                raise record.error(
                    where, f"expected a message object, got {type(message).__name__}"
                )
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise record.error(f"{where}.role", f"expected one of {ROLES}, got {role!r}")
            if isinstance(content, list):  # OpenAI-style parts: [{"type": "text", ...}, ...]
                raise record.error(
                    f"{where}.content",
                    "expected a string, got a list of content parts; rlhfkit trains text "
                    "models on text: give each message's text as one string",
                )
            if not isinstance(content, str):
                raise record.error(
                    f"{where}.content", f"expected a string, got {type(content).__name__}"
                )
        return value
    raise record.error(name, f"expected a string or a list of messages, got {type(value).__name__}")


def is_conversational(value: Text) -> bool:
    return isinstance(value, list)


def _reply(record: Record, name: str, prompt: Text, response: Text) -> Text:
    """A response in its prompt's format, or a `file:line: field` error.

    After a conversation a plain string is the assistant's reply (`as_reply`: training then
    renders it with the chat template's end of turn, as scoring does), and a conversational
    response must open with the assistant's turn: the prompt is rendered with the generation
    prompt (``<|im_start|>assistant``), so a response opening with a user turn does not follow
    it. After a text prompt a response must be text too (a chat template needs the whole
    dialogue as messages)."""
    if isinstance(prompt, str):
        if isinstance(response, list):
            raise record.error(name, "a list of messages after a text prompt (both must be text "
                               "or both messages)")  # fmt: skip
        return response
    if isinstance(response, str) or not response:
        return as_reply(prompt, response or "")
    if response[0]["role"] != "assistant":
        raise record.error(
            f"{name}[0].role",
            f"a response opens with the assistant's turn, got {response[0]['role']!r}",
        )
    return response


def _given(record: Record, names: tuple[str, ...]) -> list[str]:
    """Which of `names` the record holds (a None value, as Parquet gives absent columns, is not
    held)."""
    return [name for name in names if record.data.get(name) is not None]


def _refuse_mixed_formats(record: Record, kind: str, *layouts: tuple[str, ...]) -> None:
    """Raise if the record holds fields of more than one of `layouts` (formats of one `kind`):
    which one is meant is ambiguous, and taking one would silently drop the others."""
    held = [given for layout in layouts if (given := _given(record, layout))]
    if len(held) > 1:
        fields = " and ".join(", ".join(given) for given in held)
        choices = ", ".join("{" + ", ".join(layout) + "}" for layout in layouts)
        raise record.error(
            None, f"ambiguous {kind} record: has both {fields} (use one of {choices})"
        )


SFT_LAYOUTS = (("prompt", "completion"), ("messages",), ("text",))
COMPARISON_LAYOUTS = (("chosen", "rejected"), ("responses", "ranking"))


def _first_user_text(messages: list) -> str | None:
    """The content of a conversation's first user turn (None if it has none or is malformed)."""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def _repeats_prompt(prompt: Any, conversation: Any) -> bool:
    """Whether a text `prompt` column only repeats a conversation's first user turn, as in
    HuggingFaceH4/ultrachat_200k and ultrafeedback_binarized (`prompt` beside whole dialogues)."""
    if not isinstance(prompt, str) or not isinstance(conversation, list):
        return False
    first = _first_user_text(conversation)
    return first is not None and first.strip() == prompt.strip()


def parse_sft(record: Record) -> SFTExample:
    """An SFT record: `{prompt, completion}`, `{messages}` or `{text}` (exactly one of them).

    A text `prompt` that repeats the first user turn of `messages` (ultrachat_200k's layout) is
    a copy, not a second format: the record is read as `{messages}`."""
    data = record.data
    if data.get("completion") is None and _repeats_prompt(data.get("prompt"), data.get("messages")):
        data = {key: value for key, value in data.items() if key != "prompt"}
        record = Record(data, record.source, record.line)
    _refuse_mixed_formats(record, "SFT", *SFT_LAYOUTS)
    if data.get("messages") is not None:
        if not isinstance(data["messages"], list):
            raise record.error(
                "messages", f"expected a list of messages, got {type(data['messages']).__name__}"
            )
        messages = _text(record, "messages", data["messages"])
        if messages[-1]["role"] != "assistant":
            raise record.error("messages", "the last message must be the assistant's")
        if not messages[-1]["content"].strip():
            raise record.error("messages", "the last assistant message is empty")
        return SFTExample(messages[:-1], [messages[-1]], record.source, record.line)
    if data.get("text") is not None:
        return SFTExample("", _text(record, "text", data["text"]), record.source, record.line)
    prompt = _text(record, "prompt", _require(record, "prompt"))
    completion = _text(record, "completion", _require(record, "completion"))
    if isinstance(prompt, list) != isinstance(completion, list):
        raise record.error("completion", "prompt and completion must both be text or both messages")
    completion = _reply(record, "completion", prompt, completion)
    return SFTExample(prompt, completion, record.source, record.line)


def parse_prompt(record: Record) -> PromptExample:
    return PromptExample(
        _text(record, "prompt", _require(record, "prompt")), record.source, record.line
    )


def _split_implicit_prompt(record: Record, chosen: list[Message], rejected: list[Message]):
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise record.error("prompt", "missing, and chosen/rejected share no prompt messages")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def parse_preference(record: Record) -> PreferenceExample:
    data = record.data
    _refuse_mixed_formats(record, "preference/ranking", *COMPARISON_LAYOUTS)
    # An empty response is a legitimate (bad) answer a policy can give, so preferences may hold
    # one; SFT completions may not.
    chosen = _text(record, "chosen", _require(record, "chosen"), allow_empty=True)
    rejected = _text(record, "rejected", _require(record, "rejected"), allow_empty=True)
    given = data.get("prompt")
    whole_dialogues = (
        isinstance(chosen, list)
        and isinstance(rejected, list)
        and bool(chosen)
        and chosen[0]["role"] != "assistant"
    )
    if given is not None and isinstance(given, str) and whole_dialogues:
        # HuggingFaceH4/ultrafeedback_binarized, capybara-dpo: a text `prompt` beside whole
        # dialogues that hold it; the prompt is the dialogues' shared start (TRL reads it so).
        if not _repeats_prompt(given, chosen):
            raise record.error(
                "prompt",
                "is text while chosen/rejected are whole dialogues whose first user turn is "
                "different; drop `prompt` (the dialogues' shared start is the prompt) or give "
                "chosen/rejected as the replies only",
            )
        prompt, chosen, rejected = _split_implicit_prompt(record, chosen, rejected)
    elif given is not None:
        prompt = _text(record, "prompt", given)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _split_implicit_prompt(record, chosen, rejected)
    else:
        raise record.error(
            "prompt",
            "missing field (an implicit prompt needs conversations: give `prompt`, or chosen "
            "and rejected as lists of {role, content} messages; for raw Anthropic/hh-rlhf text "
            "use its conversational form, e.g. trl-lib/hh-rlhf-helpful-base)",
        )
    chosen = _reply(record, "chosen", prompt, chosen)
    rejected = _reply(record, "rejected", prompt, rejected)
    margin = data.get("margin")
    if isinstance(margin, bool):
        raise record.error("margin", f"expected a number, got {margin!r}")
    if margin is not None and margin != "":
        try:
            margin = float(margin)
        except (TypeError, ValueError):
            raise record.error("margin", f"expected a number, got {margin!r}") from None
        if margin != margin:
            raise record.error("margin", "is NaN")
    else:
        margin = None
    criteria = data.get("criteria") or {}
    if not isinstance(criteria, dict):
        raise record.error("criteria", f"expected an object, got {type(criteria).__name__}")
    return PreferenceExample(
        prompt,
        chosen,
        rejected,
        margin,
        criteria,
        record.source,
        record.line,
        soft_label=_soft_label(record),
    )


def _soft_label(record: Record) -> float | None:
    """The record's ``soft_label`` (P(chosen beats rejected), in [0, 1]), or None if absent."""
    value = record.data.get("soft_label")
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise record.error("soft_label", f"expected a probability in [0, 1], got {value!r}")
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise record.error(
            "soft_label", f"expected a probability in [0, 1], got {value!r}"
        ) from None
    if not 0.0 <= p <= 1.0:  # also refuses NaN
        raise record.error("soft_label", f"expected a probability in [0, 1], got {value!r}")
    return p


def as_reply(prompt: Any, text: str) -> Text:
    """A response in its prompt's format: ``text`` after a text prompt, one assistant message
    ``[{"role": "assistant", "content": text}]`` after a conversation (TRL's formats: a record's
    prompt and responses are both text or both conversations)."""
    if isinstance(prompt, str):
        return text
    return [{"role": "assistant", "content": text}]


def soft_label_note(labels: list[float | None], key: str, use: bool) -> str:
    """One console line on the soft labels of a training set ("" when no pair has one).

    Args:
        labels: Each pair's soft label, None where the record had none.
        key: The option that turns them off, e.g. ``"rm.soft_labels"``.
        use: Whether the run trains on them.
    """
    carried = [p for p in labels if p is not None]
    if not carried:
        return ""
    even = sum(p == 0.5 for p in carried)
    head = f"{len(carried)} of {len(labels)} pairs carry a soft_label"
    if not use:
        tail = f" ({even} of them 0.5: no preference)" if even else ""
        return f"{head}{tail}; {key}=false trains every pair as a hard win for `chosen`"
    mean = sum(carried) / len(carried)
    return (
        f"{head} (mean {mean:.3f}, {even} at 0.5): trained as P(chosen beats rejected) with the "
        f"expected loss; {key}=false would train them as hard wins"
    )


def parse_ranking(record: Record) -> RankingExample:
    _refuse_mixed_formats(record, "preference/ranking", *COMPARISON_LAYOUTS)
    prompt = _text(record, "prompt", _require(record, "prompt"))
    responses = _require(record, "responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise record.error("responses", "expected a list of at least 2 responses")
    responses = [
        _reply(
            record, f"responses[{i}]", prompt, _text(record, f"responses[{i}]", r, allow_empty=True)
        )
        for i, r in enumerate(responses)
    ]
    ranking = _require(record, "ranking")
    expected = f"expected a permutation of 0..{len(responses) - 1} (best first), got {ranking!r}"
    if not isinstance(ranking, list):
        raise record.error("ranking", expected)
    # Types first: sorting a list that mixes ints and strings would raise TypeError.
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ranking):
        raise record.error("ranking", f"expected integer indices, got {ranking!r}")
    if sorted(ranking) != list(range(len(responses))):
        raise record.error("ranking", expected)
    return RankingExample(prompt, responses, ranking, record.source, record.line)


@dataclass
class ScoredRecord:
    """What a record to be scored holds: its kind (``completion``, ``responses``, ``preference``
    or ``ranking``), the prompt, the responses and, for preference and ranking records, the
    parsed example."""

    kind: str
    prompt: Text
    responses: list[Text]
    example: PreferenceExample | RankingExample | None = None


def parse_scored(record: Record) -> ScoredRecord:
    """A record of responses to score: `{prompt, completion}`, `{prompt, responses}` (generate's
    output), a preference record (its prompt may be implicit) or a ranking record. Completions
    and `responses` are passed on as given: a reward model's scorer (`encode_pair`) makes a text
    response to a conversation the assistant's turn, and a `python:` or HTTP scorer gets text."""
    data = record.data
    if data.get("ranking") is not None:
        ranking = parse_ranking(record)
        return ScoredRecord("ranking", ranking.prompt, list(ranking.responses), ranking)
    if "chosen" in data or "rejected" in data:
        pair = parse_preference(record)
        return ScoredRecord("preference", pair.prompt, [pair.chosen, pair.rejected], pair)
    prompt = _require(record, "prompt")
    if "responses" in data:
        responses = data["responses"]
        if not isinstance(responses, list) or not responses:
            raise record.error("responses", "expected a non-empty list")
        return ScoredRecord("responses", prompt, list(responses))
    if "completion" in data:
        return ScoredRecord("completion", prompt, [data["completion"]])
    keys = ", ".join(sorted(data)) or "none"
    raise record.error(
        None, f"expected completion, responses, chosen/rejected or ranking (record has: {keys})"
    )


def parse_comparisons(records: list[Record]) -> list[PreferenceExample | RankingExample]:
    """Preference or ranking records (decided per record by the presence of `ranking`)."""
    return [
        parse_ranking(r) if r.data.get("ranking") is not None else parse_preference(r)
        for r in records
    ]
