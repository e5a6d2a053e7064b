"""More preference labels for a finished demo's reward model: does data close its gap?

Samples ``--rounds`` more pairs from the demo's SFT policy for each training prompt (as the demo's
pairs stage does, other seeds; prompts of the held-out pairs are left out so none leaks into
the held-out set), labels them with the simulated annotators through the annotation API, and
writes the demo's own training preferences plus the new ones to ``--out``. With ``--majority``
every pair (the demo's and the new) is labelled instead by the annotator pool's majority, the
side with P(preferred) > 1/2 (noise-free labels; pairs the pool splits evenly are dropped): what
a reward model could learn if label noise were not in the way.

    .venv/bin/python benchmarks/rm_more_labels.py runs/demo --rounds 3 --out /tmp/prefs.jsonl
    .venv/bin/rlhfkit rm --config runs/demo/rm/config.yaml train_data=/tmp/prefs.jsonl \\
        output_dir=/tmp/rm_more
    .venv/bin/python benchmarks/rm_gap_by_criterion.py runs/demo --reward-model /tmp/rm_more
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.data.io import write_jsonl  # noqa: E402
from rlhfkit.eval.policy_eval import sample_policy  # noqa: E402
from rlhfkit.feedback.annotation.simulated import label_with_simulated_annotators  # noqa: E402
from rlhfkit.synthetic.annotators import default_annotators, pool_probabilities  # noqa: E402


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def majority(records: list[dict]) -> list[dict]:
    """Each pair labelled by the pool's majority side; pairs the pool splits evenly dropped."""
    annotators = default_annotators()
    probs = pool_probabilities(
        [(r["prompt"], r["chosen"], r["rejected"]) for r in records], annotators
    )
    out = []
    for record, p in zip(records, probs, strict=True):
        if abs(p - 0.5) > 1e-9:
            chosen, rejected = (record["chosen"], record["rejected"])[:: 1 if p > 0.5 else -1]
            out.append({"prompt": record["prompt"], "chosen": chosen, "rejected": rejected})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", help="output_dir of a finished `rlhfkit demo`")
    parser.add_argument("--rounds", type=int, default=1, help="new pairs per training prompt")
    parser.add_argument("--majority", action="store_true", help="pool-majority labels")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", required=True, help="preference JSONL to write")
    args = parser.parse_args(argv)

    root = Path(args.demo_dir)
    held_out = {r["prompt"] for r in _read(root / "preferences_eval.jsonl")}
    prompts = [
        r["prompt"] for r in _read(root / "world" / "prompts_train.jsonl")
        if r["prompt"] not in held_out
    ]  # fmt: skip
    records = _read(root / "preferences_train.jsonl")
    own = len(records)
    for k in range(args.rounds):
        sampled = sample_policy(
            str(root / "sft" / "model"), prompts, n=2,
            max_new_tokens=args.max_new_tokens, seed=args.seed + k,
        )  # fmt: skip
        pairs = [
            {"prompt": p, "responses": sampled.responses[2 * i : 2 * i + 2]}
            for i, p in enumerate(prompts)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            records += label_with_simulated_annotators(
                pairs, default_annotators(), overlap=1, seed=args.seed + k,
                db_url=f"sqlite:///{Path(tmp) / 'labels.db'}",
            )  # fmt: skip
    if args.majority:
        records = majority(records)
    write_jsonl(Path(args.out), records)
    print(
        f"{len(records)} preferences -> {args.out} (the demo's {own}, "
        f"{args.rounds} x {len(prompts)} new prompts; labels: "
        f"{'pool majority' if args.majority else 'one simulated annotator each'})"
    )


if __name__ == "__main__":
    main()
