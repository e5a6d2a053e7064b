"""PPO throughput and peak memory: rlhfkit against TRL 1.12's PPOTrainer (`trl.experimental.ppo`,
the last TRL release with one), on a CPU.

Same models on both sides: `rlhfkit init-model --preset small` (~30 M parameters, fp32) as the
policy and its frozen reference, and a reward model built from the same preset (a scalar head,
saved so that `AutoModelForSequenceClassification` loads it), which also initialises the critic
(a separate value model on both sides). Per PPO step: `--prompts` prompts of `--prompt-tokens`
tokens (byte tokenizer: random lowercase text, all the same length, so no padding on either
side), `--new-tokens` sampled tokens (temperature 1; a random model almost never emits EOS),
4 PPO epochs over one minibatch, k1 KL penalty 0.05, 2 threads. Each side runs in its own
subprocess, alternating (`benchmarks/harness.py`), and medians are printed.

What is timed (the same on both sides): whole PPO steps after a first warm-up step (sampling,
scoring, reference and value passes, advantages, the PPO epochs); not imports or model loading.
samples/s = sampled responses per second. The generation share is the time inside the sampler
(rlhfkit: `rollout/fast_sampling.py`; TRL: `batch_generation`, i.e. `model.generate`) over the
step time.

Usage (TRL lives in its own venv; see docs/ppo.md)::

    .venv/bin/python benchmarks/bench_ppo.py --python trl=.venv-bench-ppo/bin/python
    .venv/bin/python benchmarks/bench_ppo.py --rounds 2 --steps 3 --python trl=...
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Side,
    SideResult,
    emit_result,
    format_round_ratios,
    format_table,
    run_alternating,
    scratch_dir,
    set_threads,
    summarise,
    thread_env,
)

ROOT = Path(__file__).resolve().parents[1]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=8, help="prompts per PPO step")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64, help="sampled tokens per response")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed PPO steps (after 1 warm-up)")
    parser.add_argument("--preset", default="small", help="rlhfkit init-model preset")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench-ppo"))


# --- shared setup: written by the parent (rlhfkit's venv) before any child starts -------------


def prompts(args) -> list[str]:
    rng = random.Random(0)
    total = args.prompts * (args.steps + 1)
    return [
        "".join(rng.choice(LETTERS + " ") for _ in range(args.prompt_tokens)) for _ in range(total)
    ]


def prepare(args) -> None:
    """Policy dir, reward-model dir, prompt file under --workdir (idempotent)."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.presets import build_preset
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    work = Path(args.workdir)
    policy = work / f"policy-{args.preset}"
    if not (policy / "config.json").is_file():
        model, tokenizer = build_preset(args.preset, seed=0)
        tmp = work / f".tmp-policy-{os.getpid()}"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(policy, ignore_errors=True)
        os.replace(tmp, policy)
    reward = work / f"reward-{args.preset}"
    if not (reward / "config.json").is_file():
        save_reward_model(
            build_reward_model(str(policy), seed=1), load_tokenizer(str(policy)), reward
        )
    tokenizer = load_tokenizer(str(policy))
    texts = prompts(args)
    assert all(len(tokenizer(t).input_ids) == args.prompt_tokens for t in texts)
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))


def _paths(args) -> tuple[Path, Path, Path]:
    work = Path(args.workdir)
    return work / f"policy-{args.preset}", work / f"reward-{args.preset}", work / "prompts.jsonl"


# --- sides -----------------------------------------------------------------------------------


def run_rlhfkit(args) -> SideResult:
    from rlhfkit.config import load_config
    from rlhfkit.recipes.ppo import PPOConfig, train

    policy, reward, prompt_file = _paths(args)
    out = scratch_dir("bench-ppo-rlhfkit-")
    config = load_config(
        PPOConfig,
        overrides=[
            f"model={policy}",
            f"train_data={prompt_file}",
            f"output_dir={out}",
            f"ppo.reward_model={reward}",
            f"max_steps={args.steps + 1}",
            f"max_new_tokens={args.new_tokens}",
            f"ppo.rollout_batch_size={args.prompts}",
            f"ppo.ppo_epochs={args.ppo_epochs}",
            "ppo.num_minibatches=1",
            "ppo.kl_coef=0.05",
            "ppo.sample_every=0",
            "dtype=float32",
            "learning_rate=3e-6",
            f"batch_size={args.prompts}",
            "max_prompt_length=512",
            "progress=false",
        ],
    )
    train(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r.get("step", 0) >= 2 and "samples_per_s" in r]
    per_step = [args.prompts / r["samples_per_s"] for r in timed]
    generation = [s * r["generation_share"] for s, r in zip(per_step, timed, strict=True)]
    update = sum(r["update_s"] for r in timed)  # the PPO epochs: the same matmuls as TRL's
    shutil.rmtree(out, ignore_errors=True)
    return SideResult(
        tokens=args.prompts * len(timed),
        seconds=sum(per_step),
        extra={
            "generation_share": sum(generation) / sum(per_step),
            "update_share": update / sum(per_step),
            "response_length": statistics.mean(r["response_length"] for r in timed),
        },
    )


def run_trl(args) -> SideResult:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo_module

    policy, reward, prompt_file = _paths(args)
    os.environ["HF_DATASETS_CACHE"] = str(scratch_dir("bench-ppo-datasets-"))
    timings = {"generation": [], "step_ends": []}
    original_generation = trl_ppo_module.batch_generation

    def timed_generation(*a, **kw):
        started = time.perf_counter()
        try:
            return original_generation(*a, **kw)
        finally:
            timings["generation"].append(time.perf_counter() - started)

    trl_ppo_module.batch_generation = timed_generation

    class StepClock(TrainerCallback):
        def on_step_end(self, *_a, **_kw):
            timings["step_ends"].append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(policy)
    tokenizer.padding_side = "left"
    texts = [json.loads(line)["prompt"] for line in prompt_file.read_text().splitlines()]
    dataset = Dataset.from_list([{"input_ids": tokenizer(t).input_ids} for t in texts])
    out = str(scratch_dir("bench-ppo-trl-"))
    config = PPOConfig(
        output_dir=out,
        per_device_train_batch_size=args.prompts,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        local_rollout_forward_batch_size=args.prompts,
        num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.prompts * (args.steps + 1),
        response_length=args.new_tokens,
        stop_token="eos",
        temperature=1.0,
        kl_coef=0.05,
        learning_rate=3e-6,
        num_sample_generations=0,
        bf16=False,
        fp16=False,
        use_cpu=True,
        save_strategy="no",
        logging_steps=1_000_000,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    dtype = {"dtype": torch.float32}
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(policy, **dtype),
        ref_model=AutoModelForCausalLM.from_pretrained(policy, **dtype),
        reward_model=AutoModelForSequenceClassification.from_pretrained(reward, **dtype),
        value_model=AutoModelForSequenceClassification.from_pretrained(reward, **dtype),
        train_dataset=dataset,
        callbacks=[StepClock()],
    )
    trainer.train()
    ends = timings["step_ends"]
    seconds = ends[-1] - ends[0]  # steps 2..N: the first step is the warm-up
    shutil.rmtree(out, ignore_errors=True)
    return SideResult(
        tokens=args.prompts * (len(ends) - 1),
        seconds=seconds,
        extra={"generation_share": sum(timings["generation"][1:]) / seconds},
    )


SIDES = {"rlhfkit": run_rlhfkit, "trl": run_trl}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PPO (fp32, CPU): rlhfkit vs TRL 1.12 PPOTrainer")
    parser.add_argument("--side", default=None, help="(internal) run one side in this process")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A B alternation")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads per side")
    parser.add_argument("--sides", default="rlhfkit,trl")
    parser.add_argument("--python", action="append", default=[], metavar="SIDE=PATH")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
    parser.add_argument("--json", default="", help="write measurements and medians here")
    add_args(parser)
    args = parser.parse_args(argv)

    if args.side is not None:
        set_threads(args.threads)
        emit_result(SIDES[args.side](args))
        return

    prepare(args)
    interpreters = dict(item.split("=", 1) for item in args.python)
    own = [
        f"--{key.replace('_', '-')}={getattr(args, key)}"
        for key in (
            "prompts",
            "prompt_tokens",
            "new_tokens",
            "ppo_epochs",
            "steps",
            "preset",
            "workdir",
        )
    ]
    sides = [
        Side(
            name,
            [
                interpreters.get(name, sys.executable),
                str(Path(__file__).resolve()),
                "--side",
                name,
                "--threads",
                str(args.threads),
                *own,
            ],
            thread_env(args.threads),
        )
        for name in args.sides.split(",")
    ]
    measurements = run_alternating(sides, rounds=args.rounds, timeout=args.timeout)
    summary = summarise(measurements)
    print(
        f"\nPPO steps: {args.prompts} prompts x {args.prompt_tokens} tokens, {args.new_tokens} "
        f"sampled tokens, {args.ppo_epochs} PPO epochs, fp32, {args.threads} threads, "
        f"preset {args.preset}; 'tokens/s' below = samples/s\n"
    )
    print(format_table(summary, reference="trl" if "trl" in summary else None))
    if "trl" in summary:
        print("\n" + format_round_ratios(measurements, "trl"))
    print("\n| side | samples/s (median) | generation share (median) |\n|---|---|---|")
    for name, row in summary.items():
        share = statistics.median(
            m.extra["generation_share"] for m in measurements if m.side == name
        )
        print(f"| {name} | {row['tokens_per_s']:.3f} | {share:.2f} |")
    if "trl" in summary and "rlhfkit" in summary:
        ratio = summary["rlhfkit"]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
        print(f"\nrlhfkit / trl samples/s: {ratio:.2f}x")
        # The PPO epochs (forward and backward of policy and critic over the whole batch, 4
        # times) cost the same matmuls on both sides: a step cannot take less than they do.
        update = statistics.median(
            m.extra["update_share"] for m in measurements if m.side == "rlhfkit"
        )
        bound = ratio / update
        print(
            f"rlhfkit's PPO epochs: {update:.2f} of its step; were sampling, scoring and the "
            f"no-gradient forwards free, the ratio would be at most {bound:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"summary": summary, "measurements": [m.__dict__ for m in measurements]}, indent=2
            )
        )


if __name__ == "__main__":
    main()
