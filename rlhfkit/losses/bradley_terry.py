"""Bradley-Terry loss for training a scalar reward model on preference pairs.

The Bradley-Terry model (Bradley & Terry, 1952) says a labeller prefers response ``y_w`` to
``y_l`` with probability ``P(y_w > y_l) = sigmoid(r(x, y_w) - r(x, y_l))``. The reward model is fit
by maximum likelihood (Christiano et al. 2017; Stiennon et al. 2020; Ouyang et al. 2022)::

    loss = -log sigmoid(r_w - r_l - m)

with an optional per-pair margin ``m`` (Llama 2, Touvron et al. 2023: a larger required gap for
pairs the labellers rated as clearly better). ``-log sigmoid`` is computed with ``logsigmoid``,
which stays finite for any reward gap.

Soft labels (AI feedback, Bai et al. 2022; an annotation campaign's vote shares): a record may
carry ``p = P(y_w beats y_l)`` instead of a hard win. The loss is then the expected loss over the
label, the cross-entropy of ``sigmoid(r_w - r_l)`` against ``p``::

    loss = p * (-log sigmoid(r_w - r_l - m)) + (1 - p) * (-log sigmoid(r_l - r_w - m))

Its gradient in the gap ``d = r_w - r_l`` (no margin) is ``sigmoid(d) - p``: it is smallest where
the model's preference probability equals the label, so ``p = 1/2`` pulls the two rewards
together rather than teaching a side. ``p = 1`` is the hard loss above.

Rankings of K responses (InstructGPT, Ouyang et al. 2022) become all K(K-1)/2 pairs with
``ranking_pairs``; InstructGPT trains the pairs of one prompt together as one batch element, which
is the recipe's business (it averages their losses), not this module's.
"""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | float | None = None,
    *,
    soft_labels: Tensor | float | None = None,
) -> Tensor:
    """Per-pair Bradley-Terry negative log-likelihood ``-log sigmoid(r_w - r_l - margin)``.

    Args:
        chosen_rewards: Rewards of the preferred responses, shape (B,).
        rejected_rewards: Rewards of the rejected responses, shape (B,).
        margin: Optional margin the chosen reward should exceed the rejected one by, a float or
            shape (B,). ``None`` means no margin.
        soft_labels: Optional ``p = P(chosen beats rejected)`` in [0, 1], a float or shape (B,);
            the loss is then ``p * l(w, l) + (1 - p) * l(l, w)`` (module docstring). ``None``
            means hard labels (``p = 1``).

    Returns:
        Per-pair losses, shape (B,). Reduce them (usually with a mean) in the recipe.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must have the same shape"
        )
    reward_gap = chosen_rewards - rejected_rewards  # (B,)
    required = 0.0 if margin is None else margin  # float or (B,)
    chosen_wins = -F.logsigmoid(reward_gap - required)  # (B,)
    if soft_labels is None:
        return chosen_wins
    rejected_wins = -F.logsigmoid(-reward_gap - required)  # (B,)
    return soft_labels * chosen_wins + (1.0 - soft_labels) * rejected_wins  # (B,)


def bradley_terry_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Detached summary statistics of a batch of reward pairs.

    Args:
        chosen_rewards: Rewards of the preferred responses, shape (B,).
        rejected_rewards: Rewards of the rejected responses, shape (B,).

    Returns:
        0-dim detached tensors: ``accuracy`` (fraction of pairs with ``r_w > r_l``; a tie counts
        as half, so a model that scores everything equally sits at 0.5, the chance level),
        ``margin`` (mean of ``r_w - r_l``), ``chosen_reward`` and ``rejected_reward`` (means).
    """
    chosen = chosen_rewards.detach()  # (B,)
    rejected = rejected_rewards.detach()  # (B,)
    wins = (chosen > rejected).to(chosen.dtype)  # (B,)
    ties = (chosen == rejected).to(chosen.dtype)  # (B,)
    return {
        "accuracy": (wins + 0.5 * ties).mean(),
        "margin": (chosen - rejected).mean(),
        "chosen_reward": chosen.mean(),
        "rejected_reward": rejected.mean(),
    }


def ranking_pairs(ranking: list[int]) -> list[tuple[int, int]]:
    """All K(K-1)/2 ``(better, worse)`` pairs implied by a best-to-worst ranking.

    Args:
        ranking: Indices of K responses, best first, e.g. ``[2, 0, 1]`` means response 2 is the
            best and response 1 the worst.

    Returns:
        ``(better, worse)`` index pairs, in the order the better response appears in the ranking;
        for ``[2, 0, 1]``: ``[(2, 0), (2, 1), (0, 1)]``.

    Raises:
        ValueError: If an index appears twice.
    """
    if len(set(ranking)) != len(ranking):
        raise ValueError(f"ranking {ranking} names a response more than once")
    return list(itertools.combinations(ranking, 2))


__all__ = ["bradley_terry_loss", "bradley_terry_metrics", "ranking_pairs"]
