"""Shared benchmark harness: each side in its own subprocess, alternating, one table of ratios.

A benchmark script (`bench_rm.py`, `bench_dpo.py`, `bench_ppo.py`) names its sides as plain
functions and hands them to `bench_main`. Run without `--side`, the script is the *parent*: it
starts itself once per side and round in a fresh subprocess, alternating A B A B ... for
`--rounds` rounds (on a shared machine, alternation spreads background load over both sides),
then prints one table of medians and the ratio of every side to the reference side. Run with
`--side NAME`, it is the *child*: it pins the thread count, calls that side's function and prints
one result line that the parent reads.

Interface (stable; other benchmark scripts import it)::

    from harness import SideResult, bench_main

    def run_ours(args) -> SideResult:         # child side: build, warm up, then time the work
        ...
        return SideResult(tokens=n_tokens, seconds=elapsed, extra={"loss": 0.69})

    def run_peer(args) -> SideResult: ...

    def add_args(parser):                     # optional: the script's own options, passed to
        parser.add_argument("--pairs", type=int, default=512)   # every child unchanged

    if __name__ == "__main__":
        bench_main({"rlhfkit": run_ours, "trl": run_peer}, reference="trl",
                   description="reward model training", add_args=add_args)

Parent options (all scripts): `--rounds R` (default 3), `--threads N` (default 2: sets
OMP_NUM_THREADS / MKL_NUM_THREADS in the child and `torch.set_num_threads(N)` before the side's
function runs), `--sides a,b` (subset / order), `--python SIDE=PATH` (run a side with another
interpreter, e.g. a separate venv holding the peer library), `--timeout S` per child, `--json FILE`
(write every measurement and the medians).

What is measured:

* tokens/s = `SideResult.tokens / SideResult.seconds`, both reported by the side itself, which
  times only the work (not imports, model loading or warm-up) and counts tokens the same way on
  every side (the script's business: same data, same formula);
* peak RSS = `ru_maxrss` of the child process (from `os.wait4`), i.e. the peak resident memory of
  the whole process, imports and model included. The child also reports its own `ru_maxrss`
  (`peak_rss_self_mb`, same number unless the child spawned helpers).

Helpers for other scripts: `SideResult`, `bench_main`, `run_alternating(sides, ...)` (the parent
loop, usable without argparse), `summarise(measurements)`, `format_table(summary, reference)`,
`round_ratios(measurements, side, reference)` (paired per-round speed ratios, printed under the
table), `scratch_dir(prefix)` (a temporary directory removed when the process exits: a side's
output_dir and a library's caches).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULT_MARKER = "@@BENCH_RESULT "


@dataclass
class SideResult:
    """What a side's function returns: the work it timed."""

    tokens: int
    seconds: float
    extra: dict = field(default_factory=dict)


@dataclass
class Side:
    """How the parent starts one side: an argv (and extra environment variables)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Measurement:
    side: str
    round: int
    tokens: int
    seconds: float
    tokens_per_s: float
    peak_rss_mb: float
    wall_s: float
    extra: dict = field(default_factory=dict)


def thread_env(threads: int) -> dict[str, str]:
    """Environment that limits a child's math libraries to `threads` threads."""
    value = str(threads)
    return {
        "OMP_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
        "OPENBLAS_NUM_THREADS": value,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONUNBUFFERED": "1",
    }


def run_side(side: Side, round_index: int, *, timeout: float = 1800.0) -> Measurement:
    """Run one side in a fresh subprocess; parse its result line; read its peak RSS."""
    env = dict(os.environ)
    env.update(side.env)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(side.argv, stdout=out, stderr=err, text=True, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            # wait4 (not wait) so that we get this child's own rusage: its peak RSS.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if wall >= timeout:
        raise RuntimeError(f"side {side.name} timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        raise RuntimeError(
            f"side {side.name} exited {proc.returncode}: {shlex.join(side.argv)}\n"
            f"--- stderr (tail) ---\n{stderr[-3000:]}"
        )
    child_peak_mb = _maxrss_mb(usage.ru_maxrss)
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if not lines:
        raise RuntimeError(f"side {side.name} printed no result line\n{stdout[-2000:]}")
    payload = json.loads(lines[-1][len(RESULT_MARKER) :])
    tokens, seconds = int(payload["tokens"]), float(payload["seconds"])
    return Measurement(
        side=side.name,
        round=round_index,
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / max(seconds, 1e-12),
        peak_rss_mb=max(child_peak_mb, float(payload["peak_rss_self_mb"])),
        wall_s=wall,
        extra=payload.get("extra", {}),
    )


def run_alternating(
    sides: list[Side],
    *,
    rounds: int,
    timeout: float = 1800.0,
    keep_going: bool = False,
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> list[Measurement]:
    """Run every side once per round, in the given order each round: A B A B ...

    With `keep_going`, a side that fails or times out is logged and left out, and the others
    still run (a one-shot run on a lent GPU machine cannot afford to lose them)."""
    measurements = []
    for round_index in range(rounds):
        for side in sides:
            try:
                m = run_side(side, round_index, timeout=timeout)
            except RuntimeError as err:
                if not keep_going:
                    raise
                log(f"round {round_index + 1}/{rounds} {side.name:>10}: FAILED: {err}")
                continue
            log(
                f"round {round_index + 1}/{rounds} {side.name:>10}: "
                f"{rate(m.tokens_per_s)} tok/s, peak RSS {m.peak_rss_mb:,.0f} MB "
                f"({m.seconds:.1f} s timed, {m.wall_s:.1f} s wall) {json.dumps(m.extra)}"
            )
            measurements.append(m)
    return measurements


def summarise(measurements: list[Measurement]) -> dict[str, dict]:
    """Medians (and ranges) per side, in the order sides first appear."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(m.side for m in measurements):
        mine = [m for m in measurements if m.side == name]
        speeds = [m.tokens_per_s for m in mine]
        rss = [m.peak_rss_mb for m in mine]
        out[name] = {
            "runs": len(mine),
            "tokens_per_s": statistics.median(speeds),
            "tokens_per_s_min": min(speeds),
            "tokens_per_s_max": max(speeds),
            "peak_rss_mb": statistics.median(rss),
            "peak_rss_mb_max": max(rss),
            "seconds": statistics.median(m.seconds for m in mine),
        }
    return out


def round_ratios(measurements: list[Measurement], side: str, reference: str) -> list[float]:
    """tokens/s of `side` over `reference`'s in each round both finished, in round order.

    The sides of one round run back to back, so a slow hour of a shared machine slows both:
    these paired ratios vary less than the medians' ratio does, and a disturbed round shows."""
    speeds: dict[tuple[str, int], float] = {(m.side, m.round): m.tokens_per_s for m in measurements}
    rounds = sorted({m.round for m in measurements})
    return [
        speeds[(side, r)] / speeds[(reference, r)]
        for r in rounds
        if (side, r) in speeds and (reference, r) in speeds
    ]


def format_round_ratios(measurements: list[Measurement], reference: str) -> str:
    """One line per other side: its paired per-round speed ratios and their median."""
    lines = []
    for side in dict.fromkeys(m.side for m in measurements):
        ratios = round_ratios(measurements, side, reference) if side != reference else []
        if ratios:
            shown = " ".join(f"{r:.2f}" for r in ratios)
            median = statistics.median(ratios)
            lines.append(f"{side}/{reference} per round: {shown} (median {median:.2f}x)")
    return "\n".join(lines)


def rate(value: float) -> str:
    """A rate to print: whole numbers from 100 up, three significant digits below (PPO's
    samples/s are below 1)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_table(summary: dict[str, dict], reference: str | None = None) -> str:
    """A Markdown table: medians per side and the ratio side/reference (tok/s and memory)."""
    header = (
        "| side | runs | tokens/s (median) | tokens/s (min-max) | peak RSS MB (median) "
        "| tok/s ratio | RSS ratio |"
    )
    lines = [header, "|" + "---|" * 7]
    ref = summary.get(reference) if reference else None
    for name, row in summary.items():
        if ref is not None:
            speed_ratio = f"{row['tokens_per_s'] / ref['tokens_per_s']:.2f}x"
            rss_ratio = f"{row['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x"
        else:
            speed_ratio = rss_ratio = "-"
        lines.append(
            f"| {name} | {row['runs']} | {rate(row['tokens_per_s'])} | "
            f"{rate(row['tokens_per_s_min'])}-{rate(row['tokens_per_s_max'])} | "
            f"{row['peak_rss_mb']:,.0f} | {speed_ratio} | {rss_ratio} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Child side
# ---------------------------------------------------------------------------------------------


def _maxrss_mb(maxrss: int) -> float:
    """ru_maxrss in MB (it is KiB on Linux, bytes on macOS)."""
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def peak_rss_self_mb() -> float:
    """This process's peak resident set size in MB."""
    return _maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (a library started a parallel region first)
        pass


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory that is removed when this process exits.

    For what a side writes only to be timed (its output_dir, a library's dataset cache): runs
    of hundreds of MB each must not pile up in $TMPDIR or the repository.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def emit_result(result: SideResult) -> None:
    """Print the line the parent parses (the child's last act)."""
    payload = {
        "tokens": int(result.tokens),
        "seconds": float(result.seconds),
        "peak_rss_self_mb": peak_rss_self_mb(),
        "extra": result.extra,
    }
    print(RESULT_MARKER + json.dumps(payload), flush=True)


# ---------------------------------------------------------------------------------------------
# Entry point for benchmark scripts
# ---------------------------------------------------------------------------------------------


def bench_main(
    sides: dict[str, Callable[[argparse.Namespace], SideResult]],
    *,
    reference: str,
    description: str = "",
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
    script: str | None = None,
) -> dict | None:
    """Parent or child, depending on `--side`. Returns the summary (parent) or None (child).

    Args:
        sides: name -> function run in the child; it returns the timed work as `SideResult`.
        reference: the side ratios are taken against (the peer, e.g. "trl").
        description: one line for `--help` and the table's title.
        add_args: adds the script's own options; their values are passed to every child.
        argv: arguments (default `sys.argv[1:]`).
        script: the script path the parent re-runs (default `sys.argv[0]`).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--side", default=None, help="(internal) run one side in this process")
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A B alternation")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads per side")
    parser.add_argument("--sides", default=",".join(sides), help="comma-separated sides to run")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="SIDE=PATH",
        help="interpreter for a side (e.g. trl=.venv-bench/bin/python)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    parser.add_argument("--json", default="", help="write measurements and medians here")
    parser.add_argument(
        "--keep-going", action="store_true", help="log a failing side and run the others"
    )
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])

    if args.side is not None:
        if args.side not in sides:
            parser.error(f"unknown side {args.side!r}; choose from {sorted(sides)}")
        set_threads(args.threads)
        emit_result(sides[args.side](args))
        return None

    raw_argv = list(argv if argv is not None else sys.argv[1:])
    passthrough = _strip_parent_options(raw_argv)
    interpreters = dict(item.split("=", 1) for item in args.python)
    script_path = str(Path(script or sys.argv[0]).resolve())
    names = [n.strip() for n in args.sides.split(",") if n.strip()]
    for name in names:
        if name not in sides:
            parser.error(f"unknown side {name!r}; choose from {sorted(sides)}")
    plan = [
        Side(
            name,
            [
                interpreters.get(name, sys.executable),
                script_path,
                "--side",
                name,
                "--threads",
                str(args.threads),
                *passthrough,
            ],
            thread_env(args.threads),
        )
        for name in names
    ]
    measurements = run_alternating(
        plan, rounds=args.rounds, timeout=args.timeout, keep_going=args.keep_going
    )
    if not measurements:
        raise SystemExit("no side finished")
    summary = summarise(measurements)
    command = shlex.join([Path(sys.executable).name, *sys.argv[:1], *raw_argv])
    print(f"\n{description}\ncommand: {command}\n")
    print(format_table(summary, reference if reference in summary else None))
    if reference in summary:
        print("\n" + format_round_ratios(measurements, reference))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "reference": reference,
                    "summary": summary,
                    "measurements": [asdict(m) for m in measurements],
                },
                indent=2,
            )
        )
    return summary


def _strip_parent_options(argv: list[str]) -> list[str]:
    """Drop the parent-only options from argv; what is left goes to every child."""
    parent_only_with_value = {"--rounds", "--sides", "--python", "--timeout", "--json", "--threads"}
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        key = item.split("=", 1)[0]
        if key in parent_only_with_value:
            skip = "=" not in item
            continue
        out.append(item)
    return out
