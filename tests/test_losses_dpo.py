"""DPO-family losses against values worked by hand.

Notation: h = (pi_w - ref_w) - (pi_l - ref_l), z = beta h, softplus(x) = log(1 + e^x), so
-log sigmoid(z) = softplus(-z). Two facts used below: softplus(x) - softplus(-x) = x, and
softplus(-0.75) = log(1 + e^-0.75) = log(1 + 0.4723666) = log(1.4723666) = 0.3868710, hence
softplus(0.75) = 0.75 + 0.3868710 = 1.1368710.
"""

import math

import pytest
import torch

from rlhfkit.losses import DPO_LOSSES, available_dpo_losses, dpo_loss, register_dpo_loss
from rlhfkit.losses.dpo import is_length_normalised, is_reference_free

LOG2 = math.log(2.0)  # 0.6931472
SOFTPLUS_M075 = 0.38687100611489994  # softplus(-0.75)
SOFTPLUS_P075 = 1.1368710061148999  # softplus(0.75)


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def assert_values(actual, expected):
    torch.testing.assert_close(actual, f64(expected), rtol=1e-6, atol=1e-10)


def at_initialisation():
    """Policy == reference on both responses: every log-ratio is 0, so h = 0."""
    logps = f64([-3.0, -7.5])
    return logps, logps - 1.0, logps.clone(), logps - 1.0


def two_pairs():
    """Pair 1: pi_w=-1, ref_w=-1.5 -> +0.5; pi_l=-3, ref_l=-2 -> -1; h = 0.5 + 1 = 1.5.
    Pair 2: pi_w=-2, ref_w=-1 -> -1; pi_l=-1.5, ref_l=-2 -> +0.5; h = -1 - 0.5 = -1.5.
    With beta = 0.5: z = +0.75 and -0.75."""
    return f64([-1.0, -2.0]), f64([-3.0, -1.5]), f64([-1.5, -1.0]), f64([-2.0, -2.0])


def test_registry_lists_every_variant():
    assert available_dpo_losses() == ["cdpo", "hinge", "ipo", "robust", "sigmoid", "simpo"]
    assert set(DPO_LOSSES) == set(available_dpo_losses())


def test_variants_declare_length_normalisation_when_registered():
    """IPO and SimPO are defined on per-token averages (their papers), the rest on sums; a new
    variant declares it with `length_normalised=True`, and the default is False. `dpo_loss`
    itself never divides: the flag tells a caller holding sums (the DPO recipe) to."""
    declared = {name for name in available_dpo_losses() if is_length_normalised(name)}
    assert declared == {"ipo", "simpo"}
    assert DPO_LOSSES["simpo"].reference_free and not DPO_LOSSES["ipo"].reference_free
    assert {name for name in available_dpo_losses() if is_reference_free(name)} == {"simpo"}

    def gap(chosen_logratios, rejected_logratios, *, beta, label_smoothing):
        return chosen_logratios - rejected_logratios

    register_dpo_loss("test_averaged_gap", length_normalised=True)(gap)
    register_dpo_loss("test_summed_gap")(gap)
    try:
        assert is_length_normalised("test_averaged_gap")
        assert not is_length_normalised("test_summed_gap")
        assert not DPO_LOSSES["test_averaged_gap"].reference_free
        # two_pairs: h = 1.5 and -1.5, flag or not: the loss takes the log-probs it is given.
        losses, _, _ = dpo_loss(*two_pairs(), beta=0.5, loss_type="test_averaged_gap")
        assert_values(losses, [1.5, -1.5])
    finally:
        del DPO_LOSSES["test_averaged_gap"], DPO_LOSSES["test_summed_gap"]
    with pytest.raises(ValueError, match="unknown DPO loss_type 'test_averaged_gap'"):
        is_length_normalised("test_averaged_gap")


def test_unknown_loss_type_raises_and_lists_names():
    with pytest.raises(ValueError, match=r"unknown DPO loss_type 'dop'.*hinge, ipo, robust"):
        dpo_loss(*two_pairs(), beta=0.1, loss_type="dop")


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        # -log sigmoid(0) = log 2
        ("sigmoid", {}, LOG2),
        # -(0.9) log(1/2) - 0.1 log(1/2) = log 2
        ("cdpo", {"label_smoothing": 0.1}, LOG2),
        # (0 - 1/(2*0.1))^2 = (-5)^2 = 25
        ("ipo", {}, 25.0),
        # max(0, 1 - 0) = 1
        ("hinge", {}, 1.0),
        # (0.9 log 2 - 0.1 log 2) / (1 - 0.2) = 0.8 log 2 / 0.8 = log 2
        ("robust", {"label_smoothing": 0.1}, LOG2),
        # equal length-normalised logps: -log sigmoid(0.1*0 - 0.5) = log(1 + e^0.5)
        # = log(2.6487213) = 0.9740770
        ("simpo", {"simpo_gamma": 0.5}, 0.9740769841801067),
    ],
)
def test_every_variant_at_initialisation(loss_type, kwargs, expected):
    """At initialisation h = 0 (see each case's arithmetic); both rewards are 0."""
    policy_w, policy_l, ref_w, ref_l = at_initialisation()
    if loss_type == "simpo":  # SimPO's h = 0 means equal length-normalised policy log-probs
        policy_l = policy_w.clone()
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_w, policy_l, ref_w, ref_l, beta=0.1, loss_type=loss_type, **kwargs
    )
    assert_values(losses, [expected, expected])
    if loss_type != "simpo":
        assert_values(chosen_rewards, [0.0, 0.0])
        assert_values(rejected_rewards, [0.0, 0.0])


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        # softplus(-z): softplus(-0.75) = 0.3868710; softplus(0.75) = 1.1368710
        ("sigmoid", {}, [SOFTPLUS_M075, SOFTPLUS_P075]),
        # 0.9 softplus(-z) + 0.1 softplus(z):
        # 0.9*0.3868710 + 0.1*1.1368710 = 0.3481839 + 0.1136871 = 0.4618710
        # 0.9*1.1368710 + 0.1*0.3868710 = 1.0231839 + 0.0386871 = 1.0618710
        ("cdpo", {"label_smoothing": 0.1}, [0.46187100611489995, 1.0618710061149]),
        # (h - 1/(2*0.5))^2 = (1.5 - 1)^2 = 0.25 ; (-1.5 - 1)^2 = 6.25
        ("ipo", {}, [0.25, 6.25]),
        # max(0, 1 - z): 1 - 0.75 = 0.25 ; 1 + 0.75 = 1.75
        ("hinge", {}, [0.25, 1.75]),
        # (0.9 softplus(-z) - 0.1 softplus(z)) / 0.8:
        # (0.3481839 - 0.1136871) / 0.8 = 0.2344968 / 0.8 = 0.2931210
        # (1.0231839 - 0.0386871) / 0.8 = 0.9844968 / 0.8 = 1.2306210
        ("robust", {"label_smoothing": 0.1}, [0.2931210061148999, 1.2306210061148999]),
    ],
)
def test_every_variant_with_nonzero_log_ratios(loss_type, kwargs, expected):
    """two_pairs() with beta = 0.5: h = +1.5 and -1.5, z = +0.75 and -0.75. Rewards are
    beta * log-ratios: chosen 0.5*[0.5, -1] = [0.25, -0.5],
    rejected 0.5*[-1, 0.5] = [-0.5, 0.25]."""
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        *two_pairs(), beta=0.5, loss_type=loss_type, **kwargs
    )
    assert_values(losses, expected)
    assert_values(chosen_rewards, [0.25, -0.5])
    assert_values(rejected_rewards, [-0.5, 0.25])


def test_cdpo_is_sigmoid_with_label_smoothing():
    """ "cdpo" is another name for "sigmoid"; label_smoothing=0 is plain DPO."""
    generator = torch.Generator().manual_seed(0)
    logps = [-10 * torch.rand(6, generator=generator, dtype=torch.float64) for _ in range(4)]
    sigmoid_smoothed, _, _ = dpo_loss(*logps, beta=0.3, label_smoothing=0.2)
    cdpo, _, _ = dpo_loss(*logps, beta=0.3, loss_type="cdpo", label_smoothing=0.2)
    torch.testing.assert_close(cdpo, sigmoid_smoothed, rtol=0, atol=0)

    plain, _, _ = dpo_loss(*logps, beta=0.3)
    unsmoothed, _, _ = dpo_loss(*logps, beta=0.3, loss_type="cdpo", label_smoothing=0.0)
    torch.testing.assert_close(unsmoothed, plain, rtol=0, atol=0)
    assert not torch.allclose(sigmoid_smoothed, plain)


def test_label_smoothing_half_targets_indifference():
    """eps = 0.5: loss = 0.5 softplus(-z) + 0.5 softplus(z), even in z, smallest at z = 0.
    z = 0: log 2 = 0.6931472.  z = +-1 (beta = 1, h = +-1): 0.5 (0.3132617 + 1.3132617)
    = 0.8132617. Its gradient in z is sigmoid(z) - 0.5, so it pulls h back towards 0:
    d/d pi_w at z = 1 is beta (sigmoid(1) - 0.5) = 0.7310586 - 0.5 = +0.2310586."""
    zeros = f64([0.0, 0.0, 0.0])
    policy_chosen = f64([0.0, 1.0, -1.0]).requires_grad_()
    losses, _, _ = dpo_loss(
        policy_chosen, zeros, zeros, zeros, beta=1.0, loss_type="cdpo", label_smoothing=0.5
    )
    assert_values(losses, [LOG2, 0.8132616875182228, 0.8132616875182228])
    losses.sum().backward()
    assert_values(policy_chosen.grad, [0.0, 0.2310585786300049, -0.2310585786300049])


def test_robust_loss_is_unbiased_under_label_flips():
    """Chowdhury et al.'s property: if a label is flipped with probability eps, the expected
    robust loss is the clean DPO loss: (1-eps) L(h) + eps L(-h) = softplus(-beta h), since
    [(1-eps)^2 a(h) - eps(1-eps) a(-h) + eps(1-eps) a(-h) - eps^2 a(h)] / (1-2eps) = a(h).
    With eps = 0.1, z = 0.75 (robust losses at +-z from the test above):
    0.9 * 0.2931210 + 0.1 * 1.2306210 = 0.2638089 + 0.1230621 = 0.3868710 = softplus(-0.75)."""
    losses, _, _ = dpo_loss(*two_pairs(), beta=0.5, loss_type="robust", label_smoothing=0.1)
    expected_flip_loss = 0.9 * losses[0] + 0.1 * losses[1]
    assert_values(expected_flip_loss, SOFTPLUS_M075)


def test_simpo_with_margin_is_reference_free():
    """Length-normalised logps: avg_w = -1, avg_l = -1.5, beta = 2, gamma = 0.5:
    z = 2 * (-1 + 1.5) - 0.5 = 1 - 0.5 = 0.5; loss = softplus(-0.5) = log(1 + e^-0.5)
    = log(1.6065307) = 0.4740770. gamma = 0: z = 1, softplus(-1) = 0.3132617.
    Rewards beta * avg: 2 * -1 = -2, 2 * -1.5 = -3. Reference log-probs are ignored."""
    chosen, rejected = f64([-1.0]), f64([-1.5])
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, None, None, beta=2.0, loss_type="simpo", simpo_gamma=0.5
    )
    assert_values(losses, [0.4740769841801067])
    assert_values(chosen_rewards, [-2.0])
    assert_values(rejected_rewards, [-3.0])

    with_refs, _, _ = dpo_loss(
        chosen, rejected, f64([-9.0]), f64([4.0]), beta=2.0, loss_type="simpo"
    )
    assert_values(with_refs, [0.4740769841801067])  # default gamma 0.5, refs ignored
    no_margin, _, _ = dpo_loss(
        chosen, rejected, None, None, beta=2.0, loss_type="simpo", simpo_gamma=0.0
    )
    assert_values(no_margin, [0.31326168751822286])


def test_sigmoid_gradient_sign_and_size():
    """At initialisation d/d pi_w of softplus(-beta h) = -beta sigmoid(-0) = -0.1 * 0.5 = -0.05
    and d/d pi_l = +0.05: descent raises the chosen log-prob and lowers the rejected one.
    The rewards are detached, so they carry no gradient."""
    policy_w, policy_l, ref_w, ref_l = at_initialisation()
    policy_w.requires_grad_()
    policy_l.requires_grad_()
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_w, policy_l, ref_w, ref_l, beta=0.1)
    losses.sum().backward()
    assert_values(policy_w.grad, [-0.05, -0.05])
    assert_values(policy_l.grad, [0.05, 0.05])
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_invalid_arguments_raise():
    pairs = two_pairs()
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*pairs, beta=0.0)
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(pairs[0], pairs[1], None, None, beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*pairs, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*pairs, beta=0.1, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(TypeError, match="simpo_gamma"):
        dpo_loss(*pairs, beta=0.1, loss_type="sigmoid", simpo_gamma=0.5)


def test_register_a_custom_variant():
    """A registered function is reachable by name: here loss = beta * h^2;
    two_pairs with beta 0.5: 0.5 * 1.5^2 = 1.125 for both pairs. A taken name is refused."""

    @register_dpo_loss("test_squared_gap")
    def squared_gap(chosen_logratios, rejected_logratios, *, beta, label_smoothing):
        return beta * (chosen_logratios - rejected_logratios) ** 2

    try:
        losses, _, _ = dpo_loss(*two_pairs(), beta=0.5, loss_type="test_squared_gap")
        assert_values(losses, [1.125, 1.125])
        with pytest.raises(ValueError, match="already registered"):
            register_dpo_loss("sigmoid")(squared_gap)
    finally:
        del DPO_LOSSES["test_squared_gap"]


def test_soft_labels_sigmoid_is_cross_entropy_against_p():
    """h = 1 - 0 = 1, beta = 1, z = 1; softplus(-1) = 0.3132617, softplus(1) = 1.3132617.
    p = 0.8: 0.8 * 0.3132617 + 0.2 * 1.3132617 = 0.2506094 + 0.2626523 = 0.5132617.
    p = 1 is plain DPO: softplus(-1) = 0.3132617. The rewards do not depend on the label."""
    pc, pr, rc, rr = f64([1.0, 1.0]), f64([0.0, 0.0]), f64([0.0, 0.0]), f64([0.0, 0.0])
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=1.0, soft_labels=f64([0.8, 1.0]))
    assert_values(losses, [0.5132616875182229, 0.31326168751822286])
    assert_values(chosen, [1.0, 1.0])
    assert_values(rejected, [0.0, 0.0])


def test_soft_labels_move_the_ipo_target():
    """IPO with label p: p (h - c)^2 + (1 - p)(-h - c)^2 with c = 1/(2 beta); beta = 0.5 -> c = 1.
    h = 1, p = 0.75: 0.75 * 0 + 0.25 * (-2)^2 = 1.0.
    Its minimiser is h = (2p - 1) c = 0.5: loss 0.75 * 0.25 + 0.25 * 2.25 = 0.75, gradient
    2 * 0.75 * (0.5 - 1) + 2 * 0.25 * (0.5 + 1) = -0.75 + 0.75 = 0."""
    zero = f64([0.0])
    loss, _, _ = dpo_loss(
        f64([1.0]), zero, zero, zero, beta=0.5, loss_type="ipo", soft_labels=f64([0.75])
    )
    assert_values(loss, [1.0])
    h = f64([0.5]).requires_grad_()
    loss, _, _ = dpo_loss(h, zero, zero, zero, beta=0.5, loss_type="ipo", soft_labels=f64([0.75]))
    (grad,) = torch.autograd.grad(loss.sum(), h)
    assert_values(loss.detach(), [0.75])
    assert_values(grad, [0.0])


def test_even_soft_label_is_symmetric_for_every_variant():
    """p = 1/2 is the average of the loss as written and swapped, so it is unchanged when the
    pair is swapped, for every built-in variant; p = 1 equals no soft label at all."""
    pc, pr, rc, rr = f64([-3.0, -7.5]), f64([-4.0, -6.0]), f64([-3.5, -7.0]), f64([-3.9, -6.2])
    half = f64([0.5, 0.5])
    for name in ("sigmoid", "cdpo", "ipo", "hinge", "robust", "simpo"):
        as_written, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=name, soft_labels=half)
        swapped, _, _ = dpo_loss(pr, pc, rr, rc, beta=0.5, loss_type=name, soft_labels=half)
        assert_values(as_written, swapped.tolist())
        hard, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=name)
        ones, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=name, soft_labels=f64([1, 1]))
        assert_values(ones, hard.tolist())
