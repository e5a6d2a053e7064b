"""The benchmark harness's bookkeeping: a failing side with --keep-going, and the steady-speed
clock of the DPO benchmark (the numbers in the docs' GPU tables come from these)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_dpo  # noqa: E402
import harness  # noqa: E402


def _side(name: str, code: str) -> harness.Side:
    return harness.Side(name, [sys.executable, "-c", code])


def test_keep_going_logs_a_failing_side_and_runs_the_others():
    payload = {"tokens": 100, "seconds": 2.0, "peak_rss_self_mb": 1.0, "extra": {"k": 1}}
    good = _side("good", f"print({harness.RESULT_MARKER!r} + {json.dumps(json.dumps(payload))})")
    bad = _side("bad", "raise SystemExit(3)")
    lines: list[str] = []
    measured = harness.run_alternating([bad, good], rounds=2, keep_going=True, log=lines.append)
    assert [m.side for m in measured] == ["good", "good"]
    assert measured[0].tokens_per_s == 50.0 and measured[0].extra == {"k": 1}
    assert sum("bad: FAILED: side bad exited 3" in line for line in lines) == 2
    assert any("50 tok/s" in line and '{"k": 1}' in line for line in lines)
    with pytest.raises(RuntimeError, match="side bad exited 3"):
        harness.run_alternating([bad, good], rounds=1, log=lines.append)


def test_step_clock_times_the_steps_after_the_first_quarter():
    """8 steps ending at t = 0, 1, 2, 4, 6, 8, 10, 12 s: the first quarter (2 steps) is skipped,
    so the clock spans t[2] = 2 s to t[7] = 12 s, i.e. 5 steps in 10 s. A step is batch 2 x
    (2 x (3 + 4)) = 28 tokens: 5 x 28 / 10 = 14 tokens/s."""
    args = types.SimpleNamespace(device="cpu", batch_size=2, prompt_tokens=3, response_tokens=4)
    clock = bench_dpo.StepClock(args)
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for _ in range(3):  # the global optimizer hook ticks once per step
        weight.grad = torch.ones(2)
        optimizer.step()
    assert len(clock.times) == 3
    clock.times = [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert clock.steady(args) == {"steady_tokens_per_s": 14.0, "steady_steps": 5}
    optimizer.step()  # the hook is removed once read
    assert len(clock.times) == 8
    assert bench_dpo.StepClock(args).steady(args) == {}  # no steps: no steady speed


def test_rates_below_a_hundred_keep_three_significant_digits():
    """PPO's samples/s (0.769) printed as "1" in the benchmark's table."""
    from harness import format_table, rate

    assert [rate(v) for v in (0.76912, 12.345, 99.94, 1234.5)] == ["0.769", "12.3", "99.9", "1,234"]
    row = {"runs": 1, "tokens_per_s": 0.769, "tokens_per_s_min": 0.7, "tokens_per_s_max": 0.8}
    table = format_table({"a": {**row, "peak_rss_mb": 10.0}})
    assert "| a | 1 | 0.769 | 0.7-0.8 | 10 |" in table


def test_round_ratios_pair_the_sides_of_each_round():
    """Round 0: 120 / 100 = 1.2; round 1: 150 / 100 = 1.5; round 2 has no reference run and is
    left out. The median of (1.2, 1.5) is 1.35."""
    from harness import Measurement, format_round_ratios, round_ratios

    def run(side, r, speed):
        return Measurement(side, r, 0, 1.0, speed, 1.0, 1.0)

    runs = [run("a", 0, 120.0), run("ref", 0, 100.0), run("a", 1, 150.0), run("ref", 1, 100.0)]
    runs.append(run("a", 2, 900.0))
    assert round_ratios(runs, "a", "ref") == pytest.approx([1.2, 1.5])
    assert format_round_ratios(runs, "ref") == "a/ref per round: 1.20 1.50 (median 1.35x)"


def test_scratch_dir_is_removed_when_the_process_exits(tmp_path):
    """A side's output_dir goes away with its process, even when the side crashes."""
    benchmarks = Path(harness.__file__).parent
    code = (
        f"import sys; sys.path.insert(0, {str(benchmarks)!r}); import harness; "
        "d = harness.scratch_dir('bench-test-'); (d / 'weights.bin').write_bytes(b'x' * 1024); "
        "print(d, flush=True); raise RuntimeError('the side crashed')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 1 and "the side crashed" in done.stderr
    made = Path(done.stdout.strip())
    assert made.parent == tmp_path and made.name.startswith("bench-test-")
    assert not made.exists()
