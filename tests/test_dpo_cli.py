"""The real `rlhfkit dpo` CLI in a subprocess on the tiny preset: outputs, metrics, LoRA, the
reference cache on resume, and a bad loss_type."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import run_cli, run_cli_two_processes, write_jsonl
from safetensors.torch import load_file
from test_dpo_recipe import world_pairs


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("dpo-cli") / "pairs.jsonl", world_pairs(24))


def _dpo(tiny_model, data, out, *extra, check=True):
    return run_cli(
        "dpo", f"model={tiny_model}", f"train_data={data}", f"output_dir={out}", "batch_size=4",
        "logging_steps=1", "progress=false", "learning_rate=2e-3", *extra, check=check,
    )  # fmt: skip


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_cli_outputs_metrics_and_learns(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "dpo"
    _dpo(tiny_model, pairs_file, out, f"eval_data={pairs_file}", "max_steps=6", "dpo.beta=0.5")
    summary = json.loads((out / "summary.json").read_text())
    for key in ("eval_reward_accuracy", "eval_reward_margin", "eval_loss", "train_loss"):
        assert math.isfinite(summary[key])
    assert summary["reference_logps"] == "computed (initial-policy)"
    rows = [r for r in _rows(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    keys = ["rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"]
    keys += ["logps/chosen", "logps/rejected", "kl", "grad_norm", "lr", "tokens_per_s"]
    assert all(key in rows[0] for key in keys)
    # Step 1: the policy is the reference (precomputed in other batches: up to rounding).
    assert rows[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert rows[0]["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert rows[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)
    # Trained on the eval pairs themselves: the implicit reward separates them.
    assert summary["eval_loss"] < math.log(2)
    assert summary["eval_reward_margin"] > 0 and summary["eval_reward_accuracy"] > 0.5
    evaluation = _rows(out)[-1]
    assert evaluation["eval_loss"] == summary["eval_loss"]
    # The eval row holds every eval metric, consistent with each other and with summary.json.
    assert set(evaluation) == {
        "step", "eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/rejected",
        "eval_rewards/accuracy", "eval_rewards/margin", "eval_logps/chosen", "eval_logps/rejected",
    }  # fmt: skip
    assert evaluation["step"] == 6 and summary["eval_kl"] == evaluation["eval_kl"]
    assert evaluation["eval_rewards/margin"] == pytest.approx(
        evaluation["eval_rewards/chosen"] - evaluation["eval_rewards/rejected"], rel=1e-5
    )
    assert evaluation["eval_logps/chosen"] < 0 and evaluation["eval_logps/rejected"] < 0
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "reference_logps.pt").is_file()


def test_resume_reads_the_cached_reference_logps(tiny_model, pairs_file, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = ["max_steps=4", "save_steps=2", "save_total_limit=3"]
    _dpo(tiny_model, pairs_file, full, *args)
    shutil.copytree(full, resumed)
    # As if killed after step 2: the step-4 checkpoint, the model and the summary never existed.
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    shutil.rmtree(resumed / "model")
    (resumed / "summary.json").unlink()
    cache = resumed / "reference_logps.pt"
    before = cache.stat().st_mtime_ns
    _dpo(tiny_model, pairs_file, resumed, *args, "resume=true")
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["reference_logps"] == "loaded from cache"
    assert cache.stat().st_mtime_ns == before
    assert [r["loss"] for r in _rows(resumed)] == [r["loss"] for r in _rows(full)]
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_dataset_does_not_reuse_the_cache(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "dpo"
    _dpo(tiny_model, pairs_file, out, "max_steps=1")
    other = write_jsonl(tmp_path / "other.jsonl", world_pairs(24, seed=1))
    _dpo(tiny_model, other, out, "max_steps=1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference_logps"].startswith("computed")


def test_another_mixed_precision_does_not_reuse_the_cache(tiny_model, pairs_file, tmp_path):
    """A bf16-autocast run in the OUT of an fp32 run read the fp32 reference log-probs: its
    step-0 rewards were ~1e-3 off zero where its own reference gives ~1e-5."""
    out = tmp_path / "dpo"
    _dpo(tiny_model, pairs_file, out, "max_steps=1")
    _dpo(tiny_model, pairs_file, out, "max_steps=1", "mixed_precision=bf16")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference_logps"].startswith("computed")


def test_lora_dpo_uses_the_base_model_as_reference(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "lora"
    _dpo(tiny_model, pairs_file, out, "max_steps=2", "lora.r=4", "dpo.precompute_ref=false")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference_logps"] == "on the fly (adapters-disabled)"
    assert _rows(out)[0]["rewards/chosen"] == 0.0  # LoRA starts as the identity


def test_bad_loss_type_exits_2_with_one_line(tiny_model, pairs_file, tmp_path):
    result = _dpo(tiny_model, pairs_file, tmp_path / "bad", "dpo.loss_type=dop", check=False)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "dpo.loss_type" in message and "sigmoid" in message and "Traceback" not in message
    assert len(message.splitlines()) == 1


def test_two_processes_equal_one(tiny_model, pairs_file, tmp_path):
    """2 gloo processes x 2 pairs = 1 process x 4 pairs: the reference pass is sharded and
    summed, the loss normalised by the global pair count; same losses and final weights. The
    two processes run their 2 pairs in passes of 1 (`dpo.pairs_per_forward=1`), so DDP skips
    the all-reduce on each first pass and sums both. The eval set has one pair, so rank 1 has
    none of its own: it runs a filler batch to keep its forwards and sums in step with rank 0's
    (it hung before)."""
    first = pairs_file.read_text().splitlines()[0]
    (tmp_path / "eval1.jsonl").write_text(first + "\n")
    args = [f"model={tiny_model}", f"train_data={pairs_file}", "max_steps=3", "logging_steps=1"]
    args += ["progress=false", "learning_rate=2e-3"]
    args += [f"eval_data={tmp_path / 'eval1.jsonl'}", "eval_steps=2"]
    run_cli("dpo", *args, "batch_size=4", f"output_dir={tmp_path / 'one'}")
    two_args = ["batch_size=2", "dpo.pairs_per_forward=1", f"output_dir={tmp_path / 'two'}"]
    run_cli_two_processes("dpo", *args, *two_args, timeout=300)
    one = [r["loss"] for r in _rows(tmp_path / "one") if "loss" in r]
    two = [r["loss"] for r in _rows(tmp_path / "two") if "loss" in r]
    assert len(one) == 3 and two == pytest.approx(one, rel=1e-5)
    one = [r["eval_loss"] for r in _rows(tmp_path / "one") if "eval_loss" in r]
    two = [r["eval_loss"] for r in _rows(tmp_path / "two") if "eval_loss" in r]
    assert len(one) == 2 and two == pytest.approx(one, rel=1e-5)
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=5e-5)
