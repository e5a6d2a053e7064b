"""The math of RLHF as pure functions of tensors (torch only).

Tensors in; per-example losses (or a scalar loss for token-level PPO) and detached metrics out.
Each module's docstring states its formulas, the paper they come from, and where it departs:

* ``bradley_terry`` -- reward-model loss on preference pairs, rankings to pairs;
* ``dpo`` -- DPO and its family (cDPO, IPO, hinge, robust, SimPO) as registered variants;
* ``kl`` -- per-token KL estimators k1/k2/k3; ``kl_controllers`` -- adaptive/fixed KL coefficient;
* ``masked`` -- masked mean/variance and whitening;
* ``advantages`` -- GAE, RLOO, GRPO;
* ``ppo`` -- clipped policy and value losses, explained variance, KL-shaped rewards;
* ``entropy`` -- entropy from logits;
* ``soft_labels`` -- soft AI-feedback labels (Constitutional AI).
"""

from rlhfkit.losses.advantages import gae_advantages, grpo_advantages, rloo_advantages
from rlhfkit.losses.bradley_terry import bradley_terry_loss, bradley_terry_metrics, ranking_pairs
from rlhfkit.losses.dpo import (
    DPO_LOSSES,
    DPOLossVariant,
    available_dpo_losses,
    dpo_loss,
    register_dpo_loss,
)
from rlhfkit.losses.entropy import entropy_from_logits
from rlhfkit.losses.kl import (
    KL_ESTIMATORS,
    available_kl_estimators,
    kl_penalty,
    register_kl_estimator,
)
from rlhfkit.losses.kl_controllers import AdaptiveKLController, FixedKLController
from rlhfkit.losses.masked import masked_mean, masked_var, masked_whiten
from rlhfkit.losses.ppo import (
    explained_variance,
    kl_shaped_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from rlhfkit.losses.soft_labels import choice_probability, clamp_probability, debiased_preference

__all__ = [
    "DPO_LOSSES",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "DPOLossVariant",
    "FixedKLController",
    "available_dpo_losses",
    "available_kl_estimators",
    "bradley_terry_loss",
    "bradley_terry_metrics",
    "choice_probability",
    "clamp_probability",
    "debiased_preference",
    "dpo_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "grpo_advantages",
    "kl_penalty",
    "kl_shaped_rewards",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
    "ranking_pairs",
    "register_dpo_loss",
    "register_kl_estimator",
    "rloo_advantages",
]
