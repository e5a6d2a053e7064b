"""Where a DPO step's time goes on a GPU: rlhfkit's DPO under `torch.profiler`.

Same model, data and settings as `gpu_dpo.py` (qwen2-0.5b preset, bf16, prompt 128 / responses
384, batch 8 pairs), a few steps over as many pairs. Only `--active` optimizer steps after
`--skip` are recorded (the profiler's processing of a long trace is slow: a whole 8-step run
did not finish in 120 s on an H200). Prints the recorded steps' wall time, the time the GPU
spent in kernels (busy share = kernel time / wall time: far below 1 means the host, not the
GPU, sets the pace), and the operators that take the most GPU time and the most host time.

Usage::

    python3 benchmarks/gpu_profile_dpo.py --max-steps 8
    .venv/bin/python benchmarks/gpu_profile_dpo.py --dry-run     # CPU, tiny preset
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dpo  # noqa: E402
import gpu_dpo  # noqa: E402
from harness import scratch_dir  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    gpu_dpo.add_args(parser)
    parser.add_argument("--rows", type=int, default=18, help="operators listed per table")
    parser.add_argument("--skip", type=int, default=2, help="optimizer steps before recording")
    parser.add_argument("--active", type=int, default=2, help="optimizer steps recorded")
    parser.add_argument("--extra", action="append", default=[], help="more key=value overrides")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.preset, args.pairs, args.prompt_tokens, args.response_tokens = "tiny", 16, 16, 16
        args.device, args.dtype, args.max_steps = "cpu", "float32", 2
    if args.max_steps <= 0:
        args.max_steps = 8
    args.max_steps = max(args.max_steps, args.skip + 1 + args.active)
    # A short run: the profiler's own processing of a long trace takes minutes on a GPU.
    args.pairs = min(args.pairs, args.max_steps * args.batch_size)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from rlhfkit.config import load_config
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.recipes.dpo import DPOConfig, train

    model = bench_dpo.ensure_model(args)
    data = scratch_dir("profile-dpo-") / "pairs.jsonl"
    write_jsonl(data, bench_dpo.make_records(args))
    config = load_config(
        DPOConfig,
        overrides=[
            f"model={model}", f"train_data={data}", f"output_dir={data.parent / 'out'}",
            f"batch_size={args.batch_size}", f"max_steps={args.max_steps}", "learning_rate=5e-7",
            f"max_length={args.prompt_tokens + args.response_tokens}",
            f"max_prompt_length={args.prompt_tokens}", "logging_steps=1000000", "progress=false",
            f"dtype={args.dtype}", *args.extra,
        ],
    )  # fmt: skip
    activities = [ProfilerActivity.CPU]
    cuda = torch.cuda.is_available() and args.device == "cuda"
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    # Record only `--active` optimizer steps after `--skip` (the reference pass, the first steps
    # and their allocations left out): a short trace, which the profiler processes in seconds.
    # The optimizer-step hook advances the schedule, so train() itself is unchanged.
    from torch.optim.optimizer import register_optimizer_step_post_hook

    schedule = torch.profiler.schedule(wait=args.skip, warmup=1, active=args.active, repeat=1)
    ticks: list[float] = []  # when each optimizer step ended

    def tick(*_) -> None:
        if cuda:
            torch.cuda.synchronize()
        ticks.append(time.perf_counter())
        prof.step()

    started = time.perf_counter()
    with profile(activities=activities, schedule=schedule) as prof:
        handle = register_optimizer_step_post_hook(tick)
        try:
            train(config)
        finally:
            handle.remove()
    wall = time.perf_counter() - started
    # Profiler step k runs from the k-th tick to the next (step 0 from the start): the recorded
    # steps are those after the skipped and the warm-up ones.
    first = args.skip + 1
    window = ticks[first + args.active - 1] - ticks[first - 1]
    events = prof.key_averages()
    device_key = "self_device_time_total"
    kernel_us = sum(getattr(e, device_key, 0.0) for e in events) if cuda else 0.0
    print(
        f"\nrlhfkit DPO, {args.max_steps} steps of {args.batch_size} pairs "
        f"({args.preset}, {args.dtype}, {args.device}); overrides: {args.extra or 'none'}"
    )
    steps = f"{first + 1}-{first + args.active}"
    print(f"train() wall under the profiler: {wall:.1f} s; recorded: optimizer steps {steps}, "
          f"{window:.2f} s (profiler overhead included)")  # fmt: skip
    if cuda:
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
        print(f"GPU kernel time: {kernel_us / 1e6:.2f} s = {kernel_us / 1e6 / window:.0%} of the "
              f"recorded steps; peak GPU memory {peak_gib:.1f} GiB")  # fmt: skip
        print("\nTop operators by GPU time:")
        print(events.table(sort_by=device_key, row_limit=args.rows, max_name_column_width=60))
    print("\nTop operators by host (CPU) time:")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows,
                       max_name_column_width=60))  # fmt: skip


if __name__ == "__main__":
    main()
