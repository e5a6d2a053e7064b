"""Direct preference optimisation (DPO) and its family, as registered loss variants.

Notation, per preference pair ``(x, y_w, y_l)``::

    chosen_logratio   = log pi(y_w|x) - log pi_ref(y_w|x)
    rejected_logratio = log pi(y_l|x) - log pi_ref(y_l|x)
    h                 = chosen_logratio - rejected_logratio
    implicit reward   r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))

Variants (``loss_type``), each a function registered with ``@register_dpo_loss``:

* ``sigmoid`` -- DPO, Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model
  is Secretly a Reward Model": ``-log sigmoid(beta h)``. With ``label_smoothing = eps > 0`` it is
  conservative DPO (cDPO, Mitchell 2023, "A note on DPO with noisy preferences"), the
  cross-entropy against a label that is right with probability ``1 - eps``:
  ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``. ``cdpo`` is another name for
  the same function. At ``eps = 0.5`` the target is indifference: the loss is even in ``h`` and
  smallest (``log 2``) at ``h = 0``, so it pulls the log-ratio gap back to zero.
* ``ipo`` -- Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences": ``(h - 1 / (2 beta))^2`` (the paper's ``tau`` is ``beta``). IPO defines the
  log-likelihoods as averages over the response tokens; this function takes the log-probs it is
  given, and, as it is registered with ``length_normalised=True``, the DPO recipe passes it
  length-averaged log-probs.
* ``hinge`` -- SLiC-HF, Zhao et al. 2023, "Calibrating Sequence Likelihood Improves Conditional
  Language Generation": ``max(0, 1 - beta h)``. Departure: the hinge is on the reference
  log-ratios, as in RSO (Liu et al. 2023, "Statistical Rejection Sampling Improves Preference
  Optimization"), not on SLiC's raw log-likelihoods, and SLiC's extra SFT term is left out.
* ``robust`` -- Chowdhury et al. 2024, "Provably Robust DPO": an unbiased loss under labels
  flipped with known probability ``eps = label_smoothing < 0.5``:
  ``((1 - eps)(-log sigmoid(beta h)) + eps log sigmoid(-beta h)) / (1 - 2 eps)``.
* ``simpo`` -- Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
  Reward": ``-log sigmoid(beta (avg_logp_w - avg_logp_l) - gamma)``. Reference-free: the
  reference log-probs are ignored and may be ``None``; the caller passes length-normalised
  (mean per token) policy log-probs (registered with ``length_normalised=True``). ``gamma`` is
  the keyword ``simpo_gamma``, the target reward margin in reward units (the paper's gamma, not
  its gamma/beta ratio), default 0.5. SimPO is meant for larger betas than DPO (the paper uses
  2.0-2.5). ``label_smoothing`` applies as in cDPO. The rewards returned are SimPO's
  ``beta * avg_logp``.

Soft labels (``soft_labels=p``, ``p = P(y_w beats y_l)`` per pair, e.g. AI feedback or vote
shares): every variant becomes its expected loss over the label,
``p * loss(y_w, y_l) + (1 - p) * loss(y_l, y_w)``, the variant evaluated once with the pair as
written and once swapped. For ``sigmoid`` that is the cross-entropy of ``sigmoid(beta h)``
against ``p`` (cDPO with a per-pair ``eps = 1 - p``); for ``ipo`` the minimiser moves from
``h = 1 / (2 beta)`` to ``h = (2p - 1) / (2 beta)``, so ``p = 1/2`` asks for no preference.
``label_smoothing`` still applies inside each term (noise on top of the soft label).

Registering a variant::

    @register_dpo_loss("my_loss")
    def my_loss(chosen_logratios, rejected_logratios, *, beta, label_smoothing, **kwargs):
        return ...  # (B,)

A variant receives the log-ratios (or, when registered with ``reference_free=True``, the policy
log-probs themselves) and returns per-pair losses; ``dpo_loss`` computes the rewards. A variant
defined on per-token averages declares it with ``length_normalised=True``: ``dpo_loss`` itself
takes whatever log-probs it is given, and a caller that holds sums and lengths (the DPO recipe)
divides by the lengths first, ``avg_logp(y|x) = log pi(y|x) / |y|``, for the policy and the
reference alike. ``ipo`` and ``simpo`` are registered so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhfkit.losses.registry import Registry


class DPOLossFunction(Protocol):
    """The signature of a registered DPO loss variant."""

    def __call__(
        self,
        chosen_logratios: Tensor,
        rejected_logratios: Tensor,
        *,
        beta: float,
        label_smoothing: float,
        **variant_kwargs: Any,
    ) -> Tensor: ...


@dataclass(frozen=True)
class DPOLossVariant:
    """A registered DPO loss: the function and what it expects of its inputs.

    Calling the variant calls its function.

    Attributes:
        fn: The loss function.
        reference_free: The variant ignores the reference model (its inputs are the policy
            log-probs, not log-ratios).
        length_normalised: The variant is defined on length-averaged log-probs
            ``log pi(y|x) / |y|`` (each (B,)), not on summed ones.
    """

    fn: DPOLossFunction
    reference_free: bool = False
    length_normalised: bool = False

    def __call__(
        self, chosen_logratios: Tensor, rejected_logratios: Tensor, **kwargs: Any
    ) -> Tensor:
        return self.fn(chosen_logratios, rejected_logratios, **kwargs)


DPO_LOSSES: Registry[DPOLossVariant] = Registry("DPO loss_type")


def register_dpo_loss(
    *names: str, reference_free: bool = False, length_normalised: bool = False
) -> Callable[[DPOLossFunction], DPOLossFunction]:
    """Decorator that registers a DPO loss variant under one or more names.

    Args:
        *names: The ``loss_type`` names the variant answers to.
        reference_free: If True, the variant receives the policy log-probs in place of the
            log-ratios, and the reference log-probs are neither needed nor used.
        length_normalised: If True, the variant is defined on length-averaged log-probs
            ``log pi(y|x) / |y|``: callers that hold summed log-probs (the DPO recipe) divide
            them, policy and reference alike, by the response lengths before ``dpo_loss``.

    Returns:
        A decorator that registers the function and returns it unchanged.
    """

    def register(fn: DPOLossFunction) -> DPOLossFunction:
        variant = DPOLossVariant(
            fn=fn, reference_free=reference_free, length_normalised=length_normalised
        )
        DPO_LOSSES.add(names, variant)
        return fn

    return register


def available_dpo_losses() -> list[str]:
    """The registered ``loss_type`` names, sorted."""
    return DPO_LOSSES.names()


def is_reference_free(loss_type: str) -> bool:
    """Whether the variant ``loss_type`` was registered ``reference_free`` (it needs no
    reference model).

    Raises:
        ValueError: For an unknown ``loss_type`` (the message lists the registered ones).
    """
    return DPO_LOSSES.lookup(loss_type).reference_free


def is_length_normalised(loss_type: str) -> bool:
    """Whether the variant ``loss_type`` was registered with ``length_normalised=True``.

    Raises:
        ValueError: For an unknown ``loss_type`` (the message lists the registered ones).
    """
    return DPO_LOSSES.lookup(loss_type).length_normalised


def _smoothed_sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """Binary cross-entropy of ``logits`` (B,) against the target ``1 - label_smoothing``."""
    agree = -F.logsigmoid(logits)  # (B,)  loss if the label is right
    disagree = -F.logsigmoid(-logits)  # (B,)  loss if the label is flipped
    return (1.0 - label_smoothing) * agree + label_smoothing * disagree  # (B,)


def _require_no_label_smoothing(loss_type: str, label_smoothing: float) -> None:
    if label_smoothing != 0.0:
        raise ValueError(f"label_smoothing is not defined for loss_type {loss_type!r}")


@register_dpo_loss("sigmoid", "cdpo")
def sigmoid_dpo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """DPO, or cDPO when ``label_smoothing > 0``.

    Args:
        chosen_logratios: ``log pi(y_w|x) - log pi_ref(y_w|x)``, shape (B,).
        rejected_logratios: ``log pi(y_l|x) - log pi_ref(y_l|x)``, shape (B,).
        beta: Strength of the implicit KL constraint.
        label_smoothing: Assumed probability ``eps`` that a label is flipped, in [0, 0.5].

    Returns:
        ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``, shape (B,).
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    return _smoothed_sigmoid_loss(logits, label_smoothing)  # (B,)


@register_dpo_loss("ipo", length_normalised=True)
def ipo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """IPO: squared distance of the log-ratio gap from ``1 / (2 beta)``.

    Args:
        chosen_logratios: Log-ratios of the chosen responses (length-averaged, see the module
            docstring), shape (B,).
        rejected_logratios: Same for the rejected responses, shape (B,).
        beta: The IPO regularisation ``tau``.
        label_smoothing: Must be 0.

    Returns:
        ``(h - 1 / (2 beta))^2``, shape (B,).
    """
    _require_no_label_smoothing("ipo", label_smoothing)
    logratio_gap = chosen_logratios - rejected_logratios  # (B,)
    return (logratio_gap - 1.0 / (2.0 * beta)) ** 2  # (B,)


@register_dpo_loss("hinge")
def hinge_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """SLiC-style hinge loss on the scaled log-ratio gap.

    Args:
        chosen_logratios: Log-ratios of the chosen responses, shape (B,).
        rejected_logratios: Log-ratios of the rejected responses, shape (B,).
        beta: Scale of the gap; the hinge is at ``h = 1 / beta``.
        label_smoothing: Must be 0.

    Returns:
        ``max(0, 1 - beta h)``, shape (B,).
    """
    _require_no_label_smoothing("hinge", label_smoothing)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    return torch.relu(1.0 - logits)  # (B,)


@register_dpo_loss("robust")
def robust_dpo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Robust DPO: unbiased under labels flipped with probability ``eps = label_smoothing``.

    Args:
        chosen_logratios: Log-ratios of the chosen responses, shape (B,).
        rejected_logratios: Log-ratios of the rejected responses, shape (B,).
        beta: Strength of the implicit KL constraint.
        label_smoothing: Flip probability ``eps``, in [0, 0.5).

    Returns:
        ``((1 - eps)(-log sigmoid(beta h)) + eps log sigmoid(-beta h)) / (1 - 2 eps)``, shape (B,).
        Unlike cDPO it can be negative: it is an unbiased estimate, not a cross-entropy.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    agree = -F.logsigmoid(logits)  # (B,)
    disagree = -F.logsigmoid(-logits)  # (B,)
    return ((1.0 - label_smoothing) * agree - label_smoothing * disagree) / (
        1.0 - 2.0 * label_smoothing
    )  # (B,)


@register_dpo_loss("simpo", reference_free=True, length_normalised=True)
def simpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> Tensor:
    """SimPO: reference-free, length-normalised, with a target reward margin.

    Args:
        chosen_logps: Mean per-token policy log-probs of the chosen responses, shape (B,).
        rejected_logps: Same for the rejected responses, shape (B,).
        beta: Reward scale (SimPO uses 2.0-2.5).
        label_smoothing: Flip probability, as in cDPO, in [0, 0.5].
        simpo_gamma: Target margin ``gamma`` between the rewards, in reward units.

    Returns:
        ``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)`` with
        ``z = beta (avg_logp_w - avg_logp_l) - gamma``, shape (B,).
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    logits = beta * (chosen_logps - rejected_logps) - simpo_gamma  # (B,)
    return _smoothed_sigmoid_loss(logits, label_smoothing)  # (B,)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    soft_labels: Tensor | None = None,
    **variant_kwargs: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair loss of a DPO-family variant, and the detached implicit rewards.

    Args:
        policy_chosen_logps: Summed log-probs of the chosen responses under the policy, shape
            (B,); length-averaged for a variant registered with ``length_normalised=True``
            (``ipo``, ``simpo``): this function does not divide, the caller does.
        policy_rejected_logps: Same for the rejected responses, shape (B,).
        ref_chosen_logps: Same for the chosen responses under the frozen reference, shape (B,);
            may be ``None`` for a reference-free variant (``simpo``), which ignores it.
        ref_rejected_logps: Same for the rejected responses, shape (B,), or ``None``.
        beta: Strength of the implicit KL constraint (reward scale), > 0.
        loss_type: A name from ``available_dpo_losses()``.
        label_smoothing: Label-noise rate ``eps`` for the variants that use it.
        soft_labels: Optional ``p = P(chosen beats rejected)`` per pair, shape (B,), in [0, 1];
            the loss is then ``p * loss(w, l) + (1 - p) * loss(l, w)`` (module docstring).
            ``None`` means hard labels (``p = 1``).
        **variant_kwargs: Extra keywords of the variant, e.g. ``simpo_gamma``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each shape (B,). The rewards are
        ``beta * (policy - ref)`` log-ratios (``beta * policy`` log-probs for a reference-free
        variant), detached.

    Raises:
        ValueError: For an unknown ``loss_type`` (the message lists the registered ones), a
            non-positive ``beta``, missing reference log-probs, or mismatched shapes.
    """
    variant = DPO_LOSSES.lookup(loss_type)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if policy_chosen_logps.shape != policy_rejected_logps.shape:
        raise ValueError(
            f"policy_chosen_logps {tuple(policy_chosen_logps.shape)} and policy_rejected_logps "
            f"{tuple(policy_rejected_logps.shape)} must have the same shape"
        )

    if variant.reference_free:
        chosen_logratios = policy_chosen_logps  # (B,)
        rejected_logratios = policy_rejected_logps  # (B,)
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(f"loss_type {loss_type!r} needs the reference model's log-probs")
        chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
        rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)

    kwargs = {"beta": beta, "label_smoothing": label_smoothing, **variant_kwargs}
    losses = variant(chosen_logratios, rejected_logratios, **kwargs)  # (B,)
    if soft_labels is not None:
        swapped = variant(rejected_logratios, chosen_logratios, **kwargs)  # (B,)
        losses = soft_labels * losses + (1.0 - soft_labels) * swapped  # (B,)
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


__all__ = [
    "DPO_LOSSES",
    "DPOLossFunction",
    "DPOLossVariant",
    "available_dpo_losses",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "is_length_normalised",
    "is_reference_free",
    "register_dpo_loss",
    "robust_dpo_loss",
    "sigmoid_dpo_loss",
    "simpo_loss",
]
