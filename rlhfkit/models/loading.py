"""Loading models and tokenizers by path or hub id, with dtype, gradient checkpointing and LoRA.

This is the code path users run on real hub models (`Qwen/Qwen2-0.5B-Instruct`); tests run it on
directories written by `rlhfkit init-model`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from rlhfkit.errors import ConfigError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class LoraSettings:
    """What `lora.*` configures; `r == 0` means full fine-tuning."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


def resolve_dtype(name: str) -> torch.dtype:
    """Map a config string to a torch dtype; `auto` is float32 on CPU and bfloat16 on a GPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype: unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _check_source(name_or_path: str) -> None:
    """Fail early with a clear message for an empty name or a local path that does not exist."""
    if not name_or_path:
        raise ConfigError("model: no model given (a local directory or a hub id)")
    if os.path.isdir(name_or_path):
        return
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local or os.path.exists(name_or_path):
        raise ConfigError(f"model: {name_or_path!r} is not a model directory")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer; give it a pad token (eos) if it has none, since batches need padding.

    Sequences are always masked explicitly, so pad == eos is harmless where a tokenizer forces it.
    """
    _check_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        raise ConfigError(f"model: cannot load a tokenizer from {name_or_path!r}: {err}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    lora: LoraSettings | None = None,
    attn_implementation: str | None = None,
    trainable: bool = True,
) -> torch.nn.Module:
    """Load a causal LM for training or inference.

    Args:
        name_or_path: Local directory or hub id.
        dtype: Weight dtype (`auto`, `float32`, `bfloat16`, `float16`).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        lora: If given with `r > 0`, wrap the model in peft LoRA adapters (base weights frozen).
        attn_implementation: e.g. `sdpa`, `eager`, `flash_attention_2`; None lets transformers pick.
        trainable: False puts the model in eval mode with gradients off (reference models).
    """
    _check_source(name_or_path)
    kwargs = {"dtype": resolve_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise ConfigError(f"model: cannot load {name_or_path!r}: {err}") from err
    # Dropout stays off in every stage: PPO's ratios and DPO's log-ratios assume a deterministic
    # forward pass, and the literature (Ziegler et al., TRL) turns it off for RLHF.
    disable_dropout(model)
    if gradient_checkpointing and trainable:
        enable_checkpointing(model)
    if lora is not None and lora.r > 0 and trainable:
        model = apply_lora(model, lora, gradient_checkpointing=gradient_checkpointing)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def apply_lora(
    model: torch.nn.Module, lora: LoraSettings, *, gradient_checkpointing: bool = False
) -> torch.nn.Module:
    """Wrap `model` in LoRA adapters (peft); only adapter weights (and `modules_to_save`) train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    if gradient_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; this restores the graph.
        model.enable_input_require_grads()
    return get_peft_model(model, config)


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing (non-reentrant) on a transformers model; no KV cache.

    transformers renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`
    (the old name warns from 5.2x and goes in v6); the new name is used where it exists.
    """
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    model.config.use_cache = False


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop"):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
