"""Direct preference optimisation and its family on (prompt, chosen, rejected) pairs.

The loss variants live in `rlhfkit.losses.dpo` (registered functions); this module is the loop:

* **Reference.** `dpo.reference` empty means the starting model. Its log-probs are precomputed in
  one pass before training (`dpo.precompute_ref=true`, the default) and cached in
  `OUT/reference_logps.pt` under a fingerprint of the data and the reference, so a resumed run
  reads them back instead of recomputing. At step 0 of full fine-tuning the policy itself *is*
  the reference, and with LoRA the reference is the policy with its adapters switched off, so
  neither needs a second copy of the model (`rlhfkit.training.reference`). Only a separate
  `dpo.reference` path, or on-the-fly reference log-probs with full fine-tuning, load a copy.
  SimPO is reference-free and uses none.
* **Log-probs.** Both sides of a micro-batch go through the model in one forward. By default
  (`shared_prompt`) a pair is one row ``prompt + chosen + rejected`` whose mask keeps the two
  responses apart, so the prompt is encoded once and every token gets the hidden state of its
  own sequence (`rlhfkit.models.shared_prompt`); otherwise chosen and rejected rows are stacked
  (2B rows). `TokenLogprobs` sends only completion positions through the LM head, in chunks, so
  no (rows x length x vocab) fp32 tensor exists. Pairs are grouped by length (`length_bucketing`)
  so a micro-batch pads little; `padding_free` packs all sequences into one row with restarting
  position ids, for flash-attention's varlen kernels on a GPU.
* **Activation memory.** With `dpo.pairs_per_forward=n` a micro-batch goes through the model n
  pairs at a time, each chunk's backward right after its forward, so only one chunk's
  activations are alive. The gradient is the same sum as in one pass (docs/dpo.md: the memory
  it saves and the speed it costs).
* **Normalisation.** The loss of an optimizer step is the sum of per-pair losses over the global
  batch divided by the global number of pairs, so 1x8 equals 8x1 equals 2 processes x 4.
* **Length-averaged log-probs** go to the variants defined on them: those registered with
  `@register_dpo_loss(..., length_normalised=True)` (`ipo`, `simpo`, and any user variant that
  declares it; `rlhfkit.losses.dpo.is_length_normalised`). The others get summed log-probs.
* **RPO.** `dpo.sft_weight = alpha > 0` adds ``alpha * NLL(chosen) / |chosen|`` per pair (Pang et
  al. 2024, "Iterative Reasoning Preference Optimization").

Metrics (per logged step, and with an `eval_` prefix on evaluation): `loss`, `rewards/chosen`,
`rewards/rejected` (the variant's implicit rewards, ``beta x log-ratio``), `rewards/accuracy`
(chosen reward strictly above rejected), `rewards/margin`, `logps/chosen`, `logps/rejected`
(summed policy log-probs), and `kl`: the mean over chosen and rejected responses of the sequence
log-ratio ``log pi(y|x) - log pi_ref(y|x)``, an estimate of KL(pi || pi_ref) on the preference data
(not on the policy's own samples, which `benchmarks/world_dpo.py` measures).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from rlhfkit.config import TrainConfig, group, option
from rlhfkit.data.collate import pad_right
from rlhfkit.data.datasets import load_comparisons
from rlhfkit.data.formats import PreferenceExample, RankingExample, soft_label_note
from rlhfkit.data.tokenize import TokenStats, encode_completion, encode_prompt, truncate
from rlhfkit.errors import ConfigError, relabel_error
from rlhfkit.losses.dpo import (
    DPO_LOSSES,
    available_dpo_losses,
    dpo_loss,
    is_length_normalised,
    is_reference_free,
)
from rlhfkit.models.loading import (
    check_context,
    check_not_run_directory,
    compile_blocks,
    load_causal_lm,
    load_tokenizer,
)
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.models.shared_prompt import mask_dtype as model_mask_dtype
from rlhfkit.models.shared_prompt import shared_prompt_mask, unsupported_reason
from rlhfkit.recipes.sft import export_policy, lora_settings
from rlhfkit.training.batches import BatchPlan, eval_shards
from rlhfkit.training.checkpoint import save_checkpoint
from rlhfkit.training.reference import reference_kind, reference_logprobs
from rlhfkit.training.run import Run, check_finite
from rlhfkit.training.setup import checked_plan, prepare_optimization, resume_or_start
from rlhfkit.training.steps import global_sum, optimizer_step, sync_context

REFERENCE_CACHE = "reference_logps.pt"


@dataclass
class DPOOptions:
    beta: float = option(0.1, "strength of the implicit KL constraint (reward scale)")
    loss_type: str = option(
        "sigmoid",
        "loss variant: " + ", ".join(available_dpo_losses()) + " (rlhfkit.losses.dpo)",
    )
    label_smoothing: float = option(
        0.0, "assumed label-flip rate for cdpo/sigmoid, robust and simpo (0 = off)"
    )
    simpo_gamma: float = option(0.5, "SimPO target reward margin gamma (reward units)")
    sft_weight: float = option(0.0, "weight of the NLL of the chosen response per token (RPO)")
    soft_labels: bool = option(
        True,
        "train a record's `soft_label` p = P(chosen beats rejected) as the expected loss "
        "p*loss(chosen, rejected) + (1-p)*loss(rejected, chosen); false = every pair a hard win",
    )
    precompute_ref: bool = option(
        True, "compute reference log-probs in one pass before training (cached in OUT)"
    )
    reference: str = option(
        "", "reference model path; empty = the starting model (no second copy with LoRA)"
    )
    length_bucketing: bool = option(True, "group pairs of similar length into batches")
    pairs_per_forward: int = option(
        0,
        "pairs per forward and backward pass: each micro-batch is run in chunks of this many "
        "pairs and their gradients summed, so a step is the same and its activations take a "
        "fraction of the memory, for some speed (0 = the whole micro-batch in one pass)",
        minimum=0,
    )
    shared_prompt: bool = option(
        True,
        "one row prompt+chosen+rejected per pair with a block mask, so the prompt is encoded "
        "once (needs sdpa or eager attention; turned off for flash-attention)",
    )
    padding_free: bool = option(
        False,
        "pack rows without padding (needs attn_implementation=flash_attention_2, a GPU; "
        "takes precedence over shared_prompt)",
    )


@dataclass
class DPOConfig(TrainConfig):
    output_dir: str = option("runs/dpo", "where config.yaml, metrics, the model and checkpoints go")
    learning_rate: float = option(5e-7, "peak learning rate (AdamW)")
    dpo: DPOOptions = group(DPOOptions, "DPO options")


# ---------------------------------------------------------------------------------------------
# Data: preference and ranking records to tokenised pairs
# ---------------------------------------------------------------------------------------------


@dataclass
class Pair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    soft_label: float | None = None  # the record's P(chosen beats rejected); None = hard win
    record: int = 0  # the record it comes from: a ranking's pairs share one (`record_groups`)

    @property
    def length(self) -> int:
        """Row length of the longer of the two sequences."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def tokens(self) -> int:
        """Tokens of both sequences, the prompt counted twice: the unit of tokens/s whatever the
        layout (shared-prompt rows process `len(prompt)` fewer)."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def _text_pairs(example: PreferenceExample | RankingExample):
    """(prompt, chosen, rejected, soft label or None) of every pair of a record."""
    if isinstance(example, RankingExample):
        # Every pair of a ranking (best first) is one preference: K(K-1)/2 pairs.
        for better, worse in combinations(example.ranking, 2):
            yield example.prompt, example.responses[better], example.responses[worse], None
    else:
        yield example.prompt, example.chosen, example.rejected, example.soft_label


def load_pairs(
    spec: str, tokenizer, *, max_length: int, max_prompt_length: int
) -> tuple[list[Pair], TokenStats]:
    """Tokenised pairs of `spec` (preference or ranking records); skipped pairs are counted.
    A preference record's `soft_label` is kept on its pair (pairs of a ranking have none)."""
    stats = TokenStats(unit="pairs")  # a ranking of K responses gives K(K-1)/2 of them
    pairs = []
    for record, example in enumerate(load_comparisons(spec)):
        for prompt, chosen, rejected, soft_label in _text_pairs(example):
            stats.examples += 1
            if chosen == rejected:
                stats.skipped["chosen == rejected"] += 1
                continue
            prompt_ids = encode_prompt(tokenizer, prompt)
            sides = [
                truncate(
                    prompt_ids,
                    encode_completion(tokenizer, prompt, completion),
                    max_length=max_length,
                    max_prompt_length=max_prompt_length,
                    bos_id=tokenizer.bos_token_id,
                )
                for completion in (chosen, rejected)
            ]
            stats.prompt_truncated += sides[0].prompt_truncated
            stats.completion_truncated += sum(s.completion_truncated for s in sides)
            if not sides[0].completion_ids or not sides[1].completion_ids:
                stats.skipped["no completion token fits max_length"] += 1
                continue
            if sides[0].completion_ids == sides[1].completion_ids:
                # Different only past max_length: the model sees one sequence twice, so the
                # pair's log-ratio gap is 0 whatever the weights; it trains nothing.
                stats.skipped["chosen == rejected after truncation to max_length"] += 1
                continue
            stats.kept += 1
            chosen, rejected = (side.completion_ids for side in sides)
            pairs.append(Pair(sides[0].prompt_ids, chosen, rejected, soft_label, record))
    return pairs, stats


def record_groups(pairs: list[Pair]) -> list[list[int]]:
    """Indices of `pairs` grouped by record, in order: one group per preference record, and one
    per ranking holding all of its kept pairs. Training draws whole groups and weighs each pair
    1/|group|, so a ranking's K(K-1)/2 pairs train together in one step and count as one record
    (InstructGPT; DESIGN.md's ranking format), as in `rlhfkit rm`."""
    groups: list[list[int]] = []
    for i, pair in enumerate(pairs):
        if groups and pairs[groups[-1][0]].record == pair.record:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def soft_label_tensor(
    pairs: list[Pair], indices: list[int], device, *, use: bool
) -> torch.Tensor | None:
    """(B,) P(chosen beats rejected) of `indices` (1 where a pair has no soft label), or None
    when `use` is off or every pair is a hard win: the hard loss then runs exactly as before."""
    labels = [1.0 if pairs[i].soft_label is None else pairs[i].soft_label for i in indices]
    if not use or all(label == 1.0 for label in labels):
        return None
    return torch.tensor(labels, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------------
# Batches: both sides of B pairs in one forward, in one of three layouts
# ---------------------------------------------------------------------------------------------

#: `pair_batch` layouts: one row per sequence (chosen rows, then rejected rows), right-padded;
#: one row per pair, `prompt + chosen + rejected`, the prompt encoded once; all 2B sequences
#: packed into one row without padding (flash-attention varlen).
LAYOUTS = ("padded", "shared_prompt", "packed")


def _sequences(pairs: list[Pair], indices: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Ids and target masks of the 2B rows: chosen responses first, then rejected ones."""
    chosen = [pairs[i] for i in indices]
    ids, masks = [], []
    for completion_of in (lambda p: p.chosen_ids, lambda p: p.rejected_ids):
        for pair in chosen:
            completion = completion_of(pair)
            ids.append(pair.prompt_ids + completion)
            masks.append([0] * len(pair.prompt_ids) + [1] * len(completion))
    return ids, masks


def _shared_prompt_rows(
    pairs: list[Pair], indices: list[int], pad_id: int, mask_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """B rows `prompt + chosen + rejected`; see `pair_batch`."""
    ids, segments, positions, targets, sources, sequences = [], [], [], [], [], []
    count = len(indices)
    for k, pair in enumerate(pairs[i] for i in indices):
        prompt_len = len(pair.prompt_ids)
        row, pos = list(pair.prompt_ids), list(range(prompt_len))
        seg, target, source, sequence = ([0] * prompt_len for _ in range(4))
        for side, completion in enumerate((pair.chosen_ids, pair.rejected_ids), start=1):
            start = len(row)
            row += completion
            seg += [side] * len(completion)
            pos += range(prompt_len, prompt_len + len(completion))
            # Token j of a response is predicted from token j-1 of it; token 0 from the
            # prompt's last token (as in its own row, where a first token at position 0 with
            # no prompt has no prediction either).
            source += [prompt_len - 1] + list(range(start, start + len(completion) - 1))
            target += [int(prompt_len > 0)] + [1] * (len(completion) - 1)
            sequence += [k if side == 1 else count + k] * len(completion)
        for column, item in zip(
            (ids, segments, positions, targets, sources, sequences),
            (row, seg, pos, target, [max(s, 0) for s in source], sequence),
            strict=True,
        ):
            column.append(item)
    return {
        "input_ids": pad_right(ids, pad_id),
        "attention_mask": shared_prompt_mask(pad_right(segments, -1), mask_dtype),
        "position_ids": pad_right(positions, 0),
        "target_mask": pad_right(targets, 0),
        "predicted_from": pad_right(sources, 0),
        "sequence_ids": pad_right(sequences, 0),
    }


def pair_batch(
    pairs: list[Pair],
    indices: list[int],
    pad_id: int,
    device,
    *,
    layout: str = "padded",
    mask_dtype: torch.dtype = torch.bool,
) -> dict[str, torch.Tensor]:
    """One model batch holding both sides of the pairs `indices` (B of them).

    Layouts (`LAYOUTS`):

    * ``padded``: `input_ids`, `attention_mask`, `target_mask`, each (2B, T): chosen rows, then
      rejected rows.
    * ``shared_prompt``: B rows `prompt + chosen + rejected` (`rlhfkit.models.shared_prompt`):
      `input_ids`, `position_ids` (both responses start at `len(prompt)`), `target_mask`,
      `predicted_from` (the position predicting each target), `sequence_ids` (0..B-1 on chosen
      tokens, B..2B-1 on rejected ones), each (B, T), and a (B, 1, T, T) `attention_mask` of
      `mask_dtype` (bool for sdpa, the model dtype for eager attention).
    * ``packed``: one row (1, N) with `position_ids` restarting per sequence and `sequence_ids`
      (1, N) naming each token's sequence in 0..2B-1.
    """
    if layout == "shared_prompt":
        batch = _shared_prompt_rows(pairs, indices, pad_id, mask_dtype)
        return {k: v.to(device) for k, v in batch.items()}
    ids, masks = _sequences(pairs, indices)
    if layout == "padded":
        batch = {
            "input_ids": pad_right(ids, pad_id),
            "attention_mask": pad_right([[1] * len(row) for row in ids], 0),
            "target_mask": pad_right(masks, 0),
        }
    elif layout == "packed":
        flat_mask = []
        for mask in masks:
            # A sequence's first token has no prediction of its own (it would be predicted from
            # the previous sequence's last token), exactly like position 0 of a padded row.
            flat_mask += [0] + mask[1:]
        batch = {
            "input_ids": torch.tensor([sum(ids, [])]),
            "position_ids": torch.tensor([[t for row in ids for t in range(len(row))]]),
            "target_mask": torch.tensor([flat_mask]),
            "sequence_ids": torch.tensor([[k for k, row in enumerate(ids) for _ in row]]),
        }
    else:
        raise ValueError(f"layout: {layout!r} is not one of {LAYOUTS}")
    return {k: v.to(device) for k, v in batch.items()}


def sequence_logps(forward, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs and completion lengths of the 2B sequences of `pair_batch`.

    Args:
        forward: The policy (`TokenLogprobs`) or a reference function with the same signature.
        batch: A `pair_batch` (any layout).

    Returns:
        `(logps (2B,), lengths (2B,))`: chosen sequences first, then rejected ones.
    """
    inputs = {k: v for k, v in batch.items() if k != "sequence_ids"}
    token_logps = forward(**inputs)["logprobs"]  # (rows, T), 0 off-target
    targets = batch["target_mask"].clone()
    if "predicted_from" not in batch:
        targets[:, 0] = 0  # position 0 is never predicted in its own row
    targets = targets.to(token_logps.dtype)
    if "sequence_ids" not in batch:
        return token_logps.sum(-1), targets.sum(-1)  # (2B,), (2B,)
    segment = batch["sequence_ids"].reshape(-1)  # (rows * T,), 0 on padding (adds zeros)
    count = int(segment.max()) + 1
    logps = token_logps.new_zeros(count).index_add(0, segment, token_logps.reshape(-1))
    lengths = token_logps.new_zeros(count).index_add(0, segment, targets.reshape(-1))
    return logps, lengths  # (2B,), (2B,)


#: `pair_batch` with everything but the pairs and the indices bound.
BatchMaker = Callable[[list[Pair], list[int]], dict[str, torch.Tensor]]


def batch_layout(
    run, options: DPOOptions, lm: torch.nn.Module, max_length: int
) -> tuple[str, torch.dtype]:
    """The `pair_batch` layout these options ask for on this model, and its mask dtype."""
    if options.padding_free:
        return "packed", torch.bool
    if not options.shared_prompt:
        return "padded", torch.bool
    reason = unsupported_reason(lm, max_length)
    if reason is not None:
        run.print(f"{reason}: dpo.shared_prompt is turned off")
        return "padded", torch.bool
    return "shared_prompt", model_mask_dtype(lm)


# ---------------------------------------------------------------------------------------------
# Loss and metrics of a batch of pairs
# ---------------------------------------------------------------------------------------------


def _variant_kwargs(options: DPOOptions) -> dict:
    """The extra keywords the chosen variant accepts (e.g. `simpo_gamma`), from the options."""
    parameters = inspect.signature(DPO_LOSSES.lookup(options.loss_type).fn).parameters
    extra = {"simpo_gamma": options.simpo_gamma}
    return {name: value for name, value in extra.items() if name in parameters}


def pair_losses(
    policy_logps: torch.Tensor,
    lengths: torch.Tensor,
    ref_logps: torch.Tensor | None,
    options: DPOOptions,
    soft_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses and per-pair metrics.

    A variant registered `length_normalised` (`is_length_normalised`) gets ``logps / lengths``,
    policy and reference alike; its rewards are then ``beta x`` those averages. The `logps/*`
    and `kl` metrics stay on the summed log-probs whatever the variant.

    Args:
        policy_logps: (2B,) summed policy log-probs, chosen rows then rejected rows.
        lengths: (2B,) completion lengths of those rows.
        ref_logps: (2B,) summed reference log-probs, or None for a reference-free variant.
        options: The `dpo` options.
        soft_labels: (B,) P(chosen beats rejected) per pair, or None for hard labels.

    Returns:
        `(losses (B,), metrics)` with metrics of shape (B,), detached.
    """
    pairs = policy_logps.shape[0] // 2
    averaged = is_length_normalised(options.loss_type)
    policy_in = policy_logps / lengths if averaged else policy_logps  # (2B,)
    ref_in = None
    if ref_logps is not None and not is_reference_free(options.loss_type):
        ref_in = ref_logps / lengths if averaged else ref_logps  # (2B,)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_in[:pairs],
        policy_in[pairs:],
        None if ref_in is None else ref_in[:pairs],
        None if ref_in is None else ref_in[pairs:],
        beta=options.beta,
        loss_type=options.loss_type,
        label_smoothing=options.label_smoothing,
        soft_labels=soft_labels,
        **_variant_kwargs(options),
    )  # (B,) each
    metrics = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float(),
        "rewards/margin": chosen_rewards - rejected_rewards,
        "logps/chosen": policy_logps[:pairs].detach(),
        "logps/rejected": policy_logps[pairs:].detach(),
    }
    if ref_logps is not None:
        logratio = (policy_logps.detach() - ref_logps).view(2, pairs)  # (2, B)
        metrics["kl"] = logratio.mean(0)
    if options.sft_weight > 0:
        chosen_nll = -policy_logps[:pairs] / lengths[:pairs]  # (B,)
        losses = losses + options.sft_weight * chosen_nll
        metrics["nll/chosen"] = chosen_nll.detach()
    metrics["loss"] = losses.detach()
    return losses, metrics


def check_options(config: DPOConfig) -> None:
    """Turn every inconsistent `dpo.*` setting into a ConfigError before any model is loaded."""
    lora_settings(config)  # refuses lora.dropout
    options = config.dpo
    names = available_dpo_losses()
    if options.loss_type not in names:
        raise ConfigError(
            f"dpo.loss_type: unknown loss {options.loss_type!r}; choose one of {', '.join(names)}"
        )
    if options.sft_weight < 0:
        raise ConfigError(f"dpo.sft_weight: must be >= 0, got {options.sft_weight}")
    # Let the loss function judge beta / label_smoothing for this variant on a dummy pair.
    zeros = torch.zeros(1)
    try:
        dpo_loss(
            zeros,
            zeros,
            zeros,
            zeros,
            beta=options.beta,
            loss_type=options.loss_type,
            label_smoothing=options.label_smoothing,
            **_variant_kwargs(options),
        )
    except ValueError as err:  # "beta must be > 0": named as the key the user sets
        key, _, problem = str(err).partition(" ")
        known = key in {f.name for f in dataclasses.fields(DPOOptions)}
        raise ConfigError(f"dpo.{key}: {problem}" if known else f"dpo: {err}") from None
    if options.reference:  # before a fresh run removes the last one's checkpoints
        check_not_run_directory(options.reference, "dpo.reference")
    defaults = DPOOptions()
    if options.simpo_gamma != defaults.simpo_gamma and not _variant_kwargs(options):
        raise ConfigError(
            f"dpo.simpo_gamma: not used by dpo.loss_type={options.loss_type} (got "
            f"{options.simpo_gamma}); it is SimPO's target margin (dpo.loss_type=simpo)"
        )
    if options.reference and is_reference_free(options.loss_type):
        raise ConfigError(
            f"dpo.reference: dpo.loss_type={options.loss_type} is reference-free, so "
            f"{options.reference!r} would not be used; leave dpo.reference empty"
        )
    if options.padding_free:
        impl = config.attn_implementation or "the default (sdpa)"
        if "flash" not in config.attn_implementation or not torch.cuda.is_available():
            raise ConfigError(
                "dpo.padding_free: unavailable with attention "
                f"{impl}{'' if torch.cuda.is_available() else ' on this machine (no CUDA GPU)'}. "
                "Packing rows without padding needs a variable-length kernel "
                "(attn_implementation=flash_attention_2 on a CUDA GPU); with sdpa or eager a "
                "packed row needs a dense block-diagonal mask over the whole pack, which costs "
                "more than the padding it removes. Leave dpo.padding_free=false: "
                "dpo.length_bucketing already keeps padding small."
            )


# ---------------------------------------------------------------------------------------------
# Batch order: length-bucketed global batches
# ---------------------------------------------------------------------------------------------


@dataclass
class LengthBucketedPlan(BatchPlan):
    """A `BatchPlan` whose global batches hold pairs of similar length.

    Per epoch: the seeded permutation decides which pairs are used (the same ones as an
    unbucketed plan); they are sorted by length within windows of `window` global batches, cut
    into global batches, and the batches are shuffled. Everything depends on (seed, epoch) and
    the global batch size only, so resume, 1x8 vs 8x1 and process counts stay exact.
    """

    lengths: list[int] = field(default_factory=list)
    window: int = 32

    def _permutation(self, epoch: int) -> list[int]:
        order = super()._permutation(epoch)
        used = self.steps_per_epoch * self.global_batch
        kept, dropped = order[:used], order[used:]
        span = self.global_batch * self.window
        grouped = []
        for start in range(0, used, span):
            grouped += sorted(kept[start : start + span], key=lambda i: self.lengths[i])
        batches = [
            grouped[b * self.global_batch : (b + 1) * self.global_batch]
            for b in range(self.steps_per_epoch)
        ]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 1)
        shuffled = [batches[b] for b in torch.randperm(len(batches), generator=generator)]
        return [i for batch in shuffled for i in batch] + dropped

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        indices = sorted(self.global_indices(step), key=lambda i: self.lengths[i])
        out = []
        for micro in range(self.grad_accum):
            start = (micro * self.world_size + rank) * self.batch_size
            out.append(indices[start : start + self.batch_size])
        return out


def forward_chunks(micro_batches: list[list[int]], size: int) -> list[list[int]]:
    """Cut every micro-batch into runs of at most `size` pairs (0: keep it whole).

    Each run goes through the model in its own forward and backward; the loss of every pass is
    already divided by the global batch, so the summed gradients are the step's gradient
    whatever the cut. Runs stay in the micro-batch's (length-sorted) order.
    """
    if size <= 0:
        return [list(m) for m in micro_batches if m]
    return [m[i : i + size] for m in micro_batches for i in range(0, len(m), size)]


# ---------------------------------------------------------------------------------------------
# Reference log-probs: one pass, cached in OUT
# ---------------------------------------------------------------------------------------------


def _fingerprint(config: DPOConfig, *pair_sets: list[Pair]) -> str:
    reference = config.dpo.reference or config.model
    if os.path.isdir(reference):
        reference = os.path.abspath(reference)
    # what changes the reference's log-probs beyond rounding: weights, dtype, kernel, autocast
    numerics = f"{config.dtype}|{config.attn_implementation}|{config.mixed_precision}"
    digest = hashlib.sha256(f"{reference}|{numerics}".encode())
    if os.path.isdir(reference):
        # Weights rewritten in place (same path, new model) must not reuse the old cache.
        for path in sorted(Path(reference).glob("*")):
            if path.suffix in (".safetensors", ".bin", ".json"):
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for pairs in pair_sets:
        digest.update(b"#")
        for pair in pairs:
            digest.update(repr((pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)).encode())
    return digest.hexdigest()


def compute_reference_logps(
    acc, ref_fn, pairs: list[Pair], batch_size: int, make_batch: BatchMaker
) -> torch.Tensor:
    """(N, 2) summed reference log-probs (chosen, rejected) of every pair, computed once.

    Pairs go in length order (little padding); each process takes a shard, and the shards are
    summed across processes.
    """
    result = torch.zeros(len(pairs), 2, dtype=torch.float64, device=acc.device)
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    for shard, counted in eval_shards(len(pairs), batch_size, acc.num_processes, acc.process_index):
        indices = [order[i] for i in shard]
        logps, _ = sequence_logps(ref_fn, make_batch(pairs, indices))  # (2B,)
        if counted:  # a filler batch only keeps the processes' forwards in step
            result[indices] = logps.view(2, -1).t().to(torch.float64)
    if acc.num_processes > 1:
        result = acc.reduce(result, reduction="sum")
    return result.float().cpu()


def _load_cache(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    cache = torch.load(path, map_location="cpu", weights_only=True)
    return cache if cache.get("fingerprint") == fingerprint else None


def _save_cache(acc, path: Path, cache: dict) -> None:
    if acc.is_main_process:
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        torch.save(cache, tmp)
        os.replace(tmp, path)
    acc.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# Evaluation and the loop
# ---------------------------------------------------------------------------------------------


def _batch_ref(ref_table: torch.Tensor, indices: list[int], device) -> torch.Tensor:
    """(2B,) cached reference log-probs of `indices`, in `pair_batch` row order."""
    return ref_table[indices].t().reshape(-1).to(device)


def evaluate(
    run: Run,
    model,
    pairs: list[Pair],
    config: DPOConfig,
    make_batch: BatchMaker,
    *,
    ref_table: torch.Tensor | None,
    ref_fn,
) -> dict[str, float]:
    """Mean loss and metrics over `pairs` (every process takes a shard)."""
    acc = run.accelerator
    model.eval()
    totals: dict[str, float] = {}
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    with torch.no_grad():
        for shard, counted in eval_shards(
            len(pairs), config.eval_batch_size, acc.num_processes, acc.process_index
        ):
            indices = [order[i] for i in shard]
            batch = make_batch(pairs, indices)
            policy_logps, lengths = sequence_logps(model, batch)
            ref_logps = _reference_for(batch, indices, ref_table, ref_fn, acc.device)
            labels = soft_label_tensor(pairs, indices, acc.device, use=config.dpo.soft_labels)
            _, metrics = pair_losses(policy_logps, lengths, ref_logps, config.dpo, labels)
            # A filler batch adds 0 but its keys, so every process sums the same keys below.
            for key, values in metrics.items():
                totals[key] = totals.get(key, 0.0) + (float(values.sum()) if counted else 0.0)
    model.train()
    count = max(len(pairs), 1)
    return {f"eval_{key}": global_sum(acc, totals[key]) / count for key in sorted(totals)}


def _reference_for(batch, indices, ref_table, ref_fn, device) -> torch.Tensor | None:
    if ref_table is not None:
        return _batch_ref(ref_table, indices, device)
    if ref_fn is None:
        return None
    logps, _ = sequence_logps(ref_fn, batch)
    return logps


def train(config: DPOConfig) -> dict:
    check_options(config)
    run = Run(config, "dpo")
    acc = run.accelerator
    options = config.dpo
    tokenizer = load_tokenizer(config.model)
    pad_id = tokenizer.pad_token_id
    if not config.train_data:
        raise ConfigError("train_data: no training data given")
    lengths_kw = {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length}
    pairs, stats = load_pairs(config.train_data, tokenizer, **lengths_kw)
    run.print(f"[bold]train data[/] {config.train_data}: {stats.summary()}")
    note = soft_label_note([p.soft_label for p in pairs], "dpo.soft_labels", options.soft_labels)
    if note:
        run.print(note)
    eval_pairs: list[Pair] = []
    if config.eval_data:
        eval_pairs, eval_stats = load_pairs(config.eval_data, tokenizer, **lengths_kw)
        run.print(f"[bold]eval data[/] {config.eval_data}: {eval_stats.summary()}")

    check_context(config.model, config.max_length, "max_length")
    lm = load_causal_lm(
        config.model,
        dtype=config.dtype,
        gradient_checkpointing=config.gradient_checkpointing,
        lora=lora_settings(config),
        attn_implementation=config.attn_implementation or None,
    )
    if config.compile:
        compile_blocks(lm)
    model = TokenLogprobs(lm)
    layout, mask_dtype = batch_layout(run, options, lm, config.max_length)
    make_batch = functools.partial(
        pair_batch, pad_id=pad_id, device=acc.device, layout=layout, mask_dtype=mask_dtype
    )
    groups = record_groups(pairs)  # the plan draws records; a ranking's pairs stay together
    sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if options.pairs_per_forward and sharded and len(groups) < len(pairs):
        # Rankings give processes unequal pair counts, hence unequal numbers of chunked passes;
        # sharded engines gather parameters in every forward and would wait on each other.
        raise ConfigError(
            "dpo.pairs_per_forward: with ranking records under FSDP or DeepSpeed the processes "
            "would run different numbers of passes; set dpo.pairs_per_forward=0"
        )
    plan_args = (
        len(groups),
        config.batch_size,
        config.grad_accum,
        acc.num_processes,
        config.seed,
        config.max_steps,
        config.epochs,
    )
    if options.length_bucketing:
        lengths = [max(pairs[i].length for i in group) for group in groups]
        plan = LengthBucketedPlan(*plan_args, lengths=lengths)
    else:
        plan = BatchPlan(*plan_args)
    checked_plan(run, plan, "records" if len(groups) < len(pairs) else "pairs")
    model, optimizer, scheduler = prepare_optimization(run, model, config, plan.total_steps)

    totals = {"loss_sum": 0.0, "loss_steps": 0, "seconds": 0.0}
    start_step, totals = resume_or_start(run, config, totals)

    with ExitStack() as stack:
        started = time.perf_counter()
        ref_tables, ref_fn, ref_source = _prepare_reference(
            run, stack, model, config, pairs, eval_pairs, make_batch, initial=start_step == 0
        )
        reference_seconds = time.perf_counter() - started
        summary = _train_loop(
            run, model, optimizer, scheduler, plan, pairs, eval_pairs, config, make_batch,
            start_step=start_step, totals=totals, ref_tables=ref_tables, ref_fn=ref_fn,
            groups=groups,
        )  # fmt: skip
    summary["reference_logps"] = ref_source
    summary["reference_seconds"] = reference_seconds
    summary["train_seconds"] = reference_seconds + summary.pop("step_seconds")
    summary["data"] = stats.as_dict()
    export_policy(run, model, tokenizer)
    run.summary(summary)
    message = f"[green]dpo done[/]: train_loss {summary['train_loss']:.4f}"
    if eval_pairs:
        message += (
            f", eval_loss {summary['eval_loss']:.4f}, eval_reward_accuracy "
            f"{summary['eval_reward_accuracy']:.3f}, eval_reward_margin "
            f"{summary['eval_reward_margin']:.4f}"
        )
    run.print(message + f" → {run.out / 'model'}")
    return summary


def _enter_reference(stack, policy, reference: str, initial: bool, reference_args: dict):
    """Enter `reference_logprobs` on `stack`; an error loading a separate `dpo.reference` names
    that key (the model loader names `model`, the policy's key)."""
    try:
        return stack.enter_context(reference_logprobs(policy, initial=initial, **reference_args))
    except ConfigError as err:
        if not reference:
            raise
        raise relabel_error(err, "dpo.reference") from None


def _prepare_reference(run, stack, model, config, pairs, eval_pairs, make_batch, *, initial):
    """Reference tables (precomputed or cached) or an on-the-fly reference function.

    Returns:
        `(tables, ref_fn, source)`: tables `{"train": (N, 2), "eval": (M, 2)}` or None; ref_fn
        for on-the-fly log-probs or None; source says which happened (reported in the summary).
    """
    acc, options = run.accelerator, config.dpo
    if is_reference_free(options.loss_type):
        return None, None, "none (reference-free loss)"
    policy = acc.unwrap_model(model)
    reference_args = {
        "model_path": config.model,
        "reference": options.reference,
        "dtype": config.dtype,
        "attn_implementation": config.attn_implementation or None,
        "autocast": acc.autocast,
    }
    if not options.precompute_ref:
        ref_fn = _enter_reference(stack, policy, options.reference, False, reference_args)
        kind = reference_kind(policy, options.reference, initial=False)
        return None, ref_fn, f"on the fly ({kind})"

    cache_path = run.out / REFERENCE_CACHE
    fingerprint = _fingerprint(config, pairs, eval_pairs)
    cache = _load_cache(cache_path, fingerprint)
    if cache is not None:
        run.print(f"reference log-probs read from {cache_path}")
        return {"train": cache["train"], "eval": cache["eval"]}, None, "loaded from cache"
    kind = reference_kind(policy, options.reference, initial=initial)
    started = time.perf_counter()
    with ExitStack() as reference_stack:
        ref_fn = _enter_reference(
            reference_stack, policy, options.reference, initial, reference_args
        )
        tables = {
            name: compute_reference_logps(acc, ref_fn, items, config.eval_batch_size, make_batch)
            for name, items in (("train", pairs), ("eval", eval_pairs))
        }
    _save_cache(acc, cache_path, {"fingerprint": fingerprint, **tables})
    run.print(
        f"reference log-probs of {len(pairs) + len(eval_pairs)} pairs computed ({kind}) in "
        f"{time.perf_counter() - started:.1f}s → {cache_path}"
    )
    return tables, None, f"computed ({kind})"


def _train_loop(
    run, model, optimizer, scheduler, plan, pairs, eval_pairs, config, make_batch, *,
    start_step, totals, ref_tables, ref_fn, groups,
) -> dict:  # fmt: skip
    acc, options = run.accelerator, config.dpo
    train_table = None if ref_tables is None else ref_tables["train"]
    eval_table = None if ref_tables is None else ref_tables["eval"]

    def run_eval() -> dict[str, float]:
        return evaluate(
            run, model, eval_pairs, config, make_batch, ref_table=eval_table, ref_fn=ref_fn
        )

    group_size = {pairs[group[0]].record: len(group) for group in groups}
    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    # Seconds of optimizer steps only (no evaluation, no checkpoint writes), carried in the
    # checkpoints' totals so that a resumed run reports the whole run's.
    totals.setdefault("seconds", 0.0)
    with run.progress(plan.total_steps, start_step, "dpo"):
        for step in range(start_step, plan.total_steps):
            step_started = time.perf_counter()
            # The step's records, each as all of its pairs; a pair of a record with n pairs
            # weighs 1/n, so the loss is the mean over records of their pairs' mean.
            micro = [
                [i for record in m for i in groups[record]]
                for m in plan.micro_batches(step, acc.process_index)
            ]
            passes = forward_chunks(micro, options.pairs_per_forward)
            # all processes' tokens: every process knows the whole global batch
            window_tokens += sum(
                pairs[i].tokens for record in plan.global_indices(step) for i in groups[record]
            )
            global_records = plan.global_batch
            sums: dict[str, float] = {}
            for k, indices in enumerate(passes):
                batch = make_batch(pairs, indices)
                weights = torch.tensor(
                    [1.0 / group_size[pairs[i].record] for i in indices], device=acc.device
                )  # (B,)
                with sync_context(acc, model, k, len(passes)):
                    policy_logps, lengths = sequence_logps(model, batch)  # (2B,), (2B,)
                    ref_logps = _reference_for(batch, indices, train_table, ref_fn, acc.device)
                    labels = soft_label_tensor(pairs, indices, acc.device, use=options.soft_labels)
                    losses, metrics = pair_losses(policy_logps, lengths, ref_logps, options, labels)
                    # DDP averages gradients over processes, hence the factor num_processes.
                    acc.backward((losses * weights).sum() * acc.num_processes / global_records)
                for key, values in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float((values * weights).sum())
            means = {key: global_sum(acc, value) / global_records for key, value in sums.items()}
            check_finite(means["loss"], step + 1, run)
            grad_norm, lr = optimizer_step(acc, model, optimizer, scheduler, config.max_grad_norm)
            totals["seconds"] += time.perf_counter() - step_started
            totals["loss_sum"] += means["loss"]
            totals["loss_steps"] += 1
            done = step + 1
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            run.advance(
                f"loss {means['loss']:.4f}  acc {means['rewards/accuracy']:.2f}  "
                f"{tokens_per_s:,.0f} tok/s"
            )
            if done % config.logging_steps == 0 or done == plan.total_steps:
                run.log(
                    done,
                    {
                        **means,
                        "grad_norm": grad_norm,
                        "lr": lr,
                        "epoch": done / plan.steps_per_epoch,  # epochs completed
                        "tokens_per_s": tokens_per_s,
                    },
                )
                window_tokens, window_start = 0, time.perf_counter()
            if (
                eval_pairs
                and config.eval_steps
                and done % config.eval_steps == 0
                and done < plan.total_steps
            ):
                run.log(done, run_eval())
            if (config.save_steps and done % config.save_steps == 0) or done == plan.total_steps:
                save_checkpoint(
                    acc, run.checkpoints, done, {"totals": totals},
                    keep=config.save_total_limit, data=run.data_record,
                )  # fmt: skip

    summary = {
        "train_loss": totals["loss_sum"] / max(totals["loss_steps"], 1),
        "steps": plan.total_steps,
        "step_seconds": totals["seconds"],
    }
    if eval_pairs:
        evaluation = run_eval()
        run.log(plan.total_steps, evaluation)
        summary.update(
            eval_loss=evaluation["eval_loss"],
            eval_reward_accuracy=evaluation["eval_rewards/accuracy"],
            eval_reward_margin=evaluation["eval_rewards/margin"],
            eval_kl=evaluation.get("eval_kl"),
        )
        if summary["eval_kl"] is None:
            del summary["eval_kl"]
    return summary
