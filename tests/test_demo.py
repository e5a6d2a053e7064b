"""`rlhfkit demo` wiring, end to end on a miniature setting (every stage runs, a step or two
each); the full-size quality numbers are measured by running the demo itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import CHROMIUM, playwright_or_skip, run_cli
from pytest import approx

MINIATURE = [
    "quick=true", "sft_steps=2", "corpus_size=300", "pair_prompts=40", "eval_prompts=8",
    "rm_epochs=1", "best_of=2", "ppo_steps=1", "no_kl_steps=1", "dpo_betas=[0.1]",
    "dpo_epochs=1", "cai_prompts=4", "max_new_tokens=8", "rm_ensemble=2", "progress=false",
]  # fmt: skip


def test_demo_runs_every_stage_and_writes_its_summary_and_report(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", f"output_dir={out}", *MINIATURE)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("rm_accuracy", "annotator_agreement", "gold_reward_max", "sft_gold_spread"):
        assert key in summary
    assert 0.5 <= summary["annotator_agreement"] <= 1.0 and summary["gold_reward_max"] == 1.0
    for policy in ("sft", "best_of_2", "ppo", "dpo", "ppo_no_kl"):
        assert set(summary[policy]) == {"gold_reward", "proxy_reward", "kl"}
        assert 0.0 <= summary[policy]["gold_reward"] <= 1.0
    assert summary["sft"]["kl"] == 0.0
    spread = summary["sft_gold_spread"]
    assert spread["n"] == 256 and spread["min"] <= spread["mean"] <= spread["max"]
    # Labels went through the annotation server's database.
    assert (out / "labels.db").is_file() and summary["labels"]["train"] > 0
    fresh = summary["rm_agreement"]["fresh_pairs"]  # best_of=2: one pair per evaluation prompt
    assert 0 < fresh["pairs"] <= 8 and summary["rm_fresh_expected_accuracy"] is not None
    assert 0 <= fresh["rm_expected_accuracy"] <= fresh["annotator_ceiling"] <= 1
    evaluation = json.loads((out / "eval.json").read_text())
    assert "reference_pool" not in evaluation  # kept out of eval.json
    assert {"sft", "best_of_2", "ppo", "ppo_no_kl", "dpo_beta0.1"} <= set(evaluation["policies"])
    assert "report" in summary["timings_s"]  # written again after the report
    # every time is rounded to 0.1 s, so each (and the total) is off by at most 0.05 s
    timings = summary["timings_s"].values()
    assert summary["total_s"] >= sum(timings) - 0.05 * (len(timings) + 1)
    # summary.json's `dpo` is the β = 0.1 run, which eval.json and the report list once.
    assert "dpo" not in evaluation["policies"]
    assert summary["dpo"]["kl"] == evaluation["policies"]["dpo_beta0.1"]["kl"]
    # rm_ensemble=2: two heads, whose disagreement every sampled policy's row reports.
    for name in ("sft", "ppo", "ppo_no_kl", "dpo_beta0.1"):
        assert evaluation["policies"][name]["ensemble_disagreement"] >= 0.0
    page = (out / "report.html").read_text()
    assert "Reward–KL frontier" in page and "data:image/png;base64," in page
    table = result.stdout + result.stderr  # the final table, its title and last row
    assert "rlhfkit demo — the embedded world" in table and "best reachable" in table
    _renders_in_chromium_without_errors(out / "report.html", tmp_path)


def test_reward_model_on_fresh_pairs_by_hand():
    """Pairs are samples (0, 1), (2, 3), ... of one prompt: with n = 3 samples per prompt the
    third is left unpaired, and identical responses make no pair. The pool below (2 prompts x 3
    samples) so gives 2 pairs: prompt a's (good, rude) and prompt b's (rude, good), where good
    is the right sum and rude a wrong one with an insult; p1, p2 = P(the pair's first response
    is preferred) = pbar, p1 near 1 and p2 near 0. Ceiling = mean max(p, 1 - p) =
    (p1 + 1 - p2) / 2. The proxy orders a right (c = 1: agreement p1) and b wrong (it prefers
    b's rude first response, c = 1: agreement p2), so the expected accuracy is (p1 + p2) / 2; a
    tie on b (c = 1/2: agreement 1/2) gives (p1 + 1/2) / 2."""
    from rlhfkit.recipes.demo import reward_model_on_fresh_pairs
    from rlhfkit.synthetic import default_annotators
    from rlhfkit.synthetic.annotators import pool_probabilities

    good, rude = " Sure! 2+3 is 5.", " 7, you idiot."
    prompt_a, prompt_b = "User: What is 2+3?\nBot:", "User: What is 2 plus 3?\nBot:"
    pool = {
        "n": 3,
        "prompts": [prompt_a] * 3 + [prompt_b] * 3,
        "responses": [good, rude, good, rude, good, good],
        "proxy": [1.0, 0.0, 9.0, 5.0, 0.0, 9.0],  # the third sample of each prompt is unpaired
    }
    pairs = [(prompt_a, good, rude), (prompt_b, rude, good)]
    p1, p2 = pool_probabilities(pairs, default_annotators())
    assert p1 > 0.95 and p2 < 0.05
    result = reward_model_on_fresh_pairs(pool)
    assert result["pairs"] == 2
    assert result["annotator_ceiling"] == approx((p1 + 1 - p2) / 2)
    assert result["rm_expected_accuracy"] == approx((p1 + p2) / 2)
    pool["proxy"][3] = pool["proxy"][4] = 2.0  # a tie on b
    assert reward_model_on_fresh_pairs(pool)["rm_expected_accuracy"] == approx((p1 + 0.5) / 2)
    assert reward_model_on_fresh_pairs({**pool, "responses": [good] * 6}) == {"pairs": 0}


def _renders_in_chromium_without_errors(report: Path, tmp_path: Path) -> None:
    """Open the report from disk in headless Chromium with the network cut off: no console or
    page errors, every plot decoded (naturalWidth > 0), and a full-page screenshot."""
    sync_playwright = playwright_or_skip()
    errors: list[str] = []
    shots = Path(os.environ.get("RLHFKIT_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        page.screenshot(path=str(shots / "demo_report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert len(images) >= 3 and all(width > 0 for width in images), images
    assert (shots / "demo_report.png").stat().st_size > 10_000


def test_quick_demo_aligns_and_shows_reward_hacking(tmp_path):
    """`rlhfkit demo --quick` (its real settings, ~3 minutes): what its quality bar can check at
    this size. The full run's bar (RM within 3 points of the annotators' ceiling, PPO and DPO
    closing half of the gap to the best gold reward, the no-KL gold falling below the SFT
    policy's while its proxy rises) is measured by running `make demo` and reported in
    docs/demo.md. The quick run trains 4x less SFT on 3x fewer pairs, and what this test checks
    must hold for other seeds and other platforms' numerics too, not only for seed 0 here:

    * its held-out preference set is ~38 pairs, so the RM's accuracy there swings by +-0.08
      (measured 0.61 for seed 0, 0.45 for seed 0 under torch 2.11, 0.34 for seed 1, 0.63 for
      seed 2, while best-of-16 picked better responses in all four; these four runs predate the
      learned tokenizer, with which seed 0 gives 0.58): the reward model is checked by best-of-16;
    * no-KL steps of 32 rollouts: with the byte tokenizer 12 of them did not reliably take the
      gold reward below the SFT policy's (gold change -0.07, +0.01, +0.05, +0.10 in the same
      four runs); with the learned tokenizer 12 did for seeds 0 and 1 (-0.09, -0.22) but not
      for seed 2 (+0.03: its training gold peaked at step 4 and was sliding), so the quick run
      takes 16 (session 12): -0.11, -0.26, -0.03 for seeds 0, 1, 2, while the proxy climbs far
      (+0.9 to +3.1 reward-model std), further from the SFT policy than PPO goes, and the KL of
      its training rollouts passes 10 nats, which the diagnostics flag: all of that is checked;
    * DPO's 4 epochs raise the gold reward clearly (+0.10, +0.11, +0.08 for seeds 0, 1, 2):
      checked;
    * PPO: 8 steps gained gold unreliably (+0.18 for seed 0, +0.03 for seed 1), so the quick run
      takes 16 (session 12): +0.24, +0.16, +0.20 for seeds 0, 1, 2; checked with a margin of
      0.05, and that it moved up the proxy."""
    out = tmp_path / "quick"
    run_cli("demo", "--quick", f"output_dir={out}", "progress=false", timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    sft, ppo, best = summary["sft"], summary["ppo"], summary["best_of_16"]
    print({k: summary[k] for k in ("sft", "best_of_16", "ppo", "dpo", "ppo_no_kl", "rm_accuracy")})
    assert 0 <= summary["rm_accuracy"] <= 1 and 0 < summary["annotator_agreement"] <= 1
    agreement = summary["rm_agreement"]  # noise-free in the labels; the ceiling bounds it
    assert 0 < agreement["rm_expected_accuracy"] <= agreement["annotator_ceiling_same_pairs"] <= 1
    assert best["gold_reward"] > sft["gold_reward"]  # the reward model picks better responses
    assert ppo["kl"] > 0 and ppo["proxy_reward"] > sft["proxy_reward"]  # PPO moved, up the proxy
    assert ppo["gold_reward"] > sft["gold_reward"] + 0.05  # and the gold reward with it
    assert summary["dpo"]["gold_reward"] > sft["gold_reward"]
    no_kl = summary["ppo_no_kl"]
    assert no_kl["proxy_reward"] > sft["proxy_reward"] + 0.5 and no_kl["kl"] > ppo["kl"]
    assert no_kl["gold_reward"] < sft["gold_reward"]  # gold falls while the proxy rises
    warnings = json.loads((out / "eval.json").read_text())["warnings"]
    assert any(w["message"].startswith("ppo_no_kl:") for w in warnings), warnings


def test_a_quick_demo_after_a_full_one_removes_the_dpo_runs_it_does_not_sweep(tmp_path):
    """The report plots every run under the output directory: a full demo's dpo_beta0.05 and
    dpo_beta0.5 left beside a quick demo's dpo_beta0.1 showed as current curves. Runs of β not
    in the sweep are removed; the swept one and directories that are not runs stay."""
    from rlhfkit.recipes.demo import _remove_stale_sweep

    for name in ("dpo_beta0.05", "dpo_beta0.1", "dpo_beta0.5"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "dpo_beta_notes").mkdir()  # not a run: no metrics.jsonl
    _remove_stale_sweep(tmp_path, [0.1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo_beta0.1", "dpo_beta_notes"]


def test_the_ceiling_is_of_the_very_pairs_the_reward_model_is_scored_on(tmp_path):
    """A pair given twice is labelled once (the annotation store merges it), and a copy in
    swapped order is its own item that the held-out split may pull into the exported eval set:
    the ceiling was taken on the held-out draw, not on those records. 20 pairs, each given
    twice, and 5 of them once more swapped: 25 items, 20 reported as duplicates (they were
    called "ties"), and the ceiling is of exactly the eval records."""
    from rlhfkit.recipes.demo import DemoConfig, label_preferences
    from rlhfkit.synthetic import agreement_ceiling, default_annotators

    answers = [" Sure! 2+3 is 5.", " 7, you idiot.", " It is 5.", " Five."]
    base = [
        {"prompt": f"User: What is 2+{k}?\nBot:", "responses": [answers[i], answers[j]]}
        for k in range(5) for i, j in ((0, 1), (0, 2), (1, 3), (2, 3))
    ]  # fmt: skip
    pairs = base + base + [{**p, "responses": p["responses"][::-1]} for p in base[:5]]
    labels = label_preferences(DemoConfig(seed=3), pairs, tmp_path)
    assert labels["duplicates"] == 20 and labels["train"] + labels["eval"] == 25
    held_out = [json.loads(line) for line in (tmp_path / "preferences_eval.jsonl").open()]
    triples = [(r["prompt"], r["chosen"], r["rejected"]) for r in held_out]
    assert labels["annotator_agreement"] == approx(agreement_ceiling(triples, default_annotators()))
    # Two annotators agree less often than the best classifier agrees with their labels.
    assert 0.5 < labels["inter_annotator_agreement"] < labels["annotator_agreement"]


def test_quick_changes_only_the_keys_left_at_their_defaults():
    """`--quick ppo_steps=30` used to run 16 PPO steps (quick capped every key it knows)."""
    from rlhfkit.config import load_config
    from rlhfkit.recipes.demo import QUICK, DemoConfig, _scale

    config = _scale(load_config(DemoConfig, overrides=["quick=true", "ppo_steps=30"]))
    assert config.ppo_steps == 30 and config.sft_steps == QUICK["sft_steps"] == 240
    assert config.dpo_betas == [0.1]
    given = _scale(load_config(DemoConfig, overrides=["quick=true", "dpo_betas=[0.05,0.5]"]))
    assert given.dpo_betas == [0.05, 0.5] and given.ppo_steps == 16
    full = _scale(load_config(DemoConfig, overrides=[]))
    assert full.ppo_steps == 40 and full.dpo_betas == [0.05, 0.1, 0.5]
