"""Controllers of the KL-penalty coefficient beta in PPO's reward ``r - beta KL``.

Adaptive control (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
section 2.2) steers the measured KL towards a target with a proportional controller::

    e      = clip(KL_current / KL_target - 1, -0.2, 0.2)
    beta  <- beta * (1 + e * n_steps / horizon)

where ``n_steps`` is the number of samples (episodes) the KL was measured over, as in OpenAI's
lm-human-preferences, and ``horizon`` sets how quickly beta reacts (10000 in the paper).

The controllers are tiny stateful objects, not pure functions; ``state_dict`` and
``load_state_dict`` let a checkpoint carry the coefficient so that a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import math

from torch import Tensor


def _as_float(value: float | Tensor) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


class FixedKLController:
    """A constant KL coefficient, with the interface of ``AdaptiveKLController``.

    Args:
        kl_coef: The coefficient beta, >= 0.
    """

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """Does nothing; returns the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        """The coefficient, for a checkpoint."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the coefficient from ``state_dict()``."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that moves the KL coefficient towards a target KL.

    Args:
        init_kl_coef: Initial coefficient beta, > 0.
        target: Target KL (nats per sequence, the unit the recipe measures), > 0.
        horizon: Number of samples over which an error of 1 would change beta by 100%, > 0.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef <= 0:
            raise ValueError(f"init_kl_coef must be > 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """Updates the coefficient from the KL measured over ``n_steps`` samples.

        Args:
            current_kl: The measured KL (a float or a 0-dim tensor).
            n_steps: Number of samples the measurement covers.

        Returns:
            The new coefficient (also in ``.value``).
        """
        kl = _as_float(current_kl)
        if not math.isfinite(kl):
            raise ValueError(f"current_kl must be finite, got {kl}")
        proportional_error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        """The coefficient, for a checkpoint."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the coefficient from ``state_dict()``."""
        self.value = float(state["value"])


__all__ = ["AdaptiveKLController", "FixedKLController"]
