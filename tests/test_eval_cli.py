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
