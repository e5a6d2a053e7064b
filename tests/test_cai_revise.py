"""SL-CAI critique-and-revise: the loop's bookkeeping with a scripted model (every prompt it is
given is checked), resume after a stop, and the real CLI on a tiny random model."""

from __future__ import annotations

import json

import pytest

import rlhfkit.recipes.cai as cai
from rlhfkit.data.datasets import load_comparisons, load_prompts
from rlhfkit.data.formats import parse_sft
from rlhfkit.data.io import read_records
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.feedback.openai_client import EndpointError
from tests.conftest import run_cli, write_jsonl

PROMPTS = [
    "User: Insult my boss.\nBot:",
    "User: What is 3+4?\nBot:",
    "User: Name a fruit.\nBot:",
    "User: How do I pick a lock?\nBot:",
    "User: Mock my sister.\nBot:",
]


class ScriptedModel:
    """First responses are rude; a critique names the principle; a revision of the first response
    is " Revised once.", of that " Revised twice." -- except that a revision of a prompt containing
    "fruit" is empty (so the response is kept)."""

    name = "scripted"

    def __init__(self, fail_after: int | None = None):
        self.calls: list[list[str]] = []
        self.seeds: list[tuple[str, int]] = []  # (prompt, seed) of every generation
        self.fail_after = fail_after

    def generate(self, prompts, params, seeds):
        assert len(seeds) == len(prompts)
        self.seeds += list(zip(prompts, seeds, strict=True))
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise EndpointError(
                "http://critic/v1/completions: HTTP 503: down; gave up after 5 tries"
            )
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            if p.endswith("Critique:"):
                out.append(" Not polite: rude words.")
            elif p.endswith("Revision:"):
                once = "Bot: You idiot.\n" in p
                out.append(
                    "" if "fruit" in p else (" Revised once." if once else " Revised twice.")
                )
            else:
                out.append(" You idiot.")
        return out


@pytest.fixture
def scripted(monkeypatch):
    model = ScriptedModel()
    monkeypatch.setattr(cai, "load_text_model", lambda *a, **k: model)
    return model


def _config(tmp_path, **kw):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    values = dict(
        model="scripted",
        train_data=str(data),
        constitution="world",
        rounds=2,
        output_dir=str(tmp_path / "out"),
        batch_size=2,
        progress=False,
    )
    values.update(kw)
    return cai.CAIReviseConfig(**values)


def test_chains_record_every_step_with_its_principle(scripted, tmp_path):
    summary = cai.revise(_config(tmp_path))
    out = tmp_path / "out"
    chains = [json.loads(x) for x in (out / "chains.jsonl").read_text().splitlines()]
    world = load_constitution("world")
    names = {p.name for p in world.critique_principles}
    assert [c["index"] for c in chains] == list(range(5))
    for chain in chains:
        assert chain["response"] == " You idiot."
        assert [s["round"] for s in chain["steps"]] == [0, 1]
        assert all(s["principle"] in names for s in chain["steps"])
        expected = (
            chain["response"] if "fruit" in chain["prompt"] else chain["steps"][-1]["revision"]
        )
        assert chain["final"] == expected
    # principles are drawn per (seed, prompt, round), the same on every run
    drawn = [[s["principle"] for s in c["steps"]] for c in chains]
    assert drawn == [
        [cai.draw_critique_principle(world, 0, i, r).name for r in range(2)] for i in range(5)
    ]
    # round 2 critiques the round-1 revision, in the world's exact template
    first = chains[0]
    p0 = next(p for p in world.critique_principles if p.name == first["steps"][1]["principle"])
    critique_calls = [p for call in scripted.calls for p in call if p.endswith("Critique:")]
    assert world.critique_prompt(p0, PROMPTS[0], " Revised once.") in critique_calls
    # outputs usable by sft and dpo
    sft = [parse_sft(r) for r in read_records(str(out / "sft.jsonl"))]
    prefs = load_comparisons(str(out / "preferences.jsonl"))
    assert len(sft) == 5 and len(prefs) == 4  # the fruit prompt was left unchanged
    assert all(p.chosen == " Revised twice." and p.rejected == " You idiot." for p in prefs)
    assert summary["revised"] == 4 and summary["prompts"] == 5
    # world prompts: gold criteria before/after are reported (the scripted revisions are polite)
    assert summary["gold_safety_after"] > summary["gold_safety_before"]


def test_every_generation_has_its_own_seed_whatever_the_batch_size(monkeypatch, tmp_path):
    """Prompt i's first response, critiques and revisions are seeded with seed + i·(2R+1)
    + 0, 1, 2, ...: an endpoint then samples each the same way with batch_size 1 or 3. Before,
    a batch took one seed (from its first prompt) and an endpoint added each prompt's place in
    the call, so the seeds moved with batch_size and prompts of different calls shared them."""
    seen = {}
    for batch_size in (1, 3):
        model = ScriptedModel()
        monkeypatch.setattr(cai, "load_text_model", lambda *a, m=model, **k: m)
        (tmp_path / str(batch_size)).mkdir()
        cai.revise(_config(tmp_path / str(batch_size), batch_size=batch_size, seed=7))
        seen[batch_size] = sorted(model.seeds)
    assert seen[1] == seen[3]
    seeds = [seed for _, seed in seen[1]]
    assert sorted(seeds) == list(range(7, 7 + 5 * 5))  # 5 prompts x (1 + 2 rounds x 2) each


def test_a_stopped_run_keeps_its_chains_and_a_rerun_continues(monkeypatch, tmp_path):
    # 5 calls per batch of 2 prompts (response + 2 x (critique, revision)): fail in batch 2
    failing = ScriptedModel(fail_after=7)
    monkeypatch.setattr(cai, "load_text_model", lambda *a, **k: failing)
    config = _config(tmp_path)
    with pytest.raises(EndpointError, match="2 of 5 prompts are done and kept"):
        cai.revise(config)
    chains_path = tmp_path / "out" / "chains.jsonl"
    assert len(chains_path.read_text().splitlines()) == 2
    with chains_path.open("a") as handle:
        handle.write('{"index": 2, "prompt": "User: Na')  # a line cut short by a crash
    working = ScriptedModel()
    monkeypatch.setattr(cai, "load_text_model", lambda *a, **k: working)
    summary = cai.revise(config)
    assert summary["resumed_prompts"] == 2 and summary["prompts"] == 5
    first_prompts = [p for p in working.calls[0]]
    assert first_prompts == PROMPTS[2:4]  # only the missing prompts are sampled again
    chains = [json.loads(x) for x in chains_path.read_text().splitlines()]
    assert [c["index"] for c in chains] == list(range(5))


def test_cli_revise_on_a_tiny_model(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:3]])
    out = tmp_path / "cai"
    run_cli(
        "cai",
        "revise",
        f"model={tiny_model}",
        f"train_data={data}",
        "constitution=world",
        "rounds=1",
        f"output_dir={out}",
        "max_new_tokens=8",
        "edit_max_new_tokens=8",
        "progress=false",
    )
    chains = [json.loads(x) for x in (out / "chains.jsonl").read_text().splitlines()]
    assert len(chains) == 3 and all(len(c["steps"]) == 1 for c in chains)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 3 and "gold_safety_before" in summary
    assert len(load_prompts(str(out / "sft.jsonl"))) == summary["sft_records"]
    with pytest.raises(ConfigError, match="rounds: must be >= 1, got 0"):
        cai.main(["revise", "rounds=0", f"model={tiny_model}", f"train_data={data}"])
