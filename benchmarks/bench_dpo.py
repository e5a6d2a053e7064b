"""DPO training throughput and peak memory: rlhfkit against TRL's DPOTrainer, on a CPU.

Same model (`rlhfkit init-model --preset small`, ~30 M parameters, fp32), same data (random
lowercase text: `--pairs` pairs, a `--prompt-tokens` prompt and two `--response-tokens`
responses, byte tokenizer so text length = tokens), batch 8, sigmoid loss, beta 0.1, 2 threads.
Each side runs in its own subprocess, alternating (`benchmarks/harness.py`); medians are printed.

Sides:

* ``rlhfkit`` -- its defaults: reference log-probs precomputed in one pass by the policy itself
  before the first step (no second model in memory), length bucketing, chunked LM head.
* ``trl`` -- TRL's defaults: a frozen reference model beside the policy, reference log-probs
  computed on the fly at every step.
* ``trl-precompute`` -- TRL with ``precompute_ref_log_probs=True``.
* ``rlhfkit-onthefly`` -- (optional) rlhfkit with ``dpo.precompute_ref=false`` (frozen copy).
* ``rlhfkit-chunked`` -- (optional) rlhfkit with ``dpo.pairs_per_forward=2``: each batch of 8
  pairs in four forwards and backwards of 2 pairs (less activation memory, some speed).
* ``rlhfkit-gc`` -- (optional) rlhfkit with gradient checkpointing, which TRL's `DPOConfig`
  turns on by default (so memory is compared at equal settings).
* ``rlhfkit-stacked`` -- (optional) rlhfkit with ``dpo.shared_prompt=false``: chosen and
  rejected rows stacked, the prompt encoded twice as TRL does (what sharing the prompt gains).
* ``rlhfkit-compile``, ``rlhfkit-stacked-compile`` -- (optional) the same with ``compile=true``
  (each transformer block through `torch.compile`; meant for GPUs).

Rows compared: defaults (rlhfkit vs trl), and precomputed reference on both sides (rlhfkit vs
trl-precompute; rlhfkit's default *is* its precomputed mode, so it is the same measurement).

What is timed (the same on both sides): the reference precompute pass, if any, plus the
optimizer steps; not imports, model loading, tokenisation, evaluation or checkpoint writes.
Tokens = optimizer steps x batch x (2 x prompt + 2 x response), the same formula on both sides.
Each side also reports its steady speed (`StepClock`: the optimizer steps after the first
quarter, timed through torch's optimizer-step hook), which leaves warm-up and compilation out.

Usage::

    .venv/bin/python benchmarks/bench_dpo.py                       # the full benchmark
    .venv/bin/python benchmarks/bench_dpo.py --rounds 2 --max-steps 16
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SideResult, bench_main, format_table, scratch_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def add_args(parser) -> None:
    parser.add_argument("--pairs", type=int, default=512, help="preference pairs")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--response-tokens", type=int, default=64, help="per response, EOS incl.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=-1, help="-1 = one epoch")
    parser.add_argument("--preset", default="small", help="rlhfkit init-model preset")
    parser.add_argument(
        "--pairs-per-forward",
        type=int,
        default=None,
        help="rlhfkit's dpo.pairs_per_forward (default: rlhfkit's own default)",
    )
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench-dpo"))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


# --- shared setup (each child does it; results are deterministic and written atomically) ------


def _text(rng: random.Random, length: int) -> str:
    words, size = [], 0
    while size < length:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 8)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


def make_records(args) -> list[dict]:
    """Byte tokenizer: a prompt of N characters is N tokens; a response gets an EOS token."""
    rng = random.Random(0)
    body = args.response_tokens - 1
    return [
        {
            "prompt": _text(rng, args.prompt_tokens),
            "chosen": " " + _text(rng, body - 1),
            "rejected": " " + _text(rng, body - 1),
        }
        for _ in range(args.pairs)
    ]


def ensure_model(args) -> Path:
    path = Path(args.workdir) / f"model-{args.preset}"
    if not (path / "config.json").is_file():
        from rlhfkit.models.presets import build_preset

        model, tokenizer = build_preset(args.preset, seed=0)
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path


def _steps(args) -> int:
    return args.max_steps if args.max_steps > 0 else args.pairs // args.batch_size


def _tokens(args) -> int:
    return _steps(args) * args.batch_size * 2 * (args.prompt_tokens + args.response_tokens)


def _reset_gpu_peak(args) -> None:
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


class StepClock:
    """Time stamps of optimizer steps, through torch's global step hook (both libraries step a
    torch optimizer), so a side's steady speed can leave out its warm-up: the first steps,
    allocator growth, and compilation with `compile=true`. Only the first optimizer seen is
    timed (a wrapper that is itself an optimizer would tick twice per step)."""

    def __init__(self, args):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.cuda = args.device == "cuda"
        self.times: list[float] = []
        self._owner: int | None = None
        self._handle = register_optimizer_step_post_hook(self._tick)

    def _tick(self, optimizer, *_) -> None:
        if self._owner is None:
            self._owner = id(optimizer)
        if id(optimizer) != self._owner:
            return
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def steady(self, args) -> dict:
        """Tokens/s over the steps after the first quarter (at least one step skipped)."""
        self._handle.remove()
        skip = max(1, len(self.times) // 4)
        steps = len(self.times) - 1 - skip
        if steps < 1:
            return {}
        per_step = args.batch_size * 2 * (args.prompt_tokens + args.response_tokens)
        return {
            "steady_tokens_per_s": steps * per_step / (self.times[-1] - self.times[skip]),
            "steady_steps": steps,
        }


def _gpu_extra(args, model_dir) -> dict:
    """Peak GPU memory (since the timed work began) and the model's parameter count."""
    if args.device != "cuda":
        return {}
    import json as _json

    import torch

    config = _json.loads((Path(model_dir) / "config.json").read_text())
    return {
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
        "hidden_size": config["hidden_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "vocab_size": config["vocab_size"],
    }


# --- sides -----------------------------------------------------------------------------------


def _run_rlhfkit(args, precompute: bool, extra: tuple[str, ...] = ()) -> SideResult:
    from rlhfkit.config import load_config
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.recipes.dpo import DPOConfig, train

    model = ensure_model(args)
    work = Path(args.workdir)
    data = work / f"pairs-{args.pairs}-{args.prompt_tokens}-{args.response_tokens}.jsonl"
    write_jsonl(data, make_records(args))
    out = scratch_dir("bench-dpo-rlhfkit-")  # a fresh run: no cached reference log-probs
    chunking = []
    if args.pairs_per_forward is not None:
        chunking = [f"dpo.pairs_per_forward={args.pairs_per_forward}"]
    config = load_config(
        DPOConfig,
        overrides=[
            f"model={model}", f"train_data={data}", f"output_dir={out}", "dtype=float32",
            f"batch_size={args.batch_size}", f"max_steps={_steps(args)}", "learning_rate=5e-7",
            f"max_length={args.prompt_tokens + args.response_tokens}",
            f"max_prompt_length={args.prompt_tokens}", f"eval_batch_size={args.batch_size}",
            "logging_steps=1000000", "progress=false", f"dpo.precompute_ref={precompute}",
            f"dtype={args.dtype}", *chunking, *extra,
        ],
    )  # fmt: skip
    _reset_gpu_peak(args)
    clock = StepClock(args)
    summary = train(config)
    shutil.rmtree(out, ignore_errors=True)
    return SideResult(
        tokens=_tokens(args),
        seconds=summary["train_seconds"],
        extra={
            **clock.steady(args),
            "reference_in_steps": not precompute,
            "train_loss": summary["train_loss"],
            "reference_seconds": summary["reference_seconds"],
            "reference": summary["reference_logps"],
            **_gpu_extra(args, model),
        },
    )


def _run_trl(args, precompute: bool) -> SideResult:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model_dir = ensure_model(args)
    os.environ["HF_DATASETS_CACHE"] = str(scratch_dir("bench-dpo-datasets-"))
    timings = {"reference_seconds": 0.0}

    class TimedDPOTrainer(DPOTrainer):
        """Only adds a timer around TRL's reference precompute (which runs in __init__)."""

        def _precompute_ref_logps(self, *a, **kw):
            started = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*a, **kw)
            finally:
                timings["reference_seconds"] += time.perf_counter() - started

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = str(scratch_dir("bench-dpo-trl-"))
    config = DPOConfig(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=5e-7,
        max_steps=_steps(args),
        max_length=args.prompt_tokens + args.response_tokens,
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
        bf16=args.dtype == "bfloat16",
        fp16=False,
        use_cpu=args.device == "cpu",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1_000_000,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = TimedDPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(make_records(args)),
        processing_class=tokenizer,
    )
    _reset_gpu_peak(args)
    clock = StepClock(args)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started + timings["reference_seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return SideResult(
        tokens=_tokens(args),
        seconds=seconds,
        extra={
            **clock.steady(args),
            "reference_in_steps": not precompute,
            "train_loss": float(result.training_loss),
            "reference_seconds": timings["reference_seconds"],
            **_gpu_extra(args, model_dir),
        },
    )


SIDES = {
    "rlhfkit": lambda args: _run_rlhfkit(args, precompute=True),
    "trl": lambda args: _run_trl(args, precompute=False),
    "trl-precompute": lambda args: _run_trl(args, precompute=True),
    "rlhfkit-onthefly": lambda args: _run_rlhfkit(args, precompute=False),
    # TRL turns gradient checkpointing on by default; this row compares memory at equal settings.
    "rlhfkit-gc": lambda args: _run_rlhfkit(
        args, precompute=True, extra=("gradient_checkpointing=true",)
    ),
    "rlhfkit-stacked": lambda args: _run_rlhfkit(
        args, precompute=True, extra=("dpo.shared_prompt=false",)
    ),
    "rlhfkit-chunked": lambda args: _run_rlhfkit(
        args, precompute=True, extra=("dpo.pairs_per_forward=2",)
    ),
    "rlhfkit-compile": lambda args: _run_rlhfkit(args, precompute=True, extra=("compile=true",)),
    "rlhfkit-stacked-compile": lambda args: _run_rlhfkit(
        args, precompute=True, extra=("dpo.shared_prompt=false", "compile=true")
    ),
}
COMPARISONS = [
    ("defaults vs defaults", "rlhfkit", "trl"),
    ("precomputed reference on both sides", "rlhfkit", "trl-precompute"),
    ("reference on the fly on both sides", "rlhfkit-onthefly", "trl"),
]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--sides" not in " ".join(argv):
        argv += ["--sides", "rlhfkit,trl,trl-precompute"]
    summary = bench_main(
        SIDES,
        reference="trl",
        description="DPO training (sigmoid, fp32, CPU): rlhfkit vs TRL DPOTrainer",
        add_args=add_args,
        argv=argv,
        script=__file__,
    )
    if not summary:
        return
    for title, ours, theirs in COMPARISONS:
        if ours in summary and theirs in summary:
            print(f"\n{title}:\n")
            print(format_table({k: summary[k] for k in (ours, theirs)}, reference=theirs))


if __name__ == "__main__":
    main()
