"""DPO on one GPU: rlhfkit against TRL's DPOTrainer, tokens/s, peak GPU memory and MFU.

The sides of `bench_dpo.py` (same code, same timing rules), with GPU defaults: the `qwen2-0.5b`
preset (Qwen2-0.5B's exact shape, random weights, ~494 M parameters), bf16 weights, prompts of
128 tokens and responses of 384, batch 8 pairs, 512 pairs (one epoch = 64 steps).

MFU = model FLOPs per second / the GPU's bf16 matmul peak, measured here with a large matmul
(not the datasheet). Model FLOPs of one pair, counted the same way for both sides (the algorithm,
not the implementation): a reference forward plus a training forward and backward (1 + 3 = 4
forwards) over both rows, each forward costing per token ``2 N_body + 2 L d T`` (weights, causal
attention over a row of T tokens) plus ``2 d V`` for the LM head at completion tokens only.
rlhfkit's default shared-prompt rows encode each prompt once, so it executes fewer FLOPs than
this count (at 128 / 384, 896 of 1,024 tokens a pair): its MFU here is algorithmic FLOPs per
second, directly comparable with TRL's; ``--sides rlhfkit-stacked`` runs it with the prompt
encoded twice, where the count is exact.

Usage (from `benchmarks/gpu.sh`)::

    .venv/bin/python benchmarks/gpu_dpo.py --rounds 2
    .venv/bin/python benchmarks/gpu_dpo.py --dry-run     # CPU, tiny preset: checks the script
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dpo  # noqa: E402
from harness import bench_main  # noqa: E402

DRY_RUN = [
    "--preset", "tiny", "--pairs", "16", "--prompt-tokens", "16", "--response-tokens", "16",
    "--max-steps", "4", "--device", "cpu", "--dtype", "float32", "--rounds", "1",
]  # fmt: skip


def add_args(parser) -> None:
    bench_dpo.add_args(parser)
    parser.set_defaults(
        preset="qwen2-0.5b",
        prompt_tokens=128,
        response_tokens=384,
        dtype="bfloat16",
        device="cuda",
        workdir=str(bench_dpo.ROOT / "runs" / "gpu-dpo"),
    )


def body_params(config: dict) -> int:
    """Parameters of the transformer blocks (no embeddings, no LM head, norms ignored)."""
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_dim = config.get("num_key_value_heads", heads) * (d // heads)
    per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * config["intermediate_size"]
    return layers * per_layer


def flops_per_pair(config: dict, prompt_tokens: int, response_tokens: int) -> float:
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    row = prompt_tokens + response_tokens
    forward = 2 * row * (2 * body_params(config) + 2 * layers * d * row)  # two rows
    forward += 2 * response_tokens * 2 * d * vocab  # LM head at completion tokens
    return 4 * forward  # reference forward + training forward and backward


def measured_bf16_peak(size: int = 8192, repeats: int = 20) -> float | None:
    """Dense bf16 matmul FLOP/s of this GPU, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--dry-run" in argv:
        argv = [a for a in argv if a != "--dry-run"] + DRY_RUN
    if "--sides" not in " ".join(argv):
        argv += ["--sides", "rlhfkit,trl,trl-precompute"]
    if "--json" not in " ".join(argv):
        results = bench_dpo.ROOT / "runs" / "gpu-dpo" / "gpu_dpo.json"
        results.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--json", str(results)]
    summary = bench_main(
        bench_dpo.SIDES,
        reference="trl",
        description="DPO training (sigmoid, GPU): rlhfkit vs TRL DPOTrainer",
        add_args=add_args,
        argv=argv,
        script=__file__,
    )
    if not summary:
        return
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser)
    parser.add_argument("--json", default="")
    args, _ = parser.parse_known_args(argv)
    config = json.loads((Path(args.workdir) / f"model-{args.preset}" / "config.json").read_text())
    per_pair = flops_per_pair(config, args.prompt_tokens, args.response_tokens)
    tokens_per_pair = 2 * (args.prompt_tokens + args.response_tokens)
    peak = measured_bf16_peak() if args.device == "cuda" else None
    measurements = _measurements(args, summary)
    print("\n| side | tokens/s | peak GPU memory MB | model TFLOP/s | MFU | tok/s vs trl |")
    print("|---|---|---|---|---|---|")
    reference = summary.get("trl", {}).get("tokens_per_s")
    for name, row in summary.items():
        tflops = row["tokens_per_s"] / tokens_per_pair * per_pair / 1e12
        mfu = f"{tflops * 1e12 / peak:.1%}" if peak else "n/a (no GPU)"
        gpu_mb = measurements.get(name, "n/a")
        ratio = f"{row['tokens_per_s'] / reference:.2f}x" if reference else "-"
        print(
            f"| {name} | {row['tokens_per_s']:,.0f} | {gpu_mb} | {tflops:.1f} | {mfu} | {ratio} |"
        )
    _print_steady(args, config, peak)
    if peak:
        print(f"\nmeasured bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s")


def _print_steady(args, config: dict, peak: float | None) -> None:
    """Steady speed: optimizer steps after the first quarter (warm-up and compilation left out),
    the reference pass left out too where it runs before the steps. Its MFU counts the forwards
    each step really runs: 3 (training forward + backward), 4 where the reference runs in steps.
    Compare a precomputing side with trl-precompute, an on-the-fly one with trl."""
    if not args.json or not Path(args.json).is_file():
        return
    rows = json.loads(Path(args.json).read_text())["measurements"]
    sides: dict[str, list[dict]] = {}
    for m in rows:
        if "steady_tokens_per_s" in m["extra"]:
            sides.setdefault(m["side"], []).append(m["extra"])
    if not sides:
        return
    per_pair = flops_per_pair(config, args.prompt_tokens, args.response_tokens) / 4
    tokens_per_pair = 2 * (args.prompt_tokens + args.response_tokens)
    median = {
        name: statistics.median(e["steady_tokens_per_s"] for e in extras)
        for name, extras in sides.items()
    }
    print("\nSteady speed (steps after the first quarter; a precomputed reference pass left out):")
    print("| side | steady tokens/s | forwards per step | model TFLOP/s | MFU | vs trl "
          "| vs trl-precompute |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, extras in sides.items():
        forwards = 4 if extras[0].get("reference_in_steps") else 3
        tflops = median[name] / tokens_per_pair * per_pair * forwards / 1e12
        mfu = f"{tflops * 1e12 / peak:.1%}" if peak else "n/a (no GPU)"
        ratios = []
        for base_name, base_forwards in (("trl", None), ("trl-precompute", 3)):
            base = median.get(base_name)
            same_work = base_forwards is None or forwards == base_forwards
            ratios.append(f"{median[name] / base:.2f}x" if base and same_work else "-")
        print(
            f"| {name} | {median[name]:,.0f} | {forwards} | {tflops:.1f} | {mfu} "
            f"| {ratios[0]} | {ratios[1]} |"
        )


def _measurements(args, summary: dict) -> dict:
    """Median peak GPU memory per side, from the --json file when one was written."""
    if not args.json or not Path(args.json).is_file():
        return {}
    rows = json.loads(Path(args.json).read_text())["measurements"]
    out = {}
    for name in summary:
        values = [
            m["extra"]["peak_gpu_mb"]
            for m in rows
            if m["side"] == name and "peak_gpu_mb" in m["extra"]
        ]
        if values:  # the median, as the main table's (of 2 rounds: their mean, not the larger)
            out[name] = f"{statistics.median(values):,.0f}"
    return out


if __name__ == "__main__":
    main()
