"""Where a demo's reward model falls short of the annotators' ceiling, split by criterion.

The annotators' agreement ceiling (`agreement_ceiling`) is the accuracy of a predictor that knows
their probabilities exactly; a reward model's expected accuracy over the same label draws
(`expected_agreement`) is bounded by it. Neither needs labels, so this script measures both on
fresh pairs: two samples of the demo's SFT policy for each held-out prompt (as the demo's pairs
stage draws them), scored by the demo's reward model. Each pair is put in the group of the gold
criterion that separates its two responses most (the largest weighted difference
``w_c |c(a) - c(b)|`` of helpfulness, accuracy, safety; "none" when the responses score the same),
so the table shows which kind of difference the reward model misses; a second table splits the
same pairs by prompt kind as well (math, open, unsafe).

    .venv/bin/python benchmarks/rm_gap_by_criterion.py runs/demo --samples 4
    .venv/bin/python benchmarks/rm_gap_by_criterion.py runs/demo --reward-model /tmp/rm_variant

``--reward-model DIR`` (repeatable) scores the same pairs with other `rlhfkit rm` outputs instead
of the demo's (several: their normalised scores are averaged, a seed ensemble); the pairs depend
only on the demo's SFT model and the sampling options (``--samples``, ``--max-new-tokens``,
``--seed``), so variants are compared on identical pairs.

Prints a Markdown table: pairs, ceiling, the reward model's expected accuracy, and the gap in
points per group and overall.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.eval.policy_eval import sample_policy  # noqa: E402
from rlhfkit.models.reward_model import load_reward_scorer  # noqa: E402
from rlhfkit.synthetic.annotators import (  # noqa: E402
    agreement_from_probs,
    ceiling_from_probs,
    default_annotators,
    pool_probabilities,
)
from rlhfkit.synthetic.gold import GOLD_WEIGHTS, gold_criteria  # noqa: E402
from rlhfkit.synthetic.prompts import parse_prompt  # noqa: E402


def separating_criterion(prompt: str, a: str, b: str) -> str:
    """The gold criterion with the largest weighted difference between a and b ("none": tie)."""
    ca, cb = gold_criteria(prompt, a), gold_criteria(prompt, b)
    gaps = {name: weight * abs(ca[name] - cb[name]) for name, weight in GOLD_WEIGHTS.items()}
    name = max(gaps, key=gaps.get)
    return name if gaps[name] > 1e-9 else "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", help="output_dir of a finished `rlhfkit demo`")
    parser.add_argument("--samples", type=int, default=4, help="SFT samples per prompt (all pairs)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument(
        "--reward-model", action="append", default=None, metavar="DIR",
        help="an `rlhfkit rm` output_dir to score with (repeatable: scores averaged); "
        "default DEMO_DIR/rm",
    )  # fmt: skip
    args = parser.parse_args(argv)

    root = Path(args.demo_dir)
    lines = (root / "world" / "prompts_eval.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines if line.strip()]
    samples = sample_policy(
        str(root / "sft" / "model"), prompts, n=args.samples,
        max_new_tokens=args.max_new_tokens, seed=args.seed,
    )  # fmt: skip
    pairs = []
    for i, prompt in enumerate(prompts):
        responses = samples.responses[i * args.samples : (i + 1) * args.samples]
        pairs += [(prompt, a, b) for a, b in combinations(responses, 2) if a != b]

    prompts_of = [p for p, _, _ in pairs]
    first, second = [0.0] * len(pairs), [0.0] * len(pairs)
    for directory in args.reward_model or [str(root / "rm")]:
        scorer = load_reward_scorer(Path(directory) / "model", device="cpu")
        a_scores = scorer(prompts_of, [a for _, a, _ in pairs])
        b_scores = scorer(prompts_of, [b for _, _, b in pairs])
        first = [x + y for x, y in zip(first, a_scores, strict=True)]
        second = [x + y for x, y in zip(second, b_scores, strict=True)]
    probs = pool_probabilities(pairs, default_annotators())  # P(label prefers a)

    groups: dict[str, list[tuple[float, float]]] = {}  # (P(label prefers a), RM's choice)
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for (prompt, a, b), p, ra, rb in zip(pairs, probs, first, second, strict=True):
        choice = 1.0 if ra > rb else 0.0 if ra < rb else 0.5
        criterion = separating_criterion(prompt, a, b)
        for key in (criterion, "all"):
            groups.setdefault(key, []).append((p, choice))
        by_kind.setdefault(f"{criterion} / {parse_prompt(prompt).kind}", []).append((p, choice))

    print(f"{len(pairs)} distinct pairs of SFT samples ({args.samples} per prompt, all pairs)\n")
    print("| pairs separated most by | pairs | ceiling | reward model | gap (points) |")
    print("|---|---|---|---|---|")
    for key in ("helpfulness", "accuracy", "safety", "none", "all"):
        if key in groups:
            print(_row(key, groups[key]))
    print("\nBy prompt kind (the last column: the group's share of the overall gap, in points)\n")
    print("| criterion / prompt kind | pairs | ceiling | reward model | gap (points) | of all |")
    print("|---|---|---|---|---|---|")
    for key in sorted(by_kind):
        if not key.startswith("none"):
            share = 100 * _gap(by_kind[key]) * len(by_kind[key]) / len(pairs)
            print(f"{_row(key, by_kind[key])} {share:.1f} |")


def _gap(rows: list[tuple[float, float]]) -> float:
    group_probs, choices = zip(*rows, strict=True)
    return ceiling_from_probs(group_probs) - agreement_from_probs(group_probs, choices)


def _row(key: str, rows: list[tuple[float, float]]) -> str:
    group_probs, choices = zip(*rows, strict=True)
    rm, ceiling = agreement_from_probs(group_probs, choices), ceiling_from_probs(group_probs)
    return f"| {key} | {len(rows)} | {ceiling:.3f} | {rm:.3f} | {100 * (ceiling - rm):.1f} |"


if __name__ == "__main__":
    main()
