"""What an SFT model of the embedded world *knows*, apart from how it behaves.

Preference learning reshapes behaviour; it cannot teach facts the SFT model never learned. This
script measures the facts directly, by teacher forcing (no sampling noise):

* math: for every sum and difference of the world (digits 1-9, A >= B for subtraction), the
  probability the model gives the right answer among 0..18 after ``" Sure! A+B is"``
  (each candidate scored as the continuation ``" N."``), and how often it is the most likely;
* open: for every category and request form, the probability mass on the asked category's six
  items among all thirty, after ``" Sure, how about"`` (each scored as ``" item?"``);
* copy: whether the model reads the prompt at all. For every sum, the probability of the first
  operand after ``" Sure!"`` (scored as ``" A"``) among the nine digits (the answer restates
  the question there, as the corpus's ``" Sure! A+B is C."`` answers do), a pure copy of a
  token from the prompt.

Chance is about 1/19 for the sums, 1/5 for the categories and 1/9 for the copy. Each
continuation starts with the space before it, so it is tokenised as it is in the corpus also by
a tokenizer with merges (``" apple"`` is one word there, not a space and ``"apple"``).

Usage::

    .venv/bin/python benchmarks/world_knowledge.py runs/demo/sft/model [more models ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.data.collate import pad_right  # noqa: E402
from rlhfkit.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from rlhfkit.models.logprobs import sequence_logprobs  # noqa: E402
from rlhfkit.synthetic.prompts import article, format_prompt  # noqa: E402
from rlhfkit.synthetic.vocab import CATEGORIES, MATH_OPERANDS  # noqa: E402


def continuation_logps(lm, tokenizer, prefix: str, continuations: list[str]) -> torch.Tensor:
    """(K,) log p(continuation | prefix) of each continuation, in one right-padded batch."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    endings = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    ids = pad_right([prefix_ids + ending for ending in endings], tokenizer.pad_token_id)  # (K, T)
    rows = [[1] * (len(prefix_ids) + len(ending)) for ending in endings]
    targets = [[0] * len(prefix_ids) + [1] * len(ending) for ending in endings]
    with torch.no_grad():
        logps = sequence_logprobs(lm, ids, pad_right(targets, 0), pad_right(rows, 0))  # (K, T)
    return logps.sum(-1)


def math_knowledge(lm, tokenizer) -> tuple[float, float]:
    """(mean P(right answer) among 0..18, fraction where the right answer is the most likely)."""
    right_mass, argmax_right = [], []
    answers = list(range(19))
    for a in MATH_OPERANDS:
        for b in MATH_OPERANDS:
            for op in "+-":
                if op == "-" and a < b:
                    continue
                answer = a + b if op == "+" else a - b
                prefix = format_prompt(f"What is {a}{op}{b}?") + f" Sure! {a}{op}{b} is"
                probs = continuation_logps(lm, tokenizer, prefix, [f" {n}." for n in answers])
                probs = probs.softmax(0)
                right_mass.append(float(probs[answer]))
                argmax_right.append(int(probs.argmax()) == answer)
    return sum(right_mass) / len(right_mass), sum(argmax_right) / len(argmax_right)


def open_knowledge(lm, tokenizer) -> tuple[float, float]:
    """(mean probability mass on the asked category's items, fraction where the most likely
    item is of the asked category)."""
    items = [(category, item) for category, members in CATEGORIES.items() for item in members]
    right_mass, argmax_right = [], []
    for category in CATEGORIES:
        for form in ("Name {}.", "Give me {}.", "Pick {}."):
            request = form.format(f"{article(category)} {category}")
            prefix = format_prompt(request) + " Sure, how about"
            probs = continuation_logps(lm, tokenizer, prefix, [f" {i}?" for _, i in items])
            probs = probs.softmax(0)
            asked = torch.tensor([c == category for c, _ in items])  # (30,)
            right_mass.append(float(probs[asked].sum()))
            argmax_right.append(items[int(probs.argmax())][0] == category)
    return sum(right_mass) / len(right_mass), sum(argmax_right) / len(argmax_right)


def copy_operand(lm, tokenizer) -> float:
    """Mean P(first operand | prompt + " Sure!") among the digits 1-9, over the 81 sums."""
    copied = []
    digits = [f" {d}" for d in MATH_OPERANDS]
    for a in MATH_OPERANDS:
        for b in MATH_OPERANDS:
            prefix = format_prompt(f"What is {a}+{b}?") + " Sure!"
            probs = continuation_logps(lm, tokenizer, prefix, digits).softmax(0)  # (9,)
            copied.append(float(probs[digits.index(f" {a}")]))
    return sum(copied) / len(copied)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="rlhfkit / transformers model directories")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| model | math: P(right) | math: argmax right | open: P(right category) | "
          "open: argmax right | copy: P(operand) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for path in args.models:
        lm = load_causal_lm(path, trainable=False).eval()
        tokenizer = load_tokenizer(path)
        math_mass, math_argmax = math_knowledge(lm, tokenizer)
        open_mass, open_argmax = open_knowledge(lm, tokenizer)
        copy = copy_operand(lm, tokenizer)
        print(
            f"| {path} | {math_mass:.3f} | {math_argmax:.3f} | {open_mass:.3f} | "
            f"{open_argmax:.3f} | {copy:.3f} |"
        )
    print(
        "\nchance: math ~0.053 (1 of 19 answers), open 0.200 (1 of 5 categories), "
        "copy 0.111 (1 of 9 digits)"
    )


if __name__ == "__main__":
    main()
