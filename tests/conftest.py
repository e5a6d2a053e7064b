"""Shared fixtures: a tiny random model written by `rlhfkit init-model`, small data files, and a
helper that runs the real `rlhfkit` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One thread per process: on a 2-core machine shared by parallel work, torch's OpenMP pool is
# far slower than a single thread for a 1M-parameter model.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `rlhfkit ARGS` (the installed console script's module) and return the result."""
    result = subprocess.run(
        [sys.executable, "-m", "rlhfkit", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        cwd=ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"rlhfkit {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli_two_processes(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `rlhfkit ARGS` in two CPU processes (gloo DDP) under `accelerate launch`.

    accelerate 1.x starts CPU processes itself only through mpirun (`--cpu --num_processes 2`
    runs a single process without an MPI hostfile); its torchrun launcher with
    ACCELERATE_USE_CPU=1 gives the same gloo-backed DDP without MPI.
    """
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        # A free port of its own: two such tests on parallel workers would otherwise both take
        # the default 29500, and one fails (seen with 14 workers on the GPU machine).
        "--main_process_port", str(free_port()), "-m", "rlhfkit", *args,
    ]  # fmt: skip
    env = {**cli_env(), "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"accelerate launch (2 processes) rlhfkit {' '.join(args)} exited "
            f"{result.returncode}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result


def wait_until_healthy(
    process: subprocess.Popen,
    url: str,
    timeout: float = 300.0,
    *,
    path: str = "/health",
    output: Callable[[], str] | None = None,
) -> None:
    """Poll ``url + path`` until a started server answers 200; fail with its output if it exits
    first, and kill it if it is not ready within ``timeout`` seconds. ``output`` reads what the
    server printed (default: its stdout pipe; a server writing to a log file passes a reader)."""
    import httpx

    read_output = output or (lambda: process.stdout.read() if process.stdout else "")
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{read_output()[-4000:]}")
        try:
            if httpx.get(f"{url}{path}", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the server did not become ready:\n{read_output()[-4000:]}")
        time.sleep(0.1)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic_sft(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"User: What is {a}+{b}?\nBot:", "completion": f" {a + b}."})
    return rows


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    run_cli("init-model", "--preset", "tiny", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def serve_client(tiny_model):
    """`rlhfkit serve` in process over the tiny model, one app per test module; the app itself
    is at `serve_client.app_ref` (its batcher: `app_ref.state.batcher`)."""
    from fastapi.testclient import TestClient

    from rlhfkit.recipes.serve import create_app

    app = create_app(str(tiny_model), model_name="tiny-test", batch_wait_ms=1.0)
    with TestClient(app) as client:
        client.app_ref = app
        yield client


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", arithmetic_sft(64))


CHROMIUM = "/usr/bin/chromium"


def playwright_or_skip():
    """playwright's `sync_playwright`, or a skip where playwright or Debian's chromium is
    missing; under CI (CI=true, where .ci/services.sh installs both) a missing one fails."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{CHROMIUM} is missing; .ci/services.sh installs it")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return sync_playwright
