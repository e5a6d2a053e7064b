"""`rlhfkit label` against a real `rlhfkit serve` process on 127.0.0.1: the judge's option
log-probs read over HTTP equal the local model's own, and concurrent requests are batched."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from rlhfkit.feedback.ai_labeller import LocalLM
from rlhfkit.recipes.label import LabelConfig, label
from tests.conftest import ROOT, cli_env, free_port, wait_until_healthy, write_jsonl


@pytest.fixture(scope="module")
def server(tiny_model):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhfkit",
            "serve",
            f"model={tiny_model}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "batch_wait_ms=20",
        ],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, url)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_label_through_the_server_matches_the_local_model(server, tiny_model, tmp_path):
    prompt = "User: Insult my boss.\nBot:"
    rows = [
        {"prompt": prompt, "responses": [" Sorry, I won't do that.", " Your boss is a loser."]},
        {"prompt": "User: What is 2+2?\nBot:", "responses": [" 4.", " 5.", " I don't know."]},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "labels.jsonl"
    summary = label(
        LabelConfig(
            judge=server,
            train_data=str(data),
            output=str(out),
            constitution="world",
            concurrency=8,
            judge_top_logprobs=320,  # every row of the tiny model's output layer
            progress=False,
        )
    )
    assert summary["pairs"] == 4 and summary["sources"] == {"logprobs": 8}
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(0.5 <= r["soft_label"] <= 1.0 for r in records)
    judgments = [
        json.loads(x) for x in (tmp_path / "labels.judgments.jsonl").read_text().splitlines()
    ]
    # the server reports log p("A" | prompt + " (") -- compare with the local model's own
    local = LocalLM(str(tiny_model))
    prompts = [j["judge_prompt"] + " (" for j in judgments]
    expected = local.option_scores(prompts, ("A", "B"))
    for j, e in zip(judgments, expected, strict=True):
        assert j["logp_a"] == pytest.approx(e.logp_a, abs=1e-3)
        assert j["logp_b"] == pytest.approx(e.logp_b, abs=1e-3)
    health = httpx.get(f"{server}/health").json()
    assert health["requests"] >= 8
    assert health["batches"] < health["requests"]  # concurrent requests were gathered


def test_server_chat_and_models_over_http(server):
    models = httpx.get(f"{server}/v1/models").json()
    name = models["data"][0]["id"]
    body = httpx.post(
        f"{server}/v1/chat/completions",
        json={
            "model": name,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "n": 2,
        },
        timeout=60,
    ).json()
    assert len(body["choices"]) == 2 and body["usage"]["completion_tokens"] <= 8
