"""`load_causal_lm`'s warning for training 16-bit weights in place (no fp32 master copy)."""

from __future__ import annotations

import warnings

import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.models import loading
from rlhfkit.models.loading import (
    LoraSettings,
    SixteenBitTrainingWarning,
    load_causal_lm,
    sixteen_bit_training_message,
    trained_16bit_dtype,
)


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test starts as a new process would: nothing warned yet."""
    monkeypatch.setattr(loading, "_warned_dtypes", set())


def _sixteen_bit_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, SixteenBitTrainingWarning)]


def test_half_ulp_in_the_message_is_what_bf16_rounds_away():
    """bf16 keeps 8 significant bits: eps 2^-7, half of it 2^-8 = 0.39%. 0.02 lies in
    [2^-6, 2^-5), where the step is 2^-6 x 2^-7 = 1.22e-4: +6.0e-5 (under half) is lost,
    +6.2e-5 (over half) lands on the next value."""
    assert "up to 0.39% of a weight" in sixteen_bit_training_message(torch.bfloat16)
    assert "up to 0.05% of a weight" in sixteen_bit_training_message(torch.float16)
    weight = torch.tensor(0.02, dtype=torch.bfloat16)
    assert weight + 6.0e-5 == weight and weight + 6.2e-5 > weight
    assert "dtype=float32 with mixed_precision=bf16" in sixteen_bit_training_message(torch.bfloat16)


def test_trained_bf16_weights_warn_once_and_say_what_to_set(tiny_model, fresh_warnings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_causal_lm(str(tiny_model), dtype="bfloat16")
        load_causal_lm(str(tiny_model), dtype="bfloat16")  # a second trained model: no repeat
    assert trained_16bit_dtype(model) == torch.bfloat16
    messages = _sixteen_bit_warnings(caught)
    assert len(messages) == 1
    assert messages[0].startswith("training bfloat16 weights in place")
    assert "set dtype=float32 with mixed_precision=bf16" in messages[0]


def test_no_warning_for_fp32_frozen_or_lora_models(tiny_model, fresh_warnings):
    """fp32 weights train exactly; a frozen bf16 model is never updated; LoRA adapters are
    kept in fp32 by peft over frozen bf16 base weights."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fp32 = load_causal_lm(str(tiny_model), dtype="float32")
        frozen = load_causal_lm(str(tiny_model), dtype="bfloat16", trainable=False)
        lora = load_causal_lm(str(tiny_model), dtype="bfloat16", lora=LoraSettings(r=4))
    assert _sixteen_bit_warnings(caught) == []
    assert trained_16bit_dtype(fp32) is None and trained_16bit_dtype(frozen) is None
    assert trained_16bit_dtype(lora) is None
    assert {p.dtype for p in lora.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_every_optimizer_warns_for_16bit_weights(fresh_warnings):
    """The reward model and PPO's critic are not built by `load_causal_lm`; every recipe's
    optimizer is built by `build_optimizer`, which warns for them too (and not for fp32)."""
    from rlhfkit.training.optim import build_optimizer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_optimizer(torch.nn.Linear(4, 1), learning_rate=1e-5, weight_decay=0.0)
        assert _sixteen_bit_warnings(caught) == []
        head = torch.nn.Linear(4, 1).to(torch.bfloat16)
        build_optimizer(head, learning_rate=1e-5, weight_decay=0.0)
    assert len(_sixteen_bit_warnings(caught)) == 1


def test_a_directory_without_a_tokenizer_is_a_one_line_config_error(tmp_path):
    """`model=/` (or any directory that is not a model) used to end in transformers' ValueError
    traceback about converting a slow tokenizer."""
    from rlhfkit.models.loading import load_tokenizer

    with pytest.raises(ConfigError, match="holds no tokenizer .*not a model directory"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot load a tokenizer from"):
        load_tokenizer(str(tmp_path))


def test_a_run_directory_given_for_its_model_names_the_model_directory(tmp_path):
    """`model=runs/sft` or `ppo.reward_model=runs/rm` (a stage's OUT, not OUT/model) said only
    "holds no tokenizer" or transformers' "Unrecognized model"; the error now names OUT/model.
    A run directory is refused, not silently read as OUT/model: a pipeline's digests and PPO's
    choice of critic read the path as given."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.reward_fn import load_reward_function

    run = tmp_path / "rm"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "summary.json").write_text("{}")
    expected = f"is a run directory; the model it wrote is '{run / 'model'}'"
    with pytest.raises(ConfigError, match=f"^model: '{run}' {expected}"):
        load_tokenizer(str(run))
    with pytest.raises(ConfigError, match=f"^model: '{run}' {expected}"):
        load_causal_lm(str(run))
    with pytest.raises(ConfigError, match=f"^reward_model: '{run}' {expected}"):
        load_reward_function(str(run))


def test_dropout_is_off_in_train_mode_even_where_modules_copied_the_rate(tmp_path):
    """Llama's attention copies `config.attention_dropout` into a float when it is built, so
    zeroing the config afterwards left dropout live in the attention kernel (two train-mode
    passes differed by up to 0.56 with a rate of 0.1). After loading, every rate is 0 and two
    train-mode forward passes of the same batch are identical."""
    from rlhfkit.models.presets import build_preset

    model, tokenizer = build_preset("tiny", seed=0)
    model.config.attention_dropout = 0.5
    model.save_pretrained(tmp_path)  # a checkpoint whose config asks for dropout
    tokenizer.save_pretrained(tmp_path)

    loaded = loading.load_causal_lm(str(tmp_path), dtype="float32")
    attention = [m for m in loaded.modules() if hasattr(m, "attention_dropout")]
    assert attention and all(m.attention_dropout == 0.0 for m in attention)
    assert loaded.config.attention_dropout == 0.0

    loaded.train()
    ids = torch.randint(3, 200, (2, 12))
    with torch.no_grad():
        first, second = loaded(ids).logits, loaded(ids).logits
    assert torch.equal(first, second)


def test_quiet_hf_progress_bars_restores_what_it_found():
    """The demo's block turns transformers' bars off inside and back as they were after: on if
    they were on, still off if they were off."""
    from transformers.utils import logging as hf_logging

    from rlhfkit.models.loading import quiet_hf_progress_bars

    was = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        with quiet_hf_progress_bars():
            assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        with quiet_hf_progress_bars():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_lora_on_the_output_head_or_embeddings_is_refused(target):
    """Log-probs apply the head's own weight to the hidden states at the response positions
    (`chunked_token_logprobs`), so an adapter on `lm_head` was left out of every log-prob (13
    nats off a full forward in review) and got no gradient; the embeddings are tied to it."""
    from rlhfkit.models.loading import LoraSettings, apply_lora
    from rlhfkit.models.presets import build_preset

    model, _ = build_preset("tiny", seed=0)
    with pytest.raises(ConfigError, match=rf"lora\.target_modules: '{target}' is the model's"):
        apply_lora(model, LoraSettings(r=4, target_modules=("q_proj", target)))


def test_auto_dtype_follows_the_device_the_weights_go_to():
    """`auto` is bf16 on a GPU: a reward scorer loaded onto the CPU of a machine with a GPU got
    bf16 weights (slow there, and ~6e-3 off in review) because only `cuda.is_available()` was
    asked."""
    from rlhfkit.models.loading import resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def test_an_unknown_architecture_is_one_line_naming_the_model(tmp_path):
    """A config.json of a model_type transformers does not know (or custom code) raised a
    ValueError traceback from `from_pretrained`."""
    from rlhfkit.models.loading import load_causal_lm

    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ConfigError, match=r"model: cannot load '.*': "):
        load_causal_lm(str(tmp_path))


def _tokenizer_without_pad(*specials: str, unk: str | None = None):
    """A word-level tokenizer with EOS `<|eot_id|>`, the given special tokens, and no pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["hello", "world", "<|eot_id|>", *specials, *([unk] if unk else [])]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|eot_id|>")
    if unk:
        tokenizer.unk_token = unk
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot_id|>", *specials]})
    assert tokenizer.pad_token is None
    return tokenizer


def test_a_missing_pad_token_is_a_padding_token_of_its_own_before_unk_and_eos(tmp_path):
    """With pad == EOS the reward model, read at the last non-pad token, skips every EOS, so
    ended and cut-off responses scored alike (Llama 3 and Mistral stand-ins: a difference of
    0.0). A tokenizer without a pad token now pads with a padding token of its own (Llama 3.1's
    `<|finetune_right_pad_id|>`), else its unknown token (Llama 2, Mistral), else EOS."""
    from rlhfkit.models.loading import load_tokenizer, pad_token_for

    llama31 = _tokenizer_without_pad("<|start_header_id|>", "<|finetune_right_pad_id|>")
    assert pad_token_for(llama31) == "<|finetune_right_pad_id|>"
    assert pad_token_for(_tokenizer_without_pad("<s>", unk="<unk>")) == "<unk>"
    assert pad_token_for(_tokenizer_without_pad("<|start_header_id|>")) == "<|eot_id|>"
    assert pad_token_for(_tokenizer_without_pad("<|image_pad|>")) == "<|eot_id|>"  # not for text

    directory = tmp_path / "llama31"
    llama31.save_pretrained(directory)
    loaded = load_tokenizer(str(directory))
    assert loaded.pad_token == "<|finetune_right_pad_id|>" != loaded.eos_token


def test_lora_default_targets_follow_the_architecture():
    """LoRA targeted Llama's q/k/v/o_proj on every model: GPT-NeoX (Pythia) and GPT-2 crashed in
    peft with a traceback, and Phi-3 silently got adapters on o_proj alone. Now the default
    falls back to peft's targets for the architecture, an architecture peft knows none for is a
    one-line error listing its layers, and so is a named target that matches nothing."""
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        OPTConfig,
        Phi3Config,
    )

    from rlhfkit.models.loading import DEFAULT_LORA_TARGETS, LoraSettings, apply_lora, lora_targets

    def tiny(config):
        return AutoModelForCausalLM.from_config(config)

    common = dict(vocab_size=64, num_hidden_layers=1, num_attention_heads=4)
    llama = tiny(LlamaConfig(hidden_size=32, intermediate_size=64, **common))
    pythia = tiny(GPTNeoXConfig(hidden_size=32, intermediate_size=64, **common))
    gpt2 = tiny(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64, n_positions=64))
    phi3 = tiny(Phi3Config(hidden_size=32, intermediate_size=64, pad_token_id=0, **common))
    opt = tiny(OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, **common))
    assert lora_targets(llama, DEFAULT_LORA_TARGETS) == list(DEFAULT_LORA_TARGETS)
    # OPT's output projection is out_proj: its q/k/v keep their adapters, as before
    assert lora_targets(opt, DEFAULT_LORA_TARGETS) == ["q_proj", "k_proj", "v_proj"]
    assert lora_targets(pythia, DEFAULT_LORA_TARGETS) == ["query_key_value"]
    assert lora_targets(gpt2, DEFAULT_LORA_TARGETS) == ["c_attn"]
    with pytest.raises(ConfigError, match="no q_proj/k_proj/v_proj/o_proj.*: .*qkv_proj"):
        lora_targets(phi3, DEFAULT_LORA_TARGETS)
    assert lora_targets(phi3, ["qkv_proj", "self_attn.o_proj"]) == ["qkv_proj", "self_attn.o_proj"]
    with pytest.raises(ConfigError, match="'c_fc2' names no linear layer of this gpt2 model"):
        lora_targets(gpt2, ["c_attn", "c_fc2"])
    adapted = apply_lora(gpt2, LoraSettings(r=2))
    assert any("c_attn.lora_A" in name for name, _ in adapted.named_parameters())


def test_sequences_past_the_models_context_are_one_line_errors(tmp_path):
    """GPT-2 learns a table of `n_positions` positions: sft/rm/dpo at the default max_length of
    512 on a model with 128 crashed inside the position embedding (IndexError; a device-side
    assert on a GPU), and so did sampling a long prompt plus max_new_tokens."""
    import json
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM, GPT2Config

    from rlhfkit.models.loading import check_context, check_sampling_context
    from rlhfkit.models.tokenizer import build_byte_tokenizer

    model = AutoModelForCausalLM.from_config(
        GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=320, n_positions=64)
    )
    check_context(model, 64, "max_length")
    with pytest.raises(ConfigError, match=r"max_length: 65 tokens, more than the model's context"):
        check_context(model, 65, "max_length")
    with pytest.raises(ConfigError, match=r"the longest prompt .* \+ max_new_tokens: 70 tokens"):
        check_sampling_context(model, [[1] * 10, [1] * 40], 30)

    directory = tmp_path / "gpt2"
    model.save_pretrained(directory)
    build_byte_tokenizer().save_pretrained(directory)
    with pytest.raises(ConfigError, match=r"max_length: 65 tokens, more than the model's context"):
        check_context(str(directory), 65, "max_length")  # its config.json, without the weights
    # The recipes check before they load the weights (a large model's load takes minutes): with
    # the weights gone, the context error still comes first.
    (directory / "model.safetensors").unlink()
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "completion": " there"}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "sft", f"model={directory}", f"train_data={data}",
         f"output_dir={tmp_path / 'out'}", "max_steps=1", "progress=false"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "max_length: 512 tokens, more than the model's context of 64 tokens" in result.stderr
    assert "Traceback" not in result.stderr
    check_context(str(tmp_path / "no-such-model"), 10**6, "max_length")  # loading will say why


def test_the_tokenizers_padding_side_is_kept_as_the_checkpoint_has_it(tmp_path):
    """load_tokenizer forced padding_side="right", so every output model saved its tokenizer
    right-padded whatever the base model said (Gemma's and others' say left); rlhfkit never
    pads through the tokenizer, so the checkpoint's setting now stays."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.tokenizer import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).padding_side == "left"
