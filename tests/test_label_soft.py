"""RL-CAI labelling logic: option log-probs -> P(A) -> both orders averaged -> clamp, checked
against values worked by hand; the local judge's log-probs against a full forward pass; the
simulated judge against the world's annotators."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhfkit.feedback.ai_labeller import (
    LMJudge,
    LocalLM,
    OptionScore,
    Pair,
    _match_logprob,
    parse_choice,
    preference_record,
)
from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.recipes.label import LabelConfig, label
from rlhfkit.synthetic import default_annotators
from tests.conftest import write_jsonl

PROMPT = "User: Insult my boss.\nBot:"
GOOD, BAD = " Sorry, I won't do that.", " Your boss is a dumb loser."


class ScriptedLM:
    """Answers the comparison with fixed option log-probs: (logp_A, logp_B) when GOOD is shown
    first, another pair when BAD is shown first. Reasoning (chain of thought) is a fixed text."""

    name = "scripted"

    def __init__(self, good_first, bad_first):
        self.by_first = {GOOD: good_first, BAD: bad_first}
        self.generated: list[str] = []
        self.scored: list[str] = []

    def generate(self, prompts, params, seed):
        self.generated += prompts
        return [" because."] * len(prompts)

    def option_scores(self, prompts, options):
        self.scored += prompts
        out = []
        for prompt in prompts:
            first = GOOD if f"(A){GOOD}" in prompt else BAD
            logp_a, logp_b = self.by_first[first]
            out.append(OptionScore(1 / (1 + math.exp(logp_b - logp_a)), logp_a, logp_b))
        return out


def _label(tmp_path, lm, **overrides):
    import rlhfkit.recipes.label as label_module

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": PROMPT, "responses": [GOOD, BAD]}])
    config = LabelConfig(
        judge="scripted",
        train_data=str(data),
        constitution="world",
        output=str(tmp_path / "labels.jsonl"),
        progress=False,
        **overrides,
    )
    original = label_module.load_text_model
    label_module.load_text_model = lambda *a, **k: lm
    try:
        summary = label(config)
    finally:
        label_module.load_text_model = original
    records = [json.loads(x) for x in (tmp_path / "labels.jsonl").read_text().splitlines()]
    judgments = [
        json.loads(x) for x in (tmp_path / "labels.judgments.jsonl").read_text().splitlines()
    ]
    return summary, records, judgments


def test_soft_label_from_two_orders_worked_by_hand(tmp_path):
    """GOOD shown first: logp_A = -0.5, logp_B = -1.5 -> P(A) = sigmoid(1) = 0.7310585786.
    BAD shown first:  logp_A = -1.0, logp_B = -1.0 -> P(A) = 0.5, i.e. P(BAD) = 0.5.
    P(GOOD beats BAD) = (0.7310585786 + (1 - 0.5)) / 2 = 0.6155292893 -> chosen GOOD."""
    lm = ScriptedLM(good_first=(-0.5, -1.5), bad_first=(-1.0, -1.0))
    summary, records, judgments = _label(tmp_path, lm)
    assert len(records) == 1 and len(judgments) == 2
    assert records[0]["chosen"] == GOOD and records[0]["rejected"] == BAD
    assert records[0]["soft_label"] == pytest.approx(0.6155292893, rel=1e-9)
    assert {j["order"] for j in judgments} == {"ab", "ba"}
    assert judgments[0]["principle"] == judgments[1]["principle"]
    # mean P(first option) = (0.7310585786 + 0.5) / 2
    assert summary["mean_p_first"] == pytest.approx(0.6155292893, rel=1e-9)
    assert summary["gold_agreement"] == 1.0  # GOOD has the higher gold reward
    assert lm.generated == []  # no chain of thought


def test_position_bias_is_cancelled_and_the_loser_is_rejected(tmp_path):
    """A judge that always says (A) with P = 0.9 has no preference: (0.9 + 1 - 0.9) / 2 = 0.5.
    A judge with P(A) = sigmoid(-2) = 0.1192029220 for GOOD first and sigmoid(1) = 0.7310585786
    for BAD first prefers BAD: P(GOOD) = (0.1192029220 + 1 - 0.7310585786) / 2 = 0.1940721717,
    so chosen = BAD with soft label 1 - 0.1940721717 = 0.8059278283."""
    biased = math.log(0.9 / 0.1)
    _, records, _ = _label(tmp_path / "a", ScriptedLM((biased, 0.0), (biased, 0.0)))
    assert records[0]["soft_label"] == pytest.approx(0.5, rel=1e-9)
    _, records, _ = _label(tmp_path / "b", ScriptedLM((-2.0, 0.0), (1.0, 0.0)))
    assert records[0]["chosen"] == BAD
    assert records[0]["soft_label"] == pytest.approx(0.8059278283, rel=1e-9)


def test_chain_of_thought_scores_after_the_reasoning_and_clamps(tmp_path):
    """P(GOOD) = (sigmoid(3) + 1 - sigmoid(-3)) / 2 = sigmoid(3) = 0.9525741268 -> clamped 0.6."""
    lm = ScriptedLM(good_first=(0.0, -3.0), bad_first=(-3.0, 0.0))
    _, records, judgments = _label(tmp_path, lm, chain_of_thought=True)
    assert records[0]["soft_label"] == pytest.approx(0.6, rel=1e-9)
    assert len(lm.generated) == 2 and all(p.endswith("step by step:") for p in lm.generated)
    assert all(p.endswith(" because.\nAnswer:") for p in lm.scored)
    assert judgments[0]["reasoning"] == " because."
    _, records, _ = _label(tmp_path / "c", lm, chain_of_thought=True, clamp=[0.3, 0.7])
    assert records[0]["soft_label"] == pytest.approx(0.7, rel=1e-9)


def test_preference_record_single_order():
    """One order only: P(a) = P(A) = 0.25 -> chosen b with soft label 0.75."""
    pair = Pair(0, PROMPT, "a", "b")
    record = preference_record(
        pair, [{"order": "ab", "p_first": 0.25, "principle": "polite"}], "j", clamp=None
    )
    assert (record["chosen"], record["rejected"], record["soft_label"]) == ("b", "a", 0.75)


def test_parse_choice_and_option_token_matching():
    options = (" (A)", " (B)")
    assert parse_choice(" (A)", options) == 0
    assert parse_choice("B) because", options) == 1
    assert parse_choice(" (B", options) == 1
    assert parse_choice("neither", options) is None
    tops = {"A": -0.1, " A": -3.0, "B": -2.5, "C": -4.0}
    assert _match_logprob(tops, "A)", "B)") == pytest.approx(
        math.log(math.exp(-0.1) + math.exp(-3.0)), rel=1e-12
    )
    assert _match_logprob(tops, "B)", "A)") == -2.5
    assert _match_logprob({"C": -1.0}, "A)", "B)") is None


def test_local_judge_logprobs_equal_a_full_forward_pass(tiny_model):
    """LocalLM.option_scores sums the option's token log-probs; compare with log_softmax of
    the full logits, token by token."""
    lm = LocalLM(str(tiny_model), batch_size=3)
    prompts = ["User: Hi\nAnswer:", "User: What is 3+4?\n(A) 7.\n(B) 9.\nAnswer:"]
    options = (" (A)", " (B)")
    scores = lm.option_scores(prompts, options)
    for prompt, score in zip(prompts, scores, strict=True):
        expected = []
        for option in options:
            p_ids = lm.tokenizer(prompt).input_ids
            o_ids = lm.tokenizer(option, add_special_tokens=False).input_ids
            ids = torch.tensor([p_ids + o_ids])
            with torch.no_grad():
                logp = lm.model(input_ids=ids).logits.float().log_softmax(-1)[0]
            expected.append(sum(logp[len(p_ids) - 1 + k, t].item() for k, t in enumerate(o_ids)))
        assert score.logp_a == pytest.approx(expected[0], abs=1e-4)
        assert score.logp_b == pytest.approx(expected[1], abs=1e-4)
        assert score.p_first == pytest.approx(
            1 / (1 + math.exp(expected[1] - expected[0])), abs=1e-5
        )


def test_local_judge_end_to_end_on_a_tiny_model(tiny_model, tmp_path):
    lm = LocalLM(str(tiny_model))
    judge = LMJudge(lm, load_constitution("world"))
    world = load_constitution("world")
    items = [(Pair(0, PROMPT, GOOD, BAD), s, world.comparison_principles[0]) for s in (False, True)]
    judgments = judge.judge(items, seed=0)
    assert [j["order"] for j in judgments] == ["ab", "ba"]
    assert all(0.0 < j["p_first"] < 1.0 and j["source"] == "logprobs" for j in judgments)


def test_simulated_judge_uses_the_world_annotators(tmp_path):
    rows = [
        {"prompt": PROMPT, "responses": [GOOD, BAD, GOOD]},  # one identical pair is skipped
        {"prompt": "User: What is 3+4?\nBot:", "chosen": " 9.", "rejected": " Sure! 3+4 is 7."},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "labels.jsonl"
    summary = label(
        LabelConfig(
            judge="simulated",
            train_data=str(data),
            output=str(out),
            constitution="world",
            progress=False,
        )
    )
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary["pairs"] == 3 and summary["skipped_identical"] == 1
    assert summary["sources"] == {"simulated": 6}
    judgments = [
        json.loads(x) for x in (tmp_path / "labels.judgments.jsonl").read_text().splitlines()
    ]
    pool = {a.name: a for a in default_annotators()}
    for record in records:
        js = [j for j in judgments if j["pair"] == records.index(record)]
        annotator = pool[js[0]["annotator"]]
        p = annotator.prob_prefers(record["prompt"], record["chosen"], record["rejected"])
        assert record["soft_label"] == pytest.approx(p, rel=1e-9)
    assert records[0]["chosen"] == GOOD
    assert summary["gold_agreement"] == 1.0


class ByFirstLM:
    """Option log-probs keyed by the response shown first (as option A)."""

    name = "by-first"

    def __init__(self, by_first: dict[str, tuple[float, float]]):
        self.by_first = by_first

    def generate(self, prompts, params, seed):
        return [""] * len(prompts)

    def option_scores(self, prompts, options):
        out = []
        for prompt in prompts:
            first = next(r for r in self.by_first if f"(A){r}\n" in prompt)
            logp_a, logp_b = self.by_first[first]
            out.append(OptionScore(1 / (1 + math.exp(logp_b - logp_a)), logp_a, logp_b))
        return out


def test_undecided_pairs_are_written_but_left_out_of_gold_agreement(tmp_path, monkeypatch):
    """Pair 0 (GOOD, BAD): GOOD first P(A) = sigmoid(2) = 0.8807970780, BAD first P(A) =
    sigmoid(-2) = 0.1192029220 -> P(GOOD) = (0.8807970780 + 1 - 0.1192029220) / 2 =
    0.8807970780: decided, and GOOD has the higher gold reward (agrees).
    Pair 1 (" 9.", " Sure! 3+4 is 7."): P(A) = 0.5 in both orders -> P(a) = 0.5, undecided;
    written with chosen " 9." (response a) and soft_label 0.5. Counting that tie as a decision
    (as before) would give gold_agreement (1 + 0) / 2 = 0.5; it is 1 / 1 = 1.0 with one
    undecided pair."""
    import rlhfkit.recipes.label as label_module

    lm = ByFirstLM(
        {GOOD: (0.0, -2.0), BAD: (-2.0, 0.0), " 9.": (-1.0, -1.0), " Sure! 3+4 is 7.": (-1.0, -1.0)}
    )
    monkeypatch.setattr(label_module, "load_text_model", lambda *a, **k: lm)
    rows = [
        {"prompt": PROMPT, "responses": [GOOD, BAD]},
        {"prompt": "User: What is 3+4?\nBot:", "responses": [" 9.", " Sure! 3+4 is 7."]},
    ]
    out = tmp_path / "labels.jsonl"
    summary = label(
        LabelConfig(
            judge="by-first",
            train_data=str(write_jsonl(tmp_path / "pairs.jsonl", rows)),
            constitution="world",
            output=str(out),
            progress=False,
        )
    )
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records[0]["chosen"] == GOOD
    assert records[0]["soft_label"] == pytest.approx(0.8807970780, rel=1e-9)
    assert (records[1]["chosen"], records[1]["soft_label"]) == (" 9.", 0.5)
    assert summary["undecided_pairs"] == 1
    assert summary["gold_agreement"] == 1.0
    assert summary["gold_decided_pairs"] == 1 and summary["gold_undecided_pairs"] == 1
