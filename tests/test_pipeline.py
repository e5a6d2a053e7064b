"""`rlhfkit pipeline`: stages feed each other by path; unchanged ones are skipped; --from reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
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

    # A completed stage whose output was removed runs again, the others are still skipped.
    pairs.unlink()
    again = run_cli("pipeline", str(path))
    assert "skip sft" in again.stderr and "skip pairs" not in again.stderr
    assert "outputs were removed" in " ".join(again.stderr.split()) and pairs.is_file()

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
    with pytest.raises(ConfigError, match=r"stages\[1\] \(a\): model: \$\{nope\}: no stage is"):
        plan(bad)


def _two_stages(tmp_path, first: str, second: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"output_dir: {tmp_path / 'runs'}\nstages:\n  - {first}\n  - {second}\n")
    return path


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        # a reference to a later stage, to itself, a typo, and what ${...} cannot name
        (
            "{name: a, stage: generate, config: {model: '${b}', prompts: p, output: x.jsonl}}",
            "{name: b, stage: init-model}",
            r"stages\[1\] \(a\): model: \$\{b\}: stage 'b' comes at or after this one",
        ),
        (
            "{name: base, stage: init-model}",
            "{name: g, stage: generate, config: {model: '${bse}', prompts: p, output: x.jsonl}}",
            r"stages\[2\] \(g\): model: \$\{bse\}: no stage is named 'bse'; did you mean "
            r"\$\{base\}\?",
        ),
        (
            "{name: base, stage: init-model}",
            "{name: g, stage: generate, config: {model: '${base.model}', prompts: p, "
            "output: x.jsonl}}",
            r"stages\[2\] \(g\): model: \$\{base\.model\}: not a stage reference",
        ),
        (
            "{name: sft.v1, stage: init-model}",
            "{name: g, stage: init-model}",
            r"stages\[1\]: name 'sft\.v1': use letters, digits",
        ),
        # a server never returns: it hung the pipeline
        (
            "{name: base, stage: init-model}",
            "{name: srv, stage: serve, config: {model: '${base}'}}",
            r"stages\[2\]: stage 'serve' cannot run in a pipeline",
        ),
        # two stages writing one file: the first was marked done with the second's data
        (
            "{name: g1, stage: generate, config: {model: m, prompts: p, output: shared.jsonl}}",
            "{name: g2, stage: generate, config: {model: m, prompts: p, output: shared.jsonl}}",
            r"stages\[2\] \(g2\): writes .*shared\.jsonl, which stage 'g1' writes or holds",
        ),
        (
            "{name: base, stage: init-model}",
            "{name: g, stage: generate, config: {model: m, prompts: p, "
            "output: '${base}/pairs.jsonl'}}",
            r"stages\[2\] \(g\): writes .*pairs\.jsonl, which stage 'base' writes or holds",
        ),
        # a missing data file: found before the first stage runs, not when its turn comes
        (
            "{name: base, stage: init-model}",
            "{name: r, stage: rm, config: {model: '${base}', train_data: prefs.jsonl}}",
            r"stages\[2\] \(r\): train_data: prefs\.jsonl: file not found, and no earlier "
            r"stage writes it",
        ),
        (
            "{name: base, stage: init-model}",
            "{name: p, stage: ppo, config: {model: '${base}', train_data: '${base}/x.jsonl', "
            "ppo: {reward_model: '${base}', ptx_coef: 0.1, ptx_data: ptx.jsonl}}}",
            r"stages\[2\] \(p\): ppo\.ptx_data: ptx\.jsonl: file not found",
        ),
    ],
)
def test_mistakes_in_a_pipeline_file_are_refused_before_anything_runs(
    tmp_path, monkeypatch, first, second, message
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        plan(_two_stages(tmp_path, first, second))


def test_init_model_writes_to_its_stage_directory_by_default_and_out_is_not_an_input(tmp_path):
    """init-model without `out` failed at its turn ("out: give the directory"); with `out`
    outside the stage directory, the model it wrote was hashed as an input of its own, so every
    rerun reran it (and everything after it). `out` is now the stage's directory, as
    `output_dir` is for the others: default `output_dir/NAME`."""
    path = _two_stages(
        tmp_path,
        "{name: base, stage: init-model}",
        f"{{name: ext, stage: init-model, config: {{out: {tmp_path / 'ext' / 'tiny'}}}}}",
    )
    base, ext = plan(path)
    assert base.out == tmp_path / "runs" / "base" and base.values["out"] == str(base.out)
    assert ext.out == tmp_path / "ext" / "tiny"
    run_cli("pipeline", str(path))
    assert (ext.out / "config.json").is_file() and (base.out / "config.json").is_file()
    again = run_cli("pipeline", str(path))
    assert "skip base" in again.stderr and "skip ext" in again.stderr


def test_a_fresh_rerun_removes_only_what_the_last_run_wrote(tmp_path):
    """A file the user put in a stage's directory after the stage completed was removed with
    the stage's outputs when its config changed; only what the marker recorded goes now."""
    data = tmp_path / "data"
    path = tmp_path / "p.yaml"
    for corpus in (50, 60):
        path.write_text(
            f"output_dir: {tmp_path / 'runs'}\nstages:\n  - name: world\n    stage: world\n"
            f"    config: {{corpus_size: {corpus}, train_prompts: 4, eval_prompts: 4, "
            f"output_dir: {data}}}\n"
        )
        run_cli("pipeline", str(path))
        if corpus == 50:
            (data / "added_later.txt").write_text("mine")
            (data / "checkpoints").mkdir()  # resumable state of the last run: removed
    assert (data / "added_later.txt").read_text() == "mine"
    assert not (data / "checkpoints").exists() and (data / "sft.jsonl").is_file()


def test_data_from_an_earlier_stage_or_on_disk_is_no_missing_input(tmp_path, monkeypatch):
    """A data file an earlier stage writes (its `output`, or a path in its directory), one that
    exists, a hub dataset name and an output that does not exist yet are all accepted."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a"}\n')
    path = tmp_path / "p.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'runs'}\nstages:\n"
        "  - {name: base, stage: init-model}\n"
        "  - {name: g, stage: generate, config: {model: '${base}', prompts: prompts.jsonl, "
        "output: pairs.jsonl}}\n"
        "  - {name: l, stage: label, config: {judge: simulated, train_data: pairs.jsonl, "
        "output: '${out}/labelled.jsonl'}}\n"
        "  - {name: r, stage: rm, config: {model: '${base}', train_data: '${l}/labelled.jsonl', "
        "eval_data: 'trl-lib/ultrafeedback_binarized:test'}}\n"
    )
    assert [s.name for s in plan(path)] == ["base", "g", "l", "r"]


def test_shipped_example_pipelines_are_valid():
    """Every example validates (keys, types, stage references) without running anything."""
    examples = sorted(Path(__file__).resolve().parents[1].glob("examples/*.yaml"))
    assert examples
    for path in examples:
        stages = plan(path)
        assert stages and len({s.name for s in stages}) == len(stages)


def test_embedded_world_example_runs_end_to_end(tmp_path):
    """`examples/embedded_world.yaml`, every stage as shipped but scaled down: the world's data,
    a base model, SFT, pairs, simulated labels, RM, PPO, DPO, eval against the gold reward and
    the report (which finds the eval stage's eval.json under the pipeline's root)."""
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
    base = json.loads((root / "base" / "rlhfkit_init_model.json").read_text())
    assert base["tokenizer_corpus"] == str(root / "world" / "sft.jsonl")
    assert base["tokenizer_vocab"] > 259  # merges learned from the world's corpus
    labels = [json.loads(line) for line in (root / "labels" / "preferences.jsonl").open()]
    assert labels and all(0.5 <= r["soft_label"] <= 1.0 for r in labels)
    # Scaled down, the SFT policy's held-out pairs can all be ties (soft_label 1/2), and then the
    # RM leaves eval_accuracy out; every held-out pair is still evaluated.
    eval_labels = (root / "eval_labels" / "preferences.jsonl").read_text().splitlines()
    assert json.loads((root / "rm" / "summary.json").read_text())["eval_pairs"] == len(eval_labels)
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
    assert bad.returncode != 0 and "corpus_size: must be >= 1" in bad.stderr


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


def _world_stages(tmp_path, names=("a", "b", "c"), corpus_size=5) -> Path:
    """A pipeline of small `world` stages (no model: each runs in milliseconds, in process)."""
    path = tmp_path / "worlds.yaml"
    lines = [f"output_dir: {tmp_path / 'r'}", "stages:"]
    for seed, name in enumerate(names):
        lines.append(
            f"  - {{name: {name}, stage: world, config: {{seed: {seed}, "
            f"corpus_size: {corpus_size}, train_prompts: 2, eval_prompts: 1}}}}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def _status(directory) -> str:
    return json.loads((directory / ".pipeline.json").read_text())["status"]


def test_decide_resumes_only_an_interrupted_run_of_the_same_digest():
    from rlhfkit.recipes.pipeline import decide

    assert decide(None, "d", forced=False) == "fresh"
    assert decide({"digest": "d", "status": "done"}, "d", forced=False) == "skip"
    assert decide({"digest": "d", "status": "running"}, "d", forced=False) == "resume"
    assert decide({"digest": "old", "status": "running"}, "d", forced=False) == "fresh"
    assert decide({"digest": "old", "status": "done"}, "d", forced=False) == "fresh"
    assert decide({"digest": "d", "status": "pending"}, "d", forced=False) == "fresh"
    assert decide({"digest": "d", "status": "running"}, "d", forced=True) == "fresh"
    assert decide({}, "d", forced=False) == "fresh"
    # A completed stage whose outputs were (partly) removed runs again; extra files do not count.
    done = {"digest": "d", "status": "done", "outputs": ["model", "summary.json"]}
    assert decide(done, "d", forced=False, present=["model", "summary.json", "x"]) == "skip"
    assert decide(done, "d", forced=False, present=["summary.json"]) == "fresh"


def test_interrupted_stage_of_another_config_starts_afresh_in_a_clean_directory(
    tmp_path, tiny_model, sft_data
):
    """An sft stage marked `running` (what a kill leaves) resumes, from its last checkpoint,
    only when its digest is the same; after a config change it runs from scratch, and no
    checkpoint of the old run is left for it to resume from."""
    path = tmp_path / "p.yaml"
    text = (
        f"output_dir: {tmp_path / 'r'}\nstages:\n"
        f"  - {{name: sft, stage: sft, config: {{model: {tiny_model}, train_data: {sft_data},"
        " max_steps: 2, save_steps: 1, batch_size: 4, learning_rate: 1.0e-3, progress: false}}\n"
    )
    path.write_text(text)
    run_cli("pipeline", str(path))
    out = tmp_path / "r" / "sft"
    marker = json.loads((out / ".pipeline.json").read_text())
    (out / ".pipeline.json").write_text(json.dumps({**marker, "status": "running"}))
    same = run_cli("pipeline", str(path), "--dry-run")
    assert "would resume sft (sft) — resuming" in same.stderr
    # As a kill after step 1's checkpoint leaves it: the rerun resumes from that checkpoint.
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "checkpoints" / "step-00000002")
    resumed = run_cli("pipeline", str(path))
    assert "resuming" in resumed.stderr and "at step 1" in resumed.stdout + resumed.stderr
    assert (out / "model").is_dir() and json.loads((out / "summary.json").read_text())

    (out / ".pipeline.json").write_text(json.dumps({**marker, "status": "running"}))

    path.write_text(text.replace("1.0e-3", "2.0e-3"))
    stale = out / "checkpoints" / "step-00000099"  # the old run's latest checkpoint
    stale.mkdir()
    changed = run_cli("pipeline", str(path))
    assert "resuming" not in changed.stderr and "resumed from" not in changed.stderr
    assert "starting afresh" in changed.stderr
    assert not stale.exists()
    marker = json.loads((out / ".pipeline.json").read_text())
    assert len(marker.pop("run_id")) == 32  # a new run: stages reading sft's outputs rerun
    assert marker == {
        "digest": plan(path)[0].digest,
        "status": "done",
        "stage": "sft",
        "kept": [],
        "outputs": ["config.yaml", "metrics.jsonl", "model", "summary.json"],
        "files": [],
    }
    assert "learning_rate: 0.002" in (out / "config.yaml").read_text()


def test_stage_rerun_after_an_upstream_change_does_not_reuse_stale_judgments(tmp_path, tiny_model):
    """New pairs (generate's seed changed) are labelled afresh, even with the labels written
    outside the stage's directory (the pipeline passes overwrite=true); generate and label get a
    config.yaml in their stage directory."""
    prefs = tmp_path / "prefs.jsonl"
    path = tmp_path / "p.yaml"
    text = (
        f"output_dir: {tmp_path / 'r'}\nstages:\n"
        "  - {name: w, stage: world, config: {corpus_size: 5, train_prompts: 3, eval_prompts: 1}}\n"
        f"  - {{name: pairs, stage: generate, config: {{model: {tiny_model},"
        " prompts: '${w}/prompts_train.jsonl', n: 2, max_new_tokens: 6, seed: 1,"
        " output: '${out}/pairs.jsonl'}}\n"
        "  - {name: labels, stage: label, config: {judge: simulated, constitution: world,"
        f" train_data: '${{pairs}}/pairs.jsonl', output: {prefs}}}}}\n"
    )
    path.write_text(text)
    run_cli("pipeline", str(path))
    path.write_text(text.replace("seed: 1", "seed: 2"))
    second = run_cli("pipeline", str(path))
    assert "skip w" in second.stderr and "skip labels" not in second.stderr
    pairs = [json.loads(line) for line in (tmp_path / "r" / "pairs" / "pairs.jsonl").open()]
    labelled = [json.loads(line) for line in prefs.open()]
    assert labelled
    for record in labelled:
        responses = next(p["responses"] for p in pairs if p["prompt"] == record["prompt"])
        assert {record["chosen"], record["rejected"]} <= set(responses)
    generate_config = yaml.safe_load((tmp_path / "r" / "pairs" / "config.yaml").read_text())
    assert generate_config["stage"] == "generate" and generate_config["seed"] == 2
    label_config = yaml.safe_load((tmp_path / "r" / "labels" / "config.yaml").read_text())
    assert label_config["stage"] == "label" and label_config["output"] == str(prefs)


def test_local_directories_named_as_inputs_enter_the_digest(tmp_path):
    """A model directory re-created at the same path reruns the stage that reads it (file names,
    sizes and modification times; no file is read); `name=PATH` values count too; `${root}`,
    which holds the stage directories, does not."""
    import os

    model = tmp_path / "ext"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"0" * 8)
    path = tmp_path / "p.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'r'}\nstages:\n"
        f"  - {{name: sft, stage: sft, config: {{model: {model}}}}}\n"
        f"  - {{name: eval, stage: eval, config: {{policies: ['base={model}']}}}}\n"
        "  - {name: report, stage: report, config: {runs: '${root}'}}\n"
    )
    first = [s.digest for s in plan(path)]
    assert [s.digest for s in plan(path)] == first  # stable while nothing changes

    (tmp_path / "r" / "eval").mkdir(parents=True)
    (tmp_path / "r" / "eval" / "eval.json").write_text("{}")
    assert plan(path)[2].digest == first[2]  # outputs under ${root} are the stages' own

    weights.write_bytes(b"1" * 9)  # re-initialised: another size
    resized = [s.digest for s in plan(path)]
    assert resized[0] != first[0] and resized[1] != first[1]
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    assert plan(path)[0].digest != resized[0]
    retouched = plan(path)[0].digest
    (model / "tokenizer.json").write_text("{}")
    assert plan(path)[0].digest != retouched


def test_every_member_of_a_reward_ensemble_enters_the_digest(tmp_path, monkeypatch):
    """`ppo.reward_model: A,B` names two directories: re-writing the second reruns the stage."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"prompt": "a"}\n')  # data files must exist
    members = [tmp_path / "rm_a", tmp_path / "rm_b"]
    for member in members:
        member.mkdir()
        (member / "model.safetensors").write_bytes(b"0" * 8)
    path = tmp_path / "p.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'r'}\nstages:\n  - {{name: ppo, stage: ppo, config: "
        f"{{train_data: q.jsonl, ppo: {{reward_model: '{members[0]},{members[1]}'}}}}}}\n"
    )
    first = plan(path)[0].digest
    assert plan(path)[0].digest == first
    (members[1] / "model.safetensors").write_bytes(b"1" * 9)
    assert plan(path)[0].digest != first


def test_an_interrupted_from_run_is_finished_by_a_plain_rerun(tmp_path, monkeypatch, capsys):
    """`--from b` marks b and c pending before running b; killed during b, a plain rerun runs b
    and c again rather than skipping c as completed."""
    from rlhfkit.recipes import world
    from rlhfkit.recipes.pipeline import PipelineConfig, run

    path = _world_stages(tmp_path)
    run(PipelineConfig(file=str(path)))
    root = tmp_path / "r"
    assert [_status(root / n) for n in "abc"] == ["done", "done", "done"]

    real_run = world.run

    def interrupted_in_b(config):
        if config.output_dir.endswith("/b"):
            raise KeyboardInterrupt
        return real_run(config)

    monkeypatch.setattr(world, "run", interrupted_in_b)
    with pytest.raises(KeyboardInterrupt):
        run(PipelineConfig(file=str(path), from_stage="b"))
    assert [_status(root / n) for n in "abc"] == ["done", "running", "pending"]

    monkeypatch.setattr(world, "run", real_run)
    capsys.readouterr()
    run(PipelineConfig(file=str(path)))
    err = capsys.readouterr().err
    assert "skip a" in err and "skip b" not in err and "skip c" not in err
    assert [_status(root / n) for n in "abc"] == ["done", "done", "done"]


def test_unknown_keys_in_a_pipeline_file_name_the_nearest_valid_one(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"output-dir: {tmp_path}\nstages:\n  - {{name: w, stage: world}}\n")
    with pytest.raises(
        ConfigError, match=r"p\.yaml: unknown key 'output-dir'; did you mean 'output_dir'\?"
    ):
        plan(path)
    path.write_text("stages:\n  - name: w\n    stage: world\n    confg: {corpus_size: 5}\n")
    with pytest.raises(
        ConfigError,
        match=r"p\.yaml: stages\[1\] \(w\): unknown key 'confg'; did you mean 'config'\?",
    ):
        plan(path)
    path.write_text("stages: []\n")
    with pytest.raises(ConfigError, match="at least one stage"):
        plan(path)


def test_stage_directories_may_not_overlap(tmp_path):
    """A fresh run empties its stage's directory, so no stage's directory may hold another's
    or the pipeline's output_dir."""
    path = tmp_path / "p.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'r'}\nstages:\n  - {{name: a, stage: world}}\n"
        f"  - {{name: b, stage: world, config: {{output_dir: {tmp_path / 'r' / 'a' / 'x'}}}}}\n"
    )
    with pytest.raises(ConfigError, match=r"stages\[2\] \(b\): output directory .* overlaps"):
        plan(path)
    path.write_text(
        f"output_dir: {tmp_path / 'r'}\nstages:\n"
        f"  - {{name: a, stage: world, config: {{output_dir: {tmp_path}}}}}\n"
    )
    with pytest.raises(ConfigError, match="holds the pipeline's output_dir"):
        plan(path)


def test_a_failing_stage_is_named_in_its_error(tmp_path, monkeypatch):
    """A stage that fails as it runs (a bad value is refused earlier, when the pipeline is
    planned) has its error prefixed with the stage's name and kind."""
    from rlhfkit.recipes import world
    from rlhfkit.recipes.pipeline import PipelineConfig, run

    def failing(config):
        raise ConfigError("train_data: something the stage found wrong")

    monkeypatch.setattr(world, "run", failing)
    path = _world_stages(tmp_path, names=("w",))
    with pytest.raises(ConfigError, match=r"^stage w \(world\): train_data: something the"):
        run(PipelineConfig(file=str(path)))
    path = _world_stages(tmp_path, names=("w",), corpus_size=0)
    with pytest.raises(ConfigError, match=r"stages\[1\] \(w\): corpus_size: must be >= 1"):
        run(PipelineConfig(file=str(path)))


# --- digests and directories (stages faked: `_run_stage` writes the stage's `output`) ---------


def _fake_stages(monkeypatch):
    """Replace running a stage by writing the files its config names (`Stage.writes`: a counter,
    so each run differs); returns the names of the stages run, in order."""
    from rlhfkit.recipes import pipeline

    ran = []

    def fake_run(stage, values):
        ran.append(stage.name)
        assert stage.writes, f"stage {stage.name} writes no file of its own"
        for path in map(Path, stage.writes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"run {len(ran)}\n")

    monkeypatch.setattr(pipeline, "_run_stage", fake_run)
    return ran


def _faked_pipeline(tmp_path, stages: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"output_dir: {tmp_path / 'r'}\nstages:\n{stages}")
    return path


def _run(path):
    from rlhfkit.recipes.pipeline import PipelineConfig, run

    run(PipelineConfig(file=str(path)))


def test_inputs_in_a_stage_directory_survive_a_fresh_run_and_enter_the_digest(
    tmp_path, monkeypatch
):
    """A user's file in a stage's output_dir before the pipeline first ran there is theirs: a
    fresh run (changed config) removes the stage's outputs but keeps it (it used to delete it),
    and editing it reruns the stage (it used to be left out of the digest)."""
    ran = _fake_stages(monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    (work / "prompts.jsonl").write_text('{"prompt": "a"}\n')
    stage = (
        f"  - {{name: g, stage: generate, config: {{model: m, prompts: {work}/prompts.jsonl,"
        f" output: {work}/pairs.jsonl, output_dir: {work}, n: 2}}}}\n"
    )
    path = _faked_pipeline(tmp_path, stage)
    _run(path)
    _run(path)
    assert ran == ["g"]  # the second run skipped it
    path.write_text(path.read_text().replace("n: 2", "n: 3"))
    _run(path)
    assert ran == ["g", "g"] and (work / "prompts.jsonl").read_text() == '{"prompt": "a"}\n'
    assert json.loads((work / ".pipeline.json").read_text())["kept"] == ["prompts.jsonl"]
    (work / "prompts.jsonl").write_text('{"prompt": "b"}\n')
    _run(path)
    assert ran == ["g", "g", "g"] and (work / "prompts.jsonl").exists()


def test_a_path_written_out_into_an_earlier_stage_makes_a_dependency(tmp_path, monkeypatch):
    """`prompts: <root>/a/out.jsonl` reads stage a's output as `${a}/out.jsonl` does: b depends
    on a (it used to be skipped with a's old outputs after a changed)."""
    ran = _fake_stages(monkeypatch)
    root = tmp_path / "r"
    path = _faked_pipeline(
        tmp_path,
        "  - {name: a, stage: generate, config: {model: m, prompts: x, output: '${out}/o.jsonl',"
        " n: 2}}\n"
        f"  - {{name: b, stage: generate, config: {{model: m, prompts: {root}/a/o.jsonl,"
        " output: '${out}/o.jsonl'}}\n",
    )
    assert [s.upstream for s in plan(path)] == [(), ("a",)]
    _run(path)
    _run(path)
    assert ran == ["a", "b"]
    path.write_text(path.read_text().replace("n: 2", "n: 3"))
    _run(path)
    assert ran == ["a", "b", "a", "b"]


def test_an_earlier_stage_run_again_reruns_the_stages_reading_it(tmp_path, monkeypatch):
    """A's output removed: a runs again with the same digest, and b, which reads a's new output,
    runs too (the run id of a's outputs enters b's digest), whereas c, independent, is
    skipped."""
    ran = _fake_stages(monkeypatch)
    path = _faked_pipeline(
        tmp_path,
        "  - {name: a, stage: generate, config: {model: m, prompts: x, output: '${out}/o.jsonl'}}\n"
        "  - {name: b, stage: generate, config: {model: m, prompts: '${a}/o.jsonl',"
        " output: '${out}/o.jsonl'}}\n"
        "  - {name: c, stage: generate, config: {model: m, prompts: x,"
        " output: '${out}/o.jsonl'}}\n",
    )
    _run(path)
    (tmp_path / "r" / "a" / "o.jsonl").unlink()
    _run(path)
    assert ran == ["a", "b", "c", "a", "b"]


def test_a_file_an_earlier_stage_writes_elsewhere_is_read_when_its_reader_is_decided(
    tmp_path, monkeypatch
):
    """a writes data/pairs.jsonl outside its directory; b names that file directly. Digests are
    taken when each stage's turn comes, so b sees the file a has just written: it is not
    skipped on the run that changed a (it used to be, once, with a's old content hashed)."""
    ran = _fake_stages(monkeypatch)
    data = tmp_path / "data" / "pairs.jsonl"
    path = _faked_pipeline(
        tmp_path,
        f"  - {{name: a, stage: generate, config: {{model: m, prompts: x, output: {data},"
        " n: 2}}\n"
        f"  - {{name: b, stage: generate, config: {{model: m, prompts: {data},"
        " output: '${out}/o.jsonl'}}\n",
    )
    _run(path)
    _run(path)
    assert ran == ["a", "b"]
    path.write_text(path.read_text().replace("n: 2", "n: 3"))
    _run(path)
    assert ran == ["a", "b", "a", "b"]


def test_a_file_a_stage_wrote_outside_its_directory_is_remade_when_removed(tmp_path, monkeypatch):
    """The embedded-world example's report writes ${root}/report.html, outside its stage
    directory: deleted, it stayed missing ("skip report: unchanged"), for the marker listed
    only the stage directory's entries. Now the files a stage writes through its output keys
    (the report's default file included) are in the marker, and a missing one reruns it."""
    ran = _fake_stages(monkeypatch)
    root = tmp_path / "r"
    elsewhere = tmp_path / "data" / "pairs.jsonl"
    path = _faked_pipeline(
        tmp_path,
        f"  - {{name: a, stage: generate, config: {{model: m, prompts: x, output: {elsewhere}}}}}\n"
        "  - {name: report, stage: report, config: {runs: '${root}'}}\n",
    )
    _run(path)
    report = root / "report.html"
    assert report.is_file() and ran == ["a", "report"]
    marker = json.loads((root / "report" / ".pipeline.json").read_text())
    assert marker["files"] == [str(report)]
    _run(path)
    assert ran == ["a", "report"]
    report.unlink()
    _run(path)
    assert ran == ["a", "report", "report"] and report.is_file()
    elsewhere.unlink()
    _run(path)
    assert ran[3:] == ["a", "report"]  # a's file remade; the report reads ${root}: after it


def test_the_files_label_writes_beside_its_output_are_recorded(tmp_path, monkeypatch):
    """label writes X.judgments.jsonl and X.summary.json beside its `output`; where that lies
    outside the stage's directory the marker used to record the output alone, so a removed
    summary stayed missing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "responses": ["b", "c"]}\n')
    ran = _fake_stages(monkeypatch)
    labels = tmp_path / "data" / "labels.jsonl"
    path = _faked_pipeline(
        tmp_path,
        f"  - {{name: l, stage: label, config: {{train_data: p.jsonl, judge: simulated, "
        f"output: {labels}}}}}\n",
    )
    _run(path)
    beside = [labels.with_name("labels.judgments.jsonl"), labels.with_name("labels.summary.json")]
    marker = json.loads((tmp_path / "r" / "l" / ".pipeline.json").read_text())
    assert marker["files"] == sorted(map(str, [labels, *beside]))
    _run(path)
    assert ran == ["l"]
    beside[1].unlink()
    _run(path)
    assert ran == ["l", "l"] and beside[1].is_file()


def test_the_digest_is_of_the_resolved_config(tmp_path, monkeypatch):
    """Dotted and nested keys, and a key written at its default value, give one digest (the
    resolved config, defaults included, is hashed), and output_dir may use `${root}`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    from rlhfkit.recipes.dpo import DPOConfig

    beta = DPOConfig().dpo.beta
    common = "{name: d, stage: dpo, config: {model: m, train_data: t.jsonl, output_dir: '${root}/x'"
    digests = []
    for extra in ("", f", dpo.beta: {beta}", f", dpo: {{beta: {beta}}}"):
        path = _faked_pipeline(tmp_path, f"  - {common}{extra}}}}}\n")
        (stage,) = plan(path)
        digests.append(stage.digest)
    assert len(set(digests)) == 1
    assert stage.out == tmp_path / "r" / "x"
    path = _faked_pipeline(tmp_path, f"  - {common}, dpo.beta: {beta * 2}}}}}\n")
    assert plan(path)[0].digest != digests[0]


def test_editing_a_python_reward_reruns_its_stage(tmp_path, monkeypatch):
    """`gold_reward: python:module:function`: the module's source enters the digest."""
    module = tmp_path / "my_gold_reward.py"
    module.write_text("def score(prompts, responses):\n    return [0.0] * len(prompts)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"prompt": "a"}\n')
    path = _faked_pipeline(
        tmp_path,
        "  - {name: e, stage: eval, config: {policies: [p], reference: r, prompts: q.jsonl,"
        " gold_reward: 'python:my_gold_reward:score'}}\n",
    )
    first = plan(path)[0].digest
    assert plan(path)[0].digest == first
    module.write_text("def score(prompts, responses):\n    return [1.0] * len(prompts)\n")
    assert plan(path)[0].digest != first


def test_a_stage_breaking_its_own_rules_is_refused_before_any_stage_runs(tmp_path, monkeypatch):
    """`grad_accum: 2` on a ppo stage passed the plan (keys and ranges) and failed only when
    its turn came, after every earlier stage had run. The stage's own check (Stage.check) now
    runs on every stage when the pipeline is planned, so --dry_run finds it too."""
    ran = _fake_stages(monkeypatch)
    path = _faked_pipeline(
        tmp_path,
        "  - {name: g, stage: generate, config: {model: m, prompts: x, output: '${out}/o.jsonl'}}\n"
        "  - {name: p, stage: ppo, config: {model: m, train_data: q.jsonl, grad_accum: 2,"
        " ppo: {reward_model: 'python:m:f'}}}\n",
    )
    with pytest.raises(ConfigError, match=r"stages\[2\] \(p\): grad_accum: not used by ppo"):
        plan(path)
    with pytest.raises(ConfigError, match="grad_accum: not used by ppo"):
        _run(path)
    assert ran == []
