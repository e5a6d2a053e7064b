"""`rlhfkit rm` and `rlhfkit eval` through the real CLI on the tiny preset: preference data with
evaluation and an ensemble, ranking data with normalisation on a given file, scoring, errors,
and the grad-accumulation invariant (1×4 equals 4×1); a three-head ensemble trained for the
default one epoch (its normalised reward, its disagreement at every eval, training it again
without normalisation, scoring every record kind with it); LoRA exported for transformers."""

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

from rlhfkit.eval.reward_metrics import (
    ensemble_normalization,
    head_disagreement,
    normalized_disagreement,
)
from rlhfkit.models.reward_fn import load_reward_function
from rlhfkit.models.reward_model import build_reward_model, encode_pair
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


PROMPT_A = "User: What is 5 plus 2?\nBot:"


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
    """2 gloo processes x 2 comparisons = 1 process x 4: same losses, evaluations and final
    weights. The eval set has one comparison, so rank 1 has none of its own: it runs a filler
    batch to keep its forwards in step with rank 0's (it hung before). summary.json's
    train_tokens counts every process's tokens (it was rank 0's count times 2)."""
    one_eval = write_jsonl(tmp_path / "eval1.jsonl", _read_jsonl(world_data["eval"])[:1])
    args = [f"model={tiny_model}", f"train_data={world_data['train']}", "max_steps=2"]
    args += ["learning_rate=1e-4", "logging_steps=1", "rm.normalize=false", "progress=false"]
    args += [f"eval_data={one_eval}", "eval_steps=1"]
    run_cli("rm", *args, "batch_size=4", f"output_dir={tmp_path / 'one'}")
    run_cli_two_processes(
        "rm", *args, "batch_size=2", f"output_dir={tmp_path / 'two'}", timeout=300
    )
    one, two = (
        [m["loss"] for m in _read_jsonl(tmp_path / name / "metrics.jsonl") if "loss" in m]
        for name in ("one", "two")
    )
    assert len(one) == 2 and two == pytest.approx(one, rel=1e-5)
    one, two = (
        [m["eval_loss"] for m in _read_jsonl(tmp_path / name / "metrics.jsonl") if "eval_loss" in m]
        for name in ("one", "two")
    )
    assert len(one) >= 2 and two == pytest.approx(one, rel=1e-5)
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    one, two = (
        json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two")
    )
    assert two["train_tokens"] == one["train_tokens"] > 0


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


def test_normalisation_data_is_read_before_training_and_may_change_on_resume(
    tiny_model, world_data, tmp_path
):
    """rm.normalize_data was read after the last step: a typo in its path threw the training
    away, and the corrected rerun with resume=true was refused (the key was part of the
    checkpoint's config). Now a bad file stops the run before any step, and the normalisation
    keys may change on resume (they act after the last step). Conversational preference
    records with an implicit prompt, accepted as train_data, are accepted here too."""
    args = [
        f"model={tiny_model}", f"train_data={world_data['train']}", "batch_size=8",
        "max_steps=2", "save_steps=2", "progress=false", f"output_dir={tmp_path / 'out'}",
    ]  # fmt: skip
    result = run_cli("rm", *args, "rm.normalize_data=missing.jsonl", check=False)
    assert result.returncode == 2 and "missing.jsonl" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()

    run_cli("rm", *args, "rm.normalize=false")
    chat = [{"role": "user", "content": "What is 3+4?"}]
    implicit = write_jsonl(
        tmp_path / "conv.jsonl",
        [
            {
                "chosen": [*chat, {"role": "assistant", "content": "7."}],
                "rejected": [*chat, {"role": "assistant", "content": "9."}],
            }
        ]
        * 3,
    )
    result = run_cli("rm", *args, "resume=true", f"rm.normalize_data={implicit}")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["normalization"]["samples"] == 6 and summary["normalization"]["on"] == str(
        implicit
    )


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


# --- an ensemble of three heads, trained for rm's default of one epoch -------------------------


@pytest.fixture(scope="module")
def ensemble_rm(tiny_model, world_data, tmp_path_factory):
    """`rlhfkit rm rm.ensemble=3` on the 40 training comparisons at batch 16 with no max_steps
    (the default: one epoch), evaluated on the 17 eval comparisons after step 1 and at the end,
    normalised on the training data's distinct responses."""
    out = tmp_path_factory.mktemp("ensemble_rm") / "rm"
    result = run_cli(
        "rm",
        f"model={tiny_model}",
        f"train_data={world_data['train']}",
        f"eval_data={world_data['eval']}",
        f"output_dir={out}",
        "batch_size=16",
        "learning_rate=1e-3",
        "eval_steps=1",
        "logging_steps=1",
        "rm.ensemble=3",
        "progress=false",
    )
    return {
        "out": out,
        "model": out / "model",
        "summary": json.loads((out / "summary.json").read_text()),
        "metrics": _read_jsonl(out / "metrics.jsonl"),
        "console": " ".join((result.stdout + result.stderr).split()),
    }


def test_rm_default_is_one_epoch(ensemble_rm):
    """No max_steps: one epoch. 40 comparisons at batch 16 make 40 // 16 = 2 optimizer steps;
    the last 40 - 32 = 8 comparisons of the shuffled order, fewer than one batch, are left out
    (`BatchPlan` drops an incomplete last batch, and says so), so it is floor(N/b), not
    ceil(N/b) = 3. Two epochs would be 4 steps."""
    summary, metrics = ensemble_rm["summary"], ensemble_rm["metrics"]
    assert summary["data"]["kept"] == 40
    assert summary["steps"] == 2
    logged = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in logged] == [1, 2]
    assert [m["epoch"] for m in logged] == [0.5, 1.0]
    assert "leaves out the last 8 comparisons" in ensemble_rm["console"]


def _distinct_train_pairs(path) -> tuple[list[str], list[str]]:
    """The (prompt, response) pairs rm normalises on without rm.normalize_data: each distinct
    response of the training data with its prompt."""
    seen: dict[tuple[str, str], None] = {}
    for record in _read_jsonl(path):
        for text in (record["chosen"], record["rejected"]):
            seen[(record["prompt"], text)] = None
    return [p for p, _ in seen], [r for _, r in seen]


def test_ensemble_reward_has_mean_0_std_1_on_the_normalisation_samples(
    tiny_model, world_data, ensemble_rm
):
    """With rm.ensemble=3 the scorer's reward (the mean of the 3 normalised heads) over the
    samples the normalisation was fitted on has mean 0 and population std 1 (the old per-head
    standardisation left it at about 0.95), and the heads share one scale: every normalised
    head has the same std, 1/σ_R >= 1 (`ensemble_normalization`). The heads started from three
    different draws and still differ after training: their disagreement is > 0."""
    model_dir = str(ensemble_rm["model"])
    prompts, responses = _distinct_train_pairs(world_data["train"])
    assert ensemble_rm["summary"]["normalization"]["samples"] == len(prompts)
    scorer = load_reward_function(model_dir, device="cpu")
    rewards = scorer(prompts, responses)
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    assert mean == pytest.approx(0.0, abs=1e-4)
    assert std == pytest.approx(1.0, abs=1e-4)
    heads = scorer.score_heads(prompts, responses)  # (S, 3), normalised
    head_stds = []
    for k in range(3):
        column = [h[k] for h in heads]
        assert sum(column) / len(column) == pytest.approx(0.0, abs=1e-4)
        head_stds.append(math.sqrt(sum(c * c for c in column) / len(column)))
    assert head_stds == pytest.approx([head_stds[0]] * 3, rel=1e-4)
    assert head_stds[0] >= 1.0 - 1e-6

    # The stored gains and biases are `ensemble_normalization` of the raw heads.
    raw = load_reward_function(model_dir, device="cpu", normalized=False)
    gains, biases = ensemble_normalization(raw.score_heads(prompts, responses))
    info = json.loads((ensemble_rm["model"] / "rlhfkit_reward.json").read_text())
    assert info["gain"] == pytest.approx(gains, rel=1e-4)
    assert info["bias"] == pytest.approx(biases, rel=1e-4, abs=1e-4)

    # Three heads, initialised apart and trained apart.
    trained = load_file(ensemble_rm["model"] / "model.safetensors")["score.weight"]  # (3, d)
    initial = build_reward_model(str(tiny_model), num_heads=3, seed=0).head().weight.detach()
    assert not torch.allclose(trained, initial)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert not torch.allclose(trained[i], trained[j], atol=1e-3)
        assert not torch.allclose(initial[i], initial[j], atol=1e-3)
    disagreement = scorer.disagreement(prompts, responses)
    assert min(disagreement) > 0
    assert ensemble_rm["summary"]["normalize_disagreement"] == pytest.approx(
        sum(disagreement) / len(disagreement), rel=1e-4
    )


def test_eval_disagreement_has_one_basis_during_training_and_at_the_end(world_data, ensemble_rm):
    """Every eval's `eval_disagreement` is `normalized_disagreement` of the eval responses' raw
    head rewards (scale-free: in units of the ensemble reward's std on the eval responses), not
    raw during training and under the stored normalisation at the end. The final value is
    recomputed here from the saved model's raw head scores of the 17 x 2 eval responses; the
    stored normalisation (fitted on other samples) would give another number."""
    evals = [m for m in ensemble_rm["metrics"] if "eval_disagreement" in m]
    assert [m["step"] for m in evals] == [1, 2]
    assert all(m["eval_disagreement"] > 0 for m in evals)
    records = _read_jsonl(world_data["eval"])
    prompts = [r["prompt"] for r in records for _ in range(2)]
    responses = [text for r in records for text in (r["chosen"], r["rejected"])]
    model_dir = str(ensemble_rm["model"])
    raw = load_reward_function(model_dir, device="cpu", normalized=False)
    raw_heads = raw.score_heads(prompts, responses)  # (34, 3)
    final = ensemble_rm["summary"]["eval_disagreement"]
    assert evals[-1]["eval_disagreement"] == final
    assert final == pytest.approx(normalized_disagreement(raw_heads), rel=1e-4)
    stored = load_reward_function(model_dir, device="cpu").score_heads(prompts, responses)
    assert head_disagreement(stored) != pytest.approx(final, rel=1e-3)


def test_rm_from_a_normalised_reward_model_without_normalize_saves_identity(
    tiny_model, world_data, ensemble_rm, tmp_path
):
    """Training the normalised ensemble again with rm.normalize=false changes its weights, so its
    old gains and biases no longer fit: the saved model is unnormalised (gain 1, bias 0,
    normalized_on ""), and the console says why."""
    old_info = json.loads((ensemble_rm["model"] / "rlhfkit_reward.json").read_text())
    assert old_info["gain"] != [1.0, 1.0, 1.0] and old_info["normalized_on"]
    out = tmp_path / "again"
    result = run_cli(
        "rm",
        f"model={ensemble_rm['model']}",
        f"train_data={world_data['train']}",
        f"output_dir={out}",
        "batch_size=8",
        "max_steps=1",
        "learning_rate=1e-3",
        "rm.ensemble=3",
        "rm.normalize=false",
        "progress=false",
    )
    info = json.loads((out / "model" / "rlhfkit_reward.json").read_text())
    assert info["gain"] == [1.0, 1.0, 1.0] and info["bias"] == [0.0, 0.0, 0.0]
    assert info["normalized_on"] == ""
    assert json.loads((out / "summary.json").read_text())["normalization"] == {
        "gain": [1.0, 1.0, 1.0],
        "bias": [0.0, 0.0, 0.0],
        "samples": 0,
        "on": None,
    }
    assert "saved unnormalised" in " ".join((result.stdout + result.stderr).split())
    before = load_file(ensemble_rm["model"] / "model.safetensors")["score.weight"]
    after = load_file(out / "model" / "model.safetensors")["score.weight"]
    assert not torch.allclose(before, after)
    prompts, responses = [PROMPT_A] * 2, [" It is 7.", " Go away."]
    scored = load_reward_function(str(out / "model"), device="cpu")(prompts, responses)
    raw = load_reward_function(str(out / "model"), device="cpu", normalized=False)
    assert scored == raw(prompts, responses)


def test_eval_scores_every_record_kind_to_the_default_output(ensemble_rm, tmp_path):
    """`rlhfkit eval reward_model=DIR data=FILE` without output= writes OUTPUT_DIR/scores.jsonl,
    one row per record in order, for every record kind in one file: `{prompt, completion}` as
    text and as a conversation (`score`), `{prompt, responses}` (`scores`), ranking
    (`scores`), preference (`chosen_score`, `rejected_score`). Each score equals what
    `load_reward_function(DIR)` gives the same (prompt, response) (normalised), each row of an
    ensemble has the 3 heads per response, and the summary's accuracy counts the ranking's
    3 pairs and the preference pair from the written scores (ties half)."""
    chat = [{"role": "user", "content": "What is 2 plus 2?"}]
    records = [
        {"prompt": PROMPT_A, "completion": " It is 7."},
        {"prompt": chat, "completion": [{"role": "assistant", "content": "It is 4."}]},
        {"prompt": PROMPT_A, "responses": [" 7.", " Sure! 5+2 is 7.", " Go away."]},
        {"prompt": PROMPT_A, "responses": [" 7.", " It is 8.", " 5+2 is 7."], "ranking": [2, 0, 1]},
        {"prompt": PROMPT_A, "chosen": " It is 7.", "rejected": " It is 9."},
    ]
    data = write_jsonl(tmp_path / "mixed.jsonl", records)
    out = tmp_path / "eval"
    run_cli(
        "eval",
        f"reward_model={ensemble_rm['model']}",
        f"data={data}",
        f"output_dir={out}",
        "progress=false",
    )
    rows = _read_jsonl(out / "scores.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["output"] == str(out / "scores.jsonl") and summary["records"] == 5
    assert [{k: r[k] for k in record} for r, record in zip(rows, records, strict=True)] == records

    scorer = load_reward_function(str(ensemble_rm["model"]), device="cpu")

    def expected(record, responses):
        return scorer([record["prompt"]] * len(responses), responses)

    text, conversation, listed, ranked, preference = rows
    assert [text["score"]] == pytest.approx(expected(records[0], [" It is 7."]), abs=1e-5)
    assert [conversation["score"]] == pytest.approx(
        expected(records[1], [records[1]["completion"]]), abs=1e-5
    )
    assert len(text["heads"]) == 3 and len(conversation["heads"]) == 3
    for row, record in ((listed, records[2]), (ranked, records[3])):
        assert row["scores"] == pytest.approx(expected(record, record["responses"]), abs=1e-5)
        assert [len(h) for h in row["heads"]] == [3, 3, 3]
        assert row["scores"] == pytest.approx([sum(h) / 3 for h in row["heads"]], abs=1e-6)
    pair = [preference["chosen_score"], preference["rejected_score"]]
    assert pair == pytest.approx(expected(records[4], [" It is 7.", " It is 9."]), abs=1e-5)
    assert summary["scored"] == 1 + 1 + 3 + 3 + 2

    s = ranked["scores"]
    gaps = [s[2] - s[0], s[2] - s[1], s[0] - s[1], pair[0] - pair[1]]  # better minus worse
    wins = sum(1.0 if g > 0 else 0.5 if g == 0 else 0.0 for g in gaps)
    assert summary["pairs"] == 4 and summary["accuracy"] == pytest.approx(wins / 4)
    assert summary["margin"] == pytest.approx(sum(gaps) / 4, abs=1e-5)


def test_rm_lora_trains_head_and_adapters_and_exports_for_transformers(
    tiny_model, world_data, tmp_path
):
    """`rlhfkit rm lora.r=4` (adapters on q, k, v and o projections, the default targets): the
    exported (merged) model differs from the base in every adapted projection and in the head
    (against its initial draw, seed 0), equals the base everywhere else, loads with
    `AutoModelForSequenceClassification`, and its logits on right-padded rows are rlhfkit's raw
    rewards (before gain and bias); gain * logit + bias is rlhfkit's normalised reward."""
    out = tmp_path / "rm"
    run_cli(
        "rm",
        f"model={tiny_model}",
        f"train_data={world_data['train']}",
        f"output_dir={out}",
        "batch_size=8",
        "max_steps=2",
        "learning_rate=1e-3",
        "lora.r=4",
        "progress=false",
    )
    base = load_file(tiny_model / "model.safetensors")
    trained = load_file(out / "model" / "model.safetensors")
    assert not any("lora" in key for key in trained)
    adapted = [k for k in base if k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert len(adapted) == 4 * 4  # 4 layers x 4 projections
    for key in base:
        if key in adapted:
            assert not torch.equal(trained[key], base[key]), key
        else:
            assert torch.equal(trained[key], base[key]), key
    initial = build_reward_model(str(tiny_model), seed=0).head().weight.detach()
    assert trained["score.weight"].shape == initial.shape == (1, 160)
    assert not torch.allclose(trained["score.weight"], initial)

    records = _read_jsonl(world_data["eval"])[:4]
    prompts = [r["prompt"] for r in records for _ in range(2)]
    responses = [text for r in records for text in (r["chosen"], r["rejected"])]
    raw = load_reward_function(str(out / "model"), device="cpu", normalized=False)
    tokenizer = raw.tokenizer
    ids = [
        sum(encode_pair(tokenizer, p, r, max_length=512, max_prompt_length=256), [])
        for p, r in zip(prompts, responses, strict=True)
    ]
    width = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    with torch.no_grad():
        logits = hf(input_ids=input_ids, attention_mask=mask).logits[:, 0]  # (8,)
    assert logits.tolist() == pytest.approx(raw(prompts, responses), rel=1e-5, abs=1e-5)
    info = json.loads((out / "model" / "rlhfkit_reward.json").read_text())
    normed = [info["gain"][0] * x + info["bias"][0] for x in logits.tolist()]
    scorer = load_reward_function(str(out / "model"), device="cpu")
    assert normed == pytest.approx(scorer(prompts, responses), rel=1e-5, abs=1e-5)
