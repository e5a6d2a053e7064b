"""PPO in the embedded world: does PPO against a reward model trained on the simulated annotators'
preferences raise the policy's *gold* reward, at what KL; and without the KL penalty, does the
proxy reward keep rising while the gold reward falls (reward hacking)?

Pipeline (CPU, tiny preset):

1. SFT on `rlhfkit.synthetic.sft_corpus(...)` (or `--sft DIR`, an existing SFT model dir);
2. the SFT policy samples two responses per training prompt; the five default simulated
   annotators label each pair (`label_pairs`); `rlhfkit rm` trains a reward model from the SFT
   model on them (or `--reward gold`: PPO against the gold reward itself, no reward model);
3. `rlhfkit ppo` from the SFT model against that reward, KL coefficient `--kl-coef`; the gold
   reward is logged beside it (`ppo.gold_reward`), and held-out prompts (`eval_data`) give the
   gold reward and KL before and after;
4. optionally (`--hack-steps N`), PPO with `ppo.kl_coef=0` for N steps: the per-step proxy
   (reward-model) score and gold reward are printed side by side.

Usage::

    .venv/bin/python benchmarks/world_ppo.py --workdir runs/world-ppo --steps 60 --hack-steps 150

Prints the numbers and writes `WORKDIR/world_ppo.json`. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from rlhfkit.config import load_config
from rlhfkit.data.io import write_jsonl
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.presets import build_preset
from rlhfkit.recipes.ppo import PPOConfig
from rlhfkit.recipes.ppo import train as ppo_train
from rlhfkit.recipes.rm import RMConfig
from rlhfkit.recipes.rm import train as rm_train
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.recipes.sft import train as sft_train
from rlhfkit.rollout.sampling import SamplingParams, sample_responses
from rlhfkit.synthetic import default_annotators, label_pairs, make_prompts, sft_corpus

ROOT = Path(__file__).resolve().parents[1]
GOLD = "python:rlhfkit.synthetic.gold:gold_rewards"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "world-ppo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft", default="", help="existing SFT model dir (skips SFT)")
    parser.add_argument("--sft-records", type=int, default=4000)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--reward", default="rm", help="rm (train one) or gold")
    parser.add_argument("--rm-prompts", type=int, default=1024, help="prompts labelled for the RM")
    parser.add_argument("--rm-epochs", type=float, default=2.0)
    parser.add_argument("--rm-lr", type=float, default=1e-3)
    parser.add_argument("--train-prompts", type=int, default=512)
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="PPO steps of the main run")
    parser.add_argument("--rollout-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--hack-steps", type=int, default=0, help="steps of the kl_coef=0 run")
    parser.add_argument("--hack-lr", type=float, default=2e-4)
    parser.add_argument("--skip-main", action="store_true", help="only the kl_coef=0 run")
    return parser.parse_args(argv)


def _write(path: Path, rows: list[dict]) -> Path:
    write_jsonl(path, rows)
    return path


def _timed(timings: dict, key: str, fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    timings[key] = round(time.perf_counter() - started, 1)
    return result


def make_sft(work: Path, args, timings: dict) -> Path:
    if args.sft:
        return Path(args.sft)
    base = work / "tiny"
    if not (base / "config.json").is_file():
        model, tokenizer = build_preset("tiny", seed=args.seed)
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
    out = work / "sft"
    if not (out / "model" / "config.json").is_file():
        corpus = work / "sft.jsonl"
        write_jsonl(corpus, sft_corpus(args.sft_records, args.seed, cai_fraction=0.0))
        config = load_config(
            SFTConfig,
            overrides=[
                f"model={base}", f"train_data={corpus}", f"output_dir={out}",
                f"max_steps={args.sft_steps}", "batch_size=32", f"learning_rate={args.sft_lr}",
                "max_length=96", "warmup_ratio=0.05", "progress=false", "dtype=float32",
            ],
        )  # fmt: skip
        _timed(timings, "sft_seconds", sft_train, config)
    return out / "model"


def make_reward_model(work: Path, sft: Path, args, timings: dict) -> Path:
    out = work / "rm"
    if (out / "model" / "config.json").is_file():
        return out / "model"
    started = time.perf_counter()
    tokenizer = load_tokenizer(str(sft))
    model = load_causal_lm(str(sft), dtype="float32", trainable=False)
    prompts = [p.text for p in make_prompts(args.rm_prompts, args.seed + 101)]
    samples = sample_responses(
        model,
        [encode_prompt(tokenizer, p) for p in prompts],
        SamplingParams(args.max_new_tokens, 1.0, 1.0),
        pad_id=tokenizer.pad_token_id,
        eos_ids=tokenizer.eos_token_id,
        num_samples=2,
        batch_size=64,
        seed=args.seed + 3,
    )
    records = [{"prompt": p, "responses": []} for p in prompts]
    for i, ids in zip(samples.prompt_index, samples.response_ids, strict=True):
        records[i]["responses"].append(tokenizer.decode(ids, skip_special_tokens=True))
    # An empty response (EOS first) is not valid preference data; such prompts are dropped.
    kept = [r for r in records if all(text.strip() for text in r["responses"])]
    timings["pairs_dropped_empty"] = len(records) - len(kept)
    labelled = label_pairs(kept, default_annotators(), args.seed + 5)
    pairs = _write(work / "pairs.jsonl", labelled.records)
    timings["pairs_seconds"] = round(time.perf_counter() - started, 1)
    timings["pairs"] = len(labelled.records)
    config = load_config(
        RMConfig,
        overrides=[
            f"model={sft}", f"train_data={pairs}", f"output_dir={out}",
            f"epochs={args.rm_epochs}", "batch_size=16", f"learning_rate={args.rm_lr}",
            "warmup_ratio=0.05", "progress=false", "dtype=float32",
        ],
    )  # fmt: skip
    summary = _timed(timings, "rm_seconds", rm_train, config)
    timings["rm_summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    return out / "model"


def run_ppo(work, name, sft, reward, prompts_file, eval_file, args, *, steps, kl_coef, lr):
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(
        PPOConfig,
        overrides=[
            f"model={sft}", f"train_data={prompts_file}", f"eval_data={eval_file}",
            f"output_dir={out}", f"ppo.reward_model={reward}", f"ppo.gold_reward={GOLD}",
            f"max_steps={steps}", f"max_new_tokens={args.max_new_tokens}",
            f"ppo.rollout_batch_size={args.rollout_batch_size}", "ppo.num_minibatches=2",
            "ppo.ppo_epochs=4", f"ppo.kl_coef={kl_coef}", f"learning_rate={lr}",
            "ppo.missing_eos_penalty=-1", "ppo.sample_every=10", "batch_size=64",
            "progress=false", f"seed={args.seed}", "dtype=float32",
        ],
    )  # fmt: skip
    started = time.perf_counter()
    summary = ppo_train(config)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "score_mean" in r]
    return summary, steps_rows, seconds


def _window(rows, key, first: bool, size: int = 5) -> float:
    chosen = rows[:size] if first else rows[-size:]
    return sum(r[key] for r in chosen) / len(chosen)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    sft = make_sft(work, args, timings)
    reward = GOLD if args.reward == "gold" else str(make_reward_model(work, sft, args, timings))
    prompts_file = _write(
        work / "prompts.jsonl",
        [{"prompt": p.text} for p in make_prompts(args.train_prompts, args.seed + 1)],
    )
    eval_file = _write(
        work / "eval_prompts.jsonl",
        [{"prompt": p.text} for p in make_prompts(args.eval_prompts, args.seed + 1000)],
    )
    results = {"reward": "gold reward (no reward model)" if args.reward == "gold" else reward}
    if not args.skip_main:
        results["ppo"] = main_run(work, sft, reward, prompts_file, eval_file, args)
    if args.hack_steps:
        results["ppo_kl0"] = hack_run(work, sft, reward, prompts_file, eval_file, args)
    results["timings"] = timings
    name = "world_ppo_kl0.json" if args.skip_main else "world_ppo.json"
    (work / name).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def main_run(work, sft, reward, prompts_file, eval_file, args) -> dict:
    summary, rows, seconds = run_ppo(
        work, "ppo", sft, reward, prompts_file, eval_file, args,
        steps=args.steps, kl_coef=args.kl_coef, lr=args.lr,
    )  # fmt: skip
    return {
        "kl_coef": args.kl_coef,
        "steps": args.steps,
        "seconds": round(seconds, 1),
        **{k: summary[k] for k in summary if k.startswith(("reward_", "gold_", "kl_"))},
        "train_proxy_first5": _window(rows, "score_mean", True),
        "train_proxy_last5": _window(rows, "score_mean", False),
        "train_gold_first5": _window(rows, "gold_reward_mean", True),
        "train_gold_last5": _window(rows, "gold_reward_mean", False),
    }


def hack_run(work, sft, reward, prompts_file, eval_file, args) -> dict:
    summary, rows, seconds = run_ppo(
        work, "ppo-kl0", sft, reward, prompts_file, eval_file, args,
        steps=args.hack_steps, kl_coef=0.0, lr=args.hack_lr,
    )  # fmt: skip
    every = max(1, len(rows) // 10)
    return {
        "steps": args.hack_steps,
        "lr": args.hack_lr,
        "seconds": round(seconds, 1),
        **{k: summary[k] for k in summary if k.startswith(("reward_", "gold_", "kl_"))},
        "trajectory": [
            {
                "step": r["step"],
                "proxy": round(r["score_mean"], 4),
                "gold": round(r["gold_reward_mean"], 4),
                "kl": round(r["kl"], 3),
            }
            for r in rows[::every] + rows[-1:]
        ],
    }


if __name__ == "__main__":
    main()
