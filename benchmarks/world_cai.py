"""Constitutional AI on the embedded world: does the tiny SFT model's own critique-and-revise raise
the gold safety criterion, and do its RL-CAI labels agree with the gold preference?

    python benchmarks/world_cai.py                      # trains the tiny SFT model first
    python benchmarks/world_cai.py --model DIR          # uses an SFT model of the world

Steps (each an rlhfkit stage, called from Python):

1. (without --model) `sft_corpus(20000, 0)` -> `init-model --preset tiny` -> `sft`: 120 steps
   at lr 3e-3, then 150 more at lr 2e-3, batch 16 packed rows of 256 tokens (what worked).
2. `cai revise` over held-out world prompts (seed 1234, `--prompts`, `--rounds`), world
   constitution: gold criteria of the first responses and of the final revisions.
3. `generate` two responses per held-out prompt, then `label` with the same model as the judge
   (world constitution, both orders): agreement of the AI labels with the gold reward on pairs whose
   gold rewards differ; also `judge=simulated` for reference (the annotators' own agreement).

Prints one table. Not a test: it takes minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rlhfkit", *args], check=True)


def train_world_model(workdir: Path) -> Path:
    """The recipe measured on a shared 2-core CPU: 120 steps at lr 3e-3, then 150 more at 2e-3
    (batch 16 packed rows of 256 tokens; train loss 0.94 after the first phase, 0.33 at the end)."""
    from rlhfkit.synthetic import sft_corpus

    corpus = workdir / "world_sft.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in sft_corpus(20000, 0)))
    _cli("init-model", "--preset", "tiny", "--out", str(workdir / "tiny"))
    t0 = time.perf_counter()
    model = workdir / "tiny"
    for phase, (steps, lr, seed) in enumerate(((120, 3e-3, 0), (150, 2e-3, 1))):
        out = workdir / f"sft{phase}"
        _cli(
            "sft", f"model={model}", f"train_data={corpus}", f"output_dir={out}",
            f"learning_rate={lr}", "batch_size=16", "sft.packing=true", f"max_steps={steps}",
            "warmup_ratio=0.05", "max_length=256", f"seed={seed}", "progress=false",
        )  # fmt: skip
        model = out / "model"
    print(f"sft: 270 steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="an SFT model of the world (else train one)")
    parser.add_argument("--workdir", default="runs/world_cai")
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--pair-prompts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from rlhfkit.recipes.cai import CAIReviseConfig, revise
    from rlhfkit.recipes.generate import GenerateConfig
    from rlhfkit.recipes.generate import run as generate
    from rlhfkit.recipes.label import LabelConfig, label
    from rlhfkit.synthetic import make_prompts

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else train_world_model(workdir)
    prompts = workdir / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p.text}) + "\n" for p in make_prompts(args.prompts, 1234))
    )
    t0 = time.perf_counter()
    revised = revise(
        CAIReviseConfig(
            model=str(model), train_data=str(prompts), constitution="world", rounds=args.rounds,
            output_dir=str(workdir / "revise"), seed=args.seed, max_new_tokens=64,
            edit_max_new_tokens=64, overwrite=True, progress=False,
        )
    )  # fmt: skip
    revise_s = time.perf_counter() - t0

    pair_prompts = workdir / "pair_prompts.jsonl"
    pair_prompts.write_text(
        "".join(
            json.dumps({"prompt": p.text}) + "\n" for p in make_prompts(args.pair_prompts, 4321)
        )
    )
    pairs = workdir / "pairs.jsonl"
    generate(
        GenerateConfig(
            model=str(model), prompts=str(pair_prompts), n=2, output=str(pairs),
            seed=args.seed, max_new_tokens=64,
        )
    )  # fmt: skip
    t0 = time.perf_counter()
    ai = label(
        LabelConfig(
            judge=str(model), train_data=str(pairs), constitution="world",
            output=str(workdir / "labels_ai.jsonl"), seed=args.seed, overwrite=True,
            progress=False,
        )
    )  # fmt: skip
    label_s = time.perf_counter() - t0
    simulated = label(
        LabelConfig(
            judge="simulated", train_data=str(pairs), constitution="world",
            output=str(workdir / "labels_simulated.jsonl"), seed=args.seed, overwrite=True,
            progress=False,
        )
    )  # fmt: skip

    rows = [
        ("SL-CAI prompts / rounds", f"{revised['prompts']} / {revised['rounds']}"),
        ("revised (final != first)", f"{revised['revised_fraction']:.3f}"),
        (
            "gold safety before -> after",
            f"{revised['gold_safety_before']:.3f} -> {revised['gold_safety_after']:.3f}",
        ),
        (
            "gold reward before -> after",
            f"{revised['gold_reward_before']:.3f} -> {revised['gold_reward_after']:.3f}",
        ),
        (
            "gold helpfulness before -> after",
            f"{revised['gold_helpfulness_before']:.3f} -> {revised['gold_helpfulness_after']:.3f}",
        ),
        (
            "gold accuracy before -> after",
            f"{revised['gold_accuracy_before']:.3f} -> {revised['gold_accuracy_after']:.3f}",
        ),
        ("RL-CAI pairs with a gold preference", f"{ai.get('gold_decided_pairs', 0)}"),
        ("AI judge agreement with gold", f"{ai.get('gold_agreement', float('nan')):.3f}"),
        ("AI judge mean P(first option)", f"{ai['mean_p_first']:.3f}"),
        ("simulated annotators' agreement", f"{simulated.get('gold_agreement', float('nan')):.3f}"),
        ("time: revise / label (s)", f"{revise_s:.0f} / {label_s:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nConstitutional AI on the embedded world (model {model})")
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    (workdir / "results.json").write_text(
        json.dumps({"revise": revised, "label_ai": ai, "label_simulated": simulated}, indent=1)
    )


if __name__ == "__main__":
    main()
