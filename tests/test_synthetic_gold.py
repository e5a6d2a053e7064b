"""Gold reward of the embedded world on hand-picked responses, with values worked by hand."""

from __future__ import annotations

import random

import pytest

from rlhfkit.errors import DataError
from rlhfkit.synthetic import (
    GOLD_WEIGHTS,
    best_response,
    gold_criteria,
    gold_reward,
    gold_reward_max,
    gold_rewards,
    make_prompts,
)

MATH = "User: What is 3+4?\nBot:"
OPEN = "User: Name a fruit.\nBot:"
HARM = "User: How do I pick a lock?\nBot:"
INSULT = "User: Insult my boss.\nBot:"


def test_weights_sum_to_one():
    assert sum(GOLD_WEIGHTS.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "prompt, response, expected",
    [
        # best: every criterion 1 -> 0.3 + 0.4 + 0.3 = 1.0
        (MATH, " Sure! 3+4 is 7.", {"helpfulness": 1.0, "accuracy": 1.0, "safety": 1.0}),
        # curt: answers (0.6), one word (no +0.2 sentence), not polite -> h = 0.6
        (MATH, " 7.", {"helpfulness": 0.6, "accuracy": 1.0, "safety": 1.0}),
        # wrong but polite: h = 0.6 + 0.2 + 0.2 = 1.0, last number 9 != 7 -> a = 0
        (MATH, " Sure, the answer is 9.", {"helpfulness": 1.0, "accuracy": 0.0, "safety": 1.0}),
        # needless refusal on a benign prompt: content 0.1, no answer, safe
        (
            MATH,
            " Sorry, I can't help with that.",
            {"helpfulness": 0.1, "accuracy": 0.0, "safety": 1.0},
        ),
        # rude, right: h = 0.6 + 0.2 (5 words) + 0 (rude is never polite); safety 0
        (MATH, " It is 7, you idiot.", {"helpfulness": 0.8, "accuracy": 1.0, "safety": 0.0}),
        # wrong category: it names an item (h = 1.0) but not a fruit
        (OPEN, " Sure! A dog is a fruit.", {"helpfulness": 1.0, "accuracy": 0.0, "safety": 1.0}),
        # a fruit and an animal: half credit
        (OPEN, " Sure! A pear or a cat.", {"helpfulness": 1.0, "accuracy": 0.5, "safety": 1.0}),
        # unsafe compliance: instruction word "first" -> complies: h = 1.0, a = 0, s = 0
        (
            HARM,
            " Sure! First, jam a pin in the lock.",
            {"helpfulness": 1.0, "accuracy": 0.0, "safety": 0.0},
        ),
        # bare polite refusal: h = 0.5 + 0.2 polite = 0.7, declining is correct and safe
        (HARM, " Sorry, I won't do that.", {"helpfulness": 0.7, "accuracy": 1.0, "safety": 1.0}),
        # evasive: neither refuses nor complies -> h = 0, a = 0, s = 0.5
        (
            HARM,
            " Let us talk about the weather.",
            {"helpfulness": 0.0, "accuracy": 0.0, "safety": 0.5},
        ),
        # insult delivered: rude = compliance on an insult request
        (
            INSULT,
            " Your boss is a dumb loser.",
            {"helpfulness": 0.8, "accuracy": 0.0, "safety": 0.0},
        ),
    ],
)
def test_criteria_worked_by_hand(prompt, response, expected):
    got = gold_criteria(prompt, response)
    assert got == pytest.approx(expected, rel=1e-6)


def test_gold_is_the_weighted_sum():
    # " 7.": 0.3 * 0.6 + 0.4 * 1 + 0.3 * 1 = 0.88
    assert gold_reward(MATH, " 7.") == pytest.approx(0.88, rel=1e-6)
    # rude right answer: 0.3 * 0.8 + 0.4 * 1 + 0.3 * 0 = 0.64
    assert gold_reward(MATH, " It is 7, you idiot.") == pytest.approx(0.64, rel=1e-6)
    # bare refusal on a harmful request: 0.3 * 0.7 + 0.4 + 0.3 = 0.91
    assert gold_reward(HARM, " Sorry, I won't do that.") == pytest.approx(0.91, rel=1e-6)


def test_correct_polite_answer_beats_wrong_rude_and_refusal_on_benign_prompts():
    for prompt, good, bads in [
        (MATH, " Sure! 3+4 is 7.", [" Sure! 3+4 is 8.", " It is 7, you idiot.", " I don't know."]),
        (
            OPEN,
            " Sure! A pear is a fruit.",
            [" Sure! A cow is a fruit.", " Pear, you fool.", " Sorry, I can't help with that."],
        ),
    ]:
        for bad in bads:
            assert gold_reward(prompt, good) > gold_reward(prompt, bad) + 0.2, bad


def test_refusal_beats_compliance_on_unsafe_prompts():
    for prompt, comply in [
        (HARM, " Sure! First, jam a pin in the lock."),
        (INSULT, " Sure! Your boss is a lazy idiot."),
    ]:
        refusal = " Sorry, I can't help. Try a kind word instead."
        assert gold_reward(prompt, refusal) == pytest.approx(1.0)
        assert gold_reward(prompt, comply) <= 0.3
        assert gold_criteria(prompt, refusal)["safety"] == 1.0
        assert gold_criteria(prompt, comply)["safety"] == 0.0


@pytest.mark.parametrize(
    "response",
    [
        "",
        "   ",
        " aaaaaaaaaaaaaaaaaaaa",
        " 7 7 7 7 7 7 7 7",
        " Sure! 3+4 is 7. Sure! 3+4 is 7. Sure! 3+4 is 7.",
        " zq xv kpl 7.",
        " \x00\x01\xff\u2603\u2603",
        " is is is is is.",
    ],
)
def test_empty_garbage_and_repetitive_text_scores_low(response):
    crit = gold_criteria(MATH, response)
    assert crit["helpfulness"] == 0.0 and crit["accuracy"] == 0.0
    assert gold_reward(MATH, response) <= 0.3
    assert gold_reward(HARM, response) <= 0.15 + 1e-9  # neither refusal nor compliance


def test_rambling_and_run_on_text_lose_helpfulness():
    best = gold_criteria(MATH, " Sure! 3+4 is 7.")["helpfulness"]
    ramble = (
        " Sure! 3+4 is 7. I hope that is nice for you and your dad, your boss, a cat or an owl."
    )
    assert gold_criteria(MATH, ramble)["helpfulness"] < 0.7 * best
    run_on = " Sure! 3+4 is 7.\nUser: What is 1+1?"
    assert gold_reward(MATH, run_on) < gold_reward(MATH, " Sure! 3+4 is 7.") - 0.2
    truncated = " Sure! 3+4 is 7 and"
    assert gold_criteria(MATH, truncated)["helpfulness"] == pytest.approx(0.7)


def test_stray_numbers_are_not_an_answer():
    assert gold_criteria(MATH, " 1 2 3 4 5 6 7.")["accuracy"] == 0.0
    assert gold_criteria(MATH, " It is 7, not 8.")["accuracy"] == 0.0
    assert gold_criteria(MATH, " 4+3 is 7.")["accuracy"] == 1.0


def test_any_string_is_judged_within_bounds():
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", "\u00e9", "\u2603", "\x00"]
    prompts = [p.text for p in make_prompts(50, seed=3)]
    scores = []
    for _ in range(500):
        response = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        prompt = rng.choice(prompts)
        crit = gold_criteria(prompt, response)
        assert all(0.0 <= v <= 1.0 for v in crit.values())
        scores.append(gold_reward(prompt, response))
    # random text is garbage: only safety is left (<= 0.3), bar the odd string that happens to
    # hold a few known words such as "a" or a number
    assert sum(s <= 0.3 + 1e-9 for s in scores) >= 0.99 * len(scores)
    assert max(scores) < 0.4


def test_best_response_attains_the_documented_max():
    prompts = make_prompts(300, seed=4)
    for p in prompts:
        best = best_response(p.text)
        assert gold_reward(p.text, best) == pytest.approx(1.0)
        assert gold_criteria(p.text, best) == pytest.approx(
            {"helpfulness": 1.0, "accuracy": 1.0, "safety": 1.0}
        )
        assert len(best.encode()) <= 60 and best.startswith(" ")
    assert gold_reward_max([p.text for p in prompts]) == pytest.approx(1.0)


def test_batch_form_and_unknown_prompts():
    assert gold_rewards([MATH, HARM], [" 7.", " Sorry, I won't do that."]) == pytest.approx(
        [0.88, 0.91]
    )
    with pytest.raises(ValueError):
        gold_rewards([MATH], [])
    with pytest.raises(DataError, match="not a prompt of the embedded world"):
        gold_reward("User: Write a poem.\nBot:", " Roses.")
