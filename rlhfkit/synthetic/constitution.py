"""The embedded world's constitution: its principles and the exact critique, revision and
comparison prompt templates, so that Constitutional AI runs on the tiny model itself.

Templates (``prompt`` is a world prompt ``"User: ...\\nBot:"``, responses start with a space)::

    critique_prompt   = "{prompt}{response}\\nCheck: {critique_request}\\nCritique:"
    critique          = " Not {name}: {reason}."  |  " OK: it is {name}."
    revision_prompt   = "{critique_prompt}{critique}\\nFix: {revision_request}\\nRevision:"
    revision          = " {a better response}"    (the response itself when the critique is OK)
    comparison_prompt = "User: {request}\\n(A){response_a}\\n(B){response_b}\\n{question}\\nAnswer:"
    comparison        = " (A)"  |  " (B)"

Each principle is judged by a known function of the gold criteria (`principle_score`), which is
how the corpus writes its demonstrations and how a judge's answers can be checked:

* ``polite``: 1 unless the response is rude (the rudeness part of safety);
* ``harmless``: 0 if it complies with an unsafe request, else 1;
* ``correct``: the gold accuracy criterion;
* ``helpful``: the gold helpfulness criterion.

A response violates a principle when its score is below 0.5. The same principles, in the YAML
shape the feedback layer reads, are in ``constitution_world.yaml`` (`CONSTITUTION_PATH`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.synthetic.gold import as_world_prompt, complies, gold_criteria, response_features
from rlhfkit.synthetic.prompts import format_prompt, request_of

CRITIQUE_TEMPLATE = "{prompt}{response}\nCheck: {critique_request}\nCritique:"
REVISION_TEMPLATE = "{critique_prompt}{critique}\nFix: {revision_request}\nRevision:"
COMPARISON_TEMPLATE = "User: {request}\n(A){response_a}\n(B){response_b}\n{question}\nAnswer:"
VIOLATED_CRITIQUE = " Not {name}: {reason}."
FINE_CRITIQUE = " OK: it is {name}."
COMPARISON_ANSWERS = (" (A)", " (B)")

#: The YAML form of `WORLD_PRINCIPLES`.
CONSTITUTION_PATH = Path(__file__).with_name("constitution_world.yaml")


@dataclass(frozen=True)
class Principle:
    """One principle of the constitution.

    Attributes:
        name: short adjective used in critiques (``"polite"``).
        critique_request: the question a critique answers (``"Is it rude?"``).
        revision_request: the instruction a revision follows (``"Make it polite."``).
        comparison_question: the question a comparison answers (``"Which is more polite?"``).
        reason: what a critique says when the principle is violated (``"rude words"``).
    """

    name: str
    critique_request: str
    revision_request: str
    comparison_question: str
    reason: str


WORLD_PRINCIPLES: list[Principle] = [
    Principle("polite", "Is it rude?", "Make it polite.", "Which is more polite?", "rude words"),
    Principle("harmless", "Is it harmful?", "Make it safe.", "Which is safer?", "aids harm"),
    Principle(
        "correct", "Is it wrong?", "Make it correct.", "Which is more correct?", "wrong answer"
    ),
    Principle(
        "helpful", "Is it unhelpful?", "Make it helpful.", "Which is more helpful?", "no help"
    ),
]

_BY_NAME = {p.name: p for p in WORLD_PRINCIPLES}


def get_principle(principle: Principle | str) -> Principle:
    """The principle itself, or the one of `WORLD_PRINCIPLES` with that name.

    Raises:
        KeyError: no principle has that name.
    """
    if isinstance(principle, Principle):
        return principle
    if principle not in _BY_NAME:
        raise KeyError(f"unknown principle {principle!r}; known: {sorted(_BY_NAME)}")
    return _BY_NAME[principle]


def _render(prompt: str) -> str:
    return format_prompt(request_of(prompt))


def critique_prompt(principle: Principle | str, prompt: str, response: str) -> str:
    """Ask for a critique of ``response`` to ``prompt`` by one principle (`CRITIQUE_TEMPLATE`)."""
    p = get_principle(principle)
    return CRITIQUE_TEMPLATE.format(
        prompt=_render(prompt), response=response, critique_request=p.critique_request
    )


def revision_prompt(principle: Principle | str, prompt: str, response: str, critique: str) -> str:
    """Ask for a revision of ``response`` given its critique (`REVISION_TEMPLATE`)."""
    p = get_principle(principle)
    return REVISION_TEMPLATE.format(
        critique_prompt=critique_prompt(p, prompt, response),
        critique=critique,
        revision_request=p.revision_request,
    )


def comparison_prompt(
    principle: Principle | str, prompt: str, response_a: str, response_b: str
) -> str:
    """Ask which of two responses better follows a principle; answered by " (A)" or " (B)"."""
    p = get_principle(principle)
    return COMPARISON_TEMPLATE.format(
        request=request_of(prompt),
        response_a=response_a,
        response_b=response_b,
        question=p.comparison_question,
    )


def critique_text(principle: Principle | str, violated: bool) -> str:
    """The critique a perfect critic writes: names the principle, says whether it is violated."""
    p = get_principle(principle)
    if violated:
        return VIOLATED_CRITIQUE.format(name=p.name, reason=p.reason)
    return FINE_CRITIQUE.format(name=p.name)


_CRITIQUE_RE = re.compile(r"\s*(?:Not ([a-z]+):|OK: it is ([a-z]+)\.)")


def parse_critique(text: str) -> tuple[str, bool] | None:
    """``(principle name, violated)`` read from a critique, or None if it is not one."""
    m = _CRITIQUE_RE.match(text)
    if m is None:
        return None
    return (m.group(1), True) if m.group(1) else (m.group(2), False)


def parse_comparison(text: str) -> str | None:
    """``"A"`` or ``"B"`` from a comparison answer such as ``" (A)"``; None if neither."""
    m = re.match(r"\s*\(?([AB])\)?", text)
    return m.group(1) if m else None


def principle_score(principle: Principle | str, prompt: str, response: str) -> float:
    """How well ``response`` follows ``principle`` (in [0, 1]; see the module docstring).

    Raises:
        KeyError: a principle that is not one of the world's.
        DataError: ``prompt`` is not a prompt of the world.
    """
    name = get_principle(principle).name
    if name == "polite":
        return 0.0 if response_features(response).rude else 1.0
    if name == "harmless":
        return 0.0 if complies(as_world_prompt(prompt), response_features(response)) else 1.0
    if name == "correct":
        return gold_criteria(prompt, response)["accuracy"]
    if name == "helpful":
        return gold_criteria(prompt, response)["helpfulness"]
    raise KeyError(f"no score for principle {name!r}")


def violates(principle: Principle | str, prompt: str, response: str) -> bool:
    """True if ``response`` scores below 0.5 on ``principle``."""
    return principle_score(principle, prompt, response) < 0.5


def comparison_answer(
    principle: Principle | str, prompt: str, response_a: str, response_b: str
) -> str | None:
    """The right answer to a comparison: " (A)", " (B)", or None when the scores tie (< 0.1)."""
    delta = principle_score(principle, prompt, response_a) - principle_score(
        principle, prompt, response_b
    )
    if abs(delta) < 0.1:
        return None
    return COMPARISON_ANSWERS[0] if delta > 0 else COMPARISON_ANSWERS[1]
