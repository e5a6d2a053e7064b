"""Constitutions: the principles of Constitutional AI and the prompts that apply them.

A constitution is a YAML file (Bai et al. 2022, "Constitutional AI: Harmlessness from AI
Feedback")::

    name: default
    critique_principles:            # SL-CAI: one drawn at random per critique/revision round
      - name: harmless
        critique_request: "Identify ways in which the response is harmful ..."
        revision_request: "Rewrite the response to remove anything harmful ..."
    comparison_principles:          # RL-CAI: one drawn at random per compared pair
      - name: harmless
        question: "Which response is less harmful?"
    prompts:                        # optional; the defaults are the embedded world's templates
      critique: "{prompt}{response}\\nCheck: {critique_request}\\nCritique:"
      revision: "{critique_prompt}{critique}\\nFix: {revision_request}\\nRevision:"
      comparison: "User: {request}\\n(A){response_a}\\n(B){response_b}\\n{question}\\nAnswer:"
      cot_comparison: "... {question}\\nLet's think step by step:"
      cot_answer: "\\nAnswer:"
      options: [" (A)", " (B)"]
      few_shot: ""                  # text put before every critique and revision prompt
      comparison_few_shot: ""       # text put before every comparison prompt
      stop: []                      # generated critiques/revisions end at the first of these

Template fields: ``{prompt}`` is the prompt as text (a conversation rendered as ``Role: content``
lines), ``{request}`` the user's request alone (the last user turn, or the world's ``User: ...``
line), ``{response}`` the response being critiqued (it starts with a space in the world),
``{critique_prompt}`` the rendered critique prompt (without the few-shot text) and ``{critique}``
the generated critique.

Errors name the file and the field (``my.yaml: critique_principles[2].revision_request: missing``).

Departure from the paper: the paper's prompts are one dialogue format for a 52B model; here the
format is data, so the same code runs the tiny world model (whose templates are
`rlhfkit.synthetic.constitution`'s) and an instruction-tuned hub model (`default.yaml`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import yaml_problem
from rlhfkit.errors import DataError

CONSTITUTIONS_DIR = Path(__file__).with_name("constitutions")

#: Names accepted in place of a path.
BUILTIN = {
    "default": CONSTITUTIONS_DIR / "default.yaml",
    "world": Path(__file__).resolve().parents[1] / "synthetic" / "constitution_world.yaml",
}


@dataclass(frozen=True)
class CritiquePrinciple:
    """One SL-CAI principle: how to ask for a critique by it and how to ask for a revision."""

    name: str
    critique_request: str
    revision_request: str


@dataclass(frozen=True)
class ComparisonPrinciple:
    """One RL-CAI principle: the multiple-choice question that compares two responses."""

    name: str
    question: str


@dataclass(frozen=True)
class PromptFormat:
    """The prompt templates (see the module docstring for their fields)."""

    critique: str = "{prompt}{response}\nCheck: {critique_request}\nCritique:"
    revision: str = "{critique_prompt}{critique}\nFix: {revision_request}\nRevision:"
    comparison: str = "User: {request}\n(A){response_a}\n(B){response_b}\n{question}\nAnswer:"
    cot_comparison: str = (
        "User: {request}\n(A){response_a}\n(B){response_b}\n{question}\nLet's think step by step:"
    )
    cot_answer: str = "\nAnswer:"
    options: tuple[str, str] = (" (A)", " (B)")
    few_shot: str = ""
    comparison_few_shot: str = ""
    stop: tuple[str, ...] = ()


# Which fields each template may use, and which it must use.
_TEMPLATE_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "critique": ({"prompt", "request", "response", "critique_request"}, {"response"}),
    "revision": (
        {
            "prompt",
            "request",
            "response",
            "critique_request",
            "critique_prompt",
            "critique",
            "revision_request",
        },
        # The critique, and the text to rewrite: the response itself or the critique prompt
        # that holds it (checked apart: one of the two suffices).
        {"critique"},
    ),
    "comparison": (
        {"prompt", "request", "response_a", "response_b", "question"},
        {"response_a", "response_b"},
    ),
    "cot_comparison": (
        {"prompt", "request", "response_a", "response_b", "question"},
        {"response_a", "response_b"},
    ),
}


@dataclass(frozen=True)
class Constitution:
    """A loaded, validated constitution.

    Attributes:
        name: its name (the file's ``name`` or its stem).
        critique_principles: drawn from by `rlhfkit cai revise` (may be empty for a labelling-only
            constitution).
        comparison_principles: drawn from by `rlhfkit label`.
        prompts: the prompt templates.
        source: the file it came from.
    """

    name: str
    critique_principles: tuple[CritiquePrinciple, ...]
    comparison_principles: tuple[ComparisonPrinciple, ...]
    prompts: PromptFormat = field(default_factory=PromptFormat)
    source: str = ""

    # --- rendering ---------------------------------------------------------------------------
    def critique_prompt(
        self, principle: CritiquePrinciple, prompt: Any, response: str, *, few_shot: bool = True
    ) -> str:
        """The prompt that asks for a critique of ``response`` by ``principle``."""
        body = self.prompts.critique.format(
            prompt=prompt_text(prompt),
            request=request_text(prompt),
            response=response,
            critique_request=principle.critique_request,
        )
        return (self.prompts.few_shot if few_shot else "") + body

    def revision_prompt(
        self, principle: CritiquePrinciple, prompt: Any, response: str, critique: str
    ) -> str:
        """The prompt that asks for a revision of ``response`` given its ``critique``."""
        body = self.prompts.revision.format(
            prompt=prompt_text(prompt),
            request=request_text(prompt),
            response=response,
            critique_request=principle.critique_request,
            critique_prompt=self.critique_prompt(principle, prompt, response, few_shot=False),
            critique=critique,
            revision_request=principle.revision_request,
        )
        return self.prompts.few_shot + body

    def comparison_prompt(
        self,
        principle: ComparisonPrinciple,
        prompt: Any,
        response_a: str,
        response_b: str,
        *,
        chain_of_thought: bool = False,
    ) -> str:
        """The multiple-choice prompt; the next text is one of ``prompts.options`` (or, with
        chain of thought, the reasoning, then ``prompts.cot_answer``, then the option)."""
        template = self.prompts.cot_comparison if chain_of_thought else self.prompts.comparison
        body = template.format(
            prompt=prompt_text(prompt),
            request=request_text(prompt),
            response_a=response_a,
            response_b=response_b,
            question=principle.question,
        )
        return self.prompts.comparison_few_shot + body


def prompt_text(prompt: Any) -> str:
    """A prompt as plain text: strings as they are, conversations as ``Role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def request_text(prompt: Any) -> str:
    """The user's request: the last user turn of a conversation, the ``X`` of a world prompt
    ``"User: X\\nBot:"``, else the stripped text."""
    if not isinstance(prompt, str):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else prompt_text(prompt)
    if prompt.startswith("User: ") and prompt.endswith("\nBot:"):
        return prompt[len("User: ") : -len("\nBot:")]
    return prompt.strip()


# --- loading ---------------------------------------------------------------------------------


def resolve_constitution_path(spec: str) -> Path:
    """``default`` / ``world`` / a file path -> the file."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    return Path(spec)


def load_constitution(spec: str = "default", prompt_format: str = "") -> Constitution:
    """Load and validate a constitution.

    Args:
        spec: ``default``, ``world``, or a YAML file.
        prompt_format: optional YAML file whose ``prompts`` mapping (or top-level mapping)
            overrides the constitution's templates (to change the format or few-shot examples
            without copying the principles).

    Raises:
        DataError: ``file: field: problem`` for a missing file, bad YAML, a missing or empty
            field, an unknown template field, or duplicate principle names.
    """
    path = resolve_constitution_path(spec)
    source = str(path)
    tree = _read_yaml(path)
    constitution = parse_constitution(tree, source)
    if prompt_format:
        override = _read_yaml(Path(prompt_format))
        override = override.get("prompts", override)
        if not isinstance(override, dict):
            raise DataError(prompt_format, None, "prompts", "expected a mapping of templates")
        merged = {**_format_as_dict(constitution.prompts), **override}
        constitution = replace(constitution, prompts=_parse_prompts(merged, prompt_format))
    return constitution


def _read_yaml(path: Path) -> dict:
    source = str(path)
    if not path.is_file():
        raise DataError(source, None, None, "constitution file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        line, problem = yaml_problem(err)
        raise DataError(source, line, None, problem) from None
    except UnicodeDecodeError as err:
        problem = f"not UTF-8 text ({err.reason} at byte {err.start})"
        raise DataError(source, None, None, problem) from None
    if not isinstance(tree, dict):
        raise DataError(source, None, None, "expected a mapping at the top level")
    return tree


def _format_as_dict(prompts: PromptFormat) -> dict:
    return {
        "critique": prompts.critique,
        "revision": prompts.revision,
        "comparison": prompts.comparison,
        "cot_comparison": prompts.cot_comparison,
        "cot_answer": prompts.cot_answer,
        "options": list(prompts.options),
        "few_shot": prompts.few_shot,
        "comparison_few_shot": prompts.comparison_few_shot,
        "stop": list(prompts.stop),
    }


def parse_constitution(tree: dict, source: str = "<constitution>") -> Constitution:
    """Validate a constitution given as a parsed YAML mapping (see `load_constitution`)."""
    known = {"name", "description", "critique_principles", "comparison_principles", "prompts"}
    for key in tree:
        if key not in known:
            raise DataError(source, None, str(key), f"unknown key; expected one of {sorted(known)}")
    critique = _principles(
        tree, source, "critique_principles", ("name", "critique_request", "revision_request")
    )
    comparison = _principles(tree, source, "comparison_principles", ("name", "question"))
    if not critique and not comparison:
        raise DataError(
            source,
            None,
            "critique_principles",
            "no principles (give critique_principles, comparison_principles or both)",
        )
    prompts = _parse_prompts(tree.get("prompts") or {}, source)
    name = tree.get("name") or Path(source).stem
    if not isinstance(name, str):
        raise DataError(source, None, "name", f"expected a string, got {type(name).__name__}")
    return Constitution(
        name=str(name),
        critique_principles=tuple(CritiquePrinciple(**p) for p in critique),
        comparison_principles=tuple(ComparisonPrinciple(**p) for p in comparison),
        prompts=prompts,
        source=source,
    )


def _principles(tree: dict, source: str, key: str, fields: tuple[str, ...]) -> list[dict]:
    items = tree.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise DataError(source, None, key, "expected a list of principles")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise DataError(source, None, where, f"expected a mapping with {', '.join(fields)}")
        for extra in item:
            if extra not in fields:
                raise DataError(
                    source, None, f"{where}.{extra}", f"unknown field; expected {fields}"
                )
        values = {}
        for name in fields:
            value = item.get(name)
            if value is not None and not isinstance(value, str):
                raise DataError(
                    source,
                    None,
                    f"{where}.{name}",
                    f"expected a string, got {type(value).__name__}",
                )
            if not isinstance(value, str) or not value.strip():
                raise DataError(source, None, f"{where}.{name}", "missing or empty (a string)")
            values[name] = value.strip() if name == "name" else value
        if values["name"] in seen:
            raise DataError(source, None, f"{where}.name", f"duplicate name {values['name']!r}")
        seen.add(values["name"])
        out.append(values)
    return out


def _parse_prompts(raw: Any, source: str) -> PromptFormat:
    if not isinstance(raw, dict):
        raise DataError(source, None, "prompts", "expected a mapping of templates")
    defaults = PromptFormat()
    known = {f.name for f in fields(PromptFormat)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"prompts.{key}"
        if key not in known:
            raise DataError(
                source, None, where, f"unknown template; expected one of {sorted(known)}"
            )
        if key in ("options", "stop"):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise DataError(source, None, where, "expected a list of non-empty strings")
            if key == "options":
                if len(value) != 2 or value[0] == value[1]:
                    raise DataError(source, None, where, "expected two different option strings")
            values[key] = tuple(value)
            continue
        if not isinstance(value, str):
            raise DataError(source, None, where, "expected a string")
        if key in _TEMPLATE_FIELDS:
            allowed, required = _TEMPLATE_FIELDS[key]
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
            except ValueError as err:
                raise DataError(source, None, where, f"bad template: {err}") from None
            unknown = used - allowed
            if unknown:
                raise DataError(
                    source,
                    None,
                    where,
                    f"unknown field {{{sorted(unknown)[0]}}}; allowed: {sorted(allowed)}",
                )
            missing = required - used
            if missing:
                raise DataError(source, None, where, f"must use {{{sorted(missing)[0]}}}")
            if key == "revision" and not used & {"response", "critique_prompt"}:
                raise DataError(
                    source, None, where, "must use {response} or {critique_prompt} (the text to "
                    "rewrite)"
                )  # fmt: skip
            try:  # format specs and conversions ({response:d}, {response!z}) fail only here
                value.format(**{name: "text" for name in allowed})
            except (ValueError, KeyError, IndexError, AttributeError) as err:
                raise DataError(source, None, where, f"bad template: {err}") from None
        values[key] = value
    return replace(defaults, **values)


__all__ = [
    "BUILTIN",
    "ComparisonPrinciple",
    "Constitution",
    "CritiquePrinciple",
    "PromptFormat",
    "load_constitution",
    "parse_constitution",
    "prompt_text",
    "request_text",
    "resolve_constitution_path",
]
