"""`compile=true`: each transformer block goes through torch.compile; the numbers stay the same."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import (
    LoraSettings,
    apply_lora,
    compile_blocks,
    load_causal_lm,
    transformer_blocks,
)
from rlhfkit.models.logprobs import TokenLogprobs


def test_the_blocks_are_found_by_shape_also_under_peft(tiny_model):
    lm = load_causal_lm(str(tiny_model), dtype="float32")
    assert transformer_blocks(lm) is lm.model.layers
    wrapped = apply_lora(lm, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    assert transformer_blocks(wrapped) is wrapped.base_model.model.model.layers
    with pytest.raises(ConfigError, match="compile: no list of transformer blocks found in Linear"):
        transformer_blocks(torch.nn.Linear(2, 2))


def test_compiled_blocks_give_the_same_logprobs_and_gradients(tiny_model):
    """Inductor fuses the elementwise work of a block; in float32 on a CPU the log-probs and
    gradients agree with the eager model to rounding. The state-dict keys do not change (the
    blocks are compiled in place, not wrapped), so checkpoints are unaffected."""
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a padded row

    def run(compiled: bool):
        lm = load_causal_lm(str(tiny_model), dtype="float32")
        keys = list(lm.state_dict())
        if compiled:
            assert compile_blocks(lm) == len(lm.model.layers)
        logps = TokenLogprobs(lm)(ids, target_mask=mask, attention_mask=mask)["logprobs"]
        logps.sum().backward()
        grads = {name: p.grad for name, p in lm.named_parameters()}
        assert list(lm.state_dict()) == keys
        return logps.detach(), grads

    eager, eager_grads = run(False)
    compiled, compiled_grads = run(True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
