"""Reward-hacking diagnostics: signs that the policy optimises the proxy, not the goal.

- proxy–gold divergence: from the start to the end of training the proxy reward rises while the
  gold reward falls (Gao et al. 2022's over-optimisation);
- reward–length correlation: a reward that pays for length invites padding (Singhal et al. 2023);
- KL growth: the policy keeps moving away from the reference (no leash);
- ensemble disagreement: reward models trained alike disagree on the policy's samples (at
  evaluation, against the reference's samples; in training, end against start).

Each check is a pure function returning a `Warning`-like dict or None, so the console and the
report show the same messages.
"""

from __future__ import annotations

import statistics


def trend(values: list[float]) -> float:
    """Least-squares slope of `values` against their index (0 for fewer than 2 points)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def proxy_gold_divergence(
    proxy: list[float], gold: list[float], *, window: float = 0.25, tolerance: float = 0.02
) -> dict | None:
    """Flag a run whose proxy reward ends higher than it started while its gold reward ends
    lower (by more than `tolerance`), comparing the means of the first and last `window`
    fraction of the steps (means, because per-step rewards are noisy)."""
    if len(proxy) < 4 or len(proxy) != len(gold):
        return None
    width = max(1, int(len(proxy) * window))
    proxy_start, proxy_end = statistics.fmean(proxy[:width]), statistics.fmean(proxy[-width:])
    gold_start, gold_end = statistics.fmean(gold[:width]), statistics.fmean(gold[-width:])
    if proxy_end > proxy_start and gold_end < gold_start - tolerance:
        return {
            "check": "proxy_gold_divergence",
            "message": f"proxy reward rose {proxy_start:.3f} → {proxy_end:.3f} while the gold "
            f"reward fell {gold_start:.3f} → {gold_end:.3f}: the policy over-optimises the "
            "reward model",
            "proxy": [proxy_start, proxy_end],
            "gold": [gold_start, gold_end],
        }
    return None


def length_correlation(correlation: float, *, threshold: float = 0.5) -> dict | None:
    if abs(correlation) >= threshold:
        return {
            "check": "reward_length_correlation",
            "message": f"reward correlates with response length (r = {correlation:+.2f}); "
            "the policy may be rewarded for length rather than quality",
            "correlation": correlation,
        }
    return None


def kl_growth(kl: list[float], *, limit: float = 10.0) -> dict | None:
    if len(kl) >= 4 and kl[-1] > limit and kl[-1] > kl[0]:
        return {
            "check": "kl_growth",
            "message": f"KL to the reference grew to {kl[-1]:.1f} nats (> {limit:g}): the policy "
            "has left the region where the reward model was trained",
            "kl_end": kl[-1],
        }
    return None


def ensemble_disagreement(
    std: float, reference_std: float | None = None, *, ratio: float = 2.0, floor: float = 0.1
) -> dict | None:
    """Flag a policy on whose samples the reward-model ensemble disagrees much more than on the
    reference's: mean over samples of the heads' standard deviation `std` at least `ratio` times
    the reference's `reference_std`, and at least `floor` (in the ensemble reward's standard
    deviations on its normalisation samples, so a rise from 0.01 to 0.03 is not flagged).

    Disagreement grows where the policy's samples leave the reward model's training
    distribution (Coste et al. 2024, reward-model ensembles against over-optimisation). Without a
    reference the ratio cannot be taken and only `std` >= 5 x `floor` is flagged.
    """
    if reference_std is None:
        flagged = std >= 5 * floor
    else:
        flagged = std >= floor and std >= ratio * reference_std
    if not flagged:
        return None
    against = "" if reference_std is None else f", {reference_std:.2f} on the reference's"
    return {
        "check": "ensemble_disagreement",
        "message": f"reward-model ensemble heads disagree on the policy's samples (std "
        f"{std:.2f} in reward std units{against}): its rewards there are not to be trusted",
        "std": std,
        "reference_std": reference_std,
    }


def disagreement_growth(
    disagreement: list[float], *, window: float = 0.25, ratio: float = 2.0, floor: float = 0.1
) -> dict | None:
    """Flag an RL run on whose rollouts the reward-model ensemble came to disagree: the mean of
    the last `window` fraction of its per-step disagreements (the heads' std, averaged over the
    step's samples) at least `ratio` times the mean of the first, and at least `floor` (the
    thresholds of `ensemble_disagreement`, with the run's own start as the reference)."""
    if len(disagreement) < 4:
        return None
    width = max(1, int(len(disagreement) * window))
    start = statistics.fmean(disagreement[:width])
    end = statistics.fmean(disagreement[-width:])
    if end < floor or end < ratio * start:
        return None
    return {
        "check": "disagreement_growth",
        "message": f"reward-model ensemble disagreement on the rollouts rose {start:.2f} → "
        f"{end:.2f} (heads' std in reward std units): the policy is moving where the reward "
        "model's heads no longer agree",
        "disagreement": [start, end],
    }
