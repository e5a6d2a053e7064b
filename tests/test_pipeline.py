"""`rlhfkit pipeline`: stages feed each other by path; unchanged ones are skipped; --from reruns."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_jsonl

from rlhfkit.errors import ConfigError
from rlhfkit.recipes.pipeline import plan


def _pipeline(tmp_path, tiny_model, sft_data):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "User: What is 1+2?\nBot:"}])
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'runs'}\n"
        "stages:\n"
        "  - name: sft\n    stage: sft\n"
        f"    config: {{model: {tiny_model}, train_data: {sft_data}, max_steps: 2,"
        " batch_size: 4}\n"
        "  - name: pairs\n    stage: generate\n"
        f"    config: {{model: '${{sft}}/model', prompts: {prompts}, n: 2, max_new_tokens: 4,"
        " output: '${out}/pairs.jsonl'}\n"
    )
    return path, prompts


def test_pipeline_runs_skips_and_reruns(tmp_path, tiny_model, sft_data):
    path, prompts = _pipeline(tmp_path, tiny_model, sft_data)
    first = run_cli("pipeline", str(path))
    pairs = tmp_path / "runs" / "pairs" / "pairs.jsonl"
    assert len(json.loads(pairs.read_text())["responses"]) == 2
    assert (
        json.loads((tmp_path / "runs" / "sft" / ".pipeline.json").read_text())["status"] == "done"
    )
    assert "skip sft" not in first.stderr and "skip pairs" not in first.stderr

    second = run_cli("pipeline", str(path))
    assert "skip sft" in second.stderr and "skip pairs" in second.stderr

    # Changing an input file reruns the stage that reads it (and only that one here).
    write_jsonl(prompts, [{"prompt": "User: What is 2+2?\nBot:"}])
    third = run_cli("pipeline", str(path))
    assert "skip sft" in third.stderr and "skip pairs" not in third.stderr
    assert "2+2" in pairs.read_text()

    fourth = run_cli("pipeline", str(path), "--from", "sft")
    assert "skip sft" not in fourth.stderr and "skip pairs" not in fourth.stderr


def test_pipeline_errors_name_the_stage(tmp_path, tiny_model, sft_data):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - name: a\n    stage: sft\n    config: {learning_rte: 1}\n")
    with pytest.raises(ConfigError, match=r"stages\[1\] \(a\): unknown key 'learning_rte'"):
        plan(bad)
    bad.write_text(
        "stages:\n  - name: a\n    stage: generate\n    config: {model: '${nope}/model'}\n"
    )
    with pytest.raises(ConfigError, match=r"\$\{nope\} names no earlier stage"):
        plan(bad)


def test_shipped_example_pipelines_are_valid():
    """Every example validates (keys, types, stage references) without running anything."""
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[1].glob("examples/*.yaml"))
    assert examples
    for path in examples:
        stages = plan(path)
        assert stages and len({s.name for s in stages}) == len(stages)
