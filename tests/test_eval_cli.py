"""`rlhfkit eval` in policy mode, then `rlhfkit report` on its output."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_jsonl

GOLD = "python:rlhfkit.synthetic.gold:gold_rewards"


def test_eval_policies_against_the_reference_and_report(tiny_model, tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "User: What is 3+4?\nBot:"}, {"prompt": "User: Name a fruit.\nBot:"}],
    )
    out = tmp_path / "eval"
    result = run_cli(
        "eval", f"policies=same={tiny_model}", f"reference={tiny_model}", f"prompts={prompts}",
        f"reward_model={GOLD}", f"gold_reward={GOLD}", "best_of_n=4", "max_new_tokens=6",
        f"output_dir={out}", "max_prompt_length=5",
    )  # fmt: skip
    # Both prompts are longer than 5 tokens: sampled from their last 5, as ppo would, and said.
    assert "2 prompts longer than max_prompt_length=5 tokens" in result.stdout + result.stderr
    evaluation = json.loads((out / "eval.json").read_text())
    policies = evaluation["policies"]
    assert set(policies) == {"reference", "best_of_4", "same"}
    # A policy identical to the reference has exactly zero KL to it.
    assert policies["same"]["kl"] == 0.0
    # The proxy is the gold function here, so every proxy number equals its gold twin.
    for name in ("reference", "same"):
        for stat in ("reward", "reward_std"):
            assert policies[name][f"proxy_{stat}"] == policies[name][f"gold_{stat}"]
        assert policies[name]["gold_reward_std"] >= 0.0
        assert 0 < policies[name]["length"] <= 6  # tokens, at most max_new_tokens
    assert 0.0 <= policies["same"]["win_rate_gold"] <= 1.0
    assert policies["same"]["win_rate_proxy"] == policies["same"]["win_rate_gold"]
    # Best-of-n chooses by the proxy; with proxy == gold it can only help.
    assert [row["n"] for row in evaluation["best_of_n"]] == [1, 2, 4]
    assert policies["best_of_4"]["gold_reward"] >= evaluation["best_of_n"][0]["gold_reward"]
    assert len(evaluation["samples"]) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert "same" in summary and "kl" in summary["same"]

    run_cli("report", f"runs={out}")
    page = (out / "report.html").read_text()
    assert "Best-of-n" in page and "data:image/png;base64," in page


def test_eval_without_a_mode_is_a_clear_error(tmp_path):
    result = run_cli("eval", f"output_dir={tmp_path}", check=False)
    assert result.returncode == 2 and "nothing to do" in result.stderr


def test_eval_names_the_reference_and_checks_diagnosed_runs(tiny_model, tmp_path):
    """`reference=NAME=DIR` names the reference's row; `diagnose_runs` must name RL run
    directories (with metrics.jsonl), checked before any sampling."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "User: What is 3+4?\nBot:"}])
    common = (f"policies=same={tiny_model}", f"prompts={prompts}", f"gold_reward={GOLD}",
              "best_of_n=0", "max_new_tokens=4")  # fmt: skip
    bad = run_cli("eval", *common, f"reference={tiny_model}", f"diagnose_runs={tmp_path}",
                  f"output_dir={tmp_path / 'bad'}", check=False)  # fmt: skip
    assert bad.returncode != 0 and "holds no metrics.jsonl" in bad.stderr
    assert "Traceback" not in bad.stderr

    run = tmp_path / "ppo_run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [
        {"step": s, "score_mean": 0.1 * s, "gold_reward_mean": 0.5 - 0.05 * s, "kl": 2.0 * s}
        for s in range(1, 9)
    ])  # fmt: skip
    out = tmp_path / "eval"
    result = run_cli("eval", *common, f"reference=sft={tiny_model}", f"diagnose_runs={run}",
                     f"output_dir={out}")  # fmt: skip
    evaluation = json.loads((out / "eval.json").read_text())
    assert set(evaluation["policies"]) == {"sft", "same"}
    assert evaluation["curves"]["ppo_run"]["gold"][0] == 0.45
    checks = {w.get("check") for w in evaluation["warnings"]}
    assert {"proxy_gold_divergence", "kl_growth"} <= checks
    # The same warnings reach the console, one line each, naming the run.
    console = " ".join(result.stdout.split() + result.stderr.split())
    assert "warning: ppo_run: proxy reward rose" in console
    assert "warning: ppo_run: KL to the reference grew" in console


def test_eval_reports_reward_ensemble_disagreement(tiny_model, tmp_path):
    """With a reward-model ensemble as the proxy, every policy row (the reference's too) gets
    `ensemble_disagreement`, the mean over its samples of the heads' standard deviation; a
    warning is raised exactly when a policy's is >= 2x the reference's and >= 0.1."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"User: What is {a}+{b}?\nBot:", "chosen": f" Sure! {a}+{b} is {a + b}.",
         "rejected": f" Sure! {a}+{b} is {a + b + 1}."}
        for a, b in [(1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (2, 2), (5, 3), (1, 7)]
    ])  # fmt: skip
    rm = tmp_path / "rm"
    run_cli("rm", f"model={tiny_model}", f"train_data={pairs}", "rm.ensemble=3",
            "max_steps=2", "batch_size=4", f"output_dir={rm}", "progress=false")  # fmt: skip
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "User: What is 3+4?\nBot:"}, {"prompt": "User: Name a fruit.\nBot:"}],
    )
    out = tmp_path / "eval"
    run_cli("eval", f"policies=same={tiny_model}", f"reference=sft={tiny_model}",
            f"prompts={prompts}", f"reward_model={rm / 'model'}", "best_of_n=2",
            "max_new_tokens=6", f"output_dir={out}")  # fmt: skip
    evaluation = json.loads((out / "eval.json").read_text())
    reference = evaluation["policies"]["sft"]["ensemble_disagreement"]
    mine = evaluation["policies"]["same"]["ensemble_disagreement"]
    assert reference > 0.0 and mine > 0.0  # three differently initialised heads
    flagged = any(w.get("check") == "ensemble_disagreement" for w in evaluation["warnings"])
    assert flagged == (mine >= 2 * reference and mine >= 0.1)


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as JSON itself (and JSON.parse) does."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_eval_takes_conversation_prompts_and_sampling_keys(tiny_model, tmp_path):
    """TRL's conversational prompt-only records (trl-lib/ultrafeedback-prompt's shape) are
    rendered with the chat template, as ppo and generate render them. `top_p` reaches sampling:
    a nucleus of mass 0.001 keeps only the most likely token, so at any temperature the samples
    are the greedy decode. A diagnosed run without a gold reward gets no `gold` curve (no NaN:
    eval.json is strict JSON), and its curve keeps the logged steps."""
    from rlhfkit.eval.policy_eval import sample_policy

    questions = ["What is 0+1?", "Name a fruit."]
    prompts = write_jsonl(
        tmp_path / "chat_prompts.jsonl",
        [{"prompt": [{"content": q, "role": "user"}]} for q in questions],
    )
    run = tmp_path / "ppo_run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [{"step": 0, "eval_start/score_mean": 0.0}] + [
        {"step": s, "score_mean": 0.1 * s, "kl": 0.5 * s} for s in (5, 10, 15, 20)
    ])  # fmt: skip
    out = tmp_path / "eval"
    run_cli(
        "eval", f"policies=same={tiny_model}", f"reference=sft={tiny_model}", f"prompts={prompts}",
        f"reward_model={GOLD}", "best_of_n=2", "max_new_tokens=6", "temperature=0.7",
        "top_p=0.001", f"diagnose_runs={run}", f"output_dir={out}",
    )  # fmt: skip
    evaluation = _strict_json((out / "eval.json").read_text())
    rendered = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in questions]
    assert [s["prompt"] for s in evaluation["samples"]] == rendered
    greedy = sample_policy(
        str(tiny_model), [[{"role": "user", "content": q}] for q in questions], n=1,
        max_new_tokens=6, seed=5, temperature=0, device="cpu",
    )  # fmt: skip
    for sample, response in zip(evaluation["samples"], greedy.responses, strict=True):
        assert sample["responses"] == {"sft": response, "same": response}
    assert evaluation["policies"]["same"]["kl"] == 0.0
    assert evaluation["curves"]["ppo_run"] == {
        "step": [5, 10, 15, 20],
        "proxy": pytest.approx([0.5, 1.0, 1.5, 2.0]),
        "kl": [2.5, 5.0, 7.5, 10.0],
    }
    assert _strict_json((out / "summary.json").read_text())["same"]["kl"] == 0.0

    run_cli("report", f"runs={out}")
    page = (out / "report.html").read_text()
    assert "Over-optimisation" in page and "&lt;|im_start|&gt;user" in page


def test_eval_refuses_a_temperature_of_zero_before_loading_anything(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "User: hi\nBot:"}])
    result = run_cli(
        "eval", "policies=nowhere/model", "reference=nowhere/sft", f"prompts={prompts}",
        "temperature=0", f"output_dir={tmp_path / 'eval'}", check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "temperature: must be > 0" in result.stderr


def test_eval_policy_mode_loads_models_in_the_given_dtype(tiny_model):
    """`dtype` reaches sampling and the KL in policy mode (it was float32 whatever was asked):
    the bf16 copy's log-prob sums differ from the float32 ones by rounding only, and a policy
    against itself still has a KL of exactly 0 in bf16."""
    import torch

    from rlhfkit.eval.policy_eval import response_logprob_sums, sample_policy, sequence_kl
    from rlhfkit.models.loading import load_causal_lm

    samples = sample_policy(
        str(tiny_model), ["User: What is 1+2?\nBot:"] * 4, n=1, max_new_tokens=6, seed=3,
        device="cpu", dtype="bfloat16",
    )  # fmt: skip
    sums = {}
    for dtype in ("float32", "bfloat16"):
        model = load_causal_lm(str(tiny_model), dtype=dtype, trainable=False)
        assert next(model.parameters()).dtype == getattr(torch, dtype)
        sums[dtype] = response_logprob_sums(model, samples.prompt_ids, samples.response_ids, 0)
    assert sums["float32"] != sums["bfloat16"]
    assert sums["bfloat16"] == pytest.approx(sums["float32"], rel=0.05, abs=0.05)
    kl = sequence_kl(str(tiny_model), str(tiny_model), samples, device="cpu", dtype="bfloat16")
    assert kl == [0.0] * 4


def test_a_python_reward_in_the_working_directory_is_found(tmp_path, monkeypatch):
    """`reward_model=python:myreward:fn` with myreward.py in the working directory: found
    under `python -m rlhfkit` (which puts that directory on the import path) but not under the
    `rlhfkit` command ("cannot import 'myreward'"). The working directory now goes last on the
    path when a python: spec is imported, and the pipeline finds its source the same way."""
    import sys

    from rlhfkit.models.reward_fn import load_reward_function
    from rlhfkit.recipes.pipeline import _python_source

    name = "my_cwd_reward_for_test"
    (tmp_path / f"{name}.py").write_text("def const(p, r):\n    return [2.5] * len(r)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    assert _python_source(f"python:{name}:const") == tmp_path / f"{name}.py"
    assert load_reward_function(f"python:{name}:const")(["p"], ["r"]) == [2.5]
    assert sys.path[-1] == str(tmp_path)  # last: never ahead of an installed package
