"""Soft preference labels (`soft_label` = P(chosen beats rejected), written by `rlhfkit label` and
`annotate export --aggregate soft`) through `rlhfkit rm` and `rlhfkit dpo` on the tiny preset.

The losses themselves are checked against hand-worked values in test_losses_bradley_terry.py and
test_losses_dpo.py; here: the field is validated, p = 1 trains exactly as no label, p = 1/2 trains
something else (it used to be read as a hard win, bit for bit), `*.soft_labels=false` restores the
hard loss, and the reward model's evaluation leaves undecided pairs out of its accuracy.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, write_jsonl
from safetensors.torch import load_file
from test_dpo_recipe import world_pairs

from rlhfkit.data.datasets import load_comparisons
from rlhfkit.errors import DataError


@pytest.fixture(scope="module")
def label_sets(tmp_path_factory):
    """The same 24 world pairs with no soft label, with p = 1 and with p = 1/2 on every pair."""
    root = tmp_path_factory.mktemp("soft")
    pairs = world_pairs(24, seed=3)
    return {
        "hard": write_jsonl(root / "hard.jsonl", pairs),
        "ones": write_jsonl(root / "ones.jsonl", [{**p, "soft_label": 1.0} for p in pairs]),
        "half": write_jsonl(root / "half.jsonl", [{**p, "soft_label": 0.5} for p in pairs]),
    }


def _weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value", ["abc", 1.5, -0.1, True, "NaN"])
def test_a_bad_soft_label_names_file_line_and_field(tmp_path, value):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, {**good, "soft_label": value}])
    with pytest.raises(DataError) as err:
        load_comparisons(str(path))
    assert f"{path}:2: soft_label: expected a probability in [0, 1]" in str(err.value)


def test_soft_labels_are_read_and_absent_ones_are_none(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "soft_label": 0.75},
        {"prompt": "p", "chosen": "a", "rejected": "b", "soft_label": "0.6"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
    ]
    examples = load_comparisons(str(write_jsonl(tmp_path / "ok.jsonl", rows)))
    assert [e.soft_label for e in examples] == [0.75, 0.6, None]


def _rm(tiny_model, data, out, *extra):
    return run_cli(
        "rm", f"model={tiny_model}", f"train_data={data}", f"eval_data={data}",
        f"output_dir={out}", "batch_size=8", "max_steps=3", "learning_rate=1e-3",
        "progress=false", "rm.normalize=false", *extra,
    )  # fmt: skip


def test_reward_model_trains_on_soft_labels(tiny_model, label_sets, tmp_path):
    """p = 1 is the hard loss bit for bit; p = 1/2 changes the model (before soft labels were
    read it gave the hard model exactly); rm.soft_labels=false trains p = 1/2 as hard wins."""
    runs = {}
    for name, extra in [
        ("hard", ()),
        ("ones", ()),
        ("half", ()),
        ("half_off", ("rm.soft_labels=false",)),
    ]:
        data = label_sets["half" if name == "half_off" else name]
        result = _rm(tiny_model, data, tmp_path / name, *extra)
        runs[name] = (_weights(tmp_path / name), " ".join((result.stdout + result.stderr).split()))
    assert _same(runs["ones"][0], runs["hard"][0])
    assert _same(runs["half_off"][0], runs["hard"][0])
    assert not _same(runs["half"][0], runs["hard"][0])
    summary = json.loads((tmp_path / "half" / "summary.json").read_text())
    n = summary["eval_pairs"]
    assert f"{n} of {n} pairs carry a soft_label (mean 0.500, {n} at 0.5)" in runs["half"][1]
    assert "rm.soft_labels=false trains every pair as a hard win" in runs["half_off"][1]
    # Every eval pair is undecided: no accuracy to report, the soft loss over all of them.
    assert summary["eval_undecided_pairs"] == n and "eval_accuracy" not in summary
    assert summary["eval_loss"] > 0
    hard = json.loads((tmp_path / "hard" / "summary.json").read_text())
    assert "eval_undecided_pairs" not in hard and 0 <= hard["eval_accuracy"] <= 1


def _dpo(tiny_model, data, out, *extra):
    return run_cli(
        "dpo", f"model={tiny_model}", f"train_data={data}", f"output_dir={out}",
        "batch_size=8", "max_steps=2", "learning_rate=2e-3", "progress=false", *extra,
    )  # fmt: skip


def test_dpo_trains_on_soft_labels(tiny_model, label_sets, tmp_path):
    """As for the reward model: p = 1 equals no label, p = 1/2 differs, dpo.soft_labels=false
    restores the hard loss. With p = 1/2 the loss at the first step (policy = reference, h = 0)
    is still log 2: 0.5 softplus(0) + 0.5 softplus(0)."""
    runs = {}
    for name, extra in [
        ("hard", ()),
        ("ones", ()),
        ("half", ()),
        ("half_off", ("dpo.soft_labels=false",)),
    ]:
        data = label_sets["half" if name == "half_off" else name]
        _dpo(tiny_model, data, tmp_path / name, *extra)
        runs[name] = _weights(tmp_path / name)
    assert _same(runs["ones"], runs["hard"])
    assert _same(runs["half_off"], runs["hard"])
    assert not _same(runs["half"], runs["hard"])
    first = json.loads((tmp_path / "half" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.6931472, rel=1e-5)
