"""Nothing a user or another run left in a directory is lost silently: `init-model --out DIR`
refuses a directory that is not its own model, a stage refuses another stage's output_dir, a
refused run leaves the config.yaml already there as it was, a causal LM is refused as a
reward model, and processes a launcher started but accelerate left apart are refused before they
write anything."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from conftest import cli_env, free_port, run_cli, write_jsonl
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.errors import ConfigError
from rlhfkit.models.reward_fn import load_reward_function
from rlhfkit.models.reward_model import load_reward_model
from rlhfkit.recipes.init_model import MARKER, InitModelConfig, foreign_entries
from rlhfkit.recipes.init_model import run as init_model
from rlhfkit.training.run import Run, check_processes_joined

# --- init-model --------------------------------------------------------------------------------


def test_init_model_refuses_a_directory_with_other_files_and_keeps_them(tmp_path):
    out = tmp_path / "victim"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"not empty .*precious\.txt.*overwrite=true"):
        init_model(InitModelConfig(out=str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_init_model_refuses_a_run_directory_and_a_model_it_did_not_write(tmp_path):
    run_dir = tmp_path / "sft"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("stage: sft\n")
    with pytest.raises(ConfigError, match="config.yaml, model"):
        init_model(InitModelConfig(out=str(run_dir)))
    trained = run_dir / "model"
    (trained / "config.json").write_text("{}")
    (trained / "model.safetensors").write_text("weights")
    with pytest.raises(ConfigError, match="not a model init-model wrote"):
        init_model(InitModelConfig(out=str(trained)))
    assert (trained / "model.safetensors").read_text() == "weights"


def test_init_model_rewrites_its_own_model_and_overwrite_replaces_anything(tmp_path):
    out = tmp_path / "tiny"
    init_model(InitModelConfig(out=str(out), seed=1))
    assert foreign_entries(out) == []
    assert json.loads((out / MARKER).read_text()) == {"preset": "tiny", "seed": 1}
    (out / ".pipeline.json").write_text("{}")  # the pipeline's stage marker does not count
    init_model(InitModelConfig(out=str(out), seed=2))
    assert json.loads((out / MARKER).read_text())["seed"] == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        init_model(InitModelConfig(out=str(out)))
    init_model(InitModelConfig(out=str(out), overwrite=True))
    assert not (out / "notes.txt").exists()
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"


def test_init_model_resolves_dot_and_refuses_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="is the current directory"):
        init_model(InitModelConfig(out=".", overwrite=True))
    init_model(InitModelConfig(out="sub/./m/.."))  # resolves to tmp_path/sub
    assert (tmp_path / "sub" / "config.json").is_file()
    assert AutoTokenizer.from_pretrained(tmp_path / "sub").pad_token_id is not None
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        init_model(InitModelConfig(out="file"))


def test_init_model_cli_refuses_with_one_line(tmp_path):
    out = tmp_path / "victim"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    result = run_cli("init-model", "--preset", "tiny", "--out", str(out), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "overwrite=true" in result.stderr and (out / "precious.txt").read_text() == "keep"


# --- output directories of stages ------------------------------------------------------------


@dataclass
class _Config:
    output_dir: str
    seed: int = 0
    progress: bool = False


def test_run_refuses_another_stages_directory_and_writes_config_only_when_it_starts(tmp_path):
    dpo_dir = tmp_path / "dpo"
    dpo_dir.mkdir()
    (dpo_dir / "config.yaml").write_text("stage: dpo\nbeta: 0.1\n")
    with pytest.raises(ConfigError, match=r"holds a 'dpo' run, not 'sft'.*another output_dir"):
        Run(_Config(str(dpo_dir)), "sft")
    assert (dpo_dir / "config.yaml").read_text() == "stage: dpo\nbeta: 0.1\n"

    sft_dir = tmp_path / "sft"
    sft_dir.mkdir()
    (sft_dir / "config.yaml").write_text("stage: sft\nseed: 5\n")
    run = Run(_Config(str(sft_dir), seed=7), "sft")  # same stage: accepted, nothing written yet
    assert yaml.safe_load((sft_dir / "config.yaml").read_text())["seed"] == 5
    run.log(1, {"loss": 1.0})
    assert yaml.safe_load((sft_dir / "config.yaml").read_text()) == {
        "stage": "sft", "output_dir": str(sft_dir), "seed": 7, "progress": False,
    }  # fmt: skip


def test_refused_runs_leave_the_config_of_the_run_in_the_directory(tiny_model, sft_data, tmp_path):
    out = tmp_path / "sft"
    common = [f"model={tiny_model}", f"output_dir={out}", "batch_size=8", "progress=false"]
    run_cli("sft", *common, f"train_data={sft_data}", "max_steps=2", "save_steps=2")
    before = (out / "config.yaml").read_text()
    refused = run_cli(
        "sft", *common, f"train_data={sft_data}", "max_steps=4", "resume=true", check=False
    )
    assert refused.returncode == 2 and "resume:" in refused.stderr
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}])
    failed = run_cli("sft", *common, f"train_data={bad}", "max_steps=4", check=False)
    assert failed.returncode == 2 and "bad.jsonl:1" in failed.stderr
    other = run_cli("rm", *common, f"train_data={sft_data}", check=False)
    assert other.returncode == 2 and "holds a 'sft' run, not 'rm'" in other.stderr
    assert (out / "config.yaml").read_text() == before
    assert (out / "checkpoints" / "step-00000002").is_dir()


# --- reward models -----------------------------------------------------------------------------


def test_a_causal_lm_is_refused_as_a_reward_model(tiny_model):
    with pytest.raises(ConfigError, match=r"is a causal LM, not a reward model: .*rlhfkit rm"):
        load_reward_function(str(tiny_model))


def test_a_sequence_classifier_with_its_head_scores_raw(tiny_model, tmp_path):
    out = tmp_path / "seqcls"
    torch.manual_seed(0)
    seqcls = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    seqcls.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_model).pad_token_id
    seqcls.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    model = load_reward_model(out)
    assert model.num_heads == 1 and model.info.gain == [1.0] and model.info.bias == [0.0]
    assert torch.equal(model.seqcls.score.weight, seqcls.score.weight)
    scores = load_reward_function(str(out), device="cpu")(["1+1?"], [" 2."])
    assert len(scores) == 1 and scores[0] != 0.0

    two = tmp_path / "two_labels"
    relabelled = AutoModelForSequenceClassification.from_pretrained(
        out, num_labels=2, ignore_mismatched_sizes=True
    )
    relabelled.save_pretrained(two)
    with pytest.raises(ConfigError, match="2 labels"):
        load_reward_model(two)


# --- processes a launcher started but accelerate did not join ------------------------------------


FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
"""


def test_processes_accelerate_left_apart_are_refused_before_writing(tmp_path, tiny_model, sft_data):
    """An FSDP config on a machine without GPUs: `accelerate launch` starts two processes
    (WORLD_SIZE=2) that each come up alone (distributed type NO). Before the check both trained
    on all the data and wrote the same output_dir; now each stops with one line, and nothing is
    written."""
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP_CONFIG)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--main_process_port", str(free_port()), "-m", "rlhfkit", "sft",
        f"model={tiny_model}", f"train_data={sft_data}", f"output_dir={out}", "max_steps=2",
        "batch_size=2", "progress=false",
    ]  # fmt: skip
    env = {**cli_env(), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    refusal = "the launcher started 2 processes (WORLD_SIZE=2) but accelerate joined 1 (NO)"
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu" in result.stderr
    assert not out.exists()


def test_check_processes_joined_passes_joined_and_single_processes():
    """WORLD_SIZE unset, or equal to the processes accelerate joined, passes; more is refused."""
    joined = SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU)
    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    check_processes_joined(joined, "2")
    check_processes_joined(alone, None)
    check_processes_joined(alone, "1")
    with pytest.raises(ConfigError, match=r"started 4 processes \(WORLD_SIZE=4\).*joined 1"):
        check_processes_joined(alone, "4")
