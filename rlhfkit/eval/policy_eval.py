"""Evaluating policies against a reference: reward, gold reward, KL, win rates, best-of-n.

Definitions (all over the same held-out prompts; every policy, the reference included, is
sampled with the same `temperature` T and `top_p`, default 1 and 1):

- sequence KL to the reference: KL(π_T || π_ref,T) ≈ mean over samples y ~ π_T of
  Σ_t [log π_T(y_t | x, y_<t) − log π_ref,T(y_t | x, y_<t)] (the k1 estimator), where
  π_T = softmax(logits / T) is the distribution the samples are drawn from. k1 is unbiased only
  with the log-probs of that distribution: untempered log-probs of tempered samples estimate no
  KL at all (their mean can be negative). So at T ≠ 1 the KL is that between the tempered
  policy and the tempered reference, as PPO's `kl` metric measures it; at T = 1 it is
  KL(π || π_ref). With `top_p` < 1 the samples come from the nucleus of π_T while the
  log-probs stay those of the whole tempered distribution (renormalising over the policy's
  nucleus would give log π_ref = −∞ wherever the reference's nucleus differs), so the number is
  then an approximation of the KL, the same one PPO makes;
- win rate against the reference: P(score(y) > score(y_ref)) + ½ P(tie), with y ~ π and
  y_ref ~ π_ref answering the same prompt, judged by the proxy reward and by the gold reward;
- best-of-n: n samples of the reference, keep the one the proxy reward prefers; its KL to the
  reference as sampled is analytic, log n − (n − 1)/n (Stiennon et al. 2020, Gao et al. 2022).
- ensemble disagreement (a proxy with K > 1 heads): mean over samples of
  sqrt(mean_k (r_k − r̄)²), the heads' standard deviation around their mean r̄ (the reward).

Prompts are plain strings or conversations (`[{"role", "content"}]`, TRL's conversational
prompt-only format), rendered with each policy's chat template as `ppo` and `generate` render
them (`render_prompt`); reward functions get the rendered prompt text, as in `ppo`. Models run on
the given device (default: cuda if available, else cpu).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.data.collate import pad_right
from rlhfkit.data.formats import Text
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.models.reward_fn import score_samples_with_disagreement

RewardFn = Callable[[list[str], list[str]], list[float]]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or cuda where one is available, else cpu (the reward scorer's rule)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    temperature: float = 1.0,
) -> list[float]:
    """Σ_t log π_T(y_t | x, y_<t) over each response's tokens (EOS included), where
    π_T = softmax(logits / `temperature`): the distribution responses were sampled from."""
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
        out = scorer(input_ids, target_mask.to(device), attention_mask, temperature=temperature)
        sums += out["logprobs"].sum(-1).tolist()  # (B, T) summed over the response
    return sums


@dataclass
class PolicySamples:
    """Responses of one policy. `prompts` are the rendered prompt texts, `prompt_items` the
    prompts as loaded (text or conversations), `ended` whether each response ended with EOS."""

    prompts: list[str]
    responses: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    prompt_items: list = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)

    def score(self, reward_fn: RewardFn) -> list[float]:
        """Every sample's reward (`score_samples`: an rlhfkit reward model gets conversations
        as conversations and scores a response that ran out of tokens without an EOS)."""
        return self.score_and_disagreement(reward_fn)[0]

    def score_and_disagreement(self, reward_fn: RewardFn) -> tuple[list[float], list[float] | None]:
        """Every sample's reward and, where `reward_fn` is an rlhfkit reward-model ensemble
        (K > 1 heads), the heads' standard deviation per sample, sqrt(mean_k (r_k - r̄)^2), in
        one scoring pass (the reward is r̄, the heads' mean, as `reward_fn(...)` gives it).
        Otherwise the disagreement is None."""
        return score_samples_with_disagreement(
            reward_fn,
            self.prompt_items or self.prompts,
            self.responses,
            rendered=self.prompts,
            ended=self.ended or [True] * len(self.responses),
        )


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
    prompts: list[Text],
    *,
    n: int,
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    dtype: str = "float32",
    max_prompt_length: int = 0,
) -> PolicySamples:
    """`n` responses per prompt from a saved policy (K responses of a prompt are consecutive).

    Args:
        model_dir: The policy's directory (or hub id).
        prompts: Plain strings or conversations (rendered with the policy's chat template).
        n: Responses per prompt.
        max_new_tokens: Longest response; sampling stops earlier at EOS.
        seed: Seed of the sampling noise.
        temperature: Sampling temperature (0 = greedy).
        top_p: Nucleus mass.
        batch_size: Rows per `generate` call.
        device: Where the model runs; None = cuda if available, else cpu.
        dtype: Weight dtype (`float32`, `bfloat16`, `float16`, `auto` = as stored).
    """
    from rlhfkit.data.tokenize import encode_prompt, encode_prompts, render_prompt
    from rlhfkit.models.loading import check_sampling_context, load_causal_lm, load_tokenizer
    from rlhfkit.rollout.sampling import SamplingParams, end_ids, sample_responses

    tokenizer = load_tokenizer(model_dir)
    if max_prompt_length > 0:  # as `ppo` and `generate` cut them: the start goes
        prompt_ids, _ = encode_prompts(tokenizer, prompts, max_prompt_length)
    else:
        prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    check_sampling_context(model_dir, prompt_ids, max_new_tokens)
    model = load_causal_lm(model_dir, dtype=dtype, trainable=False).to(resolve_device(device))
    prompt_texts = [render_prompt(tokenizer, p) for p in prompts]
    samples = sample_responses(
        model, prompt_ids, SamplingParams(max_new_tokens, temperature, top_p),
        pad_id=tokenizer.pad_token_id, eos_ids=end_ids(model, tokenizer), num_samples=n,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    return PolicySamples(
        prompts=[prompt_texts[i] for i in samples.prompt_index],
        responses=[tokenizer.decode(r, skip_special_tokens=True) for r in samples.response_ids],
        prompt_ids=[prompt_ids[i] for i in samples.prompt_index],
        response_ids=samples.response_ids,
        prompt_items=[prompts[i] for i in samples.prompt_index],
        ended=list(samples.has_eos),
    )


def sequence_kl(
    policy_dir: str,
    reference_dir: str,
    samples: PolicySamples,
    *,
    temperature: float = 1.0,
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> list[float]:
    """Per-sample Σ_t log π_T − log π_ref,T on the policy's own samples (k1 estimate of the KL
    between the tempered distributions; see the module docstring). `temperature` must be the
    one the samples were drawn at; `dtype` is the models' weight dtype (log-probs are computed
    in float32 from the logits whatever it is)."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    if temperature <= 0:
        raise ValueError(f"temperature: the KL needs a sampling distribution, got {temperature}")
    where = resolve_device(device)
    pad_id = load_tokenizer(policy_dir).pad_token_id
    sums = []
    for directory in (policy_dir, reference_dir):  # one model in memory at a time
        model = load_causal_lm(directory, dtype=dtype, trainable=False).to(where)
        sums.append(
            response_logprob_sums(
                model, samples.prompt_ids, samples.response_ids, pad_id, temperature=temperature
            )
        )
        del model
    mine, theirs = sums
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
        raw["proxy"], disagreement = samples.score_and_disagreement(proxy)
        out["proxy_reward"], out["proxy_reward_std"] = summarize(raw["proxy"]).values()
        out["proxy_length_correlation"] = pearson(raw["proxy"], raw["length"])
        if disagreement is not None:
            out["ensemble_disagreement"] = statistics.fmean(disagreement)
    if gold is not None:
        raw["gold"] = samples.score(gold)
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
    prompts: list[Text],
    proxy: RewardFn | None,
    gold: RewardFn | None = None,
    reference_name: str = "reference",
    best_of: int = 0,
    max_new_tokens: int = 64,
    seed: int = 0,
    num_samples_shown: int = 12,
    temperature: float = 1.0,
    top_p: float = 1.0,
    device: str | torch.device | None = None,
    dtype: str = "float32",
    keep_reference_pool: bool = False,
    max_prompt_length: int = 0,
) -> dict:
    """Evaluate policies against a reference on `prompts` (one sample per prompt each).

    Best-of-n (n = 1, 2, 4, ... ≤ `best_of`) draws `best_of` reference samples per prompt and
    keeps the proxy's favourite. Every policy is sampled at `temperature` and `top_p`, and its KL
    is measured at that temperature (module docstring); every model is loaded in `dtype`.
    Prompts may be strings or conversations;
    `samples[*].prompt` holds the rendered text. Returns the `eval.json` structure the report
    reads: `{"policies", "best_of_n", "samples", "warnings"}`. With `keep_reference_pool` it
    also holds `"reference_pool"`: `{"n", "prompts", "responses", "proxy", "gold"}`, the
    `best_of` reference samples of each prompt (prompt i's at i*n ... i*n + n - 1) and their
    scores, for callers that measure more on them (too large for `eval.json`: pop it first).
    """
    from rlhfkit.eval import diagnostics

    if temperature <= 0:
        raise ValueError(f"temperature: evaluation samples, so it must be > 0, got {temperature}")
    k = max(best_of, 1)
    sampling = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "device": device,
        "dtype": dtype,
        "max_prompt_length": max_prompt_length,
    }
    pool = sample_policy(reference, prompts, n=k, seed=seed + 7, **sampling)
    first = [i * k for i in range(len(prompts))]
    raw: dict[str, list[float]] = {}
    disagreement = None
    if proxy is not None:
        raw["proxy"], disagreement = pool.score_and_disagreement(proxy)
    if gold is not None:
        raw["gold"] = pool.score(gold)
    reference_raw = {key: [values[i] for i in first] for key, values in raw.items()}
    results: dict[str, dict] = {reference_name: {"kl": 0.0, "n": len(first)}}
    for key, values in reference_raw.items():
        numbers = summarize(values)
        results[reference_name][f"{key}_reward"] = numbers["mean"]
        results[reference_name][f"{key}_reward_std"] = numbers["std"]
    if disagreement is not None:
        reference_disagreement = statistics.fmean(disagreement[i] for i in first)
        results[reference_name]["ensemble_disagreement"] = reference_disagreement
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
        samples = sample_policy(directory, prompts, n=1, seed=seed + 11, **sampling)
        kl = sequence_kl(
            directory, reference, samples, temperature=temperature, device=device, dtype=dtype
        )
        numbers = evaluate_policy(samples, proxy=proxy, gold=gold, kl=kl, reference=reference_raw)
        numbers.pop("raw")
        results[name] = numbers
        shown[name] = samples.responses

    warnings = []
    for name, numbers in results.items():
        checks = [diagnostics.length_correlation(numbers.get("proxy_length_correlation", 0.0))]
        if name != reference_name and "ensemble_disagreement" in numbers:
            checks.append(
                diagnostics.ensemble_disagreement(
                    numbers["ensemble_disagreement"], reference_disagreement
                )
            )
        warnings += [{**c, "message": f"{name}: {c['message']}"} for c in checks if c]
    samples = [
        {
            "prompt": pool.prompts[first[i]],  # the rendered text: conversations are rendered
            "responses": {name: texts[i] for name, texts in shown.items()},
        }
        for i in range(min(num_samples_shown, len(prompts)))
    ]
    evaluation = {
        "policies": results, "best_of_n": best_of_n, "samples": samples, "warnings": warnings
    }  # fmt: skip
    if keep_reference_pool:
        evaluation["reference_pool"] = {
            "n": k, "prompts": pool.prompts, "responses": pool.responses,
            "proxy": raw.get("proxy"), "gold": raw.get("gold"),
        }  # fmt: skip
    return evaluation


def _finite_or_none(value) -> float | None:
    """`value` as a float, or None when it is missing or not finite (NaN is not JSON)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def run_curve(rows: list[dict]) -> dict[str, list]:
    """The proxy, gold and KL curves of one RL run's logged rows, with their steps.

    Rows without `score_mean` (evaluation rows) are left out. `step` holds each kept row's
    logged step, so a plot's x-axis is the optimizer step whatever `logging_steps` was. `gold`
    is there only if some row logged `gold_reward_mean`, `disagreement` only if some row logged
    `reward_disagreement` (a reward-model ensemble's heads' std). A missing or non-finite value
    is None, never NaN, so eval.json stays valid JSON.
    """
    rows = [r for r in rows if "score_mean" in r]
    curve: dict[str, list] = {
        "step": [r.get("step") for r in rows],
        "proxy": [_finite_or_none(r["score_mean"]) for r in rows],
        "kl": [_finite_or_none(r.get("kl")) for r in rows],
    }
    if any(r.get("gold_reward_mean") is not None for r in rows):
        curve["gold"] = [_finite_or_none(r.get("gold_reward_mean")) for r in rows]
    if any(r.get("reward_disagreement") is not None for r in rows):
        curve["disagreement"] = [_finite_or_none(r.get("reward_disagreement")) for r in rows]
    return curve


def curve_checks(curve: dict[str, list]) -> list[dict]:
    """The diagnostics a training curve raises (proxy–gold divergence, KL growth, growth of
    the reward ensemble's disagreement), computed on the rows that logged the values each check
    needs."""
    from rlhfkit.eval import diagnostics

    both = [
        (proxy, gold)
        for proxy, gold in zip(curve["proxy"], curve.get("gold", []), strict=False)
        if proxy is not None and gold is not None
    ]
    checks = [
        diagnostics.proxy_gold_divergence([p for p, _ in both], [g for _, g in both]),
        diagnostics.kl_growth([kl for kl in curve["kl"] if kl is not None]),
        diagnostics.disagreement_growth(
            [d for d in curve.get("disagreement", []) if d is not None]
        ),
    ]
    return [check for check in checks if check]


def training_diagnostics(runs: dict[str, Path]) -> tuple[dict, list[dict]]:
    """Proxy/gold/KL curves of RL runs (their metrics.jsonl; `run_curve`) and the warnings they
    raise."""
    from rlhfkit.data.io import read_log

    curves, warnings = {}, []
    for name, directory in runs.items():
        path = Path(directory) / "metrics.jsonl"
        if not path.exists():
            continue
        rows = read_log(path)  # a torn last line (a killed run) is left out, not a traceback
        curves[name] = run_curve(rows)
        for check in curve_checks(curves[name]):
            warnings.append({**check, "message": f"{name}: {check['message']}"})
    return curves, warnings
