"""`training/steps.py`: the optimizer step every recipe's loop takes (clip, step, schedule,
zero), checked on a two-parameter linear model whose gradient is worked by hand."""

import pytest
import torch
from accelerate import Accelerator

from rlhfkit.training.steps import optimizer_step


def linear_problem():
    """Linear(2, 1) with weight [1, 1] and bias 0 (loss = model([2, 2]) = 2 w1 + 2 w2 + b), plain
    SGD at lr 0.1 and a schedule lr_s = 0.1 / (s + 1): (model, optimizer, scheduler)."""
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def one_step(max_grad_norm: float, steps: int = 1):
    """`linear_problem` stepped `steps` times. Returns (model, [(grad_norm, lr), ...])."""
    accelerator = Accelerator()  # the default, as `Run` builds it (cpu=True would clash on a GPU)
    model, optimizer, scheduler = linear_problem()
    model, optimizer = accelerator.prepare(model, optimizer)
    results = []
    for _ in range(steps):
        loss = model(torch.tensor([[2.0, 2.0]], device=accelerator.device)).sum()
        accelerator.backward(loss)
        results.append(optimizer_step(accelerator, model, optimizer, scheduler, max_grad_norm))
    return accelerator.unwrap_model(model), results


def test_clips_by_the_global_norm_and_steps_with_the_clipped_gradient():
    """Gradient: dL/dw = [2, 2], dL/db = 1, global norm sqrt(4 + 4 + 1) = 3 (per tensor the norms
    would be 2.83 and 1, neither above the limit). max_grad_norm 1.5 scales every gradient by
    1.5 / 3 = 0.5: w grad [1, 1], b grad 0.5; SGD at lr 0.1 gives w = [1 - 0.1, 1 - 0.1] =
    [0.9, 0.9] and b = 0 - 0.05 = -0.05. The returned norm is the one before clipping (3), the
    returned lr the one this update used (0.1), and the gradients are cleared."""
    model, [(grad_norm, lr)] = one_step(max_grad_norm=1.5)
    assert grad_norm == pytest.approx(3.0, rel=1e-6)
    assert lr == 0.1
    torch.testing.assert_close(model.weight.detach().cpu(), torch.tensor([[0.9, 0.9]]))
    torch.testing.assert_close(model.bias.detach().cpu(), torch.tensor([-0.05]))
    assert model.weight.grad is None and model.bias.grad is None


def test_no_clipping_when_max_grad_norm_is_zero_or_above_the_norm():
    """max_grad_norm 0 (off) or 10 (> 3): the full gradient is applied, w = [1 - 0.2, 1 - 0.2] =
    [0.8, 0.8] and b = -0.1, and the norm is still reported (3)."""
    for max_grad_norm in (0.0, 10.0):
        model, [(grad_norm, _lr)] = one_step(max_grad_norm=max_grad_norm)
        assert grad_norm == pytest.approx(3.0, rel=1e-6), max_grad_norm
        torch.testing.assert_close(model.weight.detach().cpu(), torch.tensor([[0.8, 0.8]]))
        torch.testing.assert_close(model.bias.detach().cpu(), torch.tensor([-0.1]))


def test_the_schedule_moves_after_each_update():
    """lr_s = 0.1 / (s + 1): the first update uses 0.1, the second 0.05. With clipping off the
    gradient is the same each time (the loss is linear), so w = 1 - 0.1 * 2 - 0.05 * 2 = 0.7 and
    b = 0 - 0.1 - 0.05 = -0.15; each update reports the norm of its own gradient (3, not the
    6 of two accumulated ones: `zero_grad` ran in between)."""
    model, results = one_step(max_grad_norm=0.0, steps=2)
    assert [lr for _, lr in results] == pytest.approx([0.1, 0.05], rel=1e-12)
    assert [norm for norm, _ in results] == pytest.approx([3.0, 3.0], rel=1e-6)
    torch.testing.assert_close(model.weight.detach().cpu(), torch.tensor([[0.7, 0.7]]))
    torch.testing.assert_close(model.bias.detach().cpu(), torch.tensor([-0.15]))


def test_a_step_without_gradients_reports_norm_zero():
    """No backward before the step (clipping off): no parameter has a gradient, so the norm is
    0, the optimizer leaves the weights alone, and the schedule still moves."""
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model, optimizer = accelerator.prepare(model, optimizer)
    grad_norm, lr = optimizer_step(accelerator, model, optimizer, scheduler, 0.0)
    assert (grad_norm, lr) == (0.0, 0.1)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.05)
    for old, new in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(new.detach().cpu(), old)


class _FP16Overflow:
    """What an fp16 accelerator reports after a step its loss scaler skipped (gradients held
    inf), with gradients scaled by 4 until `unscale_gradients` divides them back."""

    optimizer_step_was_skipped = True

    def __init__(self, model):
        self.model, self.unscaled = model, False

    def unscale_gradients(self):
        for p in self.model.parameters():
            p.grad /= 4
        self.unscaled = True


def test_an_fp16_step_the_scaler_skipped_leaves_the_schedule_and_reports_the_unscaled_norm():
    """lr_s = 0.1 / (s + 1). A skipped step must not advance the schedule (the next real update
    would otherwise use 0.05, the rate of an update that never happened), and with clipping off
    the reported norm is of the unscaled gradients: scaled by 4 they read 12, unscaled 3."""
    model, optimizer, scheduler = linear_problem()
    (4 * model(torch.tensor([[2.0, 2.0]])).sum()).backward()
    accelerator = _FP16Overflow(model)
    grad_norm, lr = optimizer_step(accelerator, model, optimizer, scheduler, 0.0)
    assert accelerator.unscaled and grad_norm == pytest.approx(3.0, rel=1e-6)
    assert lr == 0.1 and scheduler.get_last_lr() == [0.1]  # not stepped (would be 0.05)


def test_stages_in_one_process_each_get_their_own_mixed_precision():
    """`rlhfkit pipeline` runs its stages in one process: an sft at bf16 followed by an eval at
    "no" used to fail in accelerate ("AcceleratorState has already been initialized")."""
    from rlhfkit.training.run import make_accelerator

    try:
        assert make_accelerator("bf16").mixed_precision == "bf16"
        assert make_accelerator("no").mixed_precision == "no"
        assert make_accelerator("bf16").mixed_precision == "bf16"
    finally:  # later tests in this process build plain Accelerators: leave no bf16 behind
        assert make_accelerator("no").mixed_precision == "no"


def test_fp16_on_a_cpu_says_it_computes_in_fp32(capsys):
    """accelerate has no fp16 autocast on a CPU: `mixed_precision=fp16` ran fp32 silently there.
    Now the run says so (and points at bf16, which a CPU autocasts)."""
    from rlhfkit.training.run import make_accelerator

    try:
        on_cpu = make_accelerator("fp16").device.type == "cpu"  # CUDA autocasts fp16
        said = "mixed_precision=fp16 has no effect on cpu" in capsys.readouterr().err
        assert said == on_cpu
        make_accelerator("bf16")
        assert "has no effect" not in capsys.readouterr().err
    finally:
        assert make_accelerator("no").mixed_precision == "no"
