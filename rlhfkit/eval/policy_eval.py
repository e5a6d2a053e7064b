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
from pathlib import Path

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


def sample_policy(
    model_dir: str,
    prompts: list[str],
    *,
    n: int,
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 128,
) -> PolicySamples:
    """`n` responses per prompt from a saved policy (K responses of a prompt are consecutive)."""
    from rlhfkit.data.tokenize import encode_prompt
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.sampling import SamplingParams, sample_responses

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype="float32", trainable=False)
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    samples = sample_responses(
        model, prompt_ids, SamplingParams(max_new_tokens, temperature, 1.0),
        pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, num_samples=n,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    return PolicySamples(
        prompts=[prompts[i] for i in samples.prompt_index],
        responses=[tokenizer.decode(r, skip_special_tokens=True) for r in samples.response_ids],
        prompt_ids=[prompt_ids[i] for i in samples.prompt_index],
        response_ids=samples.response_ids,
    )


def sequence_kl(policy_dir: str, reference_dir: str, samples: PolicySamples) -> list[float]:
    """Per-sample Σ_t log π − log π_ref on the policy's own samples (k1 estimate of the KL)."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    pad_id = load_tokenizer(policy_dir).pad_token_id
    policy = load_causal_lm(policy_dir, dtype="float32", trainable=False)
    reference = load_causal_lm(reference_dir, dtype="float32", trainable=False)
    mine = response_logprob_sums(policy, samples.prompt_ids, samples.response_ids, pad_id)
    theirs = response_logprob_sums(reference, samples.prompt_ids, samples.response_ids, pad_id)
    return [a - b for a, b in zip(mine, theirs, strict=True)]


def evaluate_policy(
    samples: PolicySamples,
    *,
    proxy: RewardFn | None,
    gold: RewardFn | None,
    kl: list[float] | None,
    reference: dict | None = None,
) -> dict:
    """Numbers of one policy from its samples; `reference` (another call's raw scores) adds
    win rates. Returns summary numbers plus `raw` per-sample scores."""
    out: dict = {"n": len(samples.responses)}
    raw: dict[str, list[float]] = {"length": [float(len(r)) for r in samples.response_ids]}
    if proxy is not None:
        raw["proxy"] = proxy(samples.prompts, samples.responses)
        out["proxy_reward"], out["proxy_reward_std"] = summarize(raw["proxy"]).values()
        out["proxy_length_correlation"] = pearson(raw["proxy"], raw["length"])
    if gold is not None:
        raw["gold"] = gold(samples.prompts, samples.responses)
        out["gold_reward"], out["gold_reward_std"] = summarize(raw["gold"]).values()
    if kl is not None:
        out["kl"] = statistics.fmean(kl) if kl else float("nan")
    out["length"] = statistics.fmean(raw["length"]) if raw["length"] else 0.0
    if reference is not None:
        for key in ("proxy", "gold"):
            if key in raw and key in reference:
                out[f"win_rate_{key}"] = win_rate(raw[key], reference[key])
    out["raw"] = raw
    return out


def evaluate_against_reference(
    policies: dict[str, str],
    *,
    reference: str,
    prompts: list[str],
    proxy: RewardFn | None,
    gold: RewardFn | None = None,
    reference_name: str = "reference",
    best_of: int = 0,
    max_new_tokens: int = 64,
    seed: int = 0,
    num_samples_shown: int = 12,
) -> dict:
    """Evaluate policies against a reference on `prompts` (one sample per prompt each).

    Best-of-n (n = 1, 2, 4, ... ≤ `best_of`) draws `best_of` reference samples per prompt and
    keeps the proxy's favourite. Returns the `eval.json` structure the report reads:
    `{"policies", "best_of_n", "samples", "warnings"}`.
    """
    from rlhfkit.eval import diagnostics

    k = max(best_of, 1)
    pool = sample_policy(reference, prompts, n=k, max_new_tokens=max_new_tokens, seed=seed + 7)
    first = [i * k for i in range(len(prompts))]
    raw: dict[str, list[float]] = {}
    if proxy is not None:
        raw["proxy"] = proxy(pool.prompts, pool.responses)
    if gold is not None:
        raw["gold"] = gold(pool.prompts, pool.responses)
    reference_raw = {key: [values[i] for i in first] for key, values in raw.items()}
    results: dict[str, dict] = {reference_name: {"kl": 0.0, "n": len(first)}}
    for key, values in reference_raw.items():
        results[reference_name][f"{key}_reward"] = statistics.fmean(values)
    lengths = [float(len(pool.response_ids[i])) for i in first]
    results[reference_name]["length"] = statistics.fmean(lengths)
    if "proxy" in reference_raw:
        results[reference_name]["proxy_length_correlation"] = pearson(
            reference_raw["proxy"], lengths
        )
    shown = {reference_name: [pool.responses[i] for i in first]}

    best_of_n: list[dict[str, float]] = []
    if best_of > 1 and "proxy" in raw:
        split = lambda xs: [xs[i * k : (i + 1) * k] for i in range(len(prompts))]  # noqa: E731
        ns = [2**i for i in range(k.bit_length()) if 2**i <= k]
        best_of_n = best_of_n_curve(
            split(raw["proxy"]), split(raw["gold"]) if "gold" in raw else None, ns
        )
        top = best_of_n[-1]
        results[f"best_of_{top['n']}"] = {
            key: top[key] for key in ("kl", "proxy_reward", "gold_reward") if key in top
        }

    for name, directory in policies.items():
        samples = sample_policy(
            directory, prompts, n=1, max_new_tokens=max_new_tokens, seed=seed + 11
        )
        kl = sequence_kl(directory, reference, samples)
        numbers = evaluate_policy(samples, proxy=proxy, gold=gold, kl=kl, reference=reference_raw)
        numbers.pop("raw")
        results[name] = numbers
        shown[name] = samples.responses

    warnings = []
    for name, numbers in results.items():
        check = diagnostics.length_correlation(numbers.get("proxy_length_correlation", 0.0))
        if check:
            warnings.append({**check, "message": f"{name}: {check['message']}"})
    samples = [
        {"prompt": prompts[i], "responses": {name: texts[i] for name, texts in shown.items()}}
        for i in range(min(num_samples_shown, len(prompts)))
    ]
    return {"policies": results, "best_of_n": best_of_n, "samples": samples, "warnings": warnings}


def training_diagnostics(runs: dict[str, Path]) -> tuple[dict, list[dict]]:
    """Proxy/gold/KL curves of RL runs (their metrics.jsonl) and the warnings they raise."""
    import json

    from rlhfkit.eval import diagnostics

    curves, warnings = {}, []
    for name, directory in runs.items():
        path = Path(directory) / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "score_mean" in r]
        curve = {
            "proxy": [r["score_mean"] for r in rows],
            "gold": [r.get("gold_reward_mean", float("nan")) for r in rows],
            "kl": [r.get("kl", float("nan")) for r in rows],
        }
        curves[name] = curve
        for check in (
            diagnostics.proxy_gold_divergence(curve["proxy"], curve["gold"]),
            diagnostics.kl_growth(curve["kl"]),
        ):
            if check:
                warnings.append({**check, "message": f"{name}: {check['message']}"})
    return curves, warnings
