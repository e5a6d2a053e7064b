"""`rlhfkit eval` in policy mode, then `rlhfkit report` on its output."""

from __future__ import annotations

import json

from conftest import run_cli, write_jsonl

GOLD = "python:rlhfkit.synthetic.gold:gold_rewards"


def test_eval_policies_against_the_reference_and_report(tiny_model, tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "User: What is 3+4?\nBot:"}, {"prompt": "User: Name a fruit.\nBot:"}],
    )
    out = tmp_path / "eval"
    run_cli(
        "eval", f"policies=same={tiny_model}", f"reference={tiny_model}", f"prompts={prompts}",
        f"reward_model={GOLD}", f"gold_reward={GOLD}", "best_of_n=4", "max_new_tokens=6",
        f"output_dir={out}",
    )  # fmt: skip
    evaluation = json.loads((out / "eval.json").read_text())
    policies = evaluation["policies"]
    assert set(policies) == {"reference", "best_of_4", "same"}
    # A policy identical to the reference has exactly zero KL to it.
    assert policies["same"]["kl"] == 0.0
    assert 0.0 <= policies["same"]["win_rate_gold"] <= 1.0
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
    run_cli("eval", *common, f"reference=sft={tiny_model}", f"diagnose_runs={run}",
            f"output_dir={out}")  # fmt: skip
    evaluation = json.loads((out / "eval.json").read_text())
    assert set(evaluation["policies"]) == {"sft", "same"}
    assert evaluation["curves"]["ppo_run"]["gold"][0] == 0.45
    checks = {w.get("check") for w in evaluation["warnings"]}
    assert {"proxy_gold_divergence", "kl_growth"} <= checks
