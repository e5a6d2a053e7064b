"""An ensemble of independently trained reward models, scored as one.

`rm.ensemble=K` trains K heads on one backbone: cheap, but the heads share every feature, and a
policy that climbs their mean climbs them together (docs/reward_model.md measures it: their
disagreement falls during PPO). Reward models trained separately (other seeds, other data, other
backbones) share less, which is what Coste et al. (2024) ensemble. Give several `rlhfkit rm`
directories joined by commas wherever a reward is asked for (``ppo.reward_model``, ``rlhfkit
eval``'s ``reward_model``)::

    ppo.reward_model=runs/rm_s0/model,runs/rm_s1/model,runs/rm_s2/model

and the members' heads become the ensemble's heads, in the order given: with members of K_1,
K_2, ... heads, input i's scores are ``[s^1_1..s^1_K1, s^2_1.., ...]`` and

    reward(x, y)       = mean over all heads - c * std over all heads
    disagreement(x, y) = std over all heads        (population std)

Each member scores with its own tokenizer and its own stored normalisation (mean 0, std 1 on the
samples its `rlhfkit rm` run was normalised on), so the disagreement is in units of one member's
std there, and the mean of M members that are not perfectly correlated has a std under 1
(`ppo.reward_norm_samples=N` refits mean 0, std 1 on the initial policy's samples).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rlhfkit.errors import ConfigError
from rlhfkit.models.head_scorer import HeadScorer

SEPARATOR = ","


class RewardEnsemble(HeadScorer):
    """Several reward-model scorers whose heads, concatenated, are one ensemble's heads.

    Args:
        members: Scorers (`RewardScorer`s, or other ensembles), at least two.
    """

    def __init__(self, members: Sequence[HeadScorer]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = list(members)

    @property
    def num_heads(self) -> int:
        return sum(member.num_heads for member in self.members)

    @property
    def device(self):
        return self.members[0].device

    def score_heads(
        self, prompts: Sequence, responses: Sequence, *, ended: Sequence[bool] | None = None
    ) -> list[list[float]]:
        """(B, sum_m K_m): every member's head scores of each input, members in order."""
        per_member = [m.score_heads(prompts, responses, ended=ended) for m in self.members]
        return [[s for heads in row for s in heads] for row in zip(*per_member, strict=True)]


def reward_model_dirs(spec: str) -> list[str] | None:
    """The directories of an ensemble spec ``DIR,DIR,...`` (two or more), or None if `spec`
    names no ensemble (no comma). A part that is not a directory is an error naming it."""
    if SEPARATOR not in spec:
        return None
    parts = [part.strip() for part in spec.split(SEPARATOR)]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"reward_model: {spec!r}: an ensemble is two or more reward-model directories "
            f"joined by {SEPARATOR!r}, none empty"
        )
    for part in parts:
        if not os.path.isdir(part):
            raise ConfigError(
                f"reward_model: {part!r} (in the ensemble {spec!r}) is not a directory; every "
                "member must be an `rlhfkit rm` model directory"
            )
    return parts


def load_reward_ensemble(directories: Sequence[str], **kwargs) -> RewardEnsemble:
    """Load each of `directories` with `load_reward_scorer(directory, **kwargs)`; one ensemble."""
    from rlhfkit.models.reward_model import load_reward_scorer

    return RewardEnsemble([load_reward_scorer(d, **kwargs) for d in directories])


__all__ = ["SEPARATOR", "RewardEnsemble", "load_reward_ensemble", "reward_model_dirs"]
