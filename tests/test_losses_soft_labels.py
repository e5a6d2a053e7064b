"""Soft AI-feedback labels (Constitutional AI), against values worked by hand."""

import math

import pytest
import torch

from rlhfkit.losses import choice_probability, clamp_probability, debiased_preference


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def assert_values(actual, expected):
    torch.testing.assert_close(actual, f64(expected), rtol=1e-6, atol=1e-10)


def test_choice_probability_from_two_log_probs():
    """p(A token) = 0.6, p(B token) = 0.2 (the rest of the vocabulary holds 0.2):
    normalised over the two options, P(A) = 0.6 / (0.6 + 0.2) = 0.75; swapped, 0.25.
    Equal log-probs give 0.5."""
    assert choice_probability(math.log(0.6), math.log(0.2)) == pytest.approx(0.75, rel=1e-12)
    assert choice_probability(math.log(0.2), math.log(0.6)) == pytest.approx(0.25, rel=1e-12)
    assert_values(
        choice_probability(f64([math.log(0.6), -3.0]), f64([math.log(0.2), -3.0])), [0.75, 0.5]
    )


def test_choice_probability_is_stable_for_extreme_log_probs():
    """logp_a - logp_b = -1000: exp(-1000)/(1 + exp(-1000)) = e^-1000, which underflows to 0.0
    in float64 without an overflow; +1000 gives exactly 1."""
    assert choice_probability(-1000.0, 0.0) == 0.0
    assert choice_probability(0.0, -1000.0) == 1.0


def test_debiased_preference_averages_both_orders():
    """First order (a shown as option A): P(option A) = 0.8 -> a's vote 0.8.
    Swapped order (b shown as option A): P(option A) = 0.4 -> a's vote 1 - 0.4 = 0.6.
    P(a beats b) = (0.8 + 0.6) / 2 = 0.7. A labeller that always says "A" with 0.9
    (pure position bias) ends at (0.9 + 0.1)/2 = 0.5."""
    assert debiased_preference(0.8, 0.4) == pytest.approx(0.7, rel=1e-12)
    assert debiased_preference(0.9, 0.9) == pytest.approx(0.5, rel=1e-12)
    assert_values(debiased_preference(f64([0.8, 0.9]), f64([0.4, 0.9])), [0.7, 0.5])


def test_clamp_probability():
    """CAI's chain-of-thought labels are clamped to [0.4, 0.6]: 0.9 -> 0.6, 0.1 -> 0.4,
    0.55 stays. Custom bounds [0.2, 0.8]: 0.9 -> 0.8."""
    assert clamp_probability(0.9) == 0.6
    assert clamp_probability(0.1) == 0.4
    assert clamp_probability(0.55) == 0.55
    assert clamp_probability(0.9, low=0.2, high=0.8) == 0.8
    assert_values(clamp_probability(f64([0.9, 0.1, 0.55])), [0.6, 0.4, 0.55])
    with pytest.raises(ValueError, match="low <= high"):
        clamp_probability(0.5, low=0.7, high=0.3)
