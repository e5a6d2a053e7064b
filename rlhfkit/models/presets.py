"""Named model shapes for `rlhfkit init-model`: random-initialised models plus the byte tokenizer.

| preset       | architecture | params  | use                                             |
|--------------|--------------|---------|-------------------------------------------------|
| `tiny`       | Llama        | ~1.3 M  | tests and the embedded-world demo on a CPU      |
| `small`      | Llama        | ~30 M   | CPU benchmarks against TRL                      |
| `qwen2-0.5b` | Qwen2        | ~494 M  | GPU benchmarks: Qwen2-0.5B's exact shape        |

The models come from a transformers config, so every later stage runs the same code path as a
model loaded from the hub. The vocabulary of `small` and `qwen2-0.5b` is larger than the
tokenizer's 259 ids on purpose: the LM head's cost is then that of a real model.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from rlhfkit.errors import ConfigError
from rlhfkit.models.tokenizer import build_byte_tokenizer


def tiny_config() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=320,
        hidden_size=160,
        intermediate_size=448,
        num_hidden_layers=4,
        num_attention_heads=5,
        num_key_value_heads=5,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )


def small_config() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def qwen2_05b_config() -> PretrainedConfig:
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    )


PRESETS = {"tiny": tiny_config, "small": small_config, "qwen2-0.5b": qwen2_05b_config}


def build_preset(preset: str, *, seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None):
    """Return `(model, tokenizer)` for a named preset, weights drawn with `seed`.

    `tokenizer` defaults to the byte tokenizer; a larger one (e.g. `learn_byte_bpe`'s) widens
    the preset's vocabulary to hold its ids, rounded up to a multiple of 64.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    tokenizer = tokenizer if tokenizer is not None else build_byte_tokenizer()
    config = PRESETS[preset]()
    config.vocab_size = max(config.vocab_size, -(-len(tokenizer) // 64) * 64)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    config.use_cache = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
