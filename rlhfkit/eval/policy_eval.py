"""Evaluating policies against a reference: reward, gold reward, KL, win rates, best-of-n.

Definitions (all over the same held-out prompts, responses sampled at temperature 1):

- sequence KL to the reference: KL(π || π_ref) ≈ mean over samples y ~ π of
  Σ_t [log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)] (the k1 estimator, unbiased);
- win rate against the reference: P(score(y) > score(y_ref)) + ½ P(tie), with y ~ π and
  y_ref ~ π_ref answering the same prompt, judged by the proxy reward and by the gold reward;
- best-of-n: n samples of the reference, keep the one the proxy reward prefers; its KL to the
  reference is analytic, log n − (n − 1)/n (Stiennon et al. 2020, Gao et al. 2022).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhfkit.data.collate import pad_right
from rlhfkit.models.logprobs import TokenLogprobs

RewardFn = Callable[[list[str], list[str]], list[float]]


def best_of_n_kl(n: int) -> float:
    """Analytic KL of best-of-n sampling to the base policy: log n − (n − 1)/n."""
    return math.log(n) - (n - 1) / n


def win_rate(scores: list[float], reference_scores: list[float]) -> float:
    """Fraction of paired comparisons won, ties counting one half."""
    if not scores:
        return float("nan")
    wins = sum(
        1.0 if a > b else 0.5 if a == b else 0.0
        for a, b in zip(scores, reference_scores, strict=True)
    )
    return wins / len(scores)


@torch.no_grad()
def response_logprob_sums(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    *,
    batch_size: int = 64,
) -> list[float]:
    """Σ_t log π(y_t | x, y_<t) over each response's tokens (EOS included)."""
    scorer = TokenLogprobs(model).eval()
    device = next(model.parameters()).device
    sums: list[float] = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start : start + batch_size]
        responses = response_ids[start : start + batch_size]
        rows = [p + r for p, r in zip(prompts, responses, strict=True)]
        input_ids = pad_right(rows, pad_id).to(device)  # (B, T)
        attention_mask = pad_right([[1] * len(r) for r in rows], 0).to(device)  # (B, T)
        target_mask = pad_right(
            [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses, strict=True)], 0
        )
        logps = scorer(input_ids, target_mask.to(device), attention_mask)["logprobs"]  # (B, T)
        sums += logps.sum(-1).tolist()
    return sums


@dataclass
class PolicySamples:
    prompts: list[str]
    responses: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation; 0 when either side is constant."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return 0.0 if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def best_of_n_curve(
    candidate_proxy: list[list[float]], candidate_gold: list[list[float]] | None, ns: list[int]
) -> list[dict[str, float]]:
    """Best-of-n by the proxy reward for each n, from K ≥ max(ns) reference samples per prompt.

    For n < K the first n candidates are used (they are i.i.d., so any n of them will do).
    """
    curve = []
    for n in ns:
        chosen = [max(range(n), key=lambda i, c=cands: c[i]) for cands in candidate_proxy]
        row = {
            "n": n,
            "kl": best_of_n_kl(n),
            "proxy_reward": statistics.fmean(
                c[i] for c, i in zip(candidate_proxy, chosen, strict=True)
            ),
        }
        if candidate_gold is not None:
            row["gold_reward"] = statistics.fmean(
                g[i] for g, i in zip(candidate_gold, chosen, strict=True)
            )
        curve.append(row)
    return curve
