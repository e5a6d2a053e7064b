"""`rlhfkit rm` and `rlhfkit eval` through the real CLI on the tiny preset: preference data with
evaluation and an ensemble, ranking data with normalisation on a given file, scoring, errors,
and the grad-accumulation invariant (1×4 equals 4×1)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, cli_env, run_cli, run_cli_two_processes, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlhfkit.models.reward_fn import load_reward_function
from rlhfkit.synthetic import default_annotators, label_pairs, make_prompts, sample_response


def world_records(n_prompts: int, seed: int, k: int = 2) -> list[dict]:
    """`{prompt, responses}` records of the embedded world (k responses from the behaviour mix)."""
    rng = random.Random(seed)
    return [
        {"prompt": p.text, "responses": [sample_response(p, rng)[1] for _ in range(k)]}
        for p in make_prompts(n_prompts, seed=seed)
    ]


@pytest.fixture(scope="module")
def world_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_data")
    labels = label_pairs(world_records(60, seed=1), default_annotators(), seed=0).records
    train = write_jsonl(root / "train.jsonl", labels[:40])
    evaluation = write_jsonl(root / "eval.jsonl", labels[40:])
    ranking = []
    for record in world_records(12, seed=2, k=3):
        ranking.append({**record, "ranking": [2, 0, 1]})
    rank = write_jsonl(root / "rank.jsonl", ranking)
    samples = write_jsonl(root / "samples.jsonl", world_records(10, seed=3, k=2))
    return {"train": train, "eval": evaluation, "rank": rank, "samples": samples, "root": root}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_rm_preference_eval_ensemble_and_scoring(tiny_model, world_data, tmp_path):
    out = tmp_path / "rm"
    run_cli(
        "rm",
        f"model={tiny_model}",
        f"train_data={world_data['train']}",
        f"eval_data={world_data['eval']}",
        f"output_dir={out}",
        "batch_size=8",
        "max_steps=4",
        "learning_rate=1e-3",
        "eval_steps=2",
        "logging_steps=1",
        "rm.ensemble=2",
        "rm.use_margin=true",
        "rm.center_coef=0.01",
        "progress=false",
    )
    summary = json.loads((out / "summary.json").read_text())
    for key in ("eval_accuracy", "eval_loss", "eval_margin", "eval_ece", "eval_disagreement"):
        assert math.isfinite(summary[key]), key
    assert "eval_length_correlation" in summary
    assert 0.0 <= summary["eval_accuracy"] <= 1.0 and 0.0 <= summary["eval_ece"] <= 0.5
    n_eval = len(_read_jsonl(world_data["eval"]))
    assert summary["eval_pairs"] == n_eval and summary["steps"] == 4
    assert len(summary["normalization"]["gain"]) == 2
    metrics = _read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics if "eval_accuracy" in m] == [2, 4]
    assert all(math.isfinite(m["loss"]) for m in metrics if "loss" in m)

    # The export loads with transformers: two heads, the pad id set.
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert hf.config.num_labels == 2 and hf.config.pad_token_id is not None
    info = json.loads((out / "model" / "rlhfkit_reward.json").read_text())
    assert info["num_heads"] == 2 and info["normalized_on"].startswith("train_data")

    scores = tmp_path / "scores.jsonl"
    run_cli(
        "eval",
        f"reward_model={out / 'model'}",
        f"data={world_data['eval']}",
        f"output={scores}",
        f"output_dir={tmp_path / 'eval'}",
        "progress=false",
    )
    rows = _read_jsonl(scores)
    assert len(rows) == n_eval
    assert all(len(r["heads"]) == 2 and len(r["heads"][0]) == 2 for r in rows)
    assert all(r["chosen_score"] == pytest.approx(sum(r["heads"][0]) / 2, abs=1e-5) for r in rows)
    eval_summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    wins = sum(1.0 if r["chosen_score"] > r["rejected_score"] else 0.0 for r in rows) / len(rows)
    assert eval_summary["accuracy"] == pytest.approx(wins)
    assert eval_summary["pairs"] == n_eval and "disagreement" in eval_summary


def test_rm_ranking_data_normalised_on_given_samples(tiny_model, world_data, tmp_path):
    out = tmp_path / "rm"
    run_cli(
        "rm",
        f"model={tiny_model}",
        f"train_data={world_data['rank']}",
        f"output_dir={out}",
        "batch_size=4",
        "max_steps=3",
        "learning_rate=1e-3",
        f"rm.normalize_data={world_data['samples']}",
        "progress=false",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["kept"] == 12
    assert math.isfinite(summary["train_loss"])
    assert summary["normalization"]["samples"] == 20
    # Scored through the stored normalisation, the reference samples have mean 0 and std 1.
    scorer = load_reward_function(str(out / "model"), device="cpu")
    records = _read_jsonl(world_data["samples"])
    prompts = [r["prompt"] for r in records for _ in r["responses"]]
    responses = [text for r in records for text in r["responses"]]
    scores = scorer(prompts, responses)
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    assert mean == pytest.approx(0.0, abs=1e-4)
    assert std == pytest.approx(1.0, abs=1e-4)
    raw = load_reward_function(str(out / "model"), device="cpu", normalized=False)(
        prompts, responses
    )
    assert raw != pytest.approx(scores, abs=1e-3)


def test_grad_accumulation_invariant(tiny_model, world_data, tmp_path):
    """One micro-batch of 4 and four of 1 give the same losses and weights (loss normalised by
    the global batch).

    Weights agree to 5e-5 rather than 1e-5: Adam divides each gradient by its own running RMS,
    so a weight whose gradient is at rounding level (|g| near Adam's eps, 1e-8) can move by a
    different fraction of lr (1e-4) when the two runs sum the same terms in another order; one
    such weight of the tiny model lands 2.9e-5 apart."""
    weights = []
    for name, batch, accum in (("a", 4, 1), ("b", 1, 4)):
        out = tmp_path / name
        run_cli(
            "rm",
            f"model={tiny_model}",
            f"train_data={world_data['train']}",
            f"output_dir={out}",
            f"batch_size={batch}",
            f"grad_accum={accum}",
            "max_steps=2",
            "learning_rate=1e-4",
            "warmup_ratio=0.5",
            "logging_steps=1",
            "rm.normalize=false",
            "progress=false",
        )
        losses = [m["loss"] for m in _read_jsonl(out / "metrics.jsonl") if "loss" in m]
        weights.append((losses, load_file(out / "model" / "model.safetensors")))
    (loss_a, state_a), (loss_b, state_b) = weights
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-4, atol=5e-5)


def test_two_processes_equal_one(tiny_model, world_data, tmp_path):
    """2 gloo processes x 2 comparisons = 1 process x 4: same losses and final weights."""
    args = [f"model={tiny_model}", f"train_data={world_data['train']}", "max_steps=2"]
    args += ["learning_rate=1e-4", "logging_steps=1", "rm.normalize=false", "progress=false"]
    run_cli("rm", *args, "batch_size=4", f"output_dir={tmp_path / 'one'}")
    run_cli_two_processes("rm", *args, "batch_size=2", f"output_dir={tmp_path / 'two'}")
    one, two = (
        [m["loss"] for m in _read_jsonl(tmp_path / name / "metrics.jsonl") if "loss" in m]
        for name in ("one", "two")
    )
    assert len(one) == 2 and two == pytest.approx(one, rel=1e-5)
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_rm_resume_after_kill_equals_uninterrupted(tiny_model, world_data, tmp_path):
    """Kill `rlhfkit rm` (SIGKILL) once its step-10 checkpoint exists, resume it: the same losses
    and bit-identical weights as a run never interrupted (data order, optimizer, RNG restored)."""
    args = [
        f"model={tiny_model}", f"train_data={world_data['train']}", "batch_size=2",
        "max_steps=40", "save_steps=5", "learning_rate=1e-3", "logging_steps=1",
        "rm.normalize=false", "progress=false",
    ]  # fmt: skip
    run_cli("rm", *args, f"output_dir={tmp_path / 'full'}")

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit", "rm", *args, f"output_dir={out}"],
        env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-00000010").exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "model").exists()

    run_cli("rm", *args, f"output_dir={out}", "resume=true")
    losses = [
        [m["loss"] for m in _read_jsonl(d / "metrics.jsonl") if "loss" in m]
        for d in (tmp_path / "full", out)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 40
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_rm_errors_are_one_line(tiny_model, tmp_path):
    result = run_cli("rm", f"model={tiny_model}", f"output_dir={tmp_path}", check=False)
    assert result.returncode == 2
    assert "train_data" in result.stderr and "Traceback" not in result.stderr
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a"}])
    result = run_cli(
        "rm", f"model={tiny_model}", f"train_data={bad}", f"output_dir={tmp_path}", check=False
    )
    assert result.returncode == 2 and "bad.jsonl:1" in result.stderr
    result = run_cli("eval", f"output_dir={tmp_path}", check=False)
    assert result.returncode == 2 and "reward_model" in result.stderr
