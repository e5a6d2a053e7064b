"""What every rlhfkit reward-model scorer offers, given one primitive: K head scores per input.

A scorer maps (prompts, responses) to K scores per input (`score_heads`): the K heads of one
reward model (`reward_model.RewardScorer`), or every head of several independently trained
reward models in turn (`reward_ensemble.RewardEnsemble`). From those, the same for both:

    reward(x, y)       = mean_k s_k - c * std_k s_k      (`ensemble_reward`; c = 0 by default)
    disagreement(x, y) = std_k s_k                       (population std, ddof 0; 0 for K = 1)

c > 0 is Coste et al. (2024)'s uncertainty-weighted optimisation (`with_uncertainty_penalty`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence


def heads_std(heads: Sequence[float]) -> float:
    """Population std (ddof 0) of one input's K head scores: sqrt((1/K) sum_k (s_k - s̄)^2)."""
    mean = sum(heads) / len(heads)
    return math.sqrt(sum((h - mean) ** 2 for h in heads) / len(heads))


def ensemble_reward(heads: Sequence[float], uncertainty_coef: float = 0.0) -> float:
    """The reward of one input from its K head scores: mean_k s_k - c * std_k s_k (population
    std), c = `uncertainty_coef`. c = 0 is the heads' mean; c > 0 is Coste et al. (2024)'s
    uncertainty-weighted optimisation, which pays less where the heads disagree."""
    mean = sum(heads) / len(heads)
    return mean - uncertainty_coef * heads_std(heads) if uncertainty_coef else mean


class HeadScorer:
    """Base of the reward-model scorers: subclasses give `num_heads` and `score_heads`.

    Every method takes `ended=` (one bool per response): False marks a sampled response that ran
    out of tokens, scored without the EOS a finished one gets; None = every response finished.
    """

    uncertainty_coef: float = 0.0

    @property
    def num_heads(self) -> int:
        raise NotImplementedError

    def score_heads(
        self, prompts: Sequence, responses: Sequence, *, ended: Sequence[bool] | None = None
    ) -> list[list[float]]:
        """(B, K): the K head scores of every (prompt, response)."""
        raise NotImplementedError

    def __call__(
        self, prompts: Sequence, responses: Sequence, *, ended: Sequence[bool] | None = None
    ) -> list[float]:
        return self.score_with_disagreement(prompts, responses, ended=ended)[0]

    def score_with_disagreement(
        self, prompts: Sequence, responses: Sequence, *, ended: Sequence[bool] | None = None
    ) -> tuple[list[float], list[float]]:
        """`self(...)` and `self.disagreement(...)` from one scoring pass: per input, the reward
        (the heads' mean, less the uncertainty penalty if one is set) and the heads' std.

        Returns:
            ((B,), (B,)) rewards and disagreements.
        """
        heads = self.score_heads(prompts, responses, ended=ended)
        return (
            [ensemble_reward(h, self.uncertainty_coef) for h in heads],
            [heads_std(h) for h in heads],
        )

    def with_uncertainty_penalty(self, coef: float) -> HeadScorer:
        """This scorer (the same models, not copies of them) rewarding mean - `coef` x std over
        the heads; refused for a single head, which has no spread to penalise."""
        if self.num_heads < 2:
            raise ValueError(
                "an uncertainty penalty needs an ensemble (rm.ensemble=K >= 2, or several "
                "reward-model directories)"
            )
        penalised = copy.copy(self)
        penalised.uncertainty_coef = float(coef)
        return penalised

    def disagreement(
        self, prompts: Sequence, responses: Sequence, *, ended: Sequence[bool] | None = None
    ) -> list[float]:
        """Per input, the population std (ddof 0) of its K head scores `score_heads` gives:
        sqrt((1/K) sum_k (s_k - s̄)^2), s̄ = (1/K) sum_k s_k; 0 for one head.

        Returns:
            (B,) one value per (prompt, response).
        """
        return self.score_with_disagreement(prompts, responses, ended=ended)[1]


def is_ensemble(reward_fn: object) -> bool:
    """Whether `reward_fn` is an rlhfkit reward-model scorer with K >= 2 heads (whose
    disagreement means something)."""
    return isinstance(reward_fn, HeadScorer) and reward_fn.num_heads >= 2


__all__ = ["HeadScorer", "ensemble_reward", "is_ensemble"]
