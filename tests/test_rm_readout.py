"""The reward model's last layer computed only at the read-out positions (`models/readout.py`)
gives the same rewards and the same gradients as the full forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

import rlhfkit.models.reward_model as reward_model_module
from rlhfkit.models.loading import LoraSettings, enable_checkpointing, load_tokenizer
from rlhfkit.models.readout import last_layer_at, readout_modules
from rlhfkit.models.reward_model import RewardModel, build_reward_model, pack_responses
from rlhfkit.models.shared_prompt import mask_dtype

SIZES = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=0,
)


def _model(model_type: str, num_labels: int = 1) -> RewardModel:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, num_labels=num_labels, **SIZES)
    if model_type == "qwen3":
        config.head_dim = 8
    seqcls = AutoModelForSequenceClassification.from_config(config).float()
    # A random head (not transformers' small init), so rewards and their gradients are sizeable.
    torch.nn.init.normal_(seqcls.score.weight, std=0.5)
    return RewardModel(seqcls)


def _packed(model: RewardModel, shared: bool = True):
    generator = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(1, 64, (n,), generator=generator).tolist()

    prompts = [ids(5), ids(3), ids(4)]
    # The third prompt's two responses are empty: both rewards are read at the prompt's last
    # token, one position read twice.
    responses = [[ids(4), ids(2)], [ids(6), ids(1), ids(3)], [[], []]]
    dtype = mask_dtype(model.seqcls) if shared else torch.float32
    return pack_responses(prompts, responses, pad_id=0, shared_prompt=shared, dtype=dtype)


def _rewards_and_grads(model: RewardModel, packed, enabled: bool, monkeypatch):
    monkeypatch.setattr(
        reward_model_module,
        "last_layer_at",
        lambda *args, **kwargs: last_layer_at(*args, enabled=enabled, **kwargs),
    )
    model.zero_grad()
    rewards = model(**packed.model_inputs())  # (N, K)
    weights = torch.linspace(-1.0, 2.0, rewards.numel()).view_as(rewards)
    (rewards * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return rewards.detach(), grads


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("shared", [True, False])
def test_readout_equals_full_forward(model_type, shared, monkeypatch):
    model = _model(model_type, num_labels=2)
    assert readout_modules(model.backbone()) is not None
    packed = _packed(model, shared)
    fast, fast_grads = _rewards_and_grads(model, packed, True, monkeypatch)
    full, full_grads = _rewards_and_grads(model, packed, False, monkeypatch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == full_grads.keys()
    assert len(full_grads) == len(list(model.parameters()))
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-5, atol=1e-6)
    # The duplicated read-out position gives the same reward twice (to rounding: the two rows
    # of the head's matmul need not be bitwise equal, and under torch 2.11's CPU kernels are not).
    torch.testing.assert_close(fast[-1], fast[-2], rtol=1e-6, atol=1e-6)
    # And the shortcut did run: positions not read out differ from the full forward.
    inputs = {k: v for k, v in packed.model_inputs().items() if not k.startswith("reward_")}
    with torch.no_grad():
        full_hidden = model.backbone()(**inputs).last_hidden_state
        length = packed.input_ids.shape[1]
        with last_layer_at(model.backbone(), packed.reward_rows, packed.reward_cols, length):
            fast_hidden = model.backbone()(**inputs).last_hidden_state
    read = torch.zeros(full_hidden.shape[:2], dtype=torch.bool)
    read[packed.reward_rows, packed.reward_cols] = True
    torch.testing.assert_close(fast_hidden[read], full_hidden[read], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fast_hidden[~read], full_hidden[~read])


def test_readout_hooks_are_removed_and_used_only_inside(monkeypatch):
    model = _model("llama")
    backbone = model.backbone()
    packed = _packed(model)
    modules = readout_modules(backbone)
    with last_layer_at(backbone, packed.reward_rows, packed.reward_cols, 7) as on:
        assert on
        assert all(module._forward_hooks for module in modules)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in modules)
    with last_layer_at(backbone, packed.reward_rows, packed.reward_cols, 7, enabled=False) as on:
        assert not on


def test_unsupported_backbones_run_in_full():
    gpt2 = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=64)
    model = RewardModel(AutoModelForSequenceClassification.from_config(gpt2))
    assert readout_modules(model.backbone()) is None
    rows, cols = torch.tensor([0]), torch.tensor([2])
    with last_layer_at(model.backbone(), rows, cols, 3) as on:
        assert not on
    checkpointed = _model("llama")
    enable_checkpointing(checkpointed.seqcls)
    assert readout_modules(checkpointed.backbone()) is None


def test_readout_under_lora(tiny_model, monkeypatch):
    tokenizer = load_tokenizer(str(tiny_model))
    model = build_reward_model(
        str(tiny_model),
        pad_token_id=tokenizer.pad_token_id,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "o_proj"]),
    )
    torch.nn.init.normal_(model.head().weight, std=0.5)
    # Non-zero B matrices, so the adapters change the output.
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    assert readout_modules(model.backbone()) is not None
    packed = _packed(model)
    fast, fast_grads = _rewards_and_grads(model, packed, True, monkeypatch)
    full, full_grads = _rewards_and_grads(model, packed, False, monkeypatch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert any("lora_A" in name for name in full_grads)
    # Weight gradients sum over N rows instead of B·T rows (zeros elsewhere): the same terms in
    # another order, equal to float32 rounding.
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-4, atol=1e-5)
