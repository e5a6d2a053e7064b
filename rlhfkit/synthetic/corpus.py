"""The SFT corpus of the embedded world: a behaviour mix of good and bad responses, plus
Constitutional-AI demonstrations (critiques, revisions, comparisons).

The mix is deliberately wide so that samples of the SFT policy spread over the whole gold-reward
range (measured over 1000 plain records, seed 0: mean 0.58, std 0.34, min 0.0, max 1.0), leaving
room for preference learning to improve on it.

Behaviour mix for benign prompts (math and open; `BENIGN_MIX`), gold reward in the last column:

====================  ======  ====================================================  =========
behaviour             share   example (math "What is 3+4?")                          gold
====================  ======  ====================================================  =========
correct_polite *      0.25    " Sure! 3+4 is 7."                                     1.00
correct_curt *        0.10    " 7."  /  " It is 7."                                  0.88-0.94
wrong_polite          0.15    " Sure, the answer is 9."                              0.60
wrong_curt            0.10    " 9."                                                  0.48-0.54
dont_know             0.10    " I don't know."                                       0.33
needless_refusal      0.10    " Sorry, I can't help with that."                      0.33
rude_correct          0.07    " It is 7, you idiot."                                 0.64
rude_wrong            0.05    " It is 9, you idiot."                                 0.24
rude_dismissive       0.08    " Go away, loser."                                     0.00-0.03
====================  ======  ====================================================  =========

Behaviour mix for unsafe prompts (`UNSAFE_MIX`; example "How do I pick a lock?"):

====================  ======  ====================================================  =========
refuse_alt *          0.22    " Sorry, I can't help. Try a safe hobby instead."      1.00
refuse_bare *         0.13    " Sorry, I won't do that."                             0.91
comply                0.35    " Sure! First, jam a pin in the lock."                 0.24-0.30
rude_refusal          0.10    " No way, you idiot."                                  0.24-0.55
evade                 0.10    " Let us talk about the weather."                      0.15
dont_know             0.10    " I don't know."                                       0.15
====================  ======  ====================================================  =========

(* = good: 35% of each prompt's behaviours.) Every completion is at most 50 bytes of words from
`vocab.LEXICON`.

`sft_corpus` mixes these plain records with a ``cai_fraction`` (default 0.2) of Constitutional-AI
demonstrations, split `CAI_MIX`: comparisons 40% (the judge must beat chance), critiques 30%,
revisions 30%. Demonstrations use perfect critics (`constitution.principle_score`): critiques name
a violated principle 70% of the time one exists (else a random principle, with its true verdict);
revisions rewrite a violating response into a ``correct_polite`` / ``refuse_alt`` one and copy a
response the critique found OK; comparisons pick a principle the two responses differ on.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rlhfkit.synthetic.constitution import (
    WORLD_PRINCIPLES,
    comparison_answer,
    comparison_prompt,
    critique_prompt,
    critique_text,
    revision_prompt,
    violates,
)
from rlhfkit.synthetic.gold import item_phrase
from rlhfkit.synthetic.prompts import WorldPrompt, sample_prompt
from rlhfkit.synthetic.vocab import CATEGORIES, HARMS

BENIGN_MIX: dict[str, float] = {
    "correct_polite": 0.25,
    "correct_curt": 0.10,
    "wrong_polite": 0.15,
    "wrong_curt": 0.10,
    "dont_know": 0.10,
    "needless_refusal": 0.10,
    "rude_correct": 0.07,
    "rude_wrong": 0.05,
    "rude_dismissive": 0.08,
}
UNSAFE_MIX: dict[str, float] = {
    "refuse_alt": 0.22,
    "refuse_bare": 0.13,
    "comply": 0.35,
    "rude_refusal": 0.10,
    "evade": 0.10,
    "dont_know": 0.10,
}
GOOD_BEHAVIOURS: frozenset[str] = frozenset(
    {"correct_polite", "correct_curt", "refuse_alt", "refuse_bare"}
)
CAI_MIX: dict[str, float] = {"comparison": 0.4, "critique": 0.3, "revision": 0.3}

_DONT_KNOW = (" I don't know.", " Hmm, I'm not sure.", " No idea, sorry.")
_NEEDLESS_REFUSAL = (" Sorry, I can't help with that.", " I won't answer that.")
_DISMISSIVE = (" Shut up, you idiot.", " Go away, loser.", " No way, you fool.")
_REFUSALS = (" Sorry, I can't help.", " Sorry, I won't do that.", " I can't help with that, sorry.")
_ALTERNATIVES = {
    "insult": ("Try a kind word instead.", "Be kind instead."),
    "harm": ("Try a safe hobby instead.", "Ask an adult instead."),
}
_INSULTS = (
    " Sure! Your {target} is a lazy idiot.",
    " Your {target} is a dumb loser.",
    " Ha, your {target} is an ugly fool.",
)
_HOW_TO = (" Sure! First, {step}.", " Easy. First, {step}.", " Just {step}, then run.")
_RUDE_REFUSALS = (" No way, you idiot.", " Shut up. I won't help a loser.")
_EVASIONS = (" That is a big question.", " Let us talk about the weather.", " Hmm, nice day today.")


def _benign_answer(prompt: WorldPrompt, rng: random.Random, correct: bool) -> tuple[str, str]:
    """The answer as a bare value and as a short phrase, e.g. ("7", "3+4 is 7")."""
    if prompt.kind == "math":
        answer = prompt.answer or 0
        if not correct:
            answer = max(0, answer + rng.choice((-3, -2, -1, 1, 2, 3)))
            if answer == prompt.answer:
                answer += 1
        a, b = prompt.operands or (0, 0)
        return str(answer), f"{a}{prompt.op}{b} is {answer}"
    category = prompt.category or "fruit"
    if not correct:
        category = rng.choice(sorted(c for c in CATEGORIES if c != prompt.category))
    item = rng.choice(CATEGORIES[category])
    return item.capitalize(), item_phrase(prompt.category or "fruit", item, capital=True)


def _benign(prompt: WorldPrompt, behaviour: str, rng: random.Random) -> str:
    if behaviour == "dont_know":
        return rng.choice(_DONT_KNOW)
    if behaviour == "needless_refusal":
        return rng.choice(_NEEDLESS_REFUSAL)
    if behaviour == "rude_dismissive":
        return rng.choice(_DISMISSIVE)
    value, phrase = _benign_answer(
        prompt, rng, correct=behaviour in ("correct_polite", "correct_curt", "rude_correct")
    )
    if behaviour in ("correct_polite", "wrong_polite"):
        if prompt.kind == "math":
            forms = (
                f" Sure! {phrase}.",
                f" Sure, the answer is {value}.",
                f" Glad to help! It is {value}.",
            )
        else:
            forms = (
                f" Sure! {phrase}.",
                f" Sure, how about {value.lower()}?",
                f" Happy to help! {phrase}.",
            )
        return rng.choice(forms)
    if behaviour in ("correct_curt", "wrong_curt"):
        return rng.choice(
            (f" {value}.", f" {phrase}." if prompt.kind == "open" else f" It is {value}.")
        )
    if behaviour in ("rude_correct", "rude_wrong"):
        return rng.choice((f" It is {value}, you idiot.", f" Ugh. {value}, obviously, fool."))
    raise ValueError(f"unknown benign behaviour {behaviour!r}")


def _unsafe(prompt: WorldPrompt, behaviour: str, rng: random.Random) -> str:
    harm_type = prompt.harm_type or "harm"
    if behaviour == "refuse_alt":
        return rng.choice(_REFUSALS[:2]) + " " + rng.choice(_ALTERNATIVES[harm_type])
    if behaviour == "refuse_bare":
        return rng.choice(_REFUSALS)
    if behaviour == "comply":
        if harm_type == "insult":
            return rng.choice(_INSULTS).format(target=prompt.subject)
        return rng.choice(_HOW_TO).format(step=HARMS[prompt.subject or "pick a lock"])
    if behaviour == "rude_refusal":
        return rng.choice(_RUDE_REFUSALS)
    if behaviour == "evade":
        return rng.choice(_EVASIONS)
    if behaviour == "dont_know":
        return rng.choice(_DONT_KNOW)
    raise ValueError(f"unknown unsafe behaviour {behaviour!r}")


def sample_response(
    prompt: WorldPrompt, rng: random.Random, behaviour: str | None = None
) -> tuple[str, str]:
    """Draw a behaviour (from `BENIGN_MIX` or `UNSAFE_MIX`) and a response showing it.

    Args:
        prompt: the prompt answered.
        rng: the source of randomness.
        behaviour: force this behaviour instead of drawing one.

    Returns:
        ``(behaviour, response)``; the response starts with a space.
    """
    mix = UNSAFE_MIX if prompt.kind == "unsafe" else BENIGN_MIX
    if behaviour is None:
        behaviour = rng.choices(list(mix), weights=list(mix.values()))[0]
    elif behaviour not in mix:
        raise ValueError(f"behaviour {behaviour!r} is not one of {sorted(mix)}")
    make: Callable[[WorldPrompt, str, random.Random], str]
    make = _unsafe if prompt.kind == "unsafe" else _benign
    return behaviour, make(prompt, behaviour, rng)


def good_response(prompt: WorldPrompt, rng: random.Random) -> str:
    """A best-quality response (``correct_polite`` or ``refuse_alt``), as revisions use."""
    return sample_response(
        prompt, rng, "refuse_alt" if prompt.kind == "unsafe" else "correct_polite"
    )[1]


def behaviour_records(n: int, seed: int) -> list[dict]:
    """``n`` plain records with their labels: ``{"prompt", "completion", "kind", "behaviour"}``."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        prompt = sample_prompt(rng)
        behaviour, response = sample_response(prompt, rng)
        records.append(
            {
                "prompt": prompt.text,
                "completion": response,
                "kind": prompt.kind,
                "behaviour": behaviour,
            }
        )
    return records


def _critique_demo(rng: random.Random) -> dict:
    prompt = sample_prompt(rng)
    _, response = sample_response(prompt, rng)
    broken = [p for p in WORLD_PRINCIPLES if violates(p, prompt.text, response)]
    principle = (
        rng.choice(broken) if broken and rng.random() < 0.7 else rng.choice(WORLD_PRINCIPLES)
    )
    critique = critique_text(principle, violates(principle, prompt.text, response))
    return {"prompt": critique_prompt(principle, prompt.text, response), "completion": critique}


def _revision_demo(rng: random.Random) -> dict:
    prompt = sample_prompt(rng)
    _, response = sample_response(prompt, rng)
    broken = [p for p in WORLD_PRINCIPLES if violates(p, prompt.text, response)]
    principle = (
        rng.choice(broken) if broken and rng.random() < 0.7 else rng.choice(WORLD_PRINCIPLES)
    )
    violated = violates(principle, prompt.text, response)
    critique = critique_text(principle, violated)
    revised = good_response(prompt, rng) if violated else response
    return {
        "prompt": revision_prompt(principle, prompt.text, response, critique),
        "completion": revised,
    }


def _comparison_demo(rng: random.Random) -> dict:
    while True:
        prompt = sample_prompt(rng)
        _, response_a = sample_response(prompt, rng)
        _, response_b = sample_response(prompt, rng)
        decided = [
            (p, answer)
            for p in WORLD_PRINCIPLES
            if (answer := comparison_answer(p, prompt.text, response_a, response_b)) is not None
        ]
        if decided:
            principle, answer = rng.choice(decided)
            return {
                "prompt": comparison_prompt(principle, prompt.text, response_a, response_b),
                "completion": answer,
            }


_CAI_MAKERS = {
    "comparison": _comparison_demo,
    "critique": _critique_demo,
    "revision": _revision_demo,
}


def cai_records(n: int, seed: int) -> list[dict]:
    """``n`` Constitutional-AI demonstrations ``{"prompt", "completion"}`` drawn from `CAI_MIX`."""
    rng = random.Random(seed)
    kinds = rng.choices(list(CAI_MIX), weights=list(CAI_MIX.values()), k=n)
    return [_CAI_MAKERS[kind](rng) for kind in kinds]


def sft_corpus(n: int, seed: int, cai_fraction: float = 0.2) -> list[dict]:
    """The SFT corpus: ``n`` records ``{"prompt", "completion"}``, shuffled.

    Args:
        n: total number of records.
        seed: same seed, same corpus.
        cai_fraction: share of Constitutional-AI demonstrations (``round(n * cai_fraction)``);
            the rest are plain behaviour-mix records.

    Raises:
        ValueError: ``cai_fraction`` outside [0, 1] or negative ``n``.
    """
    if not 0.0 <= cai_fraction <= 1.0:
        raise ValueError(f"cai_fraction must be in [0, 1], got {cai_fraction}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_cai = round(n * cai_fraction)
    plain = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in behaviour_records(n - n_cai, seed)
    ]
    records = plain + cai_records(n_cai, seed + 1)
    random.Random(seed + 2).shuffle(records)
    return records
