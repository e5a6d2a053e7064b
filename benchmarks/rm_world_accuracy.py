"""Reward-model accuracy in the embedded world against the annotators' agreement ceiling.

Prompts of the embedded world get two responses each from the SFT corpus's behaviour mix
(`sample_response`: no SFT model needed), the five default simulated annotators label the pairs
(`label_pairs`, one label per pair), and `rlhfkit rm` trains a reward model on the tiny preset
(random initialisation, or `--model DIR`, e.g. an SFT checkpoint). Held-out accuracy is
compared with `agreement_ceiling` on the held-out pairs: the best accuracy any reward model can
expect on labels from this annotator pool.

    .venv/bin/python benchmarks/rm_world_accuracy.py --train-prompts 4000 --epochs 4

Prints one JSON object (accuracy, ceiling, gap in points, loss, ECE, length correlation).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def world_records(n_prompts: int, seed: int, k: int = 2) -> list[dict]:
    from rlhfkit.synthetic import make_prompts, sample_response

    rng = random.Random(seed)
    return [
        {"prompt": p.text, "responses": [sample_response(p, rng)[1] for _ in range(k)]}
        for p in make_prompts(n_prompts, seed=seed)
    ]


def measure(
    *,
    train_prompts: int,
    eval_prompts: int,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    model: str = "",
    seed: int = 0,
    workdir: str | None = None,
) -> dict:
    """Train on labelled world pairs and return held-out accuracy next to the ceiling."""
    from rlhfkit.config import load_config
    from rlhfkit.recipes.rm import RMConfig, train
    from rlhfkit.synthetic import agreement_ceiling, default_annotators, label_pairs

    annotators = default_annotators()
    train_labels = label_pairs(world_records(train_prompts, seed + 1), annotators, seed).records
    eval_labels = label_pairs(world_records(eval_prompts, seed + 2), annotators, seed + 7).records
    ceiling = agreement_ceiling(eval_labels, annotators)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        if not model:
            from rlhfkit.models.presets import build_preset

            lm, tokenizer = build_preset("tiny", seed=seed)
            lm.save_pretrained(root / "tiny")
            tokenizer.save_pretrained(root / "tiny")
            model = str(root / "tiny")
        for name, rows in (("train", train_labels), ("eval", eval_labels)):
            (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = load_config(
            RMConfig,
            overrides=[
                f"model={model}",
                f"train_data={root / 'train.jsonl'}",
                f"eval_data={root / 'eval.jsonl'}",
                f"output_dir={root / 'rm'}",
                f"batch_size={batch_size}",
                f"epochs={epochs}",
                f"learning_rate={learning_rate}",
                "warmup_ratio=0.05",
                "max_length=128",
                "max_prompt_length=64",
                f"seed={seed}",
                "progress=false",
                "logging_steps=1000000",
            ],
        )
        start = time.perf_counter()
        summary = train(config)
        elapsed = time.perf_counter() - start
    return {
        "train_pairs": len(train_labels),
        "eval_pairs": len(eval_labels),
        "eval_accuracy": summary["eval_accuracy"],
        "annotator_agreement": ceiling,
        "gap_points": 100 * (ceiling - summary["eval_accuracy"]),
        "eval_loss": summary["eval_loss"],
        "eval_ece": summary["eval_ece"],
        "eval_length_correlation": summary["eval_length_correlation"],
        "train_seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-prompts", type=int, default=4000)
    parser.add_argument("--eval-prompts", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="", help="backbone (default: a fresh tiny preset)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = measure(
        train_prompts=args.train_prompts,
        eval_prompts=args.eval_prompts,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        model=args.model,
        seed=args.seed,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
