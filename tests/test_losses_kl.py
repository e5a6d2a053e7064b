"""KL estimators, KL coefficient controllers and entropy, against values worked by hand."""

import math

import pytest
import torch

from rlhfkit.losses import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    available_kl_estimators,
    entropy_from_logits,
    kl_penalty,
)


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def assert_values(actual, expected):
    torch.testing.assert_close(actual, f64(expected), rtol=1e-6, atol=1e-10)


# Token 1: log pi = -1, log ref = -1.5 -> d = log pi - log ref = 0.5.
# Token 2: log pi = -2, log ref = -1   -> d = -1.
LOGPROBS = [[-1.0, -2.0]]
REF_LOGPROBS = [[-1.5, -1.0]]


def test_k1():
    """k1 = d: [0.5, -1] (negative for a single token: unbiased, not a distance)."""
    assert_values(kl_penalty(f64(LOGPROBS), f64(REF_LOGPROBS), "k1"), [[0.5, -1.0]])


def test_k1_is_the_default():
    assert_values(kl_penalty(f64(LOGPROBS), f64(REF_LOGPROBS)), [[0.5, -1.0]])


def test_k2():
    """k2 = 0.5 d^2: 0.5 * 0.25 = 0.125 ; 0.5 * 1 = 0.5."""
    assert_values(kl_penalty(f64(LOGPROBS), f64(REF_LOGPROBS), "k2"), [[0.125, 0.5]])


def test_k3():
    """k3 = e^(-d) - 1 + d: e^-0.5 - 1 + 0.5 = 0.6065307 - 0.5 = 0.1065307 ;
    e^1 - 1 - 1 = 2.7182818 - 2 = 0.7182818."""
    assert_values(
        kl_penalty(f64(LOGPROBS), f64(REF_LOGPROBS), "k3"),
        [[0.10653065971263342, 0.7182818284590451]],
    )


def test_k3_is_nonnegative_and_exact_for_tiny_differences():
    """k3 >= 0 everywhere (log r <= r - 1). For d = 1e-6, k3 = d^2/2 - d^3/6 + ... = 5e-13
    to 7 digits; computing exp(-d) - 1 without expm1 would lose most of them."""
    generator = torch.Generator().manual_seed(0)
    logprobs = -5 * torch.rand(8, 16, generator=generator, dtype=torch.float64)
    ref_logprobs = -5 * torch.rand(8, 16, generator=generator, dtype=torch.float64)
    assert (kl_penalty(logprobs, ref_logprobs, "k3") >= 0).all()
    tiny = kl_penalty(f64([[-1.0 + 1e-6]]), f64([[-1.0]]), "k3")
    torch.testing.assert_close(tiny, f64([[5e-13]]), rtol=1e-5, atol=0)


def test_k1_and_k3_are_unbiased_over_a_distribution():
    """For categorical pi = [0.5, 0.25, 0.25] and ref = [0.25, 0.25, 0.5], summing each estimator
    over tokens weighted by pi gives the exact KL(pi || ref) = 0.5 log 2 + 0 + 0.25 log(1/2)
    = 0.25 log 2 = 0.1732868. k3: sum pi (ref/pi - 1) = 1 - 1 = 0 leaves sum pi log(pi/ref)."""
    policy = f64([[0.5, 0.25, 0.25]])
    reference = f64([[0.25, 0.25, 0.5]])
    for estimator in ("k1", "k3"):
        estimate = kl_penalty(policy.log(), reference.log(), estimator)
        assert_values((policy * estimate).sum(), 0.25 * math.log(2.0))


def test_unknown_estimator_raises_and_lists_names():
    assert available_kl_estimators() == ["k1", "k2", "k3"]
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'.*k1, k2, k3"):
        kl_penalty(f64(LOGPROBS), f64(REF_LOGPROBS), "k4")


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        kl_penalty(f64([[0.0, 0.0]]), f64([[0.0]]))


def test_adaptive_kl_controller_update():
    """init 0.2, target 6, horizon 10000, 256 samples per update.
    KL 6.6: e = 6.6/6 - 1 = 0.1 (inside the clip); 0.2 * (1 + 0.1*256/10000) = 0.2 * 1.00256
    = 0.200512."""
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    assert controller.value == 0.2
    new_value = controller.update(6.6, n_steps=256)
    assert new_value == pytest.approx(0.200512, rel=1e-9)
    assert controller.value == pytest.approx(0.200512, rel=1e-9)


def test_adaptive_kl_controller_clips_the_error():
    """KL 9: e = 9/6 - 1 = 0.5, clipped to 0.2: 0.2 * (1 + 0.2*256/10000) = 0.2 * 1.00512
    = 0.201024. KL 0: e = -1, clipped to -0.2: 0.2 * (1 - 0.00512) = 0.198976.
    Updates compound: after both, 0.201024 * 0.99488 = 0.1999947."""
    high = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    assert high.update(torch.tensor(9.0), n_steps=256) == pytest.approx(0.201024, rel=1e-9)
    low = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    assert low.update(0.0, n_steps=256) == pytest.approx(0.198976, rel=1e-9)
    assert high.update(0.0, n_steps=256) == pytest.approx(0.201024 * 0.99488, rel=1e-9)


def test_kl_controllers_state_round_trip_and_fixed_controller():
    adaptive = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    adaptive.update(9.0, n_steps=256)
    restored = AdaptiveKLController(init_kl_coef=0.5, target=6.0, horizon=10000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value == pytest.approx(0.201024, rel=1e-9)

    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, n_steps=256) == 0.05
    assert fixed.value == 0.05
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(init_kl_coef=0.2, target=0.0, horizon=10000)


def test_entropy_from_logits():
    """Logits [0, 0]: uniform over 2, H = log 2 = 0.6931472.
    Logits [0, log 3]: p = [1/4, 3/4], H = 0.25 log 4 + 0.75 log(4/3) = 0.3465736 + 0.2157616
    = 0.5623351. Huge equal logits [1000, 1000] are still log 2 (no overflow); a -inf logit
    has p = 0 and contributes nothing: [0, 0, -inf] -> log 2."""
    logits = f64([[0.0, 0.0, -math.inf], [0.0, math.log(3.0), -math.inf], [1000.0, 1000.0, 0.0]])
    assert_values(entropy_from_logits(logits), [math.log(2.0), 0.5623351446188083, math.log(2.0)])


def test_entropy_keeps_leading_dimensions_and_finite_gradient():
    """(B, T, V) = (2, 3, 4) -> (2, 3); zero logits give log 4 = 1.3862944 everywhere. The
    gradient through a -inf logit is finite (0), not nan."""
    assert_values(
        entropy_from_logits(torch.zeros(2, 3, 4, dtype=torch.float64)), [[math.log(4)] * 3] * 2
    )
    logits = f64([0.0, 1.0, -math.inf]).requires_grad_()
    entropy_from_logits(logits).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[2] == 0
