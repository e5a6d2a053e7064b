"""`examples/qwen2_0.5b_dpo_rm_ppo.yaml`, run as shipped except for its sizes, against local
stand-ins for what it downloads.

No model or dataset can be downloaded here, so the hub ids the example names are served locally:

* `Qwen/Qwen2-0.5B` is a directory of that relative path in the working directory (transformers
  loads a local directory before it asks the hub): a tiny Qwen2 with Qwen2 *base*'s tokenizer
  conventions, which are the ones that trip tools up: `<|endoftext|>` is both EOS and pad, there
  is no BOS, and the ChatML template ends turns with `<|im_end|>` (not EOS) and adds a default
  system turn.
* `trl-lib/Capybara`, `trl-lib/ultrafeedback_binarized` and `trl-lib/ultrafeedback-prompt` come
  from `datasets.load_dataset` with the hub datasets' columns and splits (Capybara: `messages`,
  `source`, `num_turns`; ultrafeedback_binarized: `chosen` and `rejected` conversations whose
  shared first turn is the implicit prompt, `score_chosen`, `score_rejected`;
  ultrafeedback-prompt: `prompt`, a conversation), and only for those names and splits.

What this checks is everything but the download and the GPU: the example's keys and stage
references, the data formats of the three datasets, the `:test` splits, Qwen2's architecture
and tokenizer through every stage, and `mixed_precision: bf16` (accelerate's CPU autocast).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "qwen2_0.5b_dpo_rm_ppo.yaml"
QWEN_EOS = "<|endoftext|>"
# Qwen2 base's template, in substance: a default system turn, then ChatML turns.
QWEN_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_qwen2_stand_in(directory: Path) -> None:
    """A ~0.2M-parameter Qwen2 with a byte tokenizer dressed as Qwen2 base's."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlhfkit.models.tokenizer import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [QWEN_EOS]})
    tokenizer.eos_token = QWEN_EOS
    tokenizer.pad_token = QWEN_EOS
    tokenizer.chat_template = QWEN_STYLE_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids(QWEN_EOS)
    config = Qwen2Config(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def hub_stand_ins() -> dict[tuple[str, str], list[dict]]:
    """Rows in the columns of the three hub datasets, keyed by (name, split)."""
    rng = random.Random(0)
    words = "the a cat dog sum of two and three is five red blue sky sea why how".split()

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."

    def user(text: str) -> dict:
        return {"role": "user", "content": text}

    def assistant(text: str) -> dict:
        return {"role": "assistant", "content": text}

    def capybara(n: int) -> list[dict]:
        rows = []
        for i in range(n):
            turns = [user(sentence(6)), assistant(sentence(10))]
            if i % 3 == 0:  # some conversations have two exchanges, as Capybara's do
                turns += [user(sentence(5)), assistant(sentence(8))]
            rows.append({"source": "stand-in", "messages": turns, "num_turns": len(turns) // 2})
        return rows

    def preferences(n: int) -> list[dict]:
        rows = []
        for _ in range(n):
            prompt = user(sentence(6))
            rows.append(
                {
                    "chosen": [prompt, assistant(sentence(9))],
                    "rejected": [prompt, assistant(sentence(4))],
                    "score_chosen": 8.0,
                    "score_rejected": 3.5,
                }
            )
        return rows

    def prompts(n: int) -> list[dict]:
        return [{"prompt": [user(sentence(6))]} for _ in range(n)]

    return {
        ("trl-lib/Capybara", "train"): capybara(24),
        ("trl-lib/ultrafeedback_binarized", "train"): preferences(24),
        ("trl-lib/ultrafeedback_binarized", "test"): preferences(6),
        ("trl-lib/ultrafeedback-prompt", "train"): prompts(16),
        ("trl-lib/ultrafeedback-prompt", "test"): prompts(4),
    }


# The example's sizes, cut so that the whole pipeline runs in about a minute on a CPU. Every
# other key (learning rates, dtype, mixed precision, packing, the data and model names, the
# stage references) stays as shipped.
SMALLER = {
    "sft": {"max_steps": 4, "batch_size": 2, "grad_accum": 2, "max_length": 96, "save_steps": 2},
    "rm": {"batch_size": 2, "grad_accum": 2, "max_length": 96},
    "dpo": {"batch_size": 2, "grad_accum": 2, "max_length": 96},
    "ppo": {"max_steps": 2, "max_new_tokens": 8, "ppo.rollout_batch_size": 4, "batch_size": 4},
    "eval": {"best_of_n": 2, "max_new_tokens": 8},
}


def test_real_model_example_runs_on_local_stand_ins(tmp_path, monkeypatch):
    import datasets

    from rlhfkit.cli import main

    write_qwen2_stand_in(tmp_path / "Qwen" / "Qwen2-0.5B")
    tables = hub_stand_ins()
    asked = []

    def load_dataset(name, split=None, **kwargs):
        asked.append((name, split))
        if kwargs or (name, split) not in tables:
            raise AssertionError(f"the example asked for {name!r} split {split!r} {kwargs}")
        return datasets.Dataset.from_list(tables[name, split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.chdir(tmp_path)  # `Qwen/Qwen2-0.5B` and the relative output_dir resolve here

    spec = yaml.safe_load(EXAMPLE.read_text())
    assert spec["output_dir"] == "runs/qwen2-0.5b"
    for stage in spec["stages"]:
        stage["config"].update(SMALLER.get(stage["name"], {}))
    pipeline = tmp_path / "qwen2.yaml"
    pipeline.write_text(yaml.safe_dump(spec, sort_keys=False))

    assert main(["pipeline", str(pipeline)]) == 0

    root = tmp_path / "runs" / "qwen2-0.5b"
    assert set(asked) == set(tables)  # every split the example names, and only those
    sft = json.loads((root / "sft" / "summary.json").read_text())
    assert sft["steps"] == 4
    rm = json.loads((root / "rm" / "summary.json").read_text())
    assert rm["eval_pairs"] == 6 and 0.0 <= rm["eval_accuracy"] <= 1.0
    dpo = json.loads((root / "dpo" / "summary.json").read_text())
    assert "eval_reward_accuracy" in dpo
    ppo = json.loads((root / "ppo" / "summary.json").read_text())
    assert {"reward_start", "reward_end", "kl_end"} <= set(ppo)
    evaluation = json.loads((root / "eval" / "eval.json").read_text())
    assert {"sft", "ppo", "dpo", "best_of_2"} <= set(evaluation["policies"])
    assert "Final numbers" in (root / "report.html").read_text()

    # The exported tokenizer keeps Qwen2 base's conventions (pad == EOS == <|endoftext|>).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "sft" / "model")
    assert tokenizer.eos_token == QWEN_EOS and tokenizer.pad_token_id == tokenizer.eos_token_id
