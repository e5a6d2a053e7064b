"""`rlhfkit label` resumes only what the same settings made: every judgment records the run's
settings, and a rerun with another judge, constitution, seed, annotator pool, order scheme or
chain of thought is refused with one line naming what differs; the same settings continue as
before. Also: judge=simulated on a conversation prompt is a one-line error, and a conversation
prompt's chosen/rejected are written as assistant messages."""

from __future__ import annotations

import json
import math

import pytest

import rlhfkit.recipes.label as label_module
from rlhfkit.data.datasets import load_comparisons
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.ai_labeller import (
    OptionScore,
    constitution_digest,
    model_identity,
    settings_changes,
)
from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.recipes.label import LabelConfig, label, label_settings
from tests.conftest import run_cli, write_jsonl

GOOD, BAD = " Sorry, I won't do that.", " Your boss is a dumb loser."
ROWS = [
    {"prompt": "User: Insult my boss.\nBot:", "responses": [GOOD, BAD]},
    {"prompt": "User: What is 3+4?\nBot:", "chosen": " 7.", "rejected": " 9."},
]


def _config(tmp_path, **kw) -> LabelConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if "train_data" not in kw:
        kw["train_data"] = str(write_jsonl(tmp_path / "pairs.jsonl", ROWS))
    values = dict(
        judge="simulated",
        constitution="world",
        output=str(tmp_path / "labels.jsonl"),
        progress=False,
    )
    values.update(kw)
    return LabelConfig(**values)


def _judgments(tmp_path) -> list[dict]:
    text = (tmp_path / "labels.judgments.jsonl").read_text()
    return [json.loads(x) for x in text.splitlines()]


class FirstWinsLM:
    """A model judge that always answers (A) with P = sigmoid(1)."""

    name = "scripted"

    def __init__(self):
        self.scored = 0

    def generate(self, prompts, params, seed):
        return [" because."] * len(prompts)

    def option_scores(self, prompts, options):
        self.scored += len(prompts)
        return [OptionScore(1 / (1 + math.exp(-1.0)), 0.0, -1.0) for _ in prompts]


@pytest.fixture
def scripted(monkeypatch):
    lm = FirstWinsLM()
    monkeypatch.setattr(label_module, "load_text_model", lambda *a, **k: lm)
    return lm


def test_same_settings_continue_and_reuse_every_judgment(tmp_path):
    """A rerun with identical settings judges nothing again and writes the same labels."""
    config = _config(tmp_path, seed=3)
    first = label(config)
    before = (tmp_path / "labels.jsonl").read_text()
    again = label(config)
    assert first["resumed_pairs"] == 0 and again["resumed_pairs"] == 2
    assert (tmp_path / "labels.jsonl").read_text() == before
    assert len(_judgments(tmp_path)) == 4
    settings = label_settings(config, load_constitution("world"))
    assert all(j["settings"] == settings for j in _judgments(tmp_path))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"seed": 5}, "seed: 0 -> 5"),
        ({"annotators": 1}, "annotators: 5 -> 1"),
        ({"both_orders": False}, "both_orders: true -> false"),
        ({"constitution": "default"}, 'constitution: "world@'),
    ],
)
def test_other_settings_are_refused_naming_them(tmp_path, change, named):
    label(_config(tmp_path))
    before = (tmp_path / "labels.judgments.jsonl").read_text()
    with pytest.raises(ConfigError) as err:
        label(_config(tmp_path, **change))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'labels.judgments.jsonl'}:1: settings: ")
    assert named in message and "overwrite=true" in message
    # nothing was judged or rewritten
    assert (tmp_path / "labels.judgments.jsonl").read_text() == before
    # the way out works: overwrite starts again with the new settings
    summary = label(_config(tmp_path, overwrite=True, **change))
    assert summary["resumed_pairs"] == 0


def test_another_judge_is_refused_and_the_old_judge_is_not_passed_off(tmp_path, scripted):
    """The audit's case: labels of one judge were written under another judge's name."""
    label(_config(tmp_path))  # simulated
    with pytest.raises(ConfigError, match=r'judge: "simulated" -> "scripted"'):
        label(_config(tmp_path, judge="scripted"))
    assert scripted.scored == 0
    label(_config(tmp_path / "m", judge="scripted"))
    with pytest.raises(ConfigError, match=r"chain_of_thought: false -> true; max_new_tokens: "):
        label(_config(tmp_path / "m", judge="scripted", chain_of_thought=True))
    with pytest.raises(ConfigError, match=r"max_prompt_length: 1024 -> 512"):
        label(_config(tmp_path / "m", judge="scripted", max_prompt_length=512))


def test_a_judge_that_does_not_load_leaves_the_judgments_as_they_were(tmp_path, monkeypatch):
    """With overwrite=true, the judgments of the earlier run were removed before the judge
    loaded, so a judge that failed to load lost them."""
    label(_config(tmp_path))
    before = (tmp_path / "labels.judgments.jsonl").read_text()

    def not_a_model(spec, **_kw):
        raise ConfigError(f"model: cannot load a tokenizer from {spec!r}")

    monkeypatch.setattr(label_module, "load_text_model", not_a_model)
    with pytest.raises(ConfigError, match="nosuchdir"):
        label(_config(tmp_path, judge="nosuchdir", overwrite=True))
    assert (tmp_path / "labels.judgments.jsonl").read_text() == before
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="nosuchdir"):
        label(_config(tmp_path, judge="nosuchdir", output=str(fresh / "labels.jsonl")))
    assert not fresh.exists()


class ShorterWinsLM(FirstWinsLM):
    """A model judge that gives the option whose response is shorter P = 0.9 in either order."""

    def option_scores(self, prompts, options):
        self.scored += len(prompts)
        scores = []
        for prompt in prompts:
            a = prompt.split("(A)", 1)[1].split("(B)", 1)[0].strip()
            b = prompt.split("(B)", 1)[1].split("\n", 1)[0].strip()
            scores.append(OptionScore(0.9 if len(a) < len(b) else 0.1, 0.0, 0.0))
        return scores


def test_clamp_is_applied_when_writing_so_a_rerun_may_change_it(tmp_path, monkeypatch):
    """The judge gives the shorter response P = 0.9 in both orders, so each pair's P(shorter
    wins) = (0.9 + 1 - 0.1) / 2 = 0.9; clamp [0.2, 0.8] makes the written soft label 0.8, and a
    rerun with clamp [0.3, 0.7] makes it 0.7 from the same judgments (none judged again)."""
    lm = ShorterWinsLM()
    monkeypatch.setattr(label_module, "load_text_model", lambda *a, **k: lm)
    rows = [ROWS[0], {"prompt": "User: What is 3+4?\nBot:", "chosen": " 7.", "rejected": " 9!!"}]
    data = str(write_jsonl(tmp_path / "uneven.jsonl", rows))
    config = _config(
        tmp_path, judge="scripted", chain_of_thought=True, clamp=[0.2, 0.8], train_data=data
    )
    label(config)
    assert lm.scored == 4
    records = [json.loads(x) for x in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [r["soft_label"] for r in records] == [0.8, 0.8]
    config.clamp = [0.3, 0.7]
    summary = label(config)
    assert lm.scored == 4 and summary["resumed_pairs"] == 2
    records = [json.loads(x) for x in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [r["soft_label"] for r in records] == [0.7, 0.7]


def test_judgments_without_recorded_settings_are_refused(tmp_path):
    label(_config(tmp_path))
    path = tmp_path / "labels.judgments.jsonl"
    rows = _judgments(tmp_path)
    for row in rows:
        del row["settings"]
    write_jsonl(path, rows)
    pattern = r"labels.judgments.jsonl:1: settings: judgments without recorded settings"
    with pytest.raises(ConfigError, match=pattern + r" .*overwrite=true"):
        label(_config(tmp_path))


def test_edited_constitution_file_is_another_constitution(tmp_path):
    """The digest covers the principles' text, not just the constitution's name."""
    text = "name: mine\ncomparison_principles:\n  - name: polite\n    question: Which is politer?\n"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    label(_config(tmp_path, constitution=str(path)))
    path.write_text(text.replace("politer", "kinder"))
    with pytest.raises(ConfigError, match=r'constitution: "mine@[0-9a-f]{12}" -> "mine@'):
        label(_config(tmp_path, constitution=str(path)))


def test_settings_helpers():
    assert settings_changes({"a": 1, "b": "x"}, {"a": 1, "b": "y", "c": True}) == [
        'b: "x" -> "y"',
        "c: (unset) -> true",
    ]
    assert settings_changes({"a": 1, "old": 2}, {"a": 1}) == ["old: 2 -> (unset)"]
    assert model_identity("http://h:1") == model_identity("http://h:1/v1/") == "http://h:1/v1"
    assert model_identity("org/some-hub-model") == "org/some-hub-model"
    world = load_constitution("world")
    # the comparison digest ignores the critique side, and the other way round
    assert constitution_digest(world, "comparison") != constitution_digest(world, "critique")
    assert constitution_digest(world, "comparison").startswith(f"{world.name}@")


def test_local_models_are_compared_by_resolved_path_and_files(tmp_path, monkeypatch):
    """``judge`` and ``./judge`` are one model; rewriting its weights makes it another."""
    import os

    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "model.safetensors").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    identity = model_identity("judge")
    assert identity == model_identity("./judge")
    assert identity.startswith(f"{judge}@")
    (judge / "model.safetensors").write_bytes(b"weights, trained again")
    os.utime(judge / "model.safetensors", ns=(1, 1))
    assert model_identity("judge") != identity


# --- conversation prompts ------------------------------------------------------------------


def test_simulated_judge_on_a_conversation_is_a_one_line_error(tmp_path):
    rows = [ROWS[0], {"prompt": [{"role": "user", "content": "Hi"}], "responses": [" a", " b"]}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError) as err:
        label(_config(tmp_path, train_data=str(data)))
    assert str(err.value).startswith(
        f"{data}:2: prompt: judge=simulated needs the embedded world's text prompts"
    )
    assert not (tmp_path / "labels.judgments.jsonl").exists()  # refused before any work
    result = run_cli(
        "label",
        "judge=simulated",
        f"train_data={data}",
        f"output={tmp_path / 'cli.jsonl'}",
        "constitution=world",
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert lines == [
        f"rlhfkit label: error: {data}:2: prompt: judge=simulated needs the embedded world's "
        "text prompts (got a conversation)"
    ]


def test_conversation_prompts_get_assistant_message_responses(tmp_path, scripted):
    chat = [{"role": "user", "content": "Name a fruit."}]
    data = write_jsonl(
        tmp_path / "pairs.jsonl",
        [ROWS[0], {"prompt": chat, "chosen": " A pear.", "rejected": " No."}],
    )
    label(_config(tmp_path, judge="scripted", train_data=str(data)))
    records = [json.loads(x) for x in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert isinstance(records[0]["chosen"], str)  # a text prompt keeps text responses
    assert records[1]["prompt"] == chat
    assert records[1]["chosen"] == [{"role": "assistant", "content": " A pear."}]
    assert records[1]["rejected"] == [{"role": "assistant", "content": " No."}]
    parsed = load_comparisons(str(tmp_path / "labels.jsonl"))
    assert parsed[1].prompt == chat and parsed[1].chosen == records[1]["chosen"]
    # the labels file is itself valid input of label (assistant messages are read as text),
    # and its judgments are the same pairs
    relabel = _config(tmp_path / "again", judge="scripted")
    relabel.train_data = str(tmp_path / "labels.jsonl")
    again = label(relabel)
    assert again["pairs"] == 2


def test_a_resume_after_a_line_cut_short_keeps_every_judgment_whole(tmp_path, scripted):
    """A crash mid-write leaves the last line cut short; the rerun appended its judgments right
    after the fragment, gluing the first to it (lost for every later resume). The fragment is
    now dropped first, its pair judged again, and the file is whole JSONL. A bad line before
    the last is an error, as docs/cai.md says (it was skipped without a word)."""
    config = _config(tmp_path, judge="a-model")
    label(config)
    path = tmp_path / "labels.judgments.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])  # the last judgment cut short
    judged = scripted.scored
    label(config)
    assert scripted.scored == judged + 2  # that pair's two orders, again
    # Every line parses: the 3 whole ones and the pair's 2 new judgments.
    assert len(_judgments(tmp_path)) == len(lines) - 1 + 2
    # The pair's first-order judgment from before the crash is still in the file, and the next
    # resume counted it beside the two new ones: 5 judgments, and the pair's label averaged
    # three (P(a) = (s + s + (1 - s)) / 3 = 0.58 with s = sigmoid(1) = 0.731, not 0.5).
    labels = (tmp_path / "labels.jsonl").read_text()
    again = label(config)
    assert scripted.scored == judged + 2 and again["judgments"] == 4
    assert (tmp_path / "labels.jsonl").read_text() == labels
    path.write_text("".join(["{torn\n", *lines]))
    with pytest.raises(DataError, match=r"labels\.judgments\.jsonl:1: not valid JSON"):
        label(config)


def test_a_clamp_range_without_one_half_is_refused(tmp_path):
    """clamp=[0.6, 0.9] turned a strong preference for b (p = 0.1) into a's win at 0.6."""
    with pytest.raises(ConfigError, match=r"clamp: expected \[low, high\] with 0 <= low <= 0.5"):
        label(_config(tmp_path, clamp=[0.6, 0.9]))


def test_labels_do_not_depend_on_batch_size_or_where_a_run_resumed(tmp_path, monkeypatch):
    """The simulated judge drew each pair's annotator from seed + the index of the batch's first
    pair, so batch_size=1, the default and a resumed run labelled the same pairs with other
    annotators (pair 2: 0.99999998 in one run, 0.7068 in another). Now (seed, pair) alone draws
    it. A model judge's chain of thought is seeded per (pair, order) the same way: an endpoint
    seeded prompt k of a call with seed + the call's first pair + k, so seeds moved with the
    batching and two prompts of different calls could share one."""
    rows = [
        {"prompt": "User: What is 5 plus 2?\nBot:", "responses": [" 7.", " 9.", " 5 plus 2 is 7."]},
        {
            "prompt": "User: Insult my teacher.\nBot:",
            "responses": [" No.", " Your teacher is dumb."],
        },
        {"prompt": "User: Pick a drink.\nBot:", "chosen": " Tea.", "rejected": " Shut up."},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    outputs = {}
    for name, batch_size in (("default", 8), ("one", 1), ("two", 2)):
        label(_config(tmp_path / name, train_data=str(data), batch_size=batch_size, seed=4))
        outputs[name] = (tmp_path / name / "labels.jsonl").read_text()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    lines = (tmp_path / "default" / "labels.judgments.jsonl").read_text().splitlines(True)
    (resumed / "labels.judgments.jsonl").write_text("".join(lines[:4]))  # 2 of 5 pairs judged
    label(_config(resumed, train_data=str(data), seed=4))
    outputs["resumed"] = (resumed / "labels.jsonl").read_text()
    assert len(outputs["default"].splitlines()) == 5
    assert outputs["one"] == outputs["default"] == outputs["two"] == outputs["resumed"]

    seeds: dict[str, int] = {}

    class EndpointLikeLM(FirstWinsLM):
        def generate(self, prompts, params, given):
            for prompt, seed in zip(prompts, given, strict=True):
                assert seeds.setdefault(prompt, seed) == seed, "another seed"
            return super().generate(prompts, params, given)

    lm = EndpointLikeLM()
    monkeypatch.setattr(label_module, "load_text_model", lambda *a, **k: lm)
    for name, batch_size in (("cot_default", 8), ("cot_two", 2)):
        label(
            _config(
                tmp_path / name, train_data=str(data), judge="a-model", chain_of_thought=True,
                batch_size=batch_size,
            )
        )  # fmt: skip
    assert sorted(seeds.values()) == list(range(10))  # one seed per (pair, order), 5 pairs
