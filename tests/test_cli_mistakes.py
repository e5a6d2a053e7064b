"""Mistakes users make on the command line, found by a review that tried them on every stage:
each is now a one-line error (exit 2) before any work, and nothing of the user's is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.errors import ConfigError
from tests.conftest import write_jsonl


def _error(capsys, *argv: str) -> str:
    """Run `rlhfkit ARGV` in process; its one-line error (exit 2, no traceback)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(errors) == 1 and err.endswith(errors[0]), err
    return errors[0]


def test_generate_refuses_to_write_over_its_prompts_or_into_a_directory(
    tiny_model, tmp_path, capsys
):
    """`output=` naming the prompt file replaced the prompts by samples; a directory there ended
    in IsADirectoryError after all the sampling, leaving a stray temporary file."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "User: Hi\nBot:"}])
    before = prompts.read_text()
    args = ("generate", f"model={tiny_model}", f"prompts={prompts}", "max_new_tokens=2")
    err = _error(capsys, *args, f"output={prompts}")
    assert "output:" in err and "is the prompts file this run reads" in err
    assert prompts.read_text() == before
    (tmp_path / "d").mkdir()
    assert "is a directory" in _error(capsys, *args, f"output={tmp_path / 'd'}")
    assert "is a file" in _error(capsys, *args, f"output={prompts}/x.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "p.jsonl"]
    assert main([*args, f"output={tmp_path / 'o.jsonl'}", "progress=false"]) == 0


def test_output_dirs_that_would_lose_something_are_refused(
    tiny_model, tmp_path, capsys, monkeypatch
):
    """An output_dir that is a file (a FileExistsError traceback after loading), the working
    directory, the directory of the model the run starts from (its export replaced it), or one
    whose config.yaml is not an rlhfkit run's (silently overwritten)."""
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q", "completion": " A"}])
    args = ("sft", f"model={tiny_model}", f"train_data={data}", "max_steps=1", "progress=false")
    (tmp_path / "afile.txt").write_text("x")
    assert "is a file" in _error(capsys, *args, f"output_dir={tmp_path / 'afile.txt' / 'sub'}")
    monkeypatch.chdir(tmp_path)
    assert "holds the working directory" in _error(capsys, *args, "output_dir=.")
    assert "holds the model this run starts from" in _error(
        capsys, *args, f"output_dir={Path(tiny_model).parent}"
    )
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.yaml").write_text("foo: bar\n")
    assert "not the config of an rlhfkit run" in _error(capsys, *args, f"output_dir={user}")
    assert (user / "config.yaml").read_text() == "foo: bar\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rm", "dpo.beta=0.1"], "unknown key 'dpo.beta': the dpo.* keys are `rlhfkit dpo`'s"),
        (["sft", "lora.r=2", "lora.target_modules=[]"], "lora.target_modules: must name at least"),
        (["dpo", "dpo.beta=0"], "dpo.beta: must be > 0"),
        (["sft", "lr_scheduler=cosin"], "lr_scheduler: must be one of cosine, linear, constant"),
        (["sft", "dtype=float33"], "dtype: must be one of auto, float32"),
        (["sft", "--config", "a.yaml", "--config", "b.yaml"], "--config given twice"),
        (["sft", "--config", "."], "--config: '.' is a directory"),
        (["ppo", "ppo.reward_model=r", "max_length=10"], "max_length: not used without ppo.ptx"),
    ],
)
def test_settings_mistakes_are_named_before_anything_loads(capsys, argv, message):
    """Each used to be a traceback, a misleading hint ('did you mean dtype?'), a silent choice
    (the second --config won), or an error only after the data and model had loaded."""
    err = _error(capsys, *argv, "model=no-such-model-needed", "train_data=no-such-file")
    assert message in err


def test_a_run_directory_as_dpo_reference_is_refused_before_checkpoints_go(tmp_path, capsys):
    """dpo.reference=runs/sft (a run directory) was found only after a fresh run had removed
    the last run's checkpoints."""
    run = tmp_path / "sft"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    out = tmp_path / "dpo"
    (out / "checkpoints" / "step-00000001").mkdir(parents=True)
    err = _error(capsys, "dpo", "model=m", "train_data=d", f"output_dir={out}",
                 f"dpo.reference={run}")  # fmt: skip
    assert "dpo.reference:" in err and "is a run directory" in err
    assert (out / "checkpoints" / "step-00000001").is_dir()


def test_a_path_under_a_local_directory_is_not_asked_of_the_hub(tmp_path, monkeypatch):
    """`runs/typo` looked like a hub id (org/name), so a missing run directory meant minutes of
    hub retries offline before 'cannot load'; a path whose first part is a local directory is
    now a local path, and eval names the key it came from."""
    from rlhfkit.models.loading import check_model_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=r"^policies: 'runs/typo' is not a model directory"):
        check_model_source("runs/typo", "policies")
    check_model_source("Qwen/Qwen2-0.5B")  # no local Qwen/: a hub id, left to the hub


def test_bare_rlhfkit_is_a_usage_error(capsys):
    assert main([]) == 2 and "usage: rlhfkit STAGE" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_an_interrupted_run_says_how_to_continue(tmp_path):
    """Ctrl-C printed only 'interrupted'."""
    from rlhfkit.cli import _resume_hint
    from rlhfkit.recipes.sft import SFTConfig

    config = SFTConfig(output_dir=str(tmp_path))
    assert "no checkpoint was written" in _resume_hint(config)
    from rlhfkit.training.checkpoint import STATE_FILE

    step = tmp_path / "checkpoints" / "step-00000004"
    step.mkdir(parents=True)
    (step / STATE_FILE).write_text(json.dumps({}))
    assert _resume_hint(config) == (
        f"; rerun the same command with resume=true to continue from {step}"
    )


def test_a_dead_reward_url_is_found_before_a_fresh_ppo_run_removes_checkpoints(
    tiny_model, tmp_path, capsys
):
    """The scorer was first called at the first rollout, after a fresh run (resume=false) had
    removed the last run's checkpoints; `HttpScorer.check` now scores one pair at start."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "User: Hi\nBot:"}] * 8)
    out = tmp_path / "ppo"
    (out / "checkpoints" / "step-00000001").mkdir(parents=True)
    err = _error(
        capsys, "ppo", f"model={tiny_model}", f"train_data={prompts}", f"output_dir={out}",
        "ppo.reward_model=http://127.0.0.1:9/score", "progress=false",
    )  # fmt: skip
    assert "reward_model: scorer http://127.0.0.1:9/score failed after" in err
    assert (out / "checkpoints" / "step-00000001").is_dir()
