"""Reward-model training speed: rlhfkit's `rm` recipe against TRL's RewardTrainer.

Same model (`init-model` preset `small`, ~30 M parameters, Llama), same data (512 pairs: prompt
32 tokens, chosen and rejected responses 64 tokens each, EOS included, byte tokenizer), batch 8
pairs, 1 epoch, fp32, AdamW lr 1e-5, no gradient checkpointing, dropout off, 2 threads. Each side
runs in its own subprocess (see `harness.py`), alternating rlhfkit, trl, rlhfkit, trl, ...

Tokens are counted the same way on both sides: pairs trained × (32 + 64) × 2, i.e. the tokens of
the two sequences `prompt + chosen` and `prompt + rejected` per pair (rlhfkit encodes the shared
prompt once; the work it saves that way is part of what is measured). Each side times only its
training loop: rlhfkit's `train_seconds` (the loop, checkpoint writing excluded), TRL's time
between the `on_train_begin` and `on_train_end` callbacks.

Run (TRL from the optional `bench` extra: `pip install -e ".[bench]"`)::

    .venv/bin/python benchmarks/bench_rm.py --rounds 3
    .venv/bin/python benchmarks/bench_rm.py --python trl=.venv-bench/bin/python   # TRL elsewhere

Options: `--pairs`, `--prompt-tokens`, `--response-tokens`, `--batch-size`, `--preset`,
`--workdir` (model and data cache, default `$TMPDIR/rlhfkit-bench`), plus the harness's options.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import SideResult, bench_main  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz "


def add_args(parser) -> None:
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument(
        "--workdir", default=str(Path(tempfile.gettempdir()) / "rlhfkit-bench"), help="cache"
    )


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def prepare(args) -> tuple[Path, Path]:
    """Write the model and the data once (both sides read the same files)."""
    work = Path(args.workdir)
    model_dir = work / f"model-{args.preset}"
    data = work / f"pairs-{args.pairs}-{args.prompt_tokens}-{args.response_tokens}.jsonl"
    if not (model_dir / "config.json").is_file():
        from rlhfkit.models.presets import build_preset

        model, tokenizer = build_preset(args.preset, seed=0)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    if not data.is_file():
        rng = random.Random(0)
        rows = []
        for _ in range(args.pairs):
            # Byte tokenizer: one token per ASCII character; the EOS makes the 64th response token.
            rows.append(
                {
                    "prompt": _text(rng, args.prompt_tokens),
                    "chosen": _text(rng, args.response_tokens - 1),
                    "rejected": _text(rng, args.response_tokens - 1),
                }
            )
        work.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def _tokens_per_pair(args) -> int:
    return 2 * (args.prompt_tokens + args.response_tokens)


def run_rlhfkit(args) -> SideResult:
    from rlhfkit.config import load_config
    from rlhfkit.recipes.rm import RMConfig, train

    model_dir, data = prepare(args)
    with tempfile.TemporaryDirectory() as out:
        config = load_config(
            RMConfig,
            overrides=[
                f"model={model_dir}",
                f"train_data={data}",
                f"output_dir={out}",
                f"batch_size={args.batch_size}",
                f"learning_rate={args.learning_rate}",
                "dtype=float32",
                "epochs=1",
                "progress=false",
                "logging_steps=100000",
                "rm.normalize=false",
                "lr_scheduler=linear",
                f"max_length={args.prompt_tokens + args.response_tokens}",
                f"max_prompt_length={args.prompt_tokens}",
            ],
        )
        summary = train(config)
    pairs = summary["steps"] * args.batch_size
    return SideResult(
        tokens=pairs * _tokens_per_pair(args),
        seconds=summary["train_seconds"],
        extra={"train_loss": summary["train_loss"], "model_tokens": summary["train_tokens"]},
    )


def run_trl(args) -> SideResult:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    model_dir, data = prepare(args)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    eos = tokenizer.eos_token_id

    def ids(prompt: str, response: str) -> list[int]:
        return tokenizer(prompt, add_special_tokens=False).input_ids + (
            tokenizer(response, add_special_tokens=False).input_ids + [eos]
        )

    dataset = Dataset.from_list(
        [
            {
                "chosen_ids": ids(r["prompt"], r["chosen"]),
                "rejected_ids": ids(r["prompt"], r["rejected"]),
            }
            for r in rows
        ]
    )
    expected = args.prompt_tokens + args.response_tokens
    assert all(len(x) == expected for x in dataset["chosen_ids"]), "token count mismatch"

    class Timer(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, *a, **k):
            Timer.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            Timer.end = time.perf_counter()

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype="float32"
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as out:
        config = RewardConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,
            learning_rate=args.learning_rate,
            lr_scheduler_type="linear",
            gradient_checkpointing=False,
            bf16=False,
            fp16=False,
            use_cpu=True,
            logging_steps=100000,
            save_strategy="no",
            report_to=[],
            max_length=expected,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        trainer = RewardTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        result = trainer.train()
    pairs = result.global_step * args.batch_size
    return SideResult(
        tokens=pairs * _tokens_per_pair(args),
        seconds=Timer.end - Timer.start,
        extra={"train_loss": result.training_loss},
    )


if __name__ == "__main__":
    bench_main(
        {"rlhfkit": run_rlhfkit, "trl": run_trl},
        reference="trl",
        description="reward model training: rlhfkit rm vs TRL RewardTrainer",
        add_args=add_args,
    )
