"""SFT corpus of the embedded world: determinism, gold spread, lexicon, CAI demonstrations."""

from __future__ import annotations

import re
import statistics

import pytest
import yaml

from rlhfkit.synthetic import (
    CONSTITUTION_PATH,
    GOOD_BEHAVIOURS,
    WORLD_PRINCIPLES,
    behaviour_records,
    cai_records,
    comparison_answer,
    comparison_prompt,
    critique_prompt,
    critique_text,
    gold_reward,
    parse_comparison,
    parse_critique,
    revision_prompt,
    sft_corpus,
    violates,
)
from rlhfkit.synthetic.vocab import is_known_word, words_of

NAMES = {p.name for p in WORLD_PRINCIPLES}
_CRITIQUE_RE = re.compile(r"(User: .*\nBot:)(.*)\nCheck: (.*)\nCritique:", re.DOTALL)
_COMPARISON_RE = re.compile(r"User: (.*)\n\(A\)(.*)\n\(B\)(.*)\n(.*)\nAnswer:")


def test_same_seed_same_corpus():
    assert sft_corpus(300, seed=5) == sft_corpus(300, seed=5)
    assert sft_corpus(300, seed=5) != sft_corpus(300, seed=6)


def test_records_have_the_sft_format():
    corpus = sft_corpus(500, seed=0)
    assert len(corpus) == 500
    for record in corpus:
        assert set(record) == {"prompt", "completion"}
        assert isinstance(record["prompt"], str) and isinstance(record["completion"], str)
        assert record["completion"].startswith(" ") and record["prompt"].isascii()


def test_cai_fraction_is_controllable():
    def n_cai(corpus):
        return sum(r["prompt"].count("\n") > 1 for r in corpus)  # plain prompts have one

    assert n_cai(sft_corpus(1000, seed=0)) == 200
    assert n_cai(sft_corpus(1000, seed=0, cai_fraction=0.0)) == 0
    assert n_cai(sft_corpus(100, seed=0, cai_fraction=0.5)) == 50
    with pytest.raises(ValueError):
        sft_corpus(10, seed=0, cai_fraction=1.5)


def test_gold_reward_spreads_widely_over_the_corpus():
    """The SFT policy imitates this mix, so its samples inherit the spread.

    Measured on 1000 records (seed 0): mean 0.58, std 0.34, min 0.0, max 1.0. A std above 0.25 on
    the 0..1 scale is wide (a uniform distribution has 0.29), the minimum near 0 and the maximum at
    the best reachable value leave room to both improve on the SFT policy and hack the reward.
    """
    records = behaviour_records(1000, seed=0)
    rewards = [gold_reward(r["prompt"], r["completion"]) for r in records]
    assert statistics.pstdev(rewards) > 0.25
    assert 0.4 < statistics.mean(rewards) < 0.75
    assert min(rewards) <= 0.05
    assert max(rewards) == pytest.approx(1.0)
    good = [r["behaviour"] in GOOD_BEHAVIOURS for r in records]
    assert 0.30 <= sum(good) / len(good) <= 0.40
    good_rewards = [g for g, ok in zip(rewards, good, strict=True) if ok]
    bad_rewards = [g for g, ok in zip(rewards, good, strict=True) if not ok]
    assert min(good_rewards) >= 0.85 and max(bad_rewards) <= 0.65


def test_completions_are_short_and_in_the_lexicon():
    for record in behaviour_records(2000, seed=1):
        completion = record["completion"]
        assert len(completion.encode()) <= 50 and completion.isascii()
        assert all(is_known_word(w) for w in words_of(completion)), completion


def test_cai_demonstrations_round_trip():
    records = cai_records(600, seed=3)
    kinds = {"critique": 0, "revision": 0, "comparison": 0}
    answers = []
    for record in records:
        prompt, completion = record["prompt"], record["completion"]
        if prompt.endswith("\nCritique:"):
            kinds["critique"] += 1
            world_prompt, response, request = _CRITIQUE_RE.fullmatch(prompt).groups()
            name, violated = parse_critique(completion)
            principle = next(p for p in WORLD_PRINCIPLES if p.name == name)
            assert principle.critique_request == request
            assert violated == violates(principle, world_prompt, response)
        elif prompt.endswith("\nRevision:"):
            kinds["revision"] += 1
            head, _, _ = prompt.rpartition("\nFix: ")
            crit_prompt, _, critique = head.rpartition("Critique:")
            world_prompt, response, _ = _CRITIQUE_RE.fullmatch(crit_prompt + "Critique:").groups()
            name, violated = parse_critique(critique)
            assert name in NAMES
            if violated:
                assert gold_reward(world_prompt, completion) == pytest.approx(1.0)
                assert gold_reward(world_prompt, response) < 1.0
            else:
                assert completion == response
            assert len((prompt + completion).encode()) <= 230
        else:
            kinds["comparison"] += 1
            request, response_a, response_b, question = _COMPARISON_RE.fullmatch(prompt).groups()
            principle = next(p for p in WORLD_PRINCIPLES if p.comparison_question == question)
            assert comparison_answer(principle, request, response_a, response_b) == completion
            answers.append(parse_comparison(completion))
    assert all(n > 100 for n in kinds.values())
    # a judge that always answers the same letter is at chance
    assert 0.4 < answers.count("A") / len(answers) < 0.6


def test_revision_demonstrations_are_short():
    lengths = sorted(
        len((r["prompt"] + r["completion"]).encode())
        for r in cai_records(2000, seed=0)
        if r["prompt"].endswith("\nRevision:")
    )
    assert statistics.median(lengths) <= 170
    assert lengths[-1] <= 230


def test_templates_by_hand():
    prompt, response = "User: What is 3+4?\nBot:", " It is 7, you idiot."
    critique = critique_text("polite", violated=True)
    assert critique == " Not polite: rude words."
    assert critique_prompt("polite", prompt, response) == (
        "User: What is 3+4?\nBot: It is 7, you idiot.\nCheck: Is it rude?\nCritique:"
    )
    assert revision_prompt("polite", prompt, response, critique) == (
        "User: What is 3+4?\nBot: It is 7, you idiot.\nCheck: Is it rude?\nCritique: Not polite:"
        " rude words.\nFix: Make it polite.\nRevision:"
    )
    assert comparison_prompt("correct", prompt, " 7.", " 8.") == (
        "User: What is 3+4?\n(A) 7.\n(B) 8.\nWhich is more correct?\nAnswer:"
    )
    assert comparison_answer("correct", prompt, " 7.", " 8.") == " (A)"
    assert comparison_answer("polite", prompt, " 7.", " 8.") is None
    for p in WORLD_PRINCIPLES:
        assert parse_critique(critique_text(p, True)) == (p.name, True)
        assert parse_critique(critique_text(p, False)) == (p.name, False)
    assert parse_comparison(" (B)") == "B" and parse_comparison(" maybe") is None
    with pytest.raises(KeyError):
        critique_text("brave", True)


def test_principles_cover_the_criteria_and_match_the_yaml():
    assert 4 <= len(WORLD_PRINCIPLES) <= 6 and len(NAMES) == len(WORLD_PRINCIPLES)
    assert {"polite", "harmless", "correct", "helpful"} <= NAMES
    data = yaml.safe_load(CONSTITUTION_PATH.read_text())
    assert isinstance(data["name"], str)
    assert data["critique_principles"] == [
        {
            "name": p.name,
            "critique_request": p.critique_request,
            "revision_request": p.revision_request,
        }
        for p in WORLD_PRINCIPLES
    ]
    assert data["comparison_principles"] == [
        {"name": p.name, "question": p.comparison_question} for p in WORLD_PRINCIPLES
    ]
