"""`rlhfkit demo` wiring, end to end on a miniature setting (every stage runs, a step or two
each); the full-size quality numbers are measured by running the demo itself."""

from __future__ import annotations

import json

from conftest import run_cli

MINIATURE = [
    "quick=true", "sft_steps=2", "corpus_size=300", "pair_prompts=40", "eval_prompts=8",
    "rm_epochs=1", "best_of=2", "ppo_steps=1", "no_kl_steps=1", "dpo_betas=[0.1]",
    "dpo_epochs=1", "cai_prompts=4", "max_new_tokens=8", "progress=false",
]  # fmt: skip


def test_demo_runs_every_stage_and_writes_its_summary_and_report(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", f"output_dir={out}", *MINIATURE)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("rm_accuracy", "annotator_agreement", "gold_reward_max", "sft_gold_spread"):
        assert key in summary
    assert 0.5 <= summary["annotator_agreement"] <= 1.0 and summary["gold_reward_max"] == 1.0
    for policy in ("sft", "ppo", "dpo", "ppo_no_kl"):
        assert set(summary[policy]) == {"gold_reward", "proxy_reward", "kl"}
        assert 0.0 <= summary[policy]["gold_reward"] <= 1.0
    assert summary["sft"]["kl"] == 0.0
    spread = summary["sft_gold_spread"]
    assert spread["n"] == 256 and spread["min"] <= spread["mean"] <= spread["max"]
    # Labels went through the annotation server's database.
    assert (out / "labels.db").is_file() and summary["labels"]["train"] > 0
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"sft", "best_of_2", "ppo", "ppo_no_kl", "dpo_beta0.1"} <= set(evaluation["policies"])
    page = (out / "report.html").read_text()
    assert "Reward–KL frontier" in page and "data:image/png;base64," in page
    assert "gold reward" in result.stderr  # the final table
