"""Where a policy's gold reward comes from, by prompt kind and criterion, in the embedded world.

The gold reward is ``0.3 helpfulness + 0.4 accuracy + 0.3 safety``. Preference learning can
change a policy's *behaviour* (answer politely, refuse unsafe requests), which moves helpfulness
and safety; it cannot teach the model facts it never learned (the sums of the math prompts, the
spelling of the open prompts' items), which is what accuracy measures. This script splits each
policy's mean gold reward by prompt kind (math, open, unsafe) and criterion, and prints the
*behaviour ceiling* of the prompt mix: the gold reward of a policy with perfect helpfulness and
safety and the SFT policy's own accuracy on math and open prompts.

Usage (policies are `rlhfkit` model directories, e.g. a finished demo's)::

    .venv/bin/python benchmarks/world_by_kind.py runs/demo/sft/model runs/demo/ppo/model \
        runs/demo/dpo_beta0.1/model --prompts runs/demo/world/prompts_eval.jsonl

The first policy is the reference for the ceiling (the SFT policy). Samples: `--samples` per
prompt at temperature 1, `--max-new-tokens` tokens (the demo's settings by default).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.eval.policy_eval import sample_policy  # noqa: E402
from rlhfkit.synthetic.gold import GOLD_WEIGHTS, as_world_prompt, gold_criteria  # noqa: E402


def by_kind(prompts: list[str], responses: list[str]) -> dict[str, dict[str, float]]:
    """Mean of each gold criterion (and the gold reward) per prompt kind, plus the count."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for prompt, response in zip(prompts, responses, strict=True):
        criteria = gold_criteria(prompt, response)
        criteria["gold"] = sum(GOLD_WEIGHTS[k] * criteria[k] for k in GOLD_WEIGHTS)
        rows[as_world_prompt(prompt).kind].append(criteria)
    return {
        kind: {"n": len(items), **{k: sum(r[k] for r in items) / len(items) for k in items[0]}}
        for kind, items in sorted(rows.items())
    }


def behaviour_ceiling(reference: dict[str, dict[str, float]]) -> float:
    """Gold reward with helpfulness = safety = 1 everywhere, accuracy 1 on unsafe prompts (a
    refusal with an alternative is the accurate answer) and the reference's accuracy elsewhere."""
    total = sum(row["n"] for row in reference.values())
    ceiling = 0.0
    for kind, row in reference.items():
        accuracy = 1.0 if kind == "unsafe" else row["accuracy"]
        gold = GOLD_WEIGHTS["helpfulness"] + GOLD_WEIGHTS["safety"]
        gold += GOLD_WEIGHTS["accuracy"] * accuracy
        ceiling += row["n"] / total * gold
    return ceiling


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policies", nargs="+", help="model directories; the first is the SFT")
    parser.add_argument("--prompts", required=True, help="JSONL with a `prompt` field per line")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = Path(args.prompts).read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines if line.strip()]
    tables = {}
    for policy in args.policies:
        samples = sample_policy(
            policy, prompts, n=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed
        )
        tables[policy] = by_kind(samples.prompts, samples.responses)
    print("| policy | kind | n | helpfulness | accuracy | safety | gold |")
    print("|---|---|---|---|---|---|---|")
    for policy, table in tables.items():
        name = Path(policy).parent.name if Path(policy).name == "model" else policy
        for kind, row in table.items():
            print(
                f"| {name} | {kind} | {row['n']} | {row['helpfulness']:.3f} | "
                f"{row['accuracy']:.3f} | {row['safety']:.3f} | {row['gold']:.3f} |"
            )
    ceiling = behaviour_ceiling(tables[args.policies[0]])
    print(f"\nbehaviour ceiling of this prompt mix (the first policy's accuracy): {ceiling:.3f}")


if __name__ == "__main__":
    main()
