"""DPO in the embedded world: does training on the simulated annotators' preferences raise the
policy's gold reward, and at what KL from the SFT policy, for several betas?

Pipeline (all on a CPU, tiny preset, seconds to minutes):

1. `rlhfkit init-model --preset tiny`, then SFT on `rlhfkit.synthetic.sft_corpus(...)`;
2. the SFT policy samples two responses per training prompt; the simulated annotators
   (`default_annotators()`) label each pair (`label_pairs`);
3. DPO from the SFT model on those pairs, once per beta;
4. on held-out prompts, each policy samples `--samples` responses per prompt (temperature 1):
   mean gold reward (`gold_rewards`), and the sequence-level KL to the SFT policy estimated as
   the mean over samples of ``sum_t log pi(y_t | x, y_<t) - log pi_sft(y_t | x, y_<t)`` on the
   sampled tokens.

Usage::

    .venv/bin/python benchmarks/world_dpo.py --workdir runs/world-dpo

It prints a table and writes `WORKDIR/world_dpo.json`. Not a test: the demo does this too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from rlhfkit.config import load_config
from rlhfkit.data.io import write_jsonl
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.models.presets import build_preset
from rlhfkit.recipes.dpo import DPOConfig
from rlhfkit.recipes.dpo import train as dpo_train
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.recipes.sft import train as sft_train
from rlhfkit.rollout.sampling import SamplingParams, sample_responses
from rlhfkit.synthetic import (
    default_annotators,
    gold_rewards,
    label_pairs,
    make_prompts,
    sft_corpus,
)

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "world-dpo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-records", type=int, default=2000)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--train-prompts", type=int, default=512, help="prompts sampled for pairs")
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2, help="samples per eval prompt")
    parser.add_argument("--betas", default="0.05,0.1,0.5")
    parser.add_argument("--dpo-lr", type=float, default=3e-4)
    parser.add_argument("--dpo-epochs", type=float, default=2.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--fresh", action="store_true", help="redo SFT and pairs")
    return parser.parse_args(argv)


def _sample(model_dir: Path, prompts: list[str], args, samples: int, seed: int):
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), dtype="float32", trainable=False)
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    out = sample_responses(
        model,
        prompt_ids,
        SamplingParams(args.max_new_tokens, 1.0, 1.0),
        pad_id=tokenizer.pad_token_id,
        eos_ids=tokenizer.eos_token_id,
        num_samples=samples,
        batch_size=64,
        seed=seed,
    )
    return tokenizer, prompt_ids, out


@torch.no_grad()
def _sequence_logps(model_dir: Path, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """Summed log-probs of each response given its prompt under the model at `model_dir`."""
    model = TokenLogprobs(load_causal_lm(str(model_dir), dtype="float32", trainable=False))
    from rlhfkit.data.collate import pad_right

    totals = []
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        ids = [p + r for p, r in chunk]
        masks = [[0] * len(p) + [1] * len(r) for p, r in chunk]
        logps = model(
            input_ids=pad_right(ids, 0),
            target_mask=pad_right(masks, 0),
            attention_mask=pad_right([[1] * len(x) for x in ids], 0),
        )["logprobs"]  # (B, T)
        totals += logps.sum(-1).tolist()
    return totals


def measure(model_dir: Path, sft_dir: Path, prompts: list[str], args) -> dict:
    """Mean gold reward of samples and mean sequence KL(pi || pi_sft) on those samples."""
    tokenizer, prompt_ids, samples = _sample(model_dir, prompts, args, args.samples, args.seed + 7)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in samples.response_ids]
    rewards = gold_rewards([prompts[i] for i in samples.prompt_index], texts)
    rows = [
        (prompt_ids[i], r) for i, r in zip(samples.prompt_index, samples.response_ids, strict=True)
    ]
    policy = _sequence_logps(model_dir, rows)
    sft = _sequence_logps(sft_dir, rows)
    kls = [p - s for p, s in zip(policy, sft, strict=True)]
    return {
        "gold_reward": statistics.fmean(rewards),
        "gold_reward_sem": statistics.stdev(rewards) / len(rewards) ** 0.5,
        "kl_to_sft": statistics.fmean(kls),
        "mean_response_tokens": statistics.fmean(len(r) for r in samples.response_ids),
        "samples": len(rewards),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    work = Path(args.workdir)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    base = work / "tiny"
    if not (base / "config.json").is_file():
        model, tokenizer = build_preset("tiny", seed=args.seed)
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)

    sft_dir = work / "sft"
    if not (sft_dir / "model" / "config.json").is_file():
        corpus = work / "sft.jsonl"
        write_jsonl(corpus, sft_corpus(args.sft_records, args.seed))
        started = time.perf_counter()
        sft_train(
            load_config(
                SFTConfig,
                overrides=[
                    f"model={base}", f"train_data={corpus}", f"output_dir={sft_dir}",
                    f"max_steps={args.sft_steps}", "batch_size=16", f"learning_rate={args.sft_lr}",
                    "warmup_ratio=0.05", "logging_steps=50", "progress=false",
                    f"seed={args.seed}", "dtype=float32",
                ],
            )
        )  # fmt: skip
        timings["sft_seconds"] = time.perf_counter() - started
    sft_model = sft_dir / "model"

    pairs_file = work / "pairs.jsonl"
    if not pairs_file.is_file():
        started = time.perf_counter()
        train_prompts = [p.text for p in make_prompts(args.train_prompts, args.seed + 1)]
        tokenizer, _, samples = _sample(sft_model, train_prompts, args, 2, args.seed + 3)
        records = [{"prompt": p, "responses": []} for p in train_prompts]
        for i, ids in zip(samples.prompt_index, samples.response_ids, strict=True):
            records[i]["responses"].append(tokenizer.decode(ids, skip_special_tokens=True))
        labelled = label_pairs(records, default_annotators(), args.seed + 5)
        write_jsonl(pairs_file, labelled.records)
        timings["pairs_seconds"] = time.perf_counter() - started
        timings["pairs"] = len(labelled.records)
        timings["identical_pairs_skipped"] = labelled.skipped_identical

    eval_prompts = [p.text for p in make_prompts(args.eval_prompts, args.seed + 1000)]
    random.Random(args.seed).shuffle(eval_prompts)
    results = {"sft": {**measure(sft_model, sft_model, eval_prompts, args), "beta": None}}
    for beta in [float(b) for b in args.betas.split(",")]:
        out = work / f"dpo-beta{beta}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = dpo_train(
            load_config(
                DPOConfig,
                overrides=[
                    f"model={sft_model}", f"train_data={pairs_file}", f"output_dir={out}",
                    f"epochs={args.dpo_epochs}", "batch_size=16", f"learning_rate={args.dpo_lr}",
                    "warmup_ratio=0.1", f"dpo.beta={beta}", "logging_steps=20",
                    "progress=false", f"seed={args.seed}", "dtype=float32",
                ],
            )
        )  # fmt: skip
        seconds = time.perf_counter() - started
        results[f"dpo beta={beta}"] = {
            **measure(out / "model", sft_model, eval_prompts, args),
            "beta": beta,
            "dpo_train_loss": summary["train_loss"],
            "dpo_steps": summary["steps"],
            "dpo_seconds": seconds,
        }

    print("\n| policy | gold reward (mean ± sem) | KL to SFT (nats/seq) | response tokens |")
    print("|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {row['gold_reward']:.3f} ± {row['gold_reward_sem']:.3f} | "
            f"{row['kl_to_sft']:.2f} | {row['mean_response_tokens']:.1f} |"
        )
    print(f"\ntimings: {json.dumps(timings)}")
    (work / "world_dpo.json").write_text(
        json.dumps({"args": vars(args), "timings": timings, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
