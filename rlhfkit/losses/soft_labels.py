"""Soft preference labels from an AI labeller (RL from AI feedback).

Constitutional AI (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback",
section 4.1) asks a feedback model a multiple-choice question -- which of responses (A) and (B)
better follows a principle? -- and turns the log-probabilities of the two option tokens into a
soft label::

    P(A) = exp(logp_A) / (exp(logp_A) + exp(logp_B)) = sigmoid(logp_A - logp_B)

(the sigmoid form never overflows). Language models prefer whichever option is shown first, so the
label is the average over both presentation orders (``debiased_preference``), a common
position-bias correction (Zheng et al. 2023, "Judging LLM-as-a-Judge"); the CAI paper itself
ensembles over principles. With chain-of-thought prompting the labels become overconfident, so
the paper clamps them to the 40-60% range (``clamp_probability``).

Functions take plain floats (and return floats) or tensors (and return tensors of the same
shape).
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import Tensor

FloatOrTensor = TypeVar("FloatOrTensor", float, Tensor)


def choice_probability(logp_a: FloatOrTensor, logp_b: FloatOrTensor) -> FloatOrTensor:
    """Probability of option A, normalised over the two option tokens.

    Args:
        logp_a: Log-probability of the option token for A, a float or a tensor of shape (...).
        logp_b: Log-probability of the option token for B, same type and shape.

    Returns:
        ``sigmoid(logp_a - logp_b)``, a float or shape (...).
    """
    if isinstance(logp_a, Tensor) or isinstance(logp_b, Tensor):
        return torch.sigmoid(torch.as_tensor(logp_a) - torch.as_tensor(logp_b))
    gap = float(logp_a) - float(logp_b)
    # Two branches so that exp never overflows.
    if gap >= 0:
        return 1.0 / (1.0 + math.exp(-gap))
    exp_gap = math.exp(gap)
    return exp_gap / (1.0 + exp_gap)


def debiased_preference(
    p_a_first_order: FloatOrTensor, p_a_swapped_order: FloatOrTensor
) -> FloatOrTensor:
    """Probability that response ``a`` beats response ``b``, averaged over both display orders.

    Two prompts show the same pair: in the first order response ``a`` is option (A) and ``b`` is
    option (B); in the swapped order ``b`` is option (A) and ``a`` is option (B).

    Args:
        p_a_first_order: P(labeller picks option (A)) in the first order -- its vote for ``a``.
            A float in [0, 1] or a tensor of shape (...).
        p_a_swapped_order: P(labeller picks option (A)) in the swapped order -- its vote for
            ``b``, i.e. the probability of the first-shown option, which is now ``b``.

    Returns:
        ``0.5 * (p_a_first_order + (1 - p_a_swapped_order))``: the probability that ``a`` is
        preferred, with the labeller's bias towards the first-shown option cancelled.
    """
    return 0.5 * (p_a_first_order + (1.0 - p_a_swapped_order))


def clamp_probability(
    probability: FloatOrTensor, low: float = 0.4, high: float = 0.6
) -> FloatOrTensor:
    """Clamps a soft label into ``[low, high]`` (CAI's treatment of chain-of-thought labels).

    Args:
        probability: A float or a tensor of shape (...).
        low: Lower bound, in [0, high].
        high: Upper bound, in [low, 1].

    Returns:
        The clamped probability, a float or shape (...).
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    if isinstance(probability, Tensor):
        return probability.clamp(low, high)
    return min(max(float(probability), low), high)


__all__ = ["choice_probability", "clamp_probability", "debiased_preference"]
