"""Reward-model training: Bradley-Terry on preference pairs or K-way rankings.

Loss of one optimizer step, over the G comparisons (batch elements) of its global batch::

    L = 1/G * sum_e  1/|P_e| * sum_{(w, l) in P_e}  1/K * sum_k [ -log σ(r_k(w) - r_k(l) - m)
                                                              + c * (r_k(w) + r_k(l))^2 ]

`P_e` is the single pair of a preference record, or all K(K-1)/2 pairs of a ranking record
(InstructGPT: one prompt's comparisons form one batch element, their losses averaged so a prompt
with many responses does not dominate). `m` is the record's margin when `rm.use_margin=true`
(Llama 2), else 0; `c` is `rm.center_coef` (reward centring, Eisenstein et al. 2023); the sum
over k runs over the heads of an ensemble (`rm.ensemble=K`, shared backbone). Normalising by the
global G (fixed by the batch plan) makes 1×8 equal 8×1, as in the SFT recipe.

Speed: a comparison is one row `prompt + y_1 + ... + y_K` with a block attention mask, so the
prompt is encoded once per comparison instead of once per response (`rm.shared_prompt`, see
`rlhfkit.models.reward_model`); the head runs only at the K reward positions.

After training, the rewards are normalised (`rm.normalize`): per head a gain and bias such that
the reward (the mean over heads) of reference samples has mean 0 and std 1 with every head on one
scale (`ensemble_normalization`; for one head simply mean 0, std 1), stored in
`OUT/model/rlhfkit_reward.json` and applied whenever rlhfkit scores with the model. The reference
samples are `rm.normalize_data` (`{prompt, responses}`, `{prompt, completion}`, preference or
ranking records: in the pipeline, the SFT policy's samples) or, when it is empty, the distinct
responses of the training data. With `rm.normalize=false` the model is saved unnormalised (gain
1, bias 0), also when training starts from a reward model that had a normalisation: it was
fitted to weights that training changes.

An ensemble's `eval_disagreement` is, at every evaluation (during training and at the end), the
mean std across heads after `ensemble_normalization` fitted on that evaluation's own responses
(`normalized_disagreement`): in units of the ensemble reward's std on the eval data, defined
before any normalisation exists and independent of it, so the values of metrics.jsonl compare
across steps. `normalize_disagreement` (summary) is the same quantity on the reference samples,
i.e. under the stored normalisation.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object

from rlhfkit.config import TrainConfig, group, option
from rlhfkit.data.datasets import load_comparisons
from rlhfkit.data.formats import (
    PreferenceExample,
    RankingExample,
    parse_scored,
    soft_label_note,
)
from rlhfkit.data.io import read_records
from rlhfkit.data.tokenize import TokenStats, encode_completion, encode_prompt, truncate
from rlhfkit.errors import ConfigError
from rlhfkit.eval.reward_metrics import (
    bradley_terry_nll,
    ensemble_normalization,
    length_correlation,
    normalized_disagreement,
    reward_pair_metrics,
)
from rlhfkit.losses import bradley_terry_loss
from rlhfkit.losses.bradley_terry import ranking_pairs
from rlhfkit.models.loading import check_context, compile_blocks, load_tokenizer
from rlhfkit.models.reward_model import (
    RewardModel,
    build_reward_model,
    encode_pair,
    pack_responses,
    read_reward_info,
    save_reward_model,
)
from rlhfkit.models.shared_prompt import unsupported_reason
from rlhfkit.recipes.sft import lora_settings
from rlhfkit.training.batches import BatchPlan, eval_shards
from rlhfkit.training.checkpoint import save_checkpoint
from rlhfkit.training.run import Run, check_finite
from rlhfkit.training.setup import checked_plan, prepare_optimization, resume_or_start
from rlhfkit.training.steps import global_sum, optimizer_step, sync_context


@dataclass
class RMOptions:
    use_margin: bool = option(
        False, "subtract each record's `margin` from the reward gap: -log σ(Δr - margin)"
    )
    center_coef: float = option(
        0.0, "reward-centring regulariser: adds coef * mean((r_w + r_l)^2); 0 = off", minimum=0
    )
    soft_labels: bool = option(
        True,
        "train a record's `soft_label` p = P(chosen beats rejected) with the soft loss "
        "-p log σ(Δr) - (1-p) log σ(-Δr); false = every pair a hard win for `chosen`",
    )
    ensemble: int = option(
        1, "K reward heads on one backbone; reports their disagreement", minimum=1
    )
    shared_prompt: bool = option(
        True, "encode a prompt once for all its responses (block mask); false = one row each"
    )
    normalize: bool = option(True, "fit gain/bias so reference rewards have mean 0, std 1")
    normalize_data: str = option(
        "",
        "reference samples for the normalisation ({prompt, responses} or {prompt, completion} "
        "records, e.g. the SFT policy's samples); empty = the training data's responses",
    )
    normalize_max_samples: int = option(4096, "at most this many reference samples", minimum=1)
    calibration_bins: int = option(10, "bins of the expected calibration error", minimum=1)


@dataclass
class RMConfig(TrainConfig):
    output_dir: str = option("runs/rm", "where config.yaml, metrics, the model and checkpoints go")
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    rm: RMOptions = group(RMOptions, "reward-model options")


@dataclass
class Comparison:
    """One batch element: a prompt, its responses and the (better, worse) pairs among them."""

    prompt_ids: list[int]
    responses: list[list[int]]
    pairs: list[tuple[int, int]]
    margins: list[float] = field(default_factory=list)  # one per pair (0.0 when absent)
    soft_label: float | None = None  # a preference record's P(chosen beats rejected), if given


def encode_comparisons(
    examples: list[PreferenceExample | RankingExample],
    tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    stats: TokenStats | None = None,
) -> list[Comparison]:
    """Tokenise preference/ranking records; identical or unfit pairs are skipped and counted."""
    stats = stats if stats is not None else TokenStats()
    out = []
    for example in examples:
        stats.examples += 1
        if isinstance(example, RankingExample):
            texts = list(example.responses)
            pairs = ranking_pairs(list(example.ranking))
            margins = [0.0] * len(pairs)
        else:
            texts = [example.chosen, example.rejected]
            pairs = [(0, 1)]
            margins = [float(example.margin or 0.0)]
        kept = [(p, m) for p, m in zip(pairs, margins, strict=True) if texts[p[0]] != texts[p[1]]]
        if not kept:
            stats.skipped["chosen == rejected"] += 1
            continue
        if len(kept) < len(pairs):
            stats.skipped["identical responses in a ranking (pairs dropped)"] += 1
        full_prompt = encode_prompt(tokenizer, example.prompt)
        prompt_ids, responses = full_prompt, []
        for text in texts:
            encoded = truncate(
                full_prompt,
                encode_completion(tokenizer, example.prompt, text),
                max_length=max_length,
                max_prompt_length=max_prompt_length,
                bos_id=tokenizer.bos_token_id,
            )
            prompt_ids = encoded.prompt_ids
            stats.completion_truncated += encoded.completion_truncated
            responses.append(encoded.completion_ids)
        stats.prompt_truncated += len(full_prompt) > len(prompt_ids)
        if any(not r for r in responses):
            stats.skipped["no response token fits max_length"] += 1
            continue
        # Responses that differ only past max_length are the same sequence to the model: such a
        # pair has Δr = 0 whatever the weights, so it trains nothing and would skew accuracy.
        distinct = [(p, m) for p, m in kept if responses[p[0]] != responses[p[1]]]
        if not distinct:
            stats.skipped["chosen == rejected after truncation to max_length"] += 1
            continue
        if len(distinct) < len(kept):
            stats.skipped["responses identical after truncation in a ranking (pairs dropped)"] += 1
        kept = distinct
        stats.kept += 1
        soft_label = None if isinstance(example, RankingExample) else example.soft_label
        pairs_kept, margins_kept = [p for p, _ in kept], [m for _, m in kept]
        out.append(Comparison(prompt_ids, responses, pairs_kept, margins_kept, soft_label))
    return out


def _batch_inputs(
    comparisons: list[Comparison],
    indices: list[int],
    pad_id: int,
    shared: bool,
    dtype,
    soft_labels: bool = True,
):
    """The rows of `indices` (`pack_responses`) and their pairs: `better`, `worse` (P,) indices
    into the rows' responses, `margin`, `weight` (1/|P_e|) and `label` (P(better beats worse):
    the record's soft label when `soft_labels`, else 1), each (P,)."""
    chosen = [comparisons[i] for i in indices]
    rows = pack_responses(
        [c.prompt_ids for c in chosen],
        [c.responses for c in chosen],
        pad_id=pad_id,
        shared_prompt=shared,
        dtype=dtype,
    )
    better, worse, margins, weights, labels = [], [], [], [], []
    offset = 0
    for comparison in chosen:
        label = comparison.soft_label if soft_labels else None
        for (w, lose), m in zip(comparison.pairs, comparison.margins, strict=True):
            better.append(offset + w)
            worse.append(offset + lose)
            margins.append(m)
            weights.append(1.0 / len(comparison.pairs))
            labels.append(1.0 if label is None else label)
        offset += len(comparison.responses)
    pairs = {
        "better": torch.tensor(better, dtype=torch.long),
        "worse": torch.tensor(worse, dtype=torch.long),
        "margin": torch.tensor(margins, dtype=torch.float32),
        "weight": torch.tensor(weights, dtype=torch.float32),
        "label": torch.tensor(labels, dtype=torch.float32),
    }
    return rows, pairs


def _token_count(comparisons: list[Comparison], indices: list[int], shared: bool) -> int:
    """Tokens the model runs over (no padding): the prompt once per row."""
    total = 0
    for i in indices:
        c = comparisons[i]
        rows = 1 if shared else len(c.responses)
        total += rows * len(c.prompt_ids) + sum(len(r) for r in c.responses)
    return total


def comparison_loss(
    rewards: torch.Tensor,
    pairs: dict[str, torch.Tensor],
    *,
    use_margin: bool,
    center_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted sum over pairs of the per-pair loss averaged over heads.

    Args:
        rewards: (N, K) rewards of the batch's responses.
        pairs: `better`, `worse` (P,) indices into N; `margin` (P,); `weight` (P,) (1/|P_e|);
            optional `label` (P,) P(better beats worse), the soft Bradley-Terry loss where < 1.
        use_margin: Subtract `margin` from the gap.
        center_coef: Coefficient of (r_w + r_l)^2.

    Returns:
        (sum_p weight_p * loss_p (scalar), chosen (P,) and rejected (P,) rewards, mean over heads,
        detached).
    """
    chosen = rewards[pairs["better"]]  # (P, K)
    rejected = rewards[pairs["worse"]]  # (P, K)
    margin = pairs["margin"][:, None] if use_margin else None  # (P, 1)
    label = pairs.get("label")
    soft = None if label is None or bool((label == 1.0).all()) else label[:, None]  # (P, 1)
    per_head = bradley_terry_loss(
        chosen,
        rejected,
        None if margin is None else margin.expand_as(chosen),
        soft_labels=None if soft is None else soft.expand_as(chosen),
    )  # (P, K)
    if center_coef:
        per_head = per_head + center_coef * (chosen + rejected) ** 2
    loss = (per_head.mean(-1) * pairs["weight"]).sum()
    return loss, chosen.detach().mean(-1), rejected.detach().mean(-1)


@torch.no_grad()
def score_comparisons(
    run: Run, model, comparisons: list[Comparison], config: RMConfig, pad_id: int
) -> dict:
    """Rewards of every response of `comparisons` (all processes; gathered)."""
    acc = run.accelerator
    dtype = acc.unwrap_model(model).shared_prompt_mask_dtype() or torch.float32
    model.eval()
    local = []
    for indices, counted in eval_shards(
        len(comparisons), config.eval_batch_size, acc.num_processes, acc.process_index
    ):
        rows, _ = _batch_inputs(comparisons, indices, pad_id, config.rm.shared_prompt, dtype)
        rewards = model(**rows.to(acc.device).model_inputs()).cpu()  # (N, K)
        if not counted:  # a filler batch only keeps the processes' forwards in step
            continue
        offset = 0
        for i in indices:
            n = len(comparisons[i].responses)
            local.append((i, rewards[offset : offset + n].tolist()))
            offset += n
    model.train()
    found = sorted(gather_object(local), key=lambda item: item[0])
    return dict(found)  # comparison index -> [[K rewards] per response]


def evaluate(
    run: Run, model, comparisons: list[Comparison], config: RMConfig, pad_id: int
) -> dict[str, float]:
    """eval_accuracy, eval_loss, eval_margin, eval_ece, eval_length_correlation (+ ensemble).

    Every metric uses the raw rewards, so an evaluation during training and the final one (after
    the normalisation is fitted) are on the same basis. The pair metrics use the mean over heads.
    An ensemble's `eval_disagreement` is `normalized_disagreement` of the eval responses' raw
    (N, K) head rewards: the mean std across heads after `ensemble_normalization` fitted on those
    same responses, in units of the ensemble reward's std there (scale-free).

    With soft labels (`rm.soft_labels` and records that carry one), a pair counts for accuracy,
    margin and ECE on the side its label favours (p < 1/2: `rejected`), pairs at p = 1/2 are left
    out of those (`eval_undecided_pairs`), and `eval_loss` is the soft loss over every pair."""
    rewards = score_comparisons(run, model, comparisons, config, pad_id)
    chosen, rejected, labels, values, lengths, heads = [], [], [], [], [], []
    for index, comparison in enumerate(comparisons):
        per_response = rewards[index]
        means = [sum(r) / len(r) for r in per_response]
        label = comparison.soft_label if config.rm.soft_labels else None
        for w, lose in comparison.pairs:
            chosen.append(means[w])
            rejected.append(means[lose])
            labels.append(1.0 if label is None else label)
        for response, head_values in zip(comparison.responses, per_response, strict=True):
            values.append(sum(head_values) / len(head_values))
            lengths.append(len(response))
            heads.append(head_values)  # raw (K,)
    out = {f"eval_{k}": v for k, v in _pair_metrics(chosen, rejected, labels, config).items()}
    out["eval_length_correlation"] = length_correlation(values, lengths)
    out["eval_pairs"] = len(chosen)
    if config.rm.ensemble > 1:
        out["eval_disagreement"] = normalized_disagreement(heads)
    return out


def _pair_metrics(chosen, rejected, labels, config: RMConfig) -> dict[str, float]:
    """`reward_pair_metrics` of the pairs oriented by their labels (see `evaluate`)."""
    if all(p == 1.0 for p in labels):
        return reward_pair_metrics(chosen, rejected, n_bins=config.rm.calibration_bins)
    decided = [
        (c, r) if p > 0.5 else (r, c)
        for c, r, p in zip(chosen, rejected, labels, strict=True)
        if p != 0.5
    ]
    metrics: dict[str, float] = {}
    if decided:
        better, worse = (list(side) for side in zip(*decided, strict=True))
        metrics = reward_pair_metrics(better, worse, n_bins=config.rm.calibration_bins)
    metrics["loss"] = bradley_terry_nll(chosen, rejected, labels)
    metrics["undecided_pairs"] = len(chosen) - len(decided)
    return metrics


def reference_samples(config: RMConfig, tokenizer, comparisons: list[Comparison]):
    """(prompt_ids, response_ids) pairs the normalisation is fitted on, and their description."""
    limit = config.rm.normalize_max_samples
    samples: list[tuple[list[int], list[int]]] = []
    if config.rm.normalize_data:
        for record in read_records(config.rm.normalize_data):
            scored = parse_scored(record)
            for text in scored.responses:
                prompt_ids, response_ids = encode_pair(
                    tokenizer,
                    scored.prompt,
                    text,
                    max_length=config.max_length,
                    max_prompt_length=config.max_prompt_length,
                )
                if response_ids:
                    samples.append((prompt_ids, response_ids))
        where = config.rm.normalize_data
    else:
        seen = set()
        for comparison in comparisons:
            for response in comparison.responses:
                key = (tuple(comparison.prompt_ids), tuple(response))
                if key not in seen:
                    seen.add(key)
                    samples.append((comparison.prompt_ids, response))
        where = f"train_data responses ({config.train_data})"
    if not samples:
        raise ConfigError("rm.normalize_data: no samples to normalise the rewards on")
    if len(samples) > limit:
        samples = random.Random(config.seed).sample(samples, limit)
    return samples, where


def fit_normalization(run: Run, model, samples, config: RMConfig, pad_id: int):
    """Per-head gains and biases (K each, `ensemble_normalization`: the mean over heads of
    gain_k * r_k + bias_k has mean 0 and std 1 over `samples`) and the raw head rewards (S, K)."""
    as_comparisons = [Comparison(p, [r], []) for p, r in samples]
    rewards = score_comparisons(run, model, as_comparisons, config, pad_id)
    heads = [rewards[i][0] for i in range(len(samples))]  # (S, K)
    gains, biases = ensemble_normalization(heads)
    return gains, biases, heads


def _load(spec: str, tokenizer, config: RMConfig) -> tuple[list[Comparison], TokenStats]:
    stats = TokenStats()
    comparisons = encode_comparisons(
        load_comparisons(spec),
        tokenizer,
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
        stats=stats,
    )
    return comparisons, stats


def check_config(config: RMConfig) -> None:
    """Every check that needs no model or data file; raises a one-line `ConfigError`."""
    if config.rm.ensemble < 1:
        raise ConfigError(f"rm.ensemble: need at least 1 head, got {config.rm.ensemble}")
    if config.rm.center_coef < 0:
        raise ConfigError(f"rm.center_coef: must be >= 0, got {config.rm.center_coef}")
    if not config.train_data:
        raise ConfigError("train_data: no training data given")
    lora_settings(config)  # refuses lora.dropout


def train(config: RMConfig) -> dict:
    check_config(config)
    run = Run(config, "rm")
    acc = run.accelerator
    tokenizer = load_tokenizer(config.model)
    pad_id = tokenizer.pad_token_id
    comparisons, stats = _load(config.train_data, tokenizer, config)
    run.print(f"[bold]train data[/] {config.train_data}: {stats.summary()}")
    if not config.rm.use_margin and any(any(c.margins) for c in comparisons):
        run.print("the data has margins; rm.use_margin=false ignores them")
    use_soft = config.rm.soft_labels
    note = soft_label_note([c.soft_label for c in comparisons], "rm.soft_labels", use_soft)
    if note:
        run.print(note)
    eval_comparisons: list[Comparison] = []
    if config.eval_data:
        eval_comparisons, eval_stats = _load(config.eval_data, tokenizer, config)
        run.print(f"[bold]eval data[/] {config.eval_data}: {eval_stats.summary()}")
    # read now, so that a bad file stops the run before training, not after it
    normalization_samples = (
        reference_samples(config, tokenizer, comparisons) if config.rm.normalize else None
    )

    check_context(config.model, config.max_length, "max_length")
    model = build_reward_model(
        config.model,
        num_heads=config.rm.ensemble,
        pad_token_id=pad_id,
        dtype=config.dtype,
        gradient_checkpointing=config.gradient_checkpointing,
        lora=lora_settings(config),
        attn_implementation=config.attn_implementation or None,
        seed=config.seed,
    )
    start_info = read_reward_info(config.model)
    if start_info is not None and start_info.normalized_on and not config.rm.normalize:
        # build_reward_model starts at gain 1, bias 0: the stored fit is for the old weights.
        run.print(
            f"{config.model}'s normalisation (fitted on {start_info.normalized_on}) does not fit "
            "the weights once trained; with rm.normalize=false the model is saved unnormalised "
            "(gain 1, bias 0)"
        )
    if config.compile:
        compile_blocks(model)
    model.info.max_length = config.max_length
    model.info.max_prompt_length = config.max_prompt_length
    mask_dtype = model.shared_prompt_mask_dtype()
    reason = unsupported_reason(model.seqcls, config.max_length)
    if config.rm.shared_prompt and reason is not None:
        run.print(f"{reason}: rm.shared_prompt is turned off")
        config.rm.shared_prompt = False
    dtype = mask_dtype or torch.float32
    plan = BatchPlan(
        len(comparisons),
        config.batch_size,
        config.grad_accum,
        acc.num_processes,
        config.seed,
        config.max_steps,
        config.epochs,
    )
    checked_plan(run, plan, "comparisons")
    model, optimizer, scheduler = prepare_optimization(run, model, config, plan.total_steps)

    totals = {"loss_sum": 0.0, "loss_steps": 0, "accuracy_sum": 0.0, "tokens": 0, "seconds": 0.0}
    start_step, totals = resume_or_start(run, config, totals)

    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    loop_start = time.perf_counter()
    with run.progress(plan.total_steps, start_step, "rm"):
        for step in range(start_step, plan.total_steps):
            micro_batches = plan.micro_batches(step, acc.process_index)
            # Every process knows the whole global batch: the step's tokens, all processes'.
            tokens = _token_count(comparisons, plan.global_indices(step), config.rm.shared_prompt)
            window_tokens += tokens
            totals["tokens"] += tokens
            local_loss, local_correct = 0.0, 0.0
            for micro, indices in enumerate(micro_batches):
                rows, pairs = _batch_inputs(
                    comparisons, indices, pad_id, config.rm.shared_prompt, dtype, use_soft
                )
                rows = rows.to(acc.device)
                pairs = {k: v.to(acc.device) for k, v in pairs.items()}
                with sync_context(acc, model, micro, len(micro_batches)):
                    rewards = model(**rows.model_inputs())  # (N, K)
                    loss, chosen, rejected = comparison_loss(
                        rewards,
                        pairs,
                        use_margin=config.rm.use_margin,
                        center_coef=config.rm.center_coef,
                    )
                    # Sum over the global batch / G; DDP averages over processes, hence × W.
                    acc.backward(loss * acc.num_processes / plan.global_batch)
                local_loss += float(loss.detach())
                local_correct += float(((chosen > rejected).float() * pairs["weight"]).sum())
                local_correct += float(((chosen == rejected).float() * pairs["weight"]).sum()) / 2
            loss_value = global_sum(acc, local_loss) / plan.global_batch
            accuracy = global_sum(acc, local_correct) / plan.global_batch
            check_finite(loss_value, step + 1, run)
            grad_norm, lr = optimizer_step(acc, model, optimizer, scheduler, config.max_grad_norm)
            totals["loss_sum"] += loss_value
            totals["accuracy_sum"] += accuracy
            totals["loss_steps"] += 1
            done = step + 1
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            run.advance(f"loss {loss_value:.4f} acc {accuracy:.3f}  {tokens_per_s:,.0f} tok/s")
            if done % config.logging_steps == 0 or done == plan.total_steps:
                run.log(
                    done,
                    {
                        "loss": loss_value,
                        "accuracy": accuracy,
                        "grad_norm": grad_norm,
                        "lr": lr,
                        "epoch": done / plan.steps_per_epoch,  # epochs completed
                        "tokens_per_s": tokens_per_s,
                    },
                )
                window_tokens, window_start = 0, time.perf_counter()
            if (
                eval_comparisons
                and config.eval_steps
                and done % config.eval_steps == 0
                and done < plan.total_steps
            ):
                run.log(done, evaluate(run, model, eval_comparisons, config, pad_id))
            if (config.save_steps and done % config.save_steps == 0) or done == plan.total_steps:
                totals["seconds"] += time.perf_counter() - loop_start
                loop_start = time.perf_counter()
                save_checkpoint(
                    acc, run.checkpoints, done, {"totals": totals},
                    keep=config.save_total_limit, data=run.data_record,
                )  # fmt: skip
                loop_start = time.perf_counter()

    steps = max(totals["loss_steps"], 1)
    summary: dict = {
        "train_loss": totals["loss_sum"] / steps,
        "train_accuracy": totals["accuracy_sum"] / steps,
        "steps": plan.total_steps,
        "train_tokens": totals["tokens"],
        "train_seconds": totals["seconds"],
    }
    unwrapped: RewardModel = acc.unwrap_model(model)
    if config.rm.normalize:
        samples, where = normalization_samples
        gains, biases, heads = fit_normalization(run, model, samples, config, pad_id)
        unwrapped.set_normalization(gains, biases, where)
        summary["normalization"] = {
            "gain": gains,
            "bias": biases,
            "samples": len(samples),
            "on": where,
        }
        if config.rm.ensemble > 1:
            # The heads under the normalisation just fitted on these same samples.
            summary["normalize_disagreement"] = normalized_disagreement(heads)
    else:  # saved as it is: gain 1, bias 0 per head
        heads_n = config.rm.ensemble
        summary["normalization"] = {
            "gain": [1.0] * heads_n,
            "bias": [0.0] * heads_n,
            "samples": 0,
            "on": None,
        }
    if eval_comparisons:
        metrics = evaluate(run, model, eval_comparisons, config, pad_id)
        summary.update(metrics)
        run.log(plan.total_steps, metrics)
    summary["ensemble"] = config.rm.ensemble
    summary["data"] = stats.as_dict()
    state_dict = acc.get_state_dict(model)
    if acc.is_main_process:
        prefix = "seqcls."
        plain = None
        if not hasattr(unwrapped.seqcls, "merge_and_unload"):
            plain = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        save_reward_model(unwrapped, tokenizer, run.out / "model", state_dict=plain)
    acc.wait_for_everyone()
    run.summary(summary)
    message = f"[green]rm done[/]: train_loss {summary['train_loss']:.4f}"
    if eval_comparisons:
        if "eval_accuracy" in summary:  # absent when every eval pair is undecided (p = 1/2)
            message += f", eval_accuracy {summary['eval_accuracy']:.3f}"
        message += f", eval_loss {summary['eval_loss']:.4f}"
    run.print(message + f" → {run.out / 'model'}")
    return summary
