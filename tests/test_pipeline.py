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


def test_embedded_world_example_runs_end_to_end(tmp_path):
    """`examples/embedded_world.yaml`, every stage as shipped but scaled down: the world's data,
    a base model, SFT, pairs, simulated labels, RM, PPO, DPO, eval against the gold reward and
    the report (which finds the eval stage's eval.json under the pipeline's root)."""
    from pathlib import Path

    import yaml

    example = Path(__file__).resolve().parents[1] / "examples" / "embedded_world.yaml"
    spec = yaml.safe_load(example.read_text())
    spec["output_dir"] = str(tmp_path / "run")
    smaller = {
        "world": {"corpus_size": 300, "train_prompts": 24, "eval_prompts": 8},
        "sft": {"max_steps": 6},
        "pairs": {"max_new_tokens": 12},
        "eval_pairs": {"max_new_tokens": 12},
        "rm": {"epochs": 1},
        "ppo": {"max_steps": 2, "ppo.rollout_batch_size": 8, "max_new_tokens": 12},
        "ppo_no_kl": {"max_steps": 2, "ppo.rollout_batch_size": 8, "max_new_tokens": 12},
        "dpo": {"epochs": 1},
        "eval": {"best_of_n": 4, "max_new_tokens": 12},
    }
    for stage in spec["stages"]:
        stage["config"].update(smaller.get(stage["name"], {}))
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    run_cli("pipeline", str(path))
    root = tmp_path / "run"
    labels = [json.loads(line) for line in (root / "labels" / "preferences.jsonl").open()]
    assert labels and all(0.5 <= r["soft_label"] <= 1.0 for r in labels)
    assert "eval_accuracy" in json.loads((root / "rm" / "summary.json").read_text())
    assert "gold_reward_end" in json.loads((root / "ppo" / "summary.json").read_text())
    evaluation = json.loads((root / "eval" / "eval.json").read_text())
    policies = evaluation["policies"]
    assert {"sft", "ppo", "dpo", "ppo_no_kl", "best_of_4"} <= set(policies)
    assert set(evaluation["curves"]) == {"ppo", "ppo_no_kl"}
    assert len(evaluation["curves"]["ppo"]["gold"]) == 2  # one point per PPO step
    assert all(0.0 <= policies[name]["gold_reward"] <= 1.0 for name in ("sft", "ppo", "dpo"))
    report = (root / "report.html").read_text()
    assert "Final numbers" in report and "best_of_4" in report


def test_root_reference_and_reserved_names(tmp_path):
    """`${root}` is the pipeline's output_dir and makes a stage depend on every earlier one;
    `root` and `out` cannot name a stage."""
    path = tmp_path / "p.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'r'}\nstages:\n"
        "  - {name: w, stage: world, config: {corpus_size: 5}}\n"
        "  - {name: report, stage: report, config: {runs: '${root}'}}\n"
    )
    world, report = plan(path)
    assert report.values["runs"] == str(tmp_path / "r")
    path.write_text(path.read_text().replace("corpus_size: 5", "corpus_size: 6"))
    assert plan(path)[1].digest != report.digest  # the world changed, so the report reruns
    path.write_text(f"output_dir: {tmp_path}\nstages:\n  - {{name: root, stage: world}}\n")
    with pytest.raises(ConfigError, match="'root' is reserved"):
        plan(path)


def test_world_stage_writes_the_demo_world(tmp_path):
    """`rlhfkit world` writes the corpus and prompt splits the demo builds from the same seed."""
    from rlhfkit.recipes.demo import DemoConfig, build_world
    from rlhfkit.synthetic import parse_prompt

    run_cli("world", f"output_dir={tmp_path / 'w'}", "corpus_size=40", "train_prompts=6",
            "eval_prompts=3", "seed=4")  # fmt: skip
    build_world(DemoConfig(seed=4, corpus_size=40, pair_prompts=6, eval_prompts=3), tmp_path / "d")
    for name in ("sft.jsonl", "prompts_train.jsonl", "prompts_eval.jsonl"):
        assert (tmp_path / "w" / name).read_text() == (tmp_path / "d" / name).read_text()
    lines = (tmp_path / "w" / "prompts_eval.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines]
    assert len(prompts) == 3 and all(parse_prompt(p).kind for p in prompts)
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary == {"corpus": 40, "train_prompts": 6, "eval_prompts": 3}
    bad = run_cli("world", f"output_dir={tmp_path / 'x'}", "corpus_size=0", check=False)
    assert bad.returncode != 0 and "corpus_size: must be at least 1" in bad.stderr


def test_inputs_written_by_earlier_stages_do_not_rerun_later_ones(tmp_path, tiny_model):
    """A stage reading a file that an earlier stage writes is skipped on the second run: such a
    file does not exist when the first run plans the pipeline, so it must not enter the hash
    (the earlier stage's digest stands for it)."""
    path = tmp_path / "p.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'r'}\nstages:\n"
        "  - {name: w, stage: world,"
        " config: {corpus_size: 30, train_prompts: 2, eval_prompts: 2}}\n"
        f"  - {{name: sft, stage: sft, config: {{model: {tiny_model}, "
        "train_data: '${w}/sft.jsonl', max_steps: 1, batch_size: 2}}\n"
    )
    run_cli("pipeline", str(path))
    second = run_cli("pipeline", str(path))
    assert "skip w" in second.stderr and "skip sft" in second.stderr
    path.write_text(path.read_text().replace("corpus_size: 30", "corpus_size: 31"))
    third = run_cli("pipeline", str(path))
    assert "skip w" not in third.stderr and "skip sft" not in third.stderr
