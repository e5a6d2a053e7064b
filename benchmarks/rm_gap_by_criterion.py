"""Where a demo's reward model falls short of the annotators' ceiling, split by criterion.

The annotators' agreement ceiling (`agreement_ceiling`) is the accuracy of a predictor that knows
their probabilities exactly; a reward model's expected accuracy over the same label draws
(`expected_agreement`) is bounded by it. Neither needs labels, so this script measures both on
fresh pairs: two samples of the demo's SFT policy for each held-out prompt (as the demo's pairs
stage draws them), scored by the demo's reward model. Each pair is put in the group of the gold
criterion that separates its two responses most (the largest weighted difference
``w_c |c(a) - c(b)|`` of helpfulness, accuracy, safety; "none" when the responses score the same),
so the table shows which kind of difference the reward model misses.

    .venv/bin/python benchmarks/rm_gap_by_criterion.py runs/demo --samples 4

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

    scorer = load_reward_scorer(root / "rm" / "model", device="cpu")
    first = scorer([p for p, _, _ in pairs], [a for _, a, _ in pairs])
    second = scorer([p for p, _, _ in pairs], [b for _, _, b in pairs])
    probs = pool_probabilities(pairs, default_annotators())  # P(label prefers a)

    groups: dict[str, list[tuple[float, float]]] = {}  # (P(label prefers a), RM's choice)
    for (prompt, a, b), p, ra, rb in zip(pairs, probs, first, second, strict=True):
        choice = 1.0 if ra > rb else 0.0 if ra < rb else 0.5
        for key in (separating_criterion(prompt, a, b), "all"):
            groups.setdefault(key, []).append((p, choice))

    print(f"{len(pairs)} distinct pairs of SFT samples ({args.samples} per prompt, all pairs)\n")
    print("| pairs separated most by | pairs | ceiling | reward model | gap (points) |")
    print("|---|---|---|---|---|")
    for key in ("helpfulness", "accuracy", "safety", "none", "all"):
        rows = groups.get(key, [])
        if not rows:
            continue
        group_probs, choices = zip(*rows, strict=True)
        rm = agreement_from_probs(group_probs, choices)
        ceiling = ceiling_from_probs(group_probs)
        print(f"| {key} | {len(rows)} | {ceiling:.3f} | {rm:.3f} | {100 * (ceiling - rm):.1f} |")


if __name__ == "__main__":
    main()
