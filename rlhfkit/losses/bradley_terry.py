"""Bradley-Terry loss for training a scalar reward model on preference pairs.

The Bradley-Terry model (Bradley & Terry, 1952) says a labeller prefers response ``y_w`` to
``y_l`` with probability ``P(y_w > y_l) = sigmoid(r(x, y_w) - r(x, y_l))``. The reward model is fit
by maximum likelihood (Christiano et al. 2017; Stiennon et al. 2020; Ouyang et al. 2022)::

    loss = -log sigmoid(r_w - r_l - m)

with an optional per-pair margin ``m`` (Llama 2, Touvron et al. 2023: a larger required gap for
pairs the labellers rated as clearly better). ``-log sigmoid`` is computed with ``logsigmoid``,
which stays finite for any reward gap.

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
) -> Tensor:
    """Per-pair Bradley-Terry negative log-likelihood ``-log sigmoid(r_w - r_l - margin)``.

    Args:
        chosen_rewards: Rewards of the preferred responses, shape (B,).
        rejected_rewards: Rewards of the rejected responses, shape (B,).
        margin: Optional margin the chosen reward should exceed the rejected one by, a float or
            shape (B,). ``None`` means no margin.

    Returns:
        Per-pair losses, shape (B,). Reduce them (usually with a mean) in the recipe.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must have the same shape"
        )
    reward_gap = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        reward_gap = reward_gap - margin  # (B,)
    return -F.logsigmoid(reward_gap)  # (B,)


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
