"""The real `rlhfkit sft` / `generate` / `init-model` CLI in a subprocess on the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import arithmetic_sft, run_cli, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_init_model_writes_a_loadable_model_and_tokenizer(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= params <= 2_000_000
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    text = "héllo ✓ 日本 <script>"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


def test_init_model_learns_its_tokenizer_from_a_corpus(tmp_path):
    """`tokenizer_corpus` gives a byte-level BPE tokenizer learned from the data (here 24 rows of
    sums and a conversation twice: a merge needs a pair seen twice) and widens the model's
    vocabulary to hold its ids; the marker records what it was learned from; `sft` trains the
    result like any model."""
    rows = arithmetic_sft(24) + [
        {"messages": [{"role": "user", "content": "Name a fruit."},
                      {"role": "assistant", "content": "Sure, how about a banana?"}]}
    ] * 2  # fmt: skip
    data = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out = tmp_path / "base"
    run_cli("init-model", "--preset", "tiny", "--out", str(out),
            f"tokenizer_corpus={data}", "tokenizer_vocab=300")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert 259 < len(tokenizer) <= 300
    assert model.config.vocab_size == 320  # the preset's own, already enough
    assert len(tokenizer(" What is", add_special_tokens=False).input_ids) == 2
    assert "Ġbanana" in tokenizer.get_vocab()  # the conversation's words were learned too
    marker = json.loads((out / "rlhfkit_init_model.json").read_text())
    assert marker == {"preset": "tiny", "seed": 0, "tokenizer_corpus": str(data),
                      "tokenizer_vocab": len(tokenizer)}  # fmt: skip
    wide = tmp_path / "wide"
    run_cli("init-model", "--preset", "tiny", "--out", str(wide),
            f"tokenizer_corpus={data}", "tokenizer_vocab=400")  # fmt: skip
    assert AutoModelForCausalLM.from_pretrained(wide).config.vocab_size >= len(
        AutoTokenizer.from_pretrained(wide)
    )
    run_cli("sft", f"model={out}", f"train_data={data}", f"output_dir={tmp_path / 'sft'}",
            "max_steps=2", "batch_size=4")  # fmt: skip


def test_init_model_names_the_bad_record_of_its_tokenizer_corpus(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    result = run_cli("init-model", "--preset", "tiny", "--out", str(tmp_path / "m"),
                     f"tokenizer_corpus={data}", check=False)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "corpus.jsonl:2: completion: missing field" in result.stderr
    assert not (tmp_path / "m").exists()


def test_sft_writes_the_output_layout(tiny_model, sft_data, tmp_path):
    out = tmp_path / "sft"
    result = run_cli(
        "sft", f"model={tiny_model}", f"train_data={sft_data}", f"eval_data={sft_data}",
        f"output_dir={out}", "max_steps=6", "batch_size=8", "learning_rate=3e-3", "logging_steps=2",
    )  # fmt: skip
    assert "6/6" in result.stdout + result.stderr  # the progress bar (on by default), finished
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["stage"] == "sft" and config["max_steps"] == 6 and config["lora"]["r"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_loss"] > 0 and summary["eval_loss"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert rows[0]["loss"] > rows[-2]["loss"]  # it learns
    # `lr` is the rate the logged step's update used (it was the next step's: a 1-step linear
    # run logged 0.0), `epoch` the epochs completed after it (it lagged a step: 1 and 5 of 6).
    from rlhfkit.training.optim import lr_multiplier

    warmup = int(round(config["warmup_ratio"] * 6))
    for row in (r for r in rows if "loss" in r):
        factor = lr_multiplier(
            row["step"] - 1, total_steps=6, warmup_steps=warmup, schedule=config["lr_scheduler"]
        )
        assert row["lr"] == pytest.approx(3e-3 * factor, rel=1e-9)
    epochs = {r["step"]: r["epoch"] for r in rows if "loss" in r}
    assert epochs[6] == pytest.approx(3 * epochs[2])
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    before = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(
        model.model.layers[0].mlp.up_proj.weight, before.model.layers[0].mlp.up_proj.weight
    )
    assert (out / "checkpoints" / "step-00000006" / "trainer_state.json").is_file()


def test_progress_false_prints_no_bars_and_checkpoints_print_no_tied_weight_notice(
    tiny_model, sft_data, tmp_path
):
    """`progress=false` silences transformers' own bars ("Loading weights", "Writing model
    shards") as well as rlhfkit's; saving a checkpoint of the tied-embedding tiny model prints no
    "Removed shared tensor" warning (the tie is restored on resume: the resume tests)."""
    out = tmp_path / "quiet"
    result = run_cli(
        "sft", f"model={tiny_model}", f"train_data={sft_data}", f"output_dir={out}",
        "max_steps=2", "batch_size=4", "save_steps=1", "progress=false",
    )  # fmt: skip
    printed = result.stdout + result.stderr
    assert list((out / "checkpoints").glob("step-*"))  # a checkpoint was written
    for noise in ("Loading weights", "Writing model shards", "Removed shared tensor", "2/2"):
        assert noise not in printed, noise


def test_sft_with_lora_and_packing(tiny_model, sft_data, tmp_path):
    out = tmp_path / "lora"
    run_cli(
        "sft", f"model={tiny_model}", f"train_data={sft_data}", f"output_dir={out}", "max_steps=2",
        "batch_size=4", "lora.r=4", "lora.alpha=8", "sft.packing=true", "max_length=64",
    )  # fmt: skip
    # Adapters are merged on export: the model loads as a plain causal LM with changed q_proj.
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_merged, base.model.layers[0].self_attn.q_proj.weight)
    # ... while a module without adapters is untouched.
    assert torch.equal(
        merged.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    )


def test_bad_data_gives_file_line_error_without_traceback(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ""}\n')
    result = run_cli(
        "sft", f"model={tiny_model}", f"train_data={bad}", f"output_dir={tmp_path}/o", check=False
    )
    assert result.returncode == 2
    assert f"{bad}:2: completion: empty text" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_and_help(tiny_model, tmp_path):
    result = run_cli("sft", "learnig_rate=1", check=False)
    assert result.returncode == 2 and "did you mean 'learning_rate'" in result.stderr
    helped = run_cli("sft", "--help")
    for key in ("learning_rate", "lora.r", "sft.packing", "resume", "grad_accum"):
        assert key in helped.stdout
    assert "default" in helped.stdout


def test_generate_writes_k_responses_per_prompt(tiny_model, tmp_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "User: hi\nBot:"}, {"prompt": [{"role": "user", "content": "hello"}]}],
    )
    out = tmp_path / "pairs.jsonl"
    result = run_cli(
        "generate", f"model={tiny_model}", f"prompts={prompts}", "n=3", f"output={out}",
        "max_new_tokens=8", "temperature=1.0", "max_prompt_length=4",
    )  # fmt: skip
    # Both prompts are longer than 4 tokens: they lose their start, and the run says so.
    assert "2 prompts longer than max_prompt_length=4 tokens" in result.stdout + result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["User: hi\nBot:", [{"role": "user", "content": "hello"}]]
    assert all(
        len(r["responses"]) == 3 and all(isinstance(x, str) for x in r["responses"]) for r in rows
    )


def test_training_bf16_weights_warns_once_and_fp32_does_not(tiny_model, sft_data, tmp_path):
    """`dtype=bfloat16` (what `auto` gives on a GPU) trains the bf16 weights in place: the run
    says once what to set instead. The same run in float32 says nothing of the kind."""
    common = (f"model={tiny_model}", f"train_data={sft_data}", "max_steps=1", "batch_size=2",
              "max_length=32", "progress=false")  # fmt: skip
    bf16 = run_cli("sft", *common, "dtype=bfloat16", f"output_dir={tmp_path / 'bf16'}")
    assert bf16.stderr.count("training bfloat16 weights in place") == 1
    assert "set dtype=float32 with mixed_precision=bf16" in bf16.stderr
    fp32 = run_cli("sft", *common, "dtype=float32", f"output_dir={tmp_path / 'fp32'}")
    assert "weights in place" not in fp32.stderr
