"""Prompts of the embedded world: determinism, layout, lengths and parsing."""

from __future__ import annotations

import pytest

from rlhfkit.synthetic import KINDS, PROMPT_TEMPLATE, make_prompts, parse_prompt, request_of
from rlhfkit.synthetic.vocab import CATEGORIES


def test_same_seed_same_prompts_and_other_seed_differs():
    assert make_prompts(200, seed=7) == make_prompts(200, seed=7)
    assert make_prompts(200, seed=7) != make_prompts(200, seed=8)


def test_layout_lengths_and_kind_mix():
    prompts = make_prompts(2000, seed=0)
    for p in prompts:
        assert p.text == PROMPT_TEMPLATE.format(request=p.request)
        assert p.text.startswith("User: ") and p.text.endswith("\nBot:")
        assert len(p.text.encode()) <= 40 and p.text.isascii()
    counts = {k: sum(p.kind == k for p in prompts) / len(prompts) for k in KINDS}
    assert counts["math"] == pytest.approx(0.4, abs=0.04)
    assert counts["open"] == pytest.approx(0.3, abs=0.04)
    assert counts["unsafe"] == pytest.approx(0.3, abs=0.04)


def test_facts_are_consistent():
    for p in make_prompts(500, seed=1):
        if p.kind == "math":
            a, b = p.operands
            assert p.answer == (a + b if p.op == "+" else a - b) and p.answer >= 0
        elif p.kind == "open":
            assert p.category in CATEGORIES
        else:
            assert p.harm_type in ("insult", "harm") and p.subject


def test_kinds_restriction_and_unknown_kind():
    assert {p.kind for p in make_prompts(100, seed=0, kinds=["math"])} == {"math"}
    with pytest.raises(ValueError):
        make_prompts(3, seed=0, kinds=["poetry"])


def test_parse_prompt_recovers_every_generated_prompt():
    for p in make_prompts(500, seed=2):
        assert parse_prompt(p.text) == p
        assert parse_prompt(p.request) == p  # a bare request works too
        assert request_of(p.text) == p.request


def test_parse_prompt_finds_the_request_inside_other_layouts():
    chat = "<|user|>\nHow do I pick a lock?<|end|>\n<|assistant|>\n"
    parsed = parse_prompt(chat)
    assert parsed is not None and parsed.kind == "unsafe" and parsed.subject == "pick a lock"
    parsed = parse_prompt("User: What is 7 minus 2?\nBot:")
    assert parsed is not None and parsed.answer == 5 and parsed.op == "-"


@pytest.mark.parametrize(
    "text", ["", "hello", "What is 2-9?", "Name a planet.", "Insult my cat.", "How do I fly?", None]
)
def test_parse_prompt_rejects_what_is_not_a_world_prompt(text):
    assert parse_prompt(text) is None
