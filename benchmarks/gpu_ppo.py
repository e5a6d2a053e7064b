"""PPO on one GPU: samples/s, generated tokens/s, and generation speed against bare `generate`.

The `qwen2-0.5b` preset (Qwen2-0.5B's exact shape, random weights) in bf16 as policy and
reference, and a reward model of the same shape (critic initialised from it). Per PPO step:
`--prompts` prompts of `--prompt-tokens` tokens, `--new-tokens` sampled tokens (a random model
almost never emits EOS, so every response has the full length), 4 PPO epochs over 4 minibatches.

Rows printed:

* ``ppo step``: samples/s over whole PPO steps after one warm-up step, and the share of step
  time spent sampling;
* ``rollout sampling``: generated tokens/s inside PPO's sampler (`rollout/fast_sampling.py`);
* ``bare generate``: `model.generate(do_sample=True, top_k=0)` on the same batch of prompts,
  same new-token count, same model (after a warm-up call): generated tokens/s;
* ``lean sampler alone``: `sample_with_logprobs` on the same model and batch as bare generate,
  checking for "every row ended" at every step or every 8 (the GPU default), and with PPO's
  per-row Gumbel-max noise (`RowNoise`): isolates the loop from the rest of a PPO step;
* ratio = rollout sampling tokens/s / bare generate tokens/s (goal: >= 0.8; above 1 means the
  lean loop is faster than `generate`).

Usage (from `benchmarks/gpu.sh`)::

    .venv/bin/python benchmarks/gpu_ppo.py
    .venv/bin/python benchmarks/gpu_ppo.py --dry-run    # CPU, tiny preset: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import scratch_dir  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="qwen2-0.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed PPO steps (after 1 warm-up)")
    parser.add_argument("--generate-repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "gpu-ppo"))
    parser.add_argument("--json", default="")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, few tokens")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.preset, args.dtype, args.prompts, args.new_tokens, args.steps = (
            "tiny", "float32", 4, 8, 1,
        )  # fmt: skip
        args.generate_repeats = 1
    return args


def prepare(args) -> tuple[Path, Path, Path]:
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.presets import build_preset
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    work = Path(args.workdir)
    policy, reward = work / f"policy-{args.preset}", work / f"reward-{args.preset}"
    if not (policy / "config.json").is_file():
        model, tokenizer = build_preset(args.preset, seed=0)
        tmp = work / f".tmp-policy-{os.getpid()}"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(policy, ignore_errors=True)
        os.replace(tmp, policy)
    if not (reward / "config.json").is_file():
        save_reward_model(
            build_reward_model(str(policy), seed=1, dtype="float32"),
            load_tokenizer(str(policy)),
            reward,
        )
    rng = random.Random(0)
    texts = [
        "".join(rng.choice(LETTERS + " ") for _ in range(args.prompt_tokens))
        for _ in range(args.prompts * (args.steps + 1))
    ]
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return policy, reward, prompts


def ppo_rows(args, policy: Path, reward: Path, prompts: Path) -> dict:
    from rlhfkit.config import load_config
    from rlhfkit.recipes.ppo import PPOConfig, train

    out = scratch_dir("gpu-ppo-")
    config = load_config(
        PPOConfig,
        overrides=[
            f"model={policy}", f"train_data={prompts}", f"output_dir={out}",
            f"ppo.reward_model={reward}", f"max_steps={args.steps + 1}",
            f"max_new_tokens={args.new_tokens}", f"ppo.rollout_batch_size={args.prompts}",
            "ppo.ppo_epochs=4", "ppo.num_minibatches=4", "ppo.sample_every=0",
            f"dtype={args.dtype}", "learning_rate=1e-6", f"batch_size={args.prompts}",
            "max_prompt_length=1024", "progress=false",
        ],
    )  # fmt: skip
    train(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r.get("step", 0) >= 2 and "samples_per_s" in r]
    step_seconds = [args.prompts / r["samples_per_s"] for r in timed]
    generation_seconds = [
        s * r["generation_share"] for s, r in zip(step_seconds, timed, strict=True)
    ]
    tokens = [r["response_length"] * args.prompts for r in timed]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "samples_per_s": args.prompts * len(timed) / sum(step_seconds),
        "generation_share": sum(generation_seconds) / sum(step_seconds),
        "rollout_tokens_per_s": sum(tokens) / sum(generation_seconds),
        "response_length": statistics.mean(r["response_length"] for r in timed),
    }


@torch.no_grad()
def bare_generate(args, policy: Path, prompts: Path) -> dict:
    from rlhfkit.data.collate import pad_left
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(str(policy))
    model = load_causal_lm(str(policy), dtype=args.dtype, trainable=False).to(device)
    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    ids = [tokenizer(t).input_ids for t in texts[: args.prompts]]
    query = pad_left(ids, tokenizer.pad_token_id).to(device)
    mask = pad_left([[1] * len(i) for i in ids], 0).to(device)

    def once() -> tuple[int, float]:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(
            input_ids=query, attention_mask=mask, max_new_tokens=args.new_tokens,
            do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()
        new = out[:, query.shape[1] :]
        return int((new != tokenizer.pad_token_id).sum()), time.perf_counter() - started

    def lean(check_every: int, row_noise: bool = False) -> tuple[int, float]:
        from rlhfkit.rollout.fast_sampling import RowNoise, sample_with_logprobs

        noise = RowNoise(0, 0, query.shape[0]) if row_noise else None

        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        rollout = sample_with_logprobs(
            model, query, mask, max_new_tokens=args.new_tokens, eos_ids=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id, check_every=check_every, row_noise=noise,
        )  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()
        return int(rollout.response_mask.sum()), time.perf_counter() - started

    result = {}
    for name, call in (
        ("generate_tokens_per_s", once),
        ("lean_check1_tokens_per_s", lambda: lean(1)),
        ("lean_check8_tokens_per_s", lambda: lean(8)),
        ("lean_check8_row_noise_tokens_per_s", lambda: lean(8, row_noise=True)),
    ):
        call()  # warm-up
        runs = [call() for _ in range(args.generate_repeats)]
        result[name] = statistics.median(t / s for t, s in runs)
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    policy, reward, prompts = prepare(args)
    result = {**ppo_rows(args, policy, reward, prompts), **bare_generate(args, policy, prompts)}
    result["generation_ratio"] = result["rollout_tokens_per_s"] / result["generate_tokens_per_s"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"\nPPO ({args.preset}, {args.dtype}, {device}): {args.prompts} prompts x "
        f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, 4 epochs x 4 minibatches\n"
    )
    print("| row | samples/s | generated tokens/s | generation share | ratio to generate |")
    print("|---|---|---|---|---|")
    print(f"| ppo step | {result['samples_per_s']:.2f} | | {result['generation_share']:.2f} | |")
    print(
        f"| rollout sampling | | {result['rollout_tokens_per_s']:,.0f} | | "
        f"{result['generation_ratio']:.2f}x |"
    )
    print(f"| bare generate | | {result['generate_tokens_per_s']:,.0f} | | 1.00x |")
    for key, label in (
        ("lean_check1", "lean sampler alone, end checked every step"),
        ("lean_check8", "lean sampler alone, end checked every 8 steps"),
        ("lean_check8_row_noise", "lean sampler alone, every 8 steps, PPO's row noise"),
    ):
        value = result[f"{key}_tokens_per_s"]
        ratio = value / result["generate_tokens_per_s"]
        print(f"| {label} | | {value:,.0f} | | {ratio:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
