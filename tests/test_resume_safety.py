"""Resume never continues a checkpoint of another run or config, and its outputs equal an
uninterrupted run's.

The defect these guard against: a fresh run left an earlier run's checkpoints in
`OUT/checkpoints`, pruning by step number deleted the new run's checkpoints in favour of the
earlier run's higher-numbered ones, and `resume=true` then continued the earlier run, so the
final model silently belonged to another config. Now a fresh run removes the old checkpoints,
every checkpoint records the config that decides the training trajectory, resume refuses a
checkpoint whose record differs, and pruning only counts the checkpoints this run could resume
from. "Killed after step N" is simulated as in `test_dpo_cli.py` (`test_invariants.py` kills
for real): the checkpoints the run wrote after step N, its model and its summary are deleted,
while checkpoints an earlier run left stay, which is exactly what a SIGKILL right after step
N's checkpoint leaves, and deterministic where a kill on a fast tiny model is a race.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl
from safetensors.torch import load_file
from test_dpo_recipe import world_pairs

from rlhfkit.config import TrainConfig, load_config, write_config
from rlhfkit.errors import ConfigError
from rlhfkit.recipes import dpo, ppo, sft
from rlhfkit.synthetic import make_prompts
from rlhfkit.training.checkpoint import (
    RECORD_FIELD,
    STATE_FILE,
    checkpoint_dirs,
    config_differences,
    config_record,
    prunable_checkpoints,
    read_trainer_state,
    remove_checkpoints,
)
from rlhfkit.training.run import Run, console, strict_json

GOLD = "python:rlhfkit.synthetic.gold:gold_rewards"


@pytest.fixture(autouse=True)
def _unwrapped_console(monkeypatch):
    """Long paths in the run's messages on one line each, so the tests can read them."""
    monkeypatch.setattr(console, "soft_wrap", True)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _record(stage: str = "sft", **changes) -> dict:
    """The config record of a TrainConfig with `changes`, as a checkpoint stores it."""
    config = dataclasses.replace(TrainConfig(), **changes)
    return config_record({"stage": stage, **dataclasses.asdict(config)})


def _weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def _checkpoint_ids(out: Path) -> set[tuple[str, int]]:
    """Each checkpoint as (name, mtime of its trainer state): a rewrite gives a new identity."""
    return {
        (path.name, (path / STATE_FILE).stat().st_mtime_ns)
        for path in checkpoint_dirs(out / "checkpoints")
    }


def _as_if_killed_after(out: Path, step: int, before: set[tuple[str, int]]) -> None:
    """What SIGKILL right after step `step`'s checkpoint leaves of a run that found the
    checkpoints `before` (`_checkpoint_ids`) when it started: the checkpoints it wrote after
    step `step` never existed (those left by earlier runs stay, whatever their step), nor did
    the model and the summary."""
    for path in checkpoint_dirs(out / "checkpoints"):
        written_by_this_run = (path.name, (path / STATE_FILE).stat().st_mtime_ns) not in before
        if written_by_this_run and int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
    shutil.rmtree(out / "model")
    (out / "summary.json").unlink()


def _strict_loads(text: str):
    """`json.loads` that rejects NaN / Infinity, as any non-Python JSON reader does."""

    def reject(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def _fake_checkpoint(root: Path, step: int, record: dict | None) -> Path:
    path = root / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / STATE_FILE).write_text(json.dumps({"step": step, RECORD_FIELD: record}))
    return path


# ---------------------------------------------------------------------------------------------
# The config record and its comparison (pure)
# ---------------------------------------------------------------------------------------------


def test_a_changed_trajectory_key_is_named_and_bookkeeping_keys_are_not():
    """learning_rate changes the trajectory: named with both values. Where the run writes, what
    it shows and how often it logs, evaluates or checkpoints do not: ignored."""
    saved = _record(learning_rate=1e-3)
    assert config_differences(saved, _record(learning_rate=3e-3), 4) == [
        "learning_rate: 0.001 -> 0.003"
    ]
    same = _record(
        learning_rate=1e-3,
        resume=True,
        output_dir="elsewhere",
        progress=False,
        logging_steps=7,
        save_steps=3,
        save_total_limit=5,
        report_to=["tensorboard"],
        gradient_checkpointing=True,
        compile=True,
        eval_steps=11,
    )
    assert config_differences(saved, same, 4) == []
    assert any(d.startswith("stage:") for d in config_differences(saved, _record("rm"), 4))
    # A checkpoint written before a key became bookkeeping still records it (rm's
    # normalisation keys): it used to be refused with "rm.normalize: True -> '(absent)'".
    older = {**_record("rm"), "rm.normalize": True, "rm.normalize_data": "", "eval_steps": 5}
    assert config_differences(older, _record("rm"), 4) == []


def test_max_steps_may_grow_only_where_the_schedule_ignores_it():
    """cosine decay / warm-up are functions of the total steps, so the steps already taken
    would have had other learning rates in a longer run: refused. A constant schedule without
    warm-up may be extended (or cut) to any length not below the checkpoint's step."""
    cosine = config_differences(_record(max_steps=6), _record(max_steps=12), 6)
    assert len(cosine) == 1 and cosine[0].startswith("max_steps: 6 -> 12 (the cosine schedule")
    constant = {"lr_scheduler": "constant"}
    assert (
        config_differences(_record(max_steps=6, **constant), _record(max_steps=12, **constant), 6)
        == []
    )
    warm = {"lr_scheduler": "constant", "warmup_ratio": 0.1}
    assert config_differences(_record(max_steps=6, **warm), _record(max_steps=12, **warm), 6)
    past = config_differences(
        _record(max_steps=12, **constant), _record(max_steps=4, **constant), 6
    )
    assert past == ["max_steps: 12 -> 4 (the checkpoint is already at step 6)"]
    # epochs is ignored by the plan when max_steps > 0, so it may differ then.
    assert (
        config_differences(_record(max_steps=6, epochs=1.0), _record(max_steps=6, epochs=3.0), 2)
        == []
    )


def test_pruning_keeps_this_runs_checkpoints_over_higher_numbered_strangers(tmp_path):
    """Another run's steps 9 and 12 beside this run's 3, 6 and 9 (keep=2): only this run's step
    3 goes. By step number alone, this run's 3 and 6 would have gone."""
    root = tmp_path / "checkpoints"
    mine, other = _record(learning_rate=3e-3), _record(learning_rate=1e-3)
    _fake_checkpoint(root, 12, other)
    legacy = _fake_checkpoint(root, 11, None)
    own = [_fake_checkpoint(root, step, mine) for step in (3, 6, 9)]
    assert prunable_checkpoints(root, mine, keep=2) == [own[0]]
    assert prunable_checkpoints(root, mine, keep=0) == []
    assert prunable_checkpoints(root, None, keep=1) == []  # only the legacy one is its run's
    assert prunable_checkpoints(root, None, keep=0) == [] and legacy.is_dir()


def test_remove_checkpoints_takes_complete_and_half_written_ones_only(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, 3, None)
    (root / ".tmp-step-00000006").mkdir()
    (root / "notes").mkdir()
    assert remove_checkpoints(root) == [".tmp-step-00000006", "step-00000003"]
    assert [p.name for p in root.iterdir()] == ["notes"]
    assert remove_checkpoints(tmp_path / "absent") == []


class _TwoRankAccelerator:
    """The main process of a 2-process run, where rank 1 is slower: its `save_state` file lands
    only by the next barrier, as when rank 1 is still pickling its RNG state after rank 0's
    `save_state` has returned."""

    is_main_process = True
    num_processes = 2

    def __init__(self):
        self.pending: list[Path] = []

    def save_state(self, out: str) -> None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "random_states_0.pkl").write_bytes(b"0")
        self.pending.append(Path(out) / "random_states_1.pkl")

    def wait_for_everyone(self) -> None:
        for path in self.pending:
            path.write_bytes(b"1")  # FileNotFoundError where rank 0 moved the directory away
        self.pending.clear()


def test_a_checkpoint_is_moved_into_place_only_after_every_process_wrote_into_it(tmp_path):
    """The CI failure this guards against: rank 0 renamed `.tmp-step-N` to `step-N` while rank 1
    was still writing its `random_states_1.pkl` into it ("Parent directory ... does not exist").
    Both ranks' files must end up in the final checkpoint."""
    from rlhfkit.training.checkpoint import save_checkpoint

    root = tmp_path / "checkpoints"
    final = save_checkpoint(_TwoRankAccelerator(), root, 2, {"epoch": 0})
    assert sorted(p.name for p in final.iterdir()) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
        STATE_FILE,
    ]
    assert read_trainer_state(final)["step"] == 2
    assert read_trainer_state(final)["num_processes"] == 2
    assert [p.name for p in root.iterdir()] == ["step-00000002"]


def test_resume_refuses_a_checkpoint_of_another_process_count(tmp_path):
    """A step's global batch is batch_size x grad_accum x processes: a checkpoint written by 2
    processes continued by 1 would read other examples from its next step on. Refused, with both
    counts; the same count, or a checkpoint of an older rlhfkit (no count recorded), passes."""
    from rlhfkit.training.setup import check_process_count

    two = _fake_checkpoint(tmp_path / "a", 4, _record())
    state = read_trainer_state(two)
    (two / STATE_FILE).write_text(json.dumps({**state, "num_processes": 2}))
    with pytest.raises(ConfigError) as error:
        check_process_count(two, 1)
    message = str(error.value)
    assert str(two) in message and "2 process(es)" in message and "this run has 1" in message
    check_process_count(two, 2)
    check_process_count(_fake_checkpoint(tmp_path / "b", 4, _record()), 1)


# ---------------------------------------------------------------------------------------------
# Strict JSON and atomic rewrites
# ---------------------------------------------------------------------------------------------


def test_strict_json_nulls_non_finite_values_and_names_them():
    value = {"a": 1.0, "b": math.nan, "c": {"d": [0.5, math.inf]}, "e": "x"}
    clean, replaced = strict_json(value)
    assert clean == {"a": 1.0, "b": None, "c": {"d": [0.5, None]}, "e": "x"}
    assert replaced == ["b", "c.d[1]"]
    json.dumps(clean, allow_nan=False)


def test_run_writes_strict_json_and_rewrites_files_atomically(tmp_path, capsys):
    """summary.json and metrics.jsonl hold null (and the run says so) where a value is NaN;
    config.yaml and the truncated metrics.jsonl are replaced whole, leaving no temporary file."""
    config = TrainConfig(output_dir=str(tmp_path / "out"))
    run = Run(config, "sft")
    for step in (1, 2, 3):
        run.log(step, {"loss": 0.5 / step, "explained_variance": math.nan})
    run.summary({"train_loss": math.nan, "steps": 3})
    err = capsys.readouterr().err
    assert "summary.json: train_loss not finite; written as null" in err
    assert err.count("explained_variance is not finite") == 1  # said once, not every step
    assert _strict_loads((run.out / "summary.json").read_text()) == {
        "train_loss": None,
        "steps": 3,
    }
    run.truncate_metrics(2)
    rows = [_strict_loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and rows[0]["explained_variance"] is None
    write_config(run.out, "sft", dataclasses.replace(config, learning_rate=0.25))
    assert load_config(TrainConfig, str(run.out / "config.yaml"), stage="sft").learning_rate == 0.25
    leftovers = [p.name for p in run.out.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------
# SFT and DPO: a fresh run over an earlier run's checkpoints, killed, then resumed
# ---------------------------------------------------------------------------------------------


def _sft_config(tiny_model, data, out, *overrides):
    base = [
        f"model={tiny_model}", f"train_data={data}", f"output_dir={out}", "batch_size=4",
        "save_steps=2", "save_total_limit=2", "logging_steps=1", "progress=false",
    ]  # fmt: skip
    return load_config(sft.SFTConfig, overrides=base + list(overrides))


def test_sft_fresh_run_over_old_checkpoints_resumes_its_own(tiny_model, sft_data, tmp_path, capsys):
    """Run A (lr 1e-3, 10 steps) completes; run B (lr 3e-3, 6 steps) in the same directory is
    killed after step 4; B resumed ends bit-identical to B finished. Before the fix B's
    checkpoints were pruned in favour of A's steps 8 and 10, and the resume "continued" A's step
    10 (past B's end, so nothing trained: A's model under B's config). Resuming with A's
    learning rate instead is refused, naming the key and the way out, in one line."""
    out = tmp_path / "out"
    sft.train(_sft_config(tiny_model, sft_data, out, "max_steps=10", "learning_rate=1e-3"))
    b_args = ("max_steps=6", "learning_rate=3e-3")
    capsys.readouterr()
    before = _checkpoint_ids(out)
    sft.train(_sft_config(tiny_model, sft_data, out, *b_args))
    removed = capsys.readouterr().err
    assert "removed 2 checkpoint(s) of an earlier run" in removed
    assert "step-00000008" in removed and "step-00000010" in removed
    steps = [read_trainer_state(p)["step"] for p in checkpoint_dirs(out / "checkpoints")]
    assert steps == [4, 6]
    for path in checkpoint_dirs(out / "checkpoints"):
        assert read_trainer_state(path)[RECORD_FIELD]["learning_rate"] == 3e-3
    finished_weights, finished_losses = _weights(out), _losses(out)
    _as_if_killed_after(out, 4, before)

    refused = run_cli(
        "sft", *[f"{k}={v}" for k, v in (("model", tiny_model), ("train_data", sft_data))],
        f"output_dir={out}", "batch_size=4", "max_steps=6", "learning_rate=1e-3", "resume=true",
        "progress=false", check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert "step-00000004 was written with another config (learning_rate: 0.003 -> 0.001);" in (
        message
    )  # logging_steps and save_steps differ too, but do not change the trajectory
    assert "resume=false" in message
    assert "Traceback" not in refused.stderr
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step-00000004"]

    capsys.readouterr()
    sft.train(_sft_config(tiny_model, sft_data, out, *b_args, "resume=true"))
    assert f"resumed from {out / 'checkpoints' / 'step-00000004'} at step 4" in (
        capsys.readouterr().err
    )
    resumed = _weights(out)
    assert all((finished_weights[k] == resumed[k]).all() for k in finished_weights)
    assert _losses(out) == finished_losses


def test_dpo_fresh_run_over_old_checkpoints_resumes_its_own(tiny_model, tmp_path):
    """The same for DPO: A (beta 0.5, 6 steps) then B (beta 0.1, 4 steps) killed after step 2,
    resumed: B's own step 2 is continued, and the result equals B finished."""
    data = write_jsonl(tmp_path / "pairs.jsonl", world_pairs(24))
    out = tmp_path / "out"

    def config(*overrides):
        base = [
            f"model={tiny_model}", f"train_data={data}", f"output_dir={out}", "batch_size=4",
            "save_steps=2", "logging_steps=1", "progress=false", "learning_rate=2e-3",
        ]  # fmt: skip
        return load_config(dpo.DPOConfig, overrides=base + list(overrides))

    dpo.train(config("max_steps=6", "dpo.beta=0.5"))
    before = _checkpoint_ids(out)
    dpo.train(config("max_steps=4", "dpo.beta=0.1"))
    finished_weights, finished_losses = _weights(out), _losses(out)
    _as_if_killed_after(out, 2, before)
    with pytest.raises(ConfigError, match=r"dpo\.beta: 0\.1 -> 0\.5"):
        dpo.train(config("max_steps=4", "dpo.beta=0.5", "resume=true"))
    saved_seconds = read_trainer_state(out / "checkpoints" / "step-00000002")["totals"]["seconds"]
    summary = dpo.train(config("max_steps=4", "dpo.beta=0.1", "resume=true"))
    resumed = _weights(out)
    assert all((finished_weights[k] == resumed[k]).all() for k in finished_weights)
    assert _losses(out) == finished_losses
    # Steps 1-2 ran before the kill: their seconds are carried (a resumed run used to report
    # only its own steps' time).
    assert saved_seconds > 0 and summary["train_seconds"] > saved_seconds


# ---------------------------------------------------------------------------------------------
# PPO: resumed at its last step
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppo-resume") / "prompts.jsonl"
    return write_jsonl(path, [{"prompt": p.text} for p in make_prompts(16, seed=3)])


def _ppo_config(tiny_model, prompts, out, *overrides):
    base = [
        f"model={tiny_model}", f"train_data={prompts}", f"output_dir={out}",
        f"ppo.reward_model={GOLD}", f"ppo.gold_reward={GOLD}", "max_steps=2",
        "max_new_tokens=6", "ppo.rollout_batch_size=4", "ppo.ppo_epochs=1",
        "ppo.target_kl=0.2", "ppo.kl_horizon=50", "learning_rate=1e-3", "progress=false",
    ]  # fmt: skip
    return load_config(ppo.PPOConfig, overrides=base + list(overrides))


def test_ppo_resumed_at_its_last_step_writes_the_uninterrupted_summary(
    tiny_model, prompt_file, tmp_path
):
    """A run killed after its final checkpoint but before summary.json (and a finished run
    resumed again) runs no step; its summary's end numbers (reward, KL, the adaptive KL
    coefficient, gold reward) come from the checkpoint, so they equal the uninterrupted run's
    instead of NaN, and summary.json is strict JSON; metrics.jsonl and samples.jsonl equal the
    uninterrupted run's. A changed PPO key is refused."""
    out = tmp_path / "out"
    evaluated = (f"eval_data={prompt_file}",)
    ppo.train(_ppo_config(tiny_model, prompt_file, out, *evaluated))
    text = (out / "summary.json").read_text()
    finished = _strict_loads(text)
    assert all(math.isfinite(finished[k]) for k in ("reward_end", "kl_end", "kl_coef_end"))
    assert finished["kl_coef_end"] != 0.05  # adapted, so it must come from the saved state
    finished_weights = _weights(out)
    logs = {name: (out / name).read_text() for name in ("metrics.jsonl", "samples.jsonl")}
    assert '"eval_' in logs["metrics.jsonl"].splitlines()[-1]  # the end evaluation, logged last

    _as_if_killed_after(out, 2, before=set())
    with (out / "samples.jsonl").open("a") as handle:
        handle.write('{"step": 3, "prompt": "torn by the ki')  # a kill mid-write
    ppo.train(_ppo_config(tiny_model, prompt_file, out, *evaluated, "resume=true"))
    assert (out / "summary.json").read_text() == text
    # Cut back to their bytes at the checkpoint: no torn line (it made json.loads fail), no
    # second end evaluation (it was logged after the checkpoint, and again by the resumed run).
    assert {name: (out / name).read_text() for name in logs} == logs
    resumed = _weights(out)
    assert all((finished_weights[k] == resumed[k]).all() for k in finished_weights)

    with pytest.raises(ConfigError, match=r"ppo\.kl_coef: 0\.05 -> 0\.1.*resume=false"):
        ppo.train(_ppo_config(tiny_model, prompt_file, out, "resume=true", "ppo.kl_coef=0.1"))


def test_cut_log_keeps_the_checkpoints_bytes_or_else_whole_lines_up_to_its_step(tmp_path):
    """With the byte length saved at the checkpoint (24: the first two 12-byte lines) the log is
    cut exactly there, dropping a same-step row logged after it; without it (an older
    checkpoint) lines past the step and a torn last line are dropped."""
    from rlhfkit.training.run import cut_log

    lines = ['{"step": 1}\n', '{"step": 2}\n', '{"step": 2, "eval_loss": 1}\n', '{"step": 3}\n']
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(lines) + '{"step": 4, "lo')
    cut_log(path, after_step=2, size=24)
    assert path.read_text() == "".join(lines[:2])
    path.write_text("".join(lines) + '{"step": 4, "lo')
    cut_log(path, after_step=3, size=None)
    assert path.read_text() == "".join(lines)


def test_resume_refuses_training_data_changed_since_the_checkpoint(tiny_model, sft_data, tmp_path):
    """Same `train_data` path, other content: with one record more the plan has another length
    and step s other examples (the schedule's total moves: lr at each step changes); with one
    record edited, step s trains other tokens. Either is refused in one line, before loading."""
    data = tmp_path / "sft.jsonl"
    data.write_bytes(Path(sft_data).read_bytes())
    out = tmp_path / "out"
    sft.train(_sft_config(tiny_model, str(data), out, "max_steps=2", "save_steps=1"))
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines + lines[:1]))
    grown = r"train_data: .*step-00000002 was written for \d+ training examples and the data now"
    with pytest.raises(ConfigError, match=grown + r" gives \d+; .*resume=false"):
        sft.train(_sft_config(tiny_model, str(data), out, "max_steps=2", "resume=true"))
    data.write_text("".join([lines[0].replace("a", "b", 1)] + lines[1:]))
    assert data.read_text() != "".join(lines)
    with pytest.raises(ConfigError, match=r"train_data: its content changed since .*step-0000"):
        sft.train(_sft_config(tiny_model, str(data), out, "max_steps=2", "resume=true"))
    data.write_text("".join(lines))
    sft.train(_sft_config(tiny_model, str(data), out, "max_steps=2", "resume=true"))
