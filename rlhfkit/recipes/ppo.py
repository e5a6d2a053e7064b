"""PPO against a reward with a KL penalty to the reference: the RLHF stage (Ziegler et al. 2019,
Stiennon et al. 2020, InstructGPT).

Objective: maximise ``E[r(x, y)] - beta KL(pi(.|x) || pi_ref(.|x))`` over prompts x of
`train_data` and responses y sampled from the policy. One step of the loop:

1. **rollout**: `ppo.rollout_batch_size` prompts (x `ppo.samples_per_prompt`), left-padded, are
   sampled with a KV cache until EOS or `max_new_tokens` (`rollout/fast_sampling.py`);
2. **forward**: the policy's log-probs (at the sampling temperature), entropies and values, and
   the reference's log-probs, of every response token, recomputed in forward passes (the same
   function and batch shapes the PPO epochs use, so at the first step the ratio is exactly 1
   and, with the policy equal to the reference, the KL is exactly 0);
3. **score**: `ppo.reward_model` scores the decoded responses (an ensemble: its heads' mean, less
   `ppo.uncertainty_coef` times their std); optional normalisation (gain and bias fitted once on
   the initial policy's samples), clipping, and the EOS trick (a response that never ends gets
   `ppo.missing_eos_penalty` as its score);
4. **rewards**: ``-beta KL_t`` on every response token (`ppo.kl_estimator`) plus the score on the
   last one; optionally whitened (scale only);
5. **advantages**: GAE (gamma, lambda) with the critic, whitened; or critic-free RLOO / GRPO from
   K samples per prompt (registered in `ADVANTAGE_ESTIMATORS`);
6. **PPO epochs**: `ppo.ppo_epochs` passes over `ppo.num_minibatches` shuffled minibatches:
   clipped surrogate + `vf_coef` x clipped value loss (+ `ptx_coef` x SFT NLL: PPO-ptx), one
   optimizer over policy and critic, gradient clipping;
7. **KL coefficient**: fixed, or adaptive towards `ppo.target_kl` (Ziegler et al.).

Departures, each deliberate: GRPO's KL is a k3 loss term (as in DeepSeekMath) rather than a
reward term, and its loss, like every estimator's here, is the mean over the minibatch's
response tokens rather than DeepSeekMath's mean over sequences of per-sequence token means
(Dr. GRPO's and DAPO's choice: a long response counts by its tokens, with no 1/|o| that favours
long wrong answers); RLOO puts the sequence KL into the reward before the leave-one-out baseline
(as Ahmadian et al.).

Data parallelism (`accelerate launch`, DDP): each process samples its contiguous share of a
step's rows (per-row sampling noise, so the responses are those of one process), scores them,
and the rows are gathered so that every process holds the step's whole batch; the no-gradient
forwards (old log-probs, values, reference) and the advantages are then computed on it by every
process alike, and each process trains on its part of every minibatch, its loss scaled so that
DDP's gradient average is the minibatch's token mean. Generation and the PPO epochs are split;
the forwards and the evaluation are repeated on every process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhfkit.config import SamplingOptions, TrainConfig, check_limits, group, option
from rlhfkit.data.collate import pad_left
from rlhfkit.data.datasets import load_prompts, load_sft
from rlhfkit.data.tokenize import encode_prompts, render_prompt
from rlhfkit.errors import ConfigError, relabel_error
from rlhfkit.losses import (
    AdaptiveKLController,
    FixedKLController,
    available_kl_estimators,
    explained_variance,
    gae_advantages,
    grpo_advantages,
    kl_penalty,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)
from rlhfkit.models.head_scorer import HeadScorer, is_ensemble
from rlhfkit.models.loading import check_sampling_context, load_causal_lm, load_tokenizer
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.models.reward_ensemble import SEPARATOR as ENSEMBLE_SEPARATOR
from rlhfkit.models.reward_fn import (
    HttpScorer,
    load_reward_function,
    score_samples_with_disagreement,
)
from rlhfkit.models.value_model import (
    ActorCritic,
    fold_normalization,
    is_reward_model_dir,
    load_value_model,
    new_value_head,
)
from rlhfkit.recipes.sft import export_policy, lora_settings
from rlhfkit.rollout.fast_sampling import RowNoise, positions_from_mask, sample_with_logprobs
from rlhfkit.rollout.sampling import end_ids, only_given_settings
from rlhfkit.training.batches import BatchPlan
from rlhfkit.training.checkpoint import LOGS_FIELD, save_checkpoint
from rlhfkit.training.optim import build_optimizer, build_scheduler, fused_adamw_supported
from rlhfkit.training.run import Run, check_finite, cut_log
from rlhfkit.training.setup import checked_plan, resume_state
from rlhfkit.training.steps import global_sum, optimizer_step


@dataclass
class PPOOptions:
    reward_model: str = option(
        "",
        "reward: an `rlhfkit rm` model directory (several joined by ',' = an ensemble of them), "
        "an http(s) scorer URL, or python:mod:fn",
    )
    uncertainty_coef: float = option(
        0.0,
        "with a reward-model ensemble (rm.ensemble=K >= 2, or several directories): score = "
        "mean - this x std over its heads, paying less where they disagree (Coste et al. 2024); "
        "0 = the heads' mean",
        minimum=0,
    )
    value_model: str = option(
        "",
        "critic init: a directory; empty = the reward model dir (an ensemble's first) if it is "
        "one, else the policy",
    )
    value_head_on_policy: bool = option(
        False, "critic = a value head on the policy's hidden states (shared backbone)"
    )
    kl_coef: float = option(
        0.05, "KL penalty coefficient beta (initial value if adaptive)", minimum=0
    )
    kl_estimator: str = option("k1", "per-token KL estimator in the reward: k1, k2, k3")
    target_kl: float = option(
        0.0, "adaptive KL: target sequence KL (nats); 0 = fixed coefficient", minimum=0
    )
    kl_horizon: float = option(
        10000.0, "adaptive KL: horizon in samples (Ziegler et al.)", exclusive_minimum=0
    )
    missing_eos_penalty: float | None = option(
        None, "EOS trick: score given to responses without EOS; null (or none, empty) = off"
    )
    reward_clip: float = option(0.0, "clip scores to [-c, c]; 0 = off", minimum=0)
    reward_norm_samples: int = option(
        0,
        "normalise scores to mean 0, std 1 on this many initial-policy samples; 0 = off",
        minimum=0,
    )
    whiten_rewards: bool = option(False, "whiten the per-token rewards (scale only) before GAE")
    whiten_advantages: bool = option(
        True,
        "whiten advantages over the batch: gae over response tokens, rloo over sequences "
        "(grpo's are normalised per group already)",
    )
    gamma: float = option(1.0, "GAE discount", minimum=0, maximum=1)
    lam: float = option(0.95, "GAE lambda", minimum=0, maximum=1)
    clip_range: float = option(0.2, "PPO ratio clipping epsilon", exclusive_minimum=0)
    clip_range_value: float = option(
        0.2, "value clipping around the rollout values", exclusive_minimum=0
    )
    vf_coef: float = option(0.1, "weight of the value loss", minimum=0)
    ppo_epochs: int = option(4, "passes over each rollout batch", minimum=1)
    num_minibatches: int = option(1, "minibatches (optimizer steps) per PPO epoch", minimum=1)
    rollout_batch_size: int = option(
        8, "prompts per PPO step (split over processes: must divide by their count)", minimum=1
    )
    advantage_estimator: str = option("gae", "gae (learned critic), rloo or grpo (critic-free)")
    samples_per_prompt: int = option(
        1, "responses per prompt (K >= 2 for rloo and grpo)", minimum=1
    )
    ptx_coef: float = option(
        0.0, "PPO-ptx: weight of the SFT NLL on ptx_data (InstructGPT); 0 = off", minimum=0
    )
    ptx_data: str = option("", "PPO-ptx: SFT data ({prompt, completion} / {text} / {messages})")
    gold_reward: str = option("", "reward spec used only for reporting gold_reward_*")
    sample_every: int = option(
        10,
        "write the step's samples to OUT/samples.jsonl at step 1 and every N steps; 0 = never",
        minimum=0,
    )
    sampler: str = option("fast", "rollout sampler: fast (lean KV-cache loop) or hf (generate)")


@dataclass
class PPOConfig(TrainConfig, SamplingOptions):
    output_dir: str = option("runs/ppo", "where config.yaml, metrics, the model and checkpoints go")
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    lr_scheduler: str = option("constant", "learning-rate schedule: constant, linear, cosine")
    temperature: float = option(
        1.0,
        "sampling temperature of the rollouts (> 0: the log-probs PPO trains on are those of "
        "the distribution sampled from)",
        exclusive_minimum=0,
    )
    logging_steps: int = option(1, "log metrics every N PPO steps")
    max_steps: int = option(
        -1,
        "PPO iterations (each: one rollout batch, then ppo.ppo_epochs x ppo.num_minibatches "
        "optimizer steps); -1 = derive from epochs",
    )
    epochs: float = option(
        1.0, "passes over the prompts of train_data (fractions allowed) when max_steps=-1"
    )
    batch_size: int = option(
        64,
        "rows per pass of the evaluation and of the reward normalisation's sampling, and SFT "
        "rows of ptx_data per optimizer step (PPO-ptx)",
        minimum=1,
    )
    max_length: int = option(
        512,
        "PPO-ptx only: maximum tokens of an SFT example of ppo.ptx_data (longer: truncated); "
        "responses are max_new_tokens long",
        minimum=1,
    )
    # Inherited from TrainConfig but not used by ppo: a non-default value is refused
    # (`_check_unused`), since PPO's own keys decide these things.
    grad_accum: int = option(1, "not used by ppo (must stay 1): see ppo.num_minibatches")
    eval_steps: int = option(
        0, "not used by ppo (must stay 0): eval_data is evaluated before and after training"
    )
    eval_batch_size: int = option(
        16, "not used by ppo (must stay 16): evaluation runs batch_size rows per pass"
    )
    ppo: PPOOptions = group(PPOOptions, "PPO options")


# ---------------------------------------------------------------------------------------------
# Rollout data
# ---------------------------------------------------------------------------------------------


@dataclass
class RolloutBatch:
    """One step's sampled data. (B, T) tensors cover prompt + response (T = P + N); (B, N) ones
    cover the response part only."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    target_mask: torch.Tensor  # (B, T) 1 on response tokens
    prompt_length: int  # P
    mask: torch.Tensor  # (B, N) 1 on response tokens
    has_eos: torch.Tensor  # (B,)
    prompts: list[str]  # rendered text (conversations through the chat template)
    responses: list[str]  # decoded, without EOS
    prompt_items: list  # the prompts as loaded: text or conversations

    def score(self, reward_fn) -> list[float]:
        """The reward of every row (`score_samples`: an rlhfkit reward model sees the prompt as
        it trained on it and a response that ran out of tokens without an EOS)."""
        return self.score_and_disagreement(reward_fn)[0]

    def score_and_disagreement(self, reward_fn) -> tuple[list[float], list[float] | None]:
        """`score`, plus each row's disagreement (the std of its K head scores) when
        `reward_fn` is a reward-model ensemble, from the same scoring pass; None otherwise."""
        return score_samples_with_disagreement(
            reward_fn,
            self.prompt_items,
            self.responses,
            rendered=self.prompts,
            ended=self.has_eos.tolist(),
        )

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "position_ids": self.position_ids[index],
            "target_mask": self.target_mask[index],
        }


def rollout(
    lm: torch.nn.Module,
    tokenizer,
    prompt_ids: list[list[int]],
    prompts: list,
    config: PPOConfig,
    device: torch.device,
    row_noise: RowNoise | None = None,
) -> RolloutBatch:
    """Sample one response per row of `prompt_ids` and lay prompt + response out as model input.

    `prompts` are the rows' prompts as loaded (text or conversations; `prompt_ids` encode them).

    `row_noise` (fast sampler only): the rows' sampling noise as rows of a larger global batch
    (`RowNoise`), so that a process sampling its share draws what one process would."""
    pad_id, eos_ids = tokenizer.pad_token_id, end_ids(lm, tokenizer)
    query = pad_left(prompt_ids, pad_id).to(device)  # (B, P)
    query_mask = pad_left([[1] * len(ids) for ids in prompt_ids], 0).to(device)  # (B, P)
    was_training = lm.training
    lm.eval()
    if config.ppo.sampler == "hf":
        response_ids, mask, has_eos = _hf_generate(lm, query, query_mask, config, pad_id, eos_ids)
    else:
        sampled = sample_with_logprobs(
            lm,
            query,
            query_mask,
            max_new_tokens=config.max_new_tokens,
            eos_ids=eos_ids,
            pad_id=pad_id,
            temperature=config.temperature,
            top_p=config.top_p,
            row_noise=row_noise,
        )
        response_ids, mask, has_eos = sampled.response_ids, sampled.response_mask, sampled.has_eos
    lm.train(was_training)
    responses = []
    for row, row_mask in zip(response_ids.tolist(), mask.tolist(), strict=True):
        ids = [t for t, keep in zip(row, row_mask, strict=True) if keep and t not in eos_ids]
        responses.append(tokenizer.decode(ids, skip_special_tokens=True))
    return _layout(query, query_mask, response_ids, mask, has_eos, prompts, responses, tokenizer)


def _layout(
    query, query_mask, response_ids, mask, has_eos, prompts, responses, tokenizer
) -> RolloutBatch:
    """A `RolloutBatch` from left-padded prompts (B, P) and right-padded responses (B, N)."""
    input_ids = torch.cat([query, response_ids], dim=1)  # (B, T)
    attention_mask = torch.cat([query_mask, mask], dim=1)  # (B, T)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        target_mask=torch.cat([torch.zeros_like(query_mask), mask], dim=1),
        prompt_length=query.shape[1],
        mask=mask,
        has_eos=has_eos,
        prompts=[render_prompt(tokenizer, p) for p in prompts],
        responses=responses,
        prompt_items=list(prompts),
    )


def gather_rollout(
    acc, batch: RolloutBatch, scores: torch.Tensor, tokenizer
) -> tuple[RolloutBatch, torch.Tensor]:
    """Every process's rows (and their scores), in rank order, on every process.

    Prompts are left-padded and responses right-padded to the longest across processes, which
    is the layout one process sampling the whole batch gives them.
    """
    from accelerate.utils import gather_object

    pad_id = tokenizer.pad_token_id
    width = batch.prompt_length
    pieces = {
        "query": acc.pad_across_processes(
            batch.input_ids[:, :width], dim=1, pad_index=pad_id, pad_first=True
        ),
        "query_mask": acc.pad_across_processes(
            batch.attention_mask[:, :width], dim=1, pad_index=0, pad_first=True
        ),
        "response_ids": acc.pad_across_processes(
            batch.input_ids[:, width:], dim=1, pad_index=pad_id
        ),
        "mask": acc.pad_across_processes(batch.mask, dim=1, pad_index=0),
        "has_eos": batch.has_eos.long(),  # gloo gathers no bool tensors
        "scores": scores,
    }
    full = {name: acc.gather(tensor.contiguous()) for name, tensor in pieces.items()}
    gathered = _layout(
        full["query"],
        full["query_mask"],
        full["response_ids"],
        full["mask"],
        full["has_eos"].bool(),
        gather_object(batch.prompt_items),
        gather_object(batch.responses),
        tokenizer,
    )
    return gathered, full["scores"]


@torch.no_grad()
def _hf_generate(lm, query, query_mask, config: PPOConfig, pad_id: int, eos_ids: list[int]):
    """transformers' `generate` as the rollout sampler (reference path; slower for small models)."""
    kwargs = {"do_sample": False}
    if config.temperature > 0:
        kwargs = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
    with only_given_settings(lm):
        generated = lm.generate(
            input_ids=query,
            attention_mask=query_mask,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            top_k=0,
            use_cache=True,
            **kwargs,
        )[:, query.shape[1] :]  # (B, N)
    is_end = torch.isin(generated, torch.tensor(eos_ids, device=generated.device)).long()
    ended_before = is_end.cumsum(dim=1) - is_end
    mask = (ended_before == 0).long()  # (B, N) tokens up to and including the first end token
    generated = torch.where(mask.bool(), generated, torch.full_like(generated, pad_id))
    has_eos = (is_end.bool() & mask.bool()).any(dim=1)
    return generated, mask, has_eos


@torch.no_grad()
def forward_in_chunks(
    fn: Callable[[dict], dict[str, torch.Tensor]], batch: RolloutBatch, chunk_size: int
) -> dict[str, torch.Tensor]:
    """Run `fn` over the batch's rows `chunk_size` at a time; concatenate response-part outputs."""
    pieces: dict[str, list[torch.Tensor]] = {}
    rows = batch.input_ids.shape[0]
    for start in range(0, rows, chunk_size):
        index = torch.arange(start, min(start + chunk_size, rows), device=batch.input_ids.device)
        for key, value in fn(batch.rows(index)).items():
            pieces.setdefault(key, []).append(value[:, batch.prompt_length :])
    return {key: torch.cat(values) for key, values in pieces.items()}


# ---------------------------------------------------------------------------------------------
# Advantage estimators (registered by name)
# ---------------------------------------------------------------------------------------------


@dataclass
class AdvantageInputs:
    scores: torch.Tensor  # (B,) shaped sequence scores
    kl: torch.Tensor  # (B, N) per-token KL estimate
    values: torch.Tensor | None  # (B, N) critic values at rollout time
    mask: torch.Tensor  # (B, N)
    kl_coef: float


def _gae(inputs: AdvantageInputs, options: PPOOptions):
    """(advantages, returns, shaped rewards), each (B, N). GAE runs on the shaped rewards
    score - β KL, scaled to unit variance first with `whiten_rewards`; the rewards returned (for
    the `reward_mean` metric) are the shaped ones, before that scaling."""
    shaped = kl_shaped_rewards(inputs.scores, inputs.kl, inputs.mask, kl_coef=inputs.kl_coef)
    rewards = (
        masked_whiten(shaped, inputs.mask, shift_mean=False) if options.whiten_rewards else shaped
    )
    advantages, returns = gae_advantages(
        rewards, inputs.values, inputs.mask, gamma=options.gamma, lam=options.lam
    )  # returns from the advantages before whitening
    if options.whiten_advantages:
        advantages = masked_whiten(advantages, inputs.mask)  # over every response token
    return advantages, returns, shaped


def _sequence_advantages(per_sequence: torch.Tensor, inputs: AdvantageInputs):
    """Broadcast a (B,) advantage over each response's tokens."""
    advantages = per_sequence[:, None] * inputs.mask  # (B, N)
    rewards = kl_shaped_rewards(inputs.scores, inputs.kl, inputs.mask, kl_coef=inputs.kl_coef)
    return advantages, None, rewards


def _rloo(inputs: AdvantageInputs, options: PPOOptions):
    kl_sum = (inputs.kl * inputs.mask).sum(dim=1)  # (B,)
    sequence_rewards = inputs.scores - inputs.kl_coef * kl_sum  # (B,)
    per_sequence = rloo_advantages(sequence_rewards, options.samples_per_prompt)  # (B,)
    if options.whiten_advantages:
        # Over sequences, as TRL's RLOO normalises: a token-weighted mean would let long
        # responses decide the shift and could flip a short response's sign.
        per_sequence = masked_whiten(per_sequence, torch.ones_like(per_sequence))  # (B,)
    return _sequence_advantages(per_sequence, inputs)


def _grpo(inputs: AdvantageInputs, options: PPOOptions):
    return _sequence_advantages(grpo_advantages(inputs.scores, options.samples_per_prompt), inputs)


ADVANTAGE_ESTIMATORS = {"gae": _gae, "rloo": _rloo, "grpo": _grpo}


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def shape_scores(
    raw: torch.Tensor, has_eos: torch.Tensor, options: PPOOptions, norm: tuple[float, float]
) -> torch.Tensor:
    """Normalise (gain, bias), clip, then give responses without EOS the fixed penalty score."""
    gain, bias = norm
    scores = raw * gain + bias  # (B,)
    if options.reward_clip > 0:
        scores = scores.clamp(-options.reward_clip, options.reward_clip)
    if options.missing_eos_penalty is not None:
        scores = torch.where(has_eos, scores, torch.full_like(scores, options.missing_eos_penalty))
    return scores


#: TrainConfig keys ppo does not use, and what decides that instead (`_check_unused`).
UNUSED_KEYS = {
    "grad_accum": "each PPO epoch takes ppo.num_minibatches optimizer steps over the rollout "
    "batch; set ppo.num_minibatches (or ppo.rollout_batch_size) instead",
    "eval_steps": "eval_data is evaluated once before and once after training",
    "eval_batch_size": "the evaluation runs batch_size rows per pass; set batch_size instead",
    "compile": "sampling grows the sequence by one token per step, and compiled blocks would "
    "recompile for each new length; ppo runs its models eagerly",
}


def _check_unused(config: PPOConfig) -> None:
    """Refuse a non-default value of a key `ppo --help` lists but ppo does not use."""
    defaults = {f.name: f.default for f in dataclasses.fields(PPOConfig)}
    for key, instead in UNUSED_KEYS.items():
        value = getattr(config, key)
        if value != defaults[key]:
            shown = str(value).lower() if isinstance(value, bool) else value  # as typed
            raise ConfigError(f"{key}: not used by ppo (got {shown}); {instead}")


def _check_ranges(config: PPOConfig) -> None:
    """One-line errors for keys out of range (checked before any model loads): the declared
    limits (`check_limits`, also for a config built in Python), and the registered estimators."""
    options = config.ppo
    check_limits(config)
    if options.kl_estimator not in available_kl_estimators():
        raise ConfigError(
            f"ppo.kl_estimator: unknown {options.kl_estimator!r}; "
            f"choose {', '.join(available_kl_estimators())}"
        )


def check_config(config: PPOConfig) -> None:
    """Every check that needs no model or data file; raises a one-line `ConfigError`."""
    options = config.ppo
    _check_unused(config)
    _check_ranges(config)
    lora_settings(config)  # refuses lora.dropout
    if not config.train_data:
        raise ConfigError("train_data: give the prompt file ({prompt} records)")
    if not options.reward_model:
        raise ConfigError("ppo.reward_model: give a reward (directory, URL or python:mod:fn)")
    if options.advantage_estimator not in ADVANTAGE_ESTIMATORS:
        raise ConfigError(
            f"ppo.advantage_estimator: unknown {options.advantage_estimator!r}; "
            f"choose {', '.join(ADVANTAGE_ESTIMATORS)}"
        )
    if options.advantage_estimator != "gae" and options.samples_per_prompt < 2:
        raise ConfigError(
            f"ppo.samples_per_prompt: {options.advantage_estimator} needs K >= 2 samples per prompt"
        )
    if options.sampler not in ("fast", "hf"):
        raise ConfigError(f"ppo.sampler: expected fast or hf, got {options.sampler!r}")
    rows = options.rollout_batch_size * options.samples_per_prompt
    if options.num_minibatches < 1 or rows % options.num_minibatches:
        raise ConfigError(
            f"ppo.num_minibatches: {options.num_minibatches} must divide the {rows} rows per step"
        )
    if options.ptx_coef > 0 and not options.ptx_data:
        raise ConfigError("ppo.ptx_data: ptx_coef > 0 needs SFT data to mix in")
    if not options.ptx_data and config.max_length != PPOConfig.max_length:
        raise ConfigError(
            f"max_length: not used without ppo.ptx_data (got {config.max_length}); it cuts "
            "PPO-ptx's SFT examples, and responses are max_new_tokens long"
        )
    if options.ptx_data and options.ptx_coef == 0:
        raise ConfigError(
            "ppo.ptx_data: given, but ppo.ptx_coef is 0 so it would not be used; set "
            "ppo.ptx_coef > 0 (PPO-ptx) or leave ptx_data empty"
        )
    if options.advantage_estimator != "gae":
        defaults = PPOOptions()
        for key in ("value_model", "value_head_on_policy", "gamma", "lam", "whiten_rewards"):
            if getattr(options, key) != getattr(defaults, key):
                raise ConfigError(
                    f"ppo.{key}: not used by ppo.advantage_estimator="
                    f"{options.advantage_estimator}, which has no critic (got "
                    f"{getattr(options, key)!r}); leave it at its default or use gae"
                )
    if options.target_kl > 0 and options.kl_coef <= 0:
        raise ConfigError(
            f"ppo.kl_coef: the adaptive controller (ppo.target_kl={options.target_kl}) scales "
            f"the coefficient multiplicatively, so it must start above 0, got {options.kl_coef} "
            "(ppo.target_kl=0 keeps it fixed)"
        )


def _validate_processes(options: PPOOptions, processes: int) -> None:
    """Data parallelism splits every step's prompts and every minibatch evenly over processes."""
    if processes == 1:
        return
    minibatch = options.rollout_batch_size * options.samples_per_prompt // options.num_minibatches
    if options.rollout_batch_size % processes or minibatch % processes:
        raise ConfigError(
            f"ppo.rollout_batch_size: with {processes} processes the prompts of a step "
            f"({options.rollout_batch_size}) and the rows of a minibatch ({minibatch}) must "
            f"both divide by {processes}"
        )


def _load_reward(spec: str, key: str, **kwargs):
    """`load_reward_function(spec)`, its errors naming `key` (a reward-model directory's
    loader speaks of `model`, the spec parser of `reward_model`)."""
    try:
        return load_reward_function(spec, **kwargs)
    except ConfigError as err:
        raise relabel_error(err, key, ("reward_model", "model")) from None


def _warn_if_scorer_cuts(run, reward_fn, prompt_ids: list[list[int]], max_new_tokens: int) -> None:
    """A reward model reads at most its own `max_length` tokens of prompt + response (stored
    when it was trained) and cuts the response's end beyond that: it would score a prefix,
    without the EOS, yet the score lands on the policy's last token. Say so before training."""
    limit = getattr(reward_fn, "max_length", None)
    longest = max((len(ids) for ids in prompt_ids), default=0) + max_new_tokens
    if limit is not None and limit < longest:
        run.print(
            f"[yellow]ppo.reward_model reads at most {limit} tokens of prompt + response (its "
            f"max_length), and a rollout here reaches {longest} (the longest prompt + "
            f"max_new_tokens={max_new_tokens}): longer responses are scored on their start "
            "only. Train the reward model with a larger max_length, or sample fewer tokens[/]"
        )


def _check_critic_tokenizer(source: str, tokenizer, policy: str, given: bool) -> None:
    """The critic reads the policy's token ids: one started from a model with another
    vocabulary (a reward model may have its own tokenizer) would read other tokens, or fail."""
    if source == policy:
        return
    try:
        own = load_tokenizer(source)
    except (ConfigError, OSError):
        return  # no tokenizer of its own: it can only share the policy's
    if own.get_vocab() != tokenizer.get_vocab():
        key = "ppo.value_model" if given else "ppo.reward_model"
        raise ConfigError(
            f"{key}: the critic would start from {source}, whose tokenizer differs from the "
            f"policy's ({policy}), yet it reads the policy's token ids; give "
            "ppo.value_model=DIR with the policy's tokenizer (the policy itself, say) or "
            "ppo.value_head_on_policy=true"
        )


def _default_critic(reward_spec: str, policy: str) -> str:
    """Where the critic starts without `ppo.value_model`: the reward model, or an ensemble's
    first member, when it is a reward-model directory; else the policy."""
    first = reward_spec.split(ENSEMBLE_SEPARATOR)[0].strip()
    return first if is_reward_model_dir(first) else policy


def _penalise_uncertainty(reward_fn, options: PPOOptions):
    """The reward-model ensemble scoring mean - `uncertainty_coef` x std over its heads."""
    heads = reward_fn.num_heads if isinstance(reward_fn, HeadScorer) else 0
    if not is_ensemble(reward_fn):
        what = f"a reward model with {heads} head" if heads else "not an rlhfkit reward model"
        raise ConfigError(
            f"ppo.uncertainty_coef: {options.uncertainty_coef} needs ppo.reward_model to be a "
            f"reward-model ensemble (rlhfkit rm rm.ensemble=K, K >= 2, or several reward-model "
            f"directories joined by ','); {options.reward_model!r} is {what}"
        )
    return reward_fn.with_uncertainty_penalty(options.uncertainty_coef)


def _kl_controller(options: PPOOptions):
    if options.target_kl > 0:
        return AdaptiveKLController(options.kl_coef, options.target_kl, options.kl_horizon)
    return FixedKLController(options.kl_coef)


def _step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt) % (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train(config: PPOConfig) -> dict:
    check_config(config)
    options = config.ppo
    run = Run(config, "ppo")
    acc = run.accelerator
    rank, world = acc.process_index, acc.num_processes
    _validate_processes(options, world)
    if options.missing_eos_penalty is not None and options.missing_eos_penalty > 0:
        run.print(
            f"[yellow]ppo.missing_eos_penalty={options.missing_eos_penalty} is the score a "
            "response without EOS gets in place of its reward (Huang et al. 2024 give -1), not "
            "an amount subtracted from it as TRL's key of the same name is: a positive score "
            "rewards responses that never end unless your scores sit above it[/]"
        )
    device = acc.device
    tokenizer = load_tokenizer(config.model)

    # --- data -----------------------------------------------------------------------------
    examples = load_prompts(config.train_data)
    prompt_items = [e.prompt for e in examples]  # text or conversations
    prompt_ids, cut = encode_prompts(tokenizer, prompt_items, config.max_prompt_length)
    eval_ids, eval_items, eval_cut = [], [], 0
    if config.eval_data:
        eval_items = [e.prompt for e in load_prompts(config.eval_data)]
        eval_ids, eval_cut = encode_prompts(tokenizer, eval_items, config.max_prompt_length)
    ptx_rows = []
    if options.ptx_coef > 0:
        ptx_examples, _ = load_sft(
            options.ptx_data,
            tokenizer,
            max_length=config.max_length,
            max_prompt_length=config.max_prompt_length,
        )
        ptx_rows = [e.prompt_ids + e.completion_ids for e in ptx_examples]
        ptx_masks = [[0] * len(e.prompt_ids) + [1] * len(e.completion_ids) for e in ptx_examples]
    run.print(f"[bold]prompts[/] {config.train_data}: {len(prompt_ids)}")
    for name, count in (("train_data", cut), ("eval_data", eval_cut)):
        if count:
            run.print(
                f"[yellow]{name}: {count} prompts longer than max_prompt_length="
                f"{config.max_prompt_length} tokens lose their start[/]"
            )
    # A step takes `rollout_batch_size` prompts of the shuffled order (all processes together).
    plan = checked_plan(
        run,
        BatchPlan(
            len(prompt_ids),
            options.rollout_batch_size,
            1,
            1,
            config.seed,
            config.max_steps,
            config.epochs,
            batch_keys="ppo.rollout_batch_size",
        ),
        unit="prompts",
    )

    # --- models ---------------------------------------------------------------------------
    check_sampling_context(config.model, [*prompt_ids, *eval_ids], config.max_new_tokens)
    reward_fn = _load_reward(options.reward_model, "ppo.reward_model", dtype=config.dtype)
    if isinstance(reward_fn, HttpScorer):
        reward_fn.check()  # before the fresh run's clean-up below, as a directory's load is
    _warn_if_scorer_cuts(run, reward_fn, prompt_ids, config.max_new_tokens)
    if options.uncertainty_coef > 0:
        reward_fn = _penalise_uncertainty(reward_fn, options)
    gold_fn = _load_reward(options.gold_reward, "ppo.gold_reward") if options.gold_reward else None
    lora = lora_settings(config)
    lm = load_causal_lm(
        config.model,
        dtype=config.dtype,
        gradient_checkpointing=config.gradient_checkpointing,
        lora=lora,
        attn_implementation=config.attn_implementation or None,
    )
    critic, value_head = None, None
    critic_scores = False  # the critic starts as a reward model's (normalised) score
    if options.advantage_estimator == "gae":
        if options.value_head_on_policy:
            value_head = new_value_head(lm)
        else:
            source = options.value_model or _default_critic(options.reward_model, config.model)
            _check_critic_tokenizer(source, tokenizer, config.model, bool(options.value_model))
            try:
                critic = load_value_model(
                    source,
                    dtype=config.dtype,
                    gradient_checkpointing=config.gradient_checkpointing,
                )
            except ConfigError as err:
                if not options.value_model:
                    raise
                raise relabel_error(err, "ppo.value_model", ("model",)) from None
            critic_scores = is_reward_model_dir(source)
    model = ActorCritic(lm, critic, value_head)
    reference = None
    if lora.r == 0:
        # The policy's attention kernel: another kernel's rounding would make the KL at the
        # first step non-zero.
        reference = TokenLogprobs(
            load_causal_lm(
                config.model,
                dtype=config.dtype,
                trainable=False,
                attn_implementation=config.attn_implementation or None,
            )
        ).to(device)

    # --- optimizer ------------------------------------------------------------------------
    updates_per_step = options.ppo_epochs * options.num_minibatches
    optimizer = build_optimizer(
        model,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=config.adam_betas,
        fused=fused_adamw_supported(acc),
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=plan.total_steps * updates_per_step,
        warmup_ratio=config.warmup_ratio,
        schedule=config.lr_scheduler,
    )
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(scheduler)
    unwrapped = acc.unwrap_model(model)

    def policy_forward(rows: dict, **kwargs) -> dict[str, torch.Tensor]:
        return model(**rows, temperature=config.temperature, **kwargs)

    def reference_forward(rows: dict) -> dict[str, torch.Tensor]:
        if reference is not None:  # not prepared: under the policy's mixed-precision autocast
            with acc.autocast():
                return reference(**rows, temperature=config.temperature)
        with unwrapped.lm.disable_adapter():  # LoRA: the base model is the reference
            return unwrapped(**rows, temperature=config.temperature, with_values=False)

    kl_ctl = _kl_controller(options)
    # "first" / "last": the summary's numbers of the first and the latest step, carried in every
    # checkpoint so that a run resumed at its last step writes the uninterrupted run's summary.
    state = {"norm": [1.0, 0.0], "first": None, "last": None, "ptx_cursor": 0}
    start_step = 0
    saved = resume_state(run, config)  # checks the checkpoint's config record first
    if saved is not None:
        start_step, state = saved["step"], saved["state"]
        kl_ctl.load_state_dict(saved["kl_ctl"])
        _truncate_samples(run, start_step, saved.get(LOGS_FIELD, {}).get("samples.jsonl"))
    else:
        if run.is_main and (run.out / "samples.jsonl").exists():
            (run.out / "samples.jsonl").unlink()
        if options.reward_norm_samples > 0:
            state["norm"] = _fit_reward_norm(
                unwrapped.lm, tokenizer, prompt_ids, prompt_items, reward_fn, config, device
            )
            run.print(
                f"reward normalisation: gain {state['norm'][0]:.4f} bias {state['norm'][1]:.4f}"
            )
            if critic_scores:  # so it predicts the score as normalised here (a resumed run's
                fold_normalization(unwrapped.critic.head, *state["norm"])  # weights have it)

    evaluation = None
    if eval_ids:

        def evaluation(tag: str) -> dict[str, float]:
            return _evaluate(
                unwrapped.lm,
                tokenizer,
                eval_ids,
                eval_items,
                reward_fn,
                gold_fn,
                config,
                device,
                policy_forward,
                reference_forward,
                tag,
            )

        if start_step == 0:
            state["eval_start"] = evaluation("eval_start")
            run.log(0, state["eval_start"])

    # --- steps ----------------------------------------------------------------------------
    k = options.samples_per_prompt
    rows_per_step = options.rollout_batch_size * k
    minibatch_size = rows_per_step // options.num_minibatches
    estimator = ADVANTAGE_ESTIMATORS[options.advantage_estimator]
    with run.progress(plan.total_steps, start_step, "ppo"):
        for step in range(start_step, plan.total_steps):
            done = step + 1
            t0 = time.perf_counter()
            indices = [i for i in plan.global_indices(step) for _ in range(k)]
            # Each process samples its contiguous share of the rows (K samples of a prompt stay
            # together); the noise belongs to the rows, so the responses do not depend on the
            # number of processes.
            share = rows_per_step // world
            mine = indices[rank * share : (rank + 1) * share]
            torch.manual_seed(_step_seed(config.seed, step, 2 * rank))  # ppo.sampler=hf only
            batch = rollout(
                unwrapped.lm,
                tokenizer,
                [prompt_ids[i] for i in mine],
                [prompt_items[i] for i in mine],
                config,
                device,
                RowNoise(_step_seed(config.seed, step), rank * share, rows_per_step),
            )
            t_generate = time.perf_counter() - t0
            scored, disagreement = batch.score_and_disagreement(reward_fn)
            raw_scores = torch.tensor(scored, dtype=torch.float32, device=device)
            if world > 1:
                batch, raw_scores = gather_rollout(acc, batch, raw_scores, tokenizer)

            # Log-probs, entropies and values in the same batch shapes as the PPO minibatches.
            model.eval()
            old = forward_in_chunks(
                lambda rows: policy_forward(rows, with_entropy=True), batch, minibatch_size
            )
            ref_logprobs = forward_in_chunks(reference_forward, batch, minibatch_size)["logprobs"]
            model.train()
            mask = batch.mask  # (B, N)
            scores = shape_scores(raw_scores, batch.has_eos, options, tuple(state["norm"]))
            kl = kl_penalty(old["logprobs"], ref_logprobs, options.kl_estimator) * mask  # (B, N)
            sequence_kl = ((old["logprobs"] - ref_logprobs) * mask).sum(dim=1)  # (B,) k1
            advantages, returns, rewards = estimator(
                AdvantageInputs(scores, kl, old.get("values"), mask, kl_ctl.value), options
            )
            t_score = time.perf_counter() - t0 - t_generate

            # PPO epochs over shuffled minibatches. Every process holds the whole batch and takes
            # its part of each minibatch; its loss is scaled by its share of the minibatch's
            # tokens times the process count, so DDP's gradient average is the token mean over
            # the whole minibatch, as one process computes it.
            generator = torch.Generator().manual_seed(_step_seed(config.seed, step, 1))
            sums: dict[str, float] = {}
            updates = 0
            for _epoch in range(options.ppo_epochs):
                order = torch.randperm(rows_per_step, generator=generator).to(device)
                for start in range(0, rows_per_step, minibatch_size):
                    minibatch = order[start : start + minibatch_size]
                    index = minibatch.chunk(world)[rank]
                    tokens_share = 1.0  # this process's share of the minibatch's tokens
                    if world > 1:
                        tokens_share = float(mask[index].sum() / mask[minibatch].sum())
                    out = policy_forward(batch.rows(index))
                    logprobs = out["logprobs"][:, batch.prompt_length :]  # (b, N)
                    mb_mask = mask[index]
                    loss, info = ppo_policy_loss(
                        logprobs,
                        old["logprobs"][index],
                        advantages[index],
                        mb_mask,
                        clip_range=options.clip_range,
                    )
                    info = {"policy_loss": loss.detach(), **info}
                    if returns is not None:
                        values = out["values"][:, batch.prompt_length :]  # (b, N)
                        value_loss, value_info = ppo_value_loss(
                            values,
                            old["values"][index],
                            returns[index],
                            mb_mask,
                            clip_range_value=options.clip_range_value,
                        )
                        loss = loss + options.vf_coef * value_loss
                        info.update(value_loss=value_loss.detach(), **value_info)
                    if options.advantage_estimator == "grpo" and kl_ctl.value > 0:
                        kl_loss = masked_mean(
                            kl_penalty(logprobs, ref_logprobs[index], "k3"), mb_mask
                        )
                        loss = loss + kl_ctl.value * kl_loss
                        info["kl_loss"] = kl_loss.detach()
                    if world > 1:  # token means above are over this process's rows
                        loss = loss * (tokens_share * world)
                    if ptx_rows:
                        ptx_loss = _ptx_loss(
                            model,
                            ptx_rows,
                            ptx_masks,
                            state,
                            config,
                            tokenizer.pad_token_id,
                            device,
                        )
                        loss = loss + options.ptx_coef * ptx_loss
                        info["ptx_loss"] = ptx_loss.detach()
                    acc.backward(loss)
                    # Every process must stop together: a loss is checked summed over them.
                    local = float(loss.detach())
                    check_finite(global_sum(acc, local) if world > 1 else local, done, run)
                    info["grad_norm"], lr = optimizer_step(
                        acc, model, optimizer, scheduler, config.max_grad_norm
                    )
                    for key, value in info.items():
                        sums[key] = sums.get(key, 0.0) + float(value) * tokens_share
                    updates += 1
            if world > 1:  # token-weighted means over the processes' parts
                sums = {key: global_sum(acc, value) for key, value in sums.items()}
            kl_coef_used = kl_ctl.value
            kl_ctl.update(sequence_kl.mean(), rows_per_step)
            elapsed = time.perf_counter() - t0
            t_update = elapsed - t_generate - t_score  # the PPO epochs

            metrics = {
                "score_mean": float(raw_scores.mean()),
                "score_std": float(raw_scores.std(correction=0)),
                "shaped_score_mean": float(scores.mean()),
                "reward_mean": float((rewards * mask).sum(dim=1).mean()),
                "kl": float(sequence_kl.mean()),
                "kl_coef": kl_coef_used,
                "entropy": float(masked_mean(old["entropy"], mask)),
                **{key: value / updates for key, value in sums.items()},
                "response_length": float(mask.sum(dim=1).float().mean()),
                "no_eos_fraction": float((~batch.has_eos).float().mean()),
                "lr": lr,  # of the step's last update
                "samples_per_s": rows_per_step / elapsed,
                "generation_share": t_generate / elapsed,
                "score_s": t_score,
                "update_s": t_update,
            }
            if disagreement is not None:  # mean over the step's responses, all processes
                metrics["reward_disagreement"] = global_sum(acc, sum(disagreement)) / rows_per_step
            if returns is not None:
                metrics["explained_variance"] = float(
                    explained_variance(old["values"], returns, mask)
                )
            gold_scores = None
            if gold_fn is not None:
                gold_scores = batch.score(gold_fn)
                metrics["gold_reward_mean"] = sum(gold_scores) / len(gold_scores)
            if state["first"] is None:
                state["first"] = _summary_numbers(metrics)
            state["last"] = _summary_numbers(metrics)
            run.advance(
                f"score {metrics['score_mean']:.3f}  kl {metrics['kl']:.3f}  "
                f"{metrics['samples_per_s']:.1f} samples/s"
            )
            if done % config.logging_steps == 0 or done == plan.total_steps:
                run.log(done, metrics)
            if options.sample_every and (done % options.sample_every == 0 or done == 1):
                _write_samples(run, done, batch, raw_scores, sequence_kl, gold_scores)
            if (config.save_steps and done % config.save_steps == 0) or done == plan.total_steps:
                save_checkpoint(
                    acc,
                    run.checkpoints,
                    done,
                    {"state": state, "kl_ctl": kl_ctl.state_dict()},
                    keep=config.save_total_limit,
                    data=run.data_record,
                )

    summary = _summary(state, plan.total_steps)
    summary["num_processes"] = world
    if evaluation is not None:
        end = evaluation("eval_end")
        run.log(plan.total_steps, end)
        summary.update(_eval_summary(state["eval_start"], end))
    export_policy(run, model, tokenizer)
    run.summary(summary)
    run.print(
        f"[green]ppo done[/]: reward {summary['reward_start']:.4f} → {summary['reward_end']:.4f}, "
        f"kl_end {summary['kl_end']:.4f} → {run.out / 'model'}"
    )
    return summary


# ---------------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------------


def _ptx_loss(model, rows, masks, state, config: PPOConfig, pad_id: int, device) -> torch.Tensor:
    """Mean NLL of the next `batch_size` SFT rows (cycled in order); advances the cursor."""
    from rlhfkit.data.collate import pad_right

    count = min(config.batch_size, len(rows))
    picked = [(state["ptx_cursor"] + i) % len(rows) for i in range(count)]
    state["ptx_cursor"] = (state["ptx_cursor"] + count) % len(rows)
    batch = {
        "input_ids": pad_right([rows[i] for i in picked], pad_id).to(device),
        "target_mask": pad_right([masks[i] for i in picked], 0).to(device),
        "attention_mask": pad_right([[1] * len(rows[i]) for i in picked], 0).to(device),
    }
    logprobs = model(**batch, with_values=False)["logprobs"]  # (b, T)
    return -masked_mean(logprobs[:, 1:], batch["target_mask"][:, 1:])


@torch.no_grad()
def _fit_reward_norm(lm, tokenizer, prompt_ids, prompt_items, reward_fn, config, device):
    """Gain and bias that give the initial policy's scores mean 0 and std 1 (Ziegler et al.)."""
    count = config.ppo.reward_norm_samples
    generator = torch.Generator().manual_seed(_step_seed(config.seed, 0, 2))
    picked = torch.randint(len(prompt_ids), (count,), generator=generator).tolist()
    torch.manual_seed(_step_seed(config.seed, 0, 3))
    scores = []
    for start in range(0, count, config.batch_size):
        chunk = picked[start : start + config.batch_size]
        batch = rollout(
            lm,
            tokenizer,
            [prompt_ids[i] for i in chunk],
            [prompt_items[i] for i in chunk],
            config,
            device,
        )
        scores += batch.score(reward_fn)
    values = torch.tensor(scores, dtype=torch.float64)
    std = float(values.std(correction=0))
    gain = 1.0 / std if std > 0 else 1.0
    return [gain, -float(values.mean()) * gain]


@torch.no_grad()
def _evaluate(
    lm,
    tokenizer,
    eval_ids,
    eval_items,
    reward_fn,
    gold_fn,
    config: PPOConfig,
    device,
    policy_forward,
    reference_forward,
    tag: str,
) -> dict[str, float]:
    """Reward, gold reward and KL of one sample per evaluation prompt (fixed seed)."""
    torch.manual_seed(_step_seed(config.seed, 0, 4))
    scores, golds, kls, lengths, no_eos = [], [], [], [], []
    for start in range(0, len(eval_ids), config.batch_size):
        end = start + config.batch_size
        batch = rollout(lm, tokenizer, eval_ids[start:end], eval_items[start:end], config, device)
        logprobs = forward_in_chunks(policy_forward, batch, config.batch_size)["logprobs"]
        ref = forward_in_chunks(reference_forward, batch, config.batch_size)["logprobs"]
        kls += ((logprobs - ref) * batch.mask).sum(dim=1).tolist()
        scores += batch.score(reward_fn)
        if gold_fn is not None:
            golds += batch.score(gold_fn)
        lengths += batch.mask.sum(dim=1).tolist()
        no_eos += (~batch.has_eos).tolist()
    count = len(scores)
    out = {
        f"{tag}_reward": sum(scores) / count,
        f"{tag}_kl": sum(kls) / count,
        f"{tag}_response_length": sum(lengths) / count,
        f"{tag}_no_eos_fraction": sum(no_eos) / count,
    }
    if golds:
        out[f"{tag}_gold_reward"] = sum(golds) / count
    return out


def _summary_numbers(metrics: dict) -> dict:
    """What the summary needs of one step's metrics (kept in the trainer state)."""
    keys = ("score_mean", "kl", "kl_coef", "gold_reward_mean")
    return {key: metrics.get(key) for key in keys}


def _summary(state: dict, steps: int) -> dict:
    """Rollout-batch summary from the first and the last step's numbers in `state`.

    Both come from the trainer state, not from the loop's locals: a run resumed at (or after)
    its last checkpointed step runs no step, and must still write the uninterrupted summary.
    """
    first, last = state["first"], state["last"]
    summary = {
        "reward_start": first["score_mean"],
        "reward_end": last["score_mean"],
        "kl_end": last["kl"],
        "kl_coef_end": last["kl_coef"],
        "steps": steps,
        "reward_source": "rollout batches (first and last step)",
    }
    if first.get("gold_reward_mean") is not None:
        summary["gold_reward_start"] = first["gold_reward_mean"]
        summary["gold_reward_end"] = last["gold_reward_mean"]
    return summary


def _eval_summary(start: dict, end: dict) -> dict:
    """With eval_data, the summary's start/end numbers come from the held-out prompts."""
    out = {
        "reward_start": start["eval_start_reward"],
        "reward_end": end["eval_end_reward"],
        "kl_end": end["eval_end_kl"],
        "reward_source": "eval_data (one sample per prompt, fixed seed)",
    }
    if "eval_start_gold_reward" in start:
        out["gold_reward_start"] = start["eval_start_gold_reward"]
        out["gold_reward_end"] = end["eval_end_gold_reward"]
    return out


def _write_samples(run: Run, step: int, batch: RolloutBatch, scores, sequence_kl, gold) -> None:
    if not run.is_main:
        return
    with (run.out / "samples.jsonl").open("a") as handle:
        for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses, strict=True)):
            row = {
                "step": step,
                "prompt": prompt,
                "response": response,
                "score": float(scores[i]),
                "kl": float(sequence_kl[i]),
                "has_eos": bool(batch.has_eos[i]),
            }
            if gold is not None:
                row["gold_reward"] = float(gold[i])
            handle.write(json.dumps(row) + "\n")


def _truncate_samples(run: Run, after_step: int, size: int | None) -> None:
    """On resume, cut samples.jsonl back to the checkpoint, as metrics.jsonl (`cut_log`)."""
    if run.is_main:
        cut_log(run.out / "samples.jsonl", after_step, size)


__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "PPOConfig",
    "PPOOptions",
    "RolloutBatch",
    "forward_in_chunks",
    "rollout",
    "shape_scores",
    "train",
]
