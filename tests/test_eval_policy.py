"""Policy-evaluation arithmetic, diagnostics and the HTML report."""

from __future__ import annotations

import json
import math
import statistics

import matplotlib.pyplot as plt
import pytest
import torch

from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.eval import report
from rlhfkit.eval.diagnostics import (
    disagreement_growth,
    ensemble_disagreement,
    kl_growth,
    length_correlation,
    proxy_gold_divergence,
    trend,
)
from rlhfkit.eval.policy_eval import (
    best_of_n_curve,
    best_of_n_kl,
    curve_checks,
    evaluate_against_reference,
    pearson,
    response_logprob_sums,
    run_curve,
    sample_policy,
    training_diagnostics,
    win_rate,
)
from rlhfkit.eval.report import _same_points, curve_points, needs_log_kl_axis, write_report
from rlhfkit.models.logprobs import sequence_logprobs
from rlhfkit.models.presets import build_preset

CHAT_PROMPT = [{"role": "user", "content": "Name a fruit."}]
CHAT_TEXT = "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"


def test_best_of_n_kl_by_hand():
    """log n - (n-1)/n: n=1 → 0; n=2 → 0.6931472 - 0.5 = 0.1931472; n=4 → 1.3862944 - 0.75."""
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.1931472, rel=1e-6)
    assert best_of_n_kl(4) == pytest.approx(0.6362944, rel=1e-6)


def test_best_of_n_up_to_64_by_hand():
    """One prompt, 64 candidates with proxy = gold = i (i = 0..63): best-of-n by the proxy
    keeps candidate n - 1, so gold = proxy = n - 1 for n = 1, 2, 4, ..., 64, and the KL of n=64
    is log 64 - 63/64 = 4.1588831 - 0.984375 = 3.1745081 (`rlhfkit eval`'s default n)."""
    scores = [float(i) for i in range(64)]
    ns = [1, 2, 4, 8, 16, 32, 64]
    curve = best_of_n_curve([scores], [scores], ns)
    assert [row["gold_reward"] for row in curve] == [n - 1 for n in ns]
    assert [row["proxy_reward"] for row in curve] == [n - 1 for n in ns]
    assert curve[-1]["kl"] == pytest.approx(3.1745081, rel=1e-7)


def test_win_rate_counts_ties_half():
    """Scores (3, 1, 2) vs (1, 1, 5): win, tie, loss → (1 + 0.5 + 0) / 3 = 0.5."""
    assert win_rate([3, 1, 2], [1, 1, 5]) == pytest.approx(0.5)


def test_best_of_n_picks_the_proxy_best_and_reports_its_gold():
    """Prompt 1: proxy (0, 2, 1, 3), gold (10, 20, 30, 40); prompt 2: proxy (5, 0, 0, 0), gold
    (1, 2, 3, 4). n=1 → first: gold (10 + 1)/2 = 5.5; n=2 → indices (1, 0): gold (20 + 1)/2 = 10.5;
    n=4 → indices (3, 0): gold (40 + 1)/2 = 20.5, proxy (3 + 5)/2 = 4."""
    curve = best_of_n_curve(
        [[0, 2, 1, 3], [5, 0, 0, 0]], [[10, 20, 30, 40], [1, 2, 3, 4]], [1, 2, 4]
    )
    assert [r["gold_reward"] for r in curve] == [5.5, 10.5, 20.5]
    assert curve[2]["proxy_reward"] == 4.0 and curve[0]["kl"] == 0.0


def test_pearson_and_trend():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0
    assert trend([0, 1, 2, 3]) == pytest.approx(1.0)


def test_diagnostics_flag_divergence_and_only_then():
    """Window 1/4 of 8 steps = 2 steps. Proxy means 0.15 → 0.75 (up). Gold (0.5, 0.6, ..., 0.3,
    0.2): means 0.55 → 0.25, a fall of 0.30 > 0.02: flagged. Gold ending at 0.54 (fall 0.01 <
    0.02) or rising is not."""
    proxy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    flagged = proxy_gold_divergence(proxy, [0.5, 0.6, 0.6, 0.5, 0.4, 0.4, 0.3, 0.2])
    assert flagged is not None and flagged["gold"] == pytest.approx([0.55, 0.25])
    assert proxy_gold_divergence(proxy, [0.5, 0.6, 0.6, 0.5, 0.4, 0.4, 0.54, 0.54]) is None
    assert proxy_gold_divergence(proxy, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) is None
    assert length_correlation(0.8) is not None and length_correlation(0.1) is None
    assert kl_growth([1, 5, 9, 14, 20]) is not None and kl_growth([1, 1, 1, 1]) is None


def test_ensemble_disagreement_is_flagged_against_the_reference():
    """Flag when std >= 2 x the reference's and std >= 0.1: 0.30 vs 0.10 (3x, >= 0.1) is
    flagged; 0.15 vs 0.10 (1.5x) is not; 0.03 vs 0.01 (3x but under the 0.1 floor) is not.
    Without a reference only std >= 5 x 0.1 = 0.5 is flagged."""
    flagged = ensemble_disagreement(0.30, 0.10)
    assert flagged is not None and flagged["reference_std"] == 0.10
    assert "0.30" in flagged["message"] and "0.10" in flagged["message"]
    assert ensemble_disagreement(0.15, 0.10) is None
    assert ensemble_disagreement(0.03, 0.01) is None
    assert ensemble_disagreement(0.5) is not None and ensemble_disagreement(0.49) is None


def test_disagreement_growth_compares_the_last_quarter_with_the_first():
    """8 steps, window 2: (0.05, 0.07) → mean 0.06 at the start; (0.13, 0.15) → 0.14 at the end:
    2.33x and >= 0.1: flagged. Ending at (0.11, 0.11) = 0.11 is 1.83x: not flagged. From (0.02,
    0.02) to (0.06, 0.06): 3x but under the 0.1 floor: not flagged. Fewer than 4 steps: no
    judgement."""
    middle = [0.08, 0.09, 0.10, 0.11]
    flagged = disagreement_growth([0.05, 0.07, *middle, 0.13, 0.15])
    assert flagged is not None and flagged["disagreement"] == pytest.approx([0.06, 0.14])
    assert "0.06 → 0.14" in flagged["message"]
    assert disagreement_growth([0.05, 0.07, *middle, 0.11, 0.11]) is None
    assert disagreement_growth([0.02, 0.02, 0.03, 0.04, 0.05, 0.05, 0.06, 0.06]) is None
    assert disagreement_growth([0.01, 0.5, 0.9]) is None


def test_samples_scored_by_an_ensemble_give_the_heads_mean_and_std(tmp_path):
    """A 2-head reward model whose heads read the same last hidden state h with weights w and
    -w + 2u: rewards r1 = w.h, r2 = -w.h + 2 u.h, so the reward (their mean) is u.h and the
    heads' population std is |r1 - r2| / 2 = |w.h - u.h|; checked against score_heads."""
    from rlhfkit.eval.policy_eval import PolicySamples
    from rlhfkit.models.presets import build_preset
    from rlhfkit.models.reward_model import (
        build_reward_model,
        load_reward_scorer,
        save_reward_model,
    )

    base, tokenizer = build_preset("tiny", seed=0)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = build_reward_model(str(tmp_path / "base"), num_heads=2)
    head = model.head().weight  # (2, d)
    with torch.no_grad():
        w, u = torch.randn(head.shape[1]), torch.randn(head.shape[1])
        head.copy_(torch.stack([w, -w + 2 * u]))
    save_reward_model(model, tokenizer, tmp_path / "rm")
    scorer = load_reward_scorer(tmp_path / "rm")
    samples = PolicySamples(
        prompts=["User: What is 3+4?\nBot:", "User: Name a fruit.\nBot:"],
        responses=[" Sure! 3+4 is 7.", " Sure, how about a pear."],
        prompt_ids=[[1], [1]],
        response_ids=[[1], [1]],
    )
    rewards, stds = samples.score_and_disagreement(scorer)
    heads = scorer.score_heads(samples.prompts, samples.responses)
    for reward, std, (r1, r2) in zip(rewards, stds, heads, strict=True):
        assert reward == pytest.approx((r1 + r2) / 2)
        assert std == pytest.approx(abs(r1 - r2) / 2)
    # A plain reward function has no heads: no disagreement.
    assert samples.score_and_disagreement(lambda p, r: [0.0] * len(r))[1] is None


def test_response_logprob_sums_match_the_full_softmax():
    model, tokenizer = build_preset("tiny", seed=2)
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    sums = response_logprob_sums(model, prompts, responses, tokenizer.pad_token_id)
    for p, r, s in zip(prompts, responses, sums, strict=True):
        ids = torch.tensor([p + r])
        mask = torch.tensor([[0] * len(p) + [1] * len(r)])
        with torch.no_grad():
            expected = float(sequence_logprobs(model, ids, mask).sum())
        assert s == pytest.approx(expected, abs=1e-4)


def _tempered_sum(model, prompt_ids, response_ids, temperature):
    """Σ log softmax(logits / T)[token] over the response, from the full logits (by hand)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float() / temperature  # (T-1, V)
    logps = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)  # (T-1,)
    return float(logps[len(prompt_ids) - 1 :].sum())


def test_response_logprob_sums_at_a_temperature_are_the_tempered_distribution():
    model, tokenizer = build_preset("tiny", seed=2)
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    sums = response_logprob_sums(model, prompts, responses, tokenizer.pad_token_id, temperature=0.5)
    for p, r, s in zip(prompts, responses, sums, strict=True):
        assert s == pytest.approx(_tempered_sum(model, p, r, 0.5), abs=1e-4)


def _save_sharp_preset(directory, seed: int):
    """A tiny random model whose logits are scaled x20 (final norm), so its next-token
    distributions are far from uniform and temperature matters."""
    model, tokenizer = build_preset("tiny", seed=seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(20.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model.eval()


def test_eval_at_a_temperature_measures_the_tempered_kl_on_rendered_prompts(tmp_path):
    """Samples drawn at T = 0.5: the KL is the mean of Σ log π_T − log π_ref,T on the policy's own
    samples (k1 on the distribution sampled from), not the untempered log-ratio. A conversation
    prompt is rendered with the chat template, and reward functions get the rendered text."""
    policy = _save_sharp_preset(tmp_path / "policy", seed=1)
    reference = _save_sharp_preset(tmp_path / "reference", seed=2)
    prompts = ["User: hi\nBot:", CHAT_PROMPT]
    seen: list[str] = []

    def proxy(texts, responses):
        seen.extend(texts)
        return [float(len(r)) for r in responses]

    common = {"max_new_tokens": 5, "temperature": 0.5, "top_p": 1.0, "device": "cpu"}
    evaluation = evaluate_against_reference(
        {"policy": str(tmp_path / "policy")}, reference=str(tmp_path / "reference"),
        prompts=prompts, proxy=proxy, best_of=2, seed=3, **common,
    )  # fmt: skip
    # The same samples again (the policies are sampled with seed + 11), to check by hand.
    samples = sample_policy(str(tmp_path / "policy"), prompts, n=1, seed=3 + 11, **common)
    assert samples.prompts == ["User: hi\nBot:", CHAT_TEXT]
    assert samples.prompt_ids[1] == encode_prompt(build_preset("tiny")[1], CHAT_PROMPT)

    def kl_at(temperature):
        return statistics.fmean(
            _tempered_sum(policy, p, r, temperature) - _tempered_sum(reference, p, r, temperature)
            for p, r in zip(samples.prompt_ids, samples.response_ids, strict=True)
        )

    assert evaluation["policies"]["policy"]["kl"] == pytest.approx(kl_at(0.5), abs=1e-4)
    assert abs(kl_at(0.5) - kl_at(1.0)) > 0.1  # the untempered log-ratio is another number
    assert set(seen) == {"User: hi\nBot:", CHAT_TEXT}
    assert [s["prompt"] for s in evaluation["samples"]] == ["User: hi\nBot:", CHAT_TEXT]
    assert evaluation["samples"][1]["responses"]["policy"] == samples.responses[1]


def test_eval_refuses_a_temperature_it_cannot_measure_a_kl_at():
    with pytest.raises(ValueError, match="temperature: evaluation samples"):
        evaluate_against_reference({}, reference="unused", prompts=["x"], proxy=None, temperature=0)


def _rows(steps, gold=None, kl=None, disagreement=None):
    rows = [{"step": 0, "eval_start/score_mean": 0.0}]  # an evaluation row: not a training step
    for i, step in enumerate(steps):
        row = {"step": step, "score_mean": 0.1 * i, "kl": (kl or {}).get(step, 1.0 + i)}
        if gold is not None and gold[i] is not None:
            row["gold_reward_mean"] = gold[i]
        if disagreement is not None:
            row["reward_disagreement"] = disagreement[i]
        rows.append(row)
    return rows


def test_run_curve_keeps_logged_steps_and_writes_no_nan():
    """logging_steps=10: rows at steps 10..40. No gold reward logged: no `gold` curve (not a
    list of NaN); a NaN KL (a diverged step) becomes null; the curve is strict JSON."""
    curve = run_curve(_rows([10, 20, 30, 40], kl={30: float("nan")}))
    assert curve["step"] == [10, 20, 30, 40]
    assert curve["proxy"] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert curve["kl"] == [1.0, 2.0, None, 4.0]
    assert "gold" not in curve
    json.dumps(curve, allow_nan=False)  # raises on NaN or inf
    with_gold = run_curve(_rows([10, 20, 30], gold=[0.5, None, 0.4]))
    assert with_gold["gold"] == [0.5, None, 0.4]


def test_curve_checks_use_the_rows_that_logged_each_value():
    """Gold logged on 4 of 5 rows: proxy (0, .1, .3, .4) against gold (.5, .5, .2, .1) on those
    rows; window 1 row: proxy 0 → 0.4 up, gold 0.5 → 0.1 down: flagged. KL growth needs 4 finite
    values, the last over 10 nats."""
    rows = _rows([1, 2, 3, 4, 5], gold=[0.5, 0.5, None, 0.2, 0.1])
    checks = {c["check"]: c for c in curve_checks(run_curve(rows))}
    assert checks["proxy_gold_divergence"]["gold"] == pytest.approx([0.5, 0.1])
    grown = run_curve(_rows([1, 2, 3, 4], kl={1: 1.0, 2: float("nan"), 3: 8.0, 4: 12.0}))
    assert [c["check"] for c in curve_checks(grown)] == []  # 3 finite KLs: too few to judge
    kl = {1: 1.0, 2: float("nan"), 3: 8.0, 4: 12.0, 5: 15.0}
    grown = run_curve(_rows([1, 2, 3, 4, 5], kl=kl))
    assert [c["check"] for c in curve_checks(grown)] == ["kl_growth"]  # 1, 8, 12, 15: > 10


def test_curve_carries_the_ensemble_disagreement_and_flags_its_growth():
    """A PPO run against an ensemble logs `reward_disagreement`: the curve keeps it (NaN as
    null) and the checks flag 0.05 → 0.2 over 4 steps (window 1 row: 4x, >= 0.1)."""
    curve = run_curve(_rows([1, 2, 3, 4], disagreement=[0.05, float("nan"), 0.1, 0.2]))
    assert curve["disagreement"] == [0.05, None, 0.1, 0.2]
    assert [c["check"] for c in curve_checks(curve)] == []  # 3 finite values: too few
    curve = run_curve(_rows([1, 2, 3, 4], disagreement=[0.05, 0.08, 0.1, 0.2]))
    checks = {c["check"]: c for c in curve_checks(curve)}
    assert checks["disagreement_growth"]["disagreement"] == pytest.approx([0.05, 0.2])
    assert "disagreement" not in run_curve(_rows([1, 2]))


def test_over_optimisation_plot_puts_the_logged_steps_on_its_x_axis(monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "data:image/png;")
    curve = run_curve(_rows([10, 20, 30, 40], gold=[0.5, 0.4, None, 0.2]))
    assert curve_points(curve, "gold") == ([10, 20, 40], [0.5, 0.4, 0.2])
    no_gold = run_curve(_rows([5, 10]))
    assert report.hacking_plot({"curves": {"ppo": curve, "no_gold": no_gold}})
    first, second = figures[0].axes
    assert [list(line.get_xdata()) for line in first.lines] == [[10, 20, 30, 40], [10, 20, 40]]
    assert [line.get_label() for line in first.lines] == ["proxy", "gold"]
    assert [list(line.get_xdata()) for line in second.lines] == [[5, 10]]
    assert first.get_xlabel() == "step"
    # An older eval.json without steps: the rows' index, labelled as such.
    assert curve_points({"proxy": [1.0, 2.0]}, "proxy") == ([0, 1], [1.0, 2.0])
    plt.close(figures[0])


def test_report_is_self_contained_and_escapes_model_text(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    )
    best_of_n = [
        {"n": n, "kl": best_of_n_kl(n), "proxy_reward": math.log(n), "gold_reward": 0.4}
        for n in (1, 2, 4)
    ]
    responses = {"sft": "<script>alert(1)</script>", "ppo": "ok"}
    sample = {"prompt": "User: hi\nBot:", "responses": responses}
    evaluation = {
        "policies": {"sft": {"gold_reward": 0.4, "proxy_reward": 0.0, "kl": 0.0},
                     "ppo": {"gold_reward": 0.8, "proxy_reward": 1.2, "kl": 3.0},
                     "dpo": {"gold_reward": 0.6, "proxy_reward": 0.5, "kl": 0.9},
                     "dpo_beta0.1": {"gold_reward": 0.6, "proxy_reward": 0.5, "kl": 0.9}},
        "best_of_n": best_of_n,
        "samples": [sample],
        "warnings": [{"check": "x", "message": "proxy rising while gold falls"}],
        "curves": {"ppo_no_kl": {"proxy": [0, 1, 2], "gold": [0.5, 0.4, 0.2]}},
    }  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    page = write_report(tmp_path).read_text()
    assert (
        "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    )
    assert page.count("data:image/png;base64,") == 4  # frontier, best-of-n, hacking, sft curves
    assert "http://" not in page and "https://" not in page
    assert "proxy rising while gold falls" in page
    # The final-numbers table leads with gold, proxy and KL.
    assert "<th>policy</th><th>gold_reward</th><th>proxy_reward</th><th>kl</th>" in page


def test_frontier_axis_turns_logarithmic_for_one_far_off_policy():
    """Largest KL 600 against a next of 2.1: 600 > 10 x 2.1, log axis. 15 against 2: 15 < 20,
    linear. 9 against 0.5: the next counts as at least 1 nat, 9 < 10, linear. One policy: linear."""
    assert needs_log_kl_axis([0.0, 1.8, 2.1, 600.0])
    assert not needs_log_kl_axis([0.0, 2.0, 15.0])
    assert not needs_log_kl_axis([0.0, 0.5, 9.0])
    assert needs_log_kl_axis([0.0, 0.5, 10.5])
    assert not needs_log_kl_axis([600.0])


def test_frontier_merges_policies_at_the_same_point():
    """The demo's `dpo` is its `dpo_beta0.1` run: one legend entry, both names."""
    points = [
        ("sft", {"kl": 0.0, "gold_reward": 0.44}),
        ("dpo_beta0.1", {"kl": 0.8410878, "gold_reward": 0.5922}),
        ("ppo", {"kl": 2.1, "gold_reward": 0.71}),
        ("dpo", {"kl": 0.8410878, "gold_reward": 0.5922}),
    ]
    assert list(_same_points(points).values()) == [["sft"], ["dpo_beta0.1", "dpo"], ["ppo"]]


def test_training_paths_keep_the_steps_that_logged_both_kl_and_gold():
    """Steps 1-4 logged KL (0, 1, None, 3) and gold (0.4, None, 0.5, 0.6): only steps 1 and 4
    have both, so the path is KL [0, 3], gold [0.4, 0.6]. A run with one such step draws no
    path, nor does one without gold."""
    from rlhfkit.eval.report import training_paths

    evaluation = {
        "curves": {
            "ppo": {"kl": [0.0, 1.0, None, 3.0], "gold": [0.4, None, 0.5, 0.6], "proxy": [0] * 4},
            "short": {"kl": [0.0, None], "gold": [0.4, 0.5], "proxy": [0, 0]},
            "no_gold": {"kl": [0.0, 1.0], "proxy": [0, 0]},
        }
    }
    assert training_paths(evaluation) == {"ppo": ([0.0, 3.0], [0.4, 0.6])}
    # Smoothed over 2 steps: KL [0, (0 + 3) / 2], gold [0.4, (0.4 + 0.6) / 2].
    smoothed = training_paths(evaluation, smooth=2)["ppo"]
    assert smoothed == (pytest.approx([0.0, 1.5]), pytest.approx([0.4, 0.5]))


def test_moving_average_by_hand():
    """Width 3 over 1, 2, 3, 4, 5: 1, (1+2)/2, (1+2+3)/3, (2+3+4)/3, (3+4+5)/3."""
    from rlhfkit.eval.report import moving_average

    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([1, 1.5, 2, 3, 4])
    assert moving_average([2.0, 4.0], 1) == [2.0, 4.0]


def test_policy_names_are_their_stages_and_never_collide():
    """`runs/ppo/model` is named ppo and `runs/dpo` dpo (both used to be "runs", one row lost);
    two directories of one stage name fall back to their paths; an explicit name given twice,
    or the reference's or a best-of-n row's, is refused in one line."""
    from rlhfkit.errors import ConfigError
    from rlhfkit.recipes.evaluate import policy_names

    assert policy_names(["runs/ppo/model", "runs/dpo"], "sft") == {
        "ppo": "runs/ppo/model",
        "dpo": "runs/dpo",
    }
    assert policy_names(["a/ppo/model", "b/ppo/model"], "sft") == {
        "ppo": "a/ppo/model",
        "b/ppo/model": "b/ppo/model",
    }
    assert policy_names(["x=runs/sft/model"], "sft") == {"x": "runs/sft/model"}
    assert policy_names(["runs/sft/model"], "sft") == {"runs/sft/model": "runs/sft/model"}
    for bad in (["a=x", "a=y"], ["sft=x"], ["best_of_16=x"]):
        with pytest.raises(ConfigError, match="name each policy as NAME=DIR"):
            policy_names(bad, "sft")


def test_a_run_directory_stands_for_the_model_it_exported(tmp_path, monkeypatch):
    """docs: `runs/ppo` and `runs/ppo/model` are both the policy ppo; `runs/ppo` was passed on
    as it is and failed to load (no tokenizer there) after the other models had loaded."""
    from rlhfkit.recipes.evaluate import policy_names, run_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "ppo" / "model").mkdir(parents=True)
    (tmp_path / "runs" / "ppo" / "model" / "config.json").write_text("{}")
    assert policy_names(["runs/ppo"], "sft") == {"ppo": "runs/ppo/model"}
    assert run_model("runs/ppo/model") == "runs/ppo/model"
    assert run_model("Qwen/Qwen2-0.5B") == "Qwen/Qwen2-0.5B"  # a hub id is itself


def test_diagnostics_read_a_metrics_log_with_a_torn_last_line(tmp_path):
    """A killed run's metrics.jsonl may end mid-line; `rlhfkit eval diagnose_runs=` read it with
    json.loads per line and failed after all its sampling. The torn line is left out."""
    run = tmp_path / "ppo"
    run.mkdir()
    rows = [{"step": s, "score_mean": 0.1 * s, "kl": 0.01 * s} for s in (1, 2)]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "score_me'
    )
    curves, _ = training_diagnostics({"ppo": run})
    assert curves["ppo"]["step"] == [1, 2]


def test_report_errors_are_one_line_and_a_missing_output_directory_is_made(tmp_path):
    """A corrupt or non-object eval.json names the file (was JSONDecodeError/AttributeError);
    `output=` in a directory that does not exist yet is created (was FileNotFoundError); a
    sample whose response is null renders as empty."""
    from rlhfkit.errors import ConfigError

    root = tmp_path / "runs"
    root.mkdir()
    evaluation = {"policies": {"sft": {"gold_reward": float("nan")}},
                  "samples": [{"prompt": "p", "responses": {"sft": None}}]}  # fmt: skip
    from rlhfkit.data.io import write_json

    write_json(root / "eval.json", evaluation)
    assert json.loads((root / "eval.json").read_text())["policies"]["sft"]["gold_reward"] is None
    out = write_report(root, tmp_path / "new" / "dir" / "report.html")
    assert out.is_file()
    for text, problem in (("{not json", "not valid JSON"), ("[]", "expected a JSON object")):
        (root / "eval.json").write_text(text)
        with pytest.raises(ConfigError, match=rf"eval\.json: {problem}"):
            write_report(root)
