"""The optimizer and schedule: fused AdamW equals the default loop; the warm-up/decay factors."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.training.optim import build_optimizer, fused_adamw_supported, lr_multiplier


def _two_layer(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))


def test_fused_adamw_takes_the_same_steps_as_the_default():
    """Three AdamW steps with weight decay on the same gradients: the fused kernel and the
    foreach loop give the same weights (fp32 rounding apart), and biases/norms get no decay."""
    models = [_two_layer(0), _two_layer(0)]
    optimizers = [
        build_optimizer(m, learning_rate=1e-2, weight_decay=0.1, fused=fused)
        for m, fused in zip(models, (False, True), strict=True)
    ]
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults.get("fused")
    decayed = {id(p) for p in optimizers[0].param_groups[0]["params"]}
    assert decayed == {id(models[0][0].weight), id(models[0][2].weight)}
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_adamw_is_used_for_plain_training_on_cpu():
    from accelerate import Accelerator

    assert fused_adamw_supported(Accelerator(cpu=True))


@pytest.mark.parametrize(
    ("step", "schedule", "expected"),
    [
        (0, "cosine", 1 / 3),  # warm-up of 2 steps: (0 + 1) / (2 + 1)
        (1, "linear", 2 / 3),
        (2, "constant", 1.0),
        (2, "linear", 1.0),  # decay starts at step 2: progress 0 / 8
        (6, "linear", 0.5),  # progress (6 - 2) / (10 - 2) = 0.5
        (6, "cosine", 0.5),  # 0.5 (1 + cos(pi/2)) = 0.5
        (4, "cosine", 0.5 * (1 + math.cos(math.pi / 4))),  # progress 2/8
        (10, "cosine", 0.0),
    ],
)
def test_lr_multiplier_by_hand(step, schedule, expected):
    factor = lr_multiplier(step, total_steps=10, warmup_steps=2, schedule=schedule)
    assert factor == pytest.approx(expected)
