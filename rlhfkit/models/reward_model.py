"""Reward models: a causal-LM backbone with a scalar (or K-head) linear head, as
`AutoModelForSequenceClassification` builds it, plus rlhfkit's normalisation and ensemble info.

The reward of (prompt x, response y) is the head applied to the backbone's last hidden state at
the last token of x + y that is not the pad token: exactly the rule of transformers'
`*ForSequenceClassification` ("rightmost token != pad_token_id"), so a model trained here and
loaded with `AutoModelForSequenceClassification` scores the same text the same way.

The head (`score`, shape (K, d_model)) is initialised N(0, 1/sqrt(d_model + 1)) (Stiennon et al.
2020). transformers' sequence-classification head of decoder LMs has no bias; a bias would get
no gradient from the Bradley-Terry loss anyway (it cancels in r_w - r_l), so "bias 0" holds. The
offset that matters, the normalisation, is stored beside the weights in `rlhfkit_reward.json`:

```
{"format": 1, "num_heads": K, "gain": [g_1..g_K], "bias": [b_1..b_K],
 "normalized_on": "...", "reduce": "mean", "max_length": 512, "max_prompt_length": 256}
```

Scoring through rlhfkit (`RewardModel.score`, `load_reward_scorer`) returns
`g_k * r_k + b_k` per head; the scalar reward is the mean over heads. Used elsewhere, the
directory loads with `AutoModelForSequenceClassification.from_pretrained(DIR)`: `logits[:, k]`
is head k's *raw* reward; apply gain/bias from the JSON file to get rlhfkit's scores.

Training departs from the plain "one row per response" layout for speed: the responses to one
prompt share the prompt's tokens in one row, `prompt + y_1 + ... + y_K`, with a block attention
mask (each response sees the prompt and itself) and positions restarting after the prompt, so
every response's hidden states equal those of its own `prompt + y_i` row while the prompt is
encoded once (`pack_responses`, `shared_prompt_mask`). Inference (`score`) uses ordinary rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from rlhfkit.errors import ConfigError
from rlhfkit.models.head_scorer import HeadScorer, ensemble_reward, is_ensemble
from rlhfkit.models.loading import (
    LoraSettings,
    check_not_run_directory,
    disable_dropout,
    enable_checkpointing,
    load_tokenizer,
    lora_targets,
    missing_package_error,
    resolve_dtype,
)
from rlhfkit.models.readout import last_layer_at
from rlhfkit.models.shared_prompt import mask_dtype, shared_prompt_mask

REWARD_INFO_FILE = "rlhfkit_reward.json"
INFO_FORMAT = 1


@dataclass
class RewardInfo:
    """What `rlhfkit_reward.json` holds: normalisation per head and how heads are combined."""

    num_heads: int = 1
    gain: list[float] = field(default_factory=lambda: [1.0])
    bias: list[float] = field(default_factory=lambda: [0.0])
    normalized_on: str = ""  # what the normalisation was fitted on ("" = not normalised)
    reduce: str = "mean"
    max_length: int = 512
    max_prompt_length: int = 256

    def to_json(self) -> dict:
        return {
            "format": INFO_FORMAT,
            "num_heads": self.num_heads,
            "gain": [float(g) for g in self.gain],
            "bias": [float(b) for b in self.bias],
            "normalized_on": self.normalized_on,
            "reduce": self.reduce,
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
        }

    @classmethod
    def from_json(cls, data: dict) -> RewardInfo:
        num_heads = int(data.get("num_heads", 1))
        return cls(
            num_heads=num_heads,
            gain=[float(g) for g in data.get("gain", [1.0] * num_heads)],
            bias=[float(b) for b in data.get("bias", [0.0] * num_heads)],
            normalized_on=str(data.get("normalized_on", "")),
            reduce=str(data.get("reduce", "mean")),
            max_length=int(data.get("max_length", 512)),
            max_prompt_length=int(data.get("max_prompt_length", 256)),
        )


def _inner(seqcls: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under an optional peft wrapper."""
    return seqcls.get_base_model() if hasattr(seqcls, "get_base_model") else seqcls


class RewardModel(torch.nn.Module):
    """A `*ForSequenceClassification` model (optionally peft-wrapped) read at chosen positions.

    `forward` is the training path (packed rows, explicit positions); `score` is the inference
    path over ordinary padded rows, with the stored normalisation applied.
    """

    def __init__(self, seqcls: torch.nn.Module, info: RewardInfo | None = None):
        super().__init__()
        self.seqcls = seqcls
        self.info = info or RewardInfo(num_heads=self.num_heads)
        self.register_buffer(
            "norm_gain", torch.tensor(self.info.gain, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "norm_bias", torch.tensor(self.info.bias, dtype=torch.float32), persistent=False
        )

    # --- parts ------------------------------------------------------------------------------
    @property
    def config(self):
        return _inner(self.seqcls).config

    @property
    def num_heads(self) -> int:
        return int(self.config.num_labels)

    @property
    def pad_token_id(self) -> int | None:
        return self.config.get_text_config().pad_token_id

    def backbone(self) -> torch.nn.Module:
        inner = _inner(self.seqcls)
        return getattr(inner, inner.base_model_prefix)

    def head(self) -> torch.nn.Module:
        """The linear head; through peft's wrapper when LoRA is on (so it is the trained copy)."""
        module = self.seqcls
        if hasattr(module, "get_base_model"):
            module = module.base_model.model  # peft: the model with wrappers injected
        return module.score

    def shared_prompt_mask_dtype(self) -> torch.dtype | None:
        """dtype of the 4-D mask this backbone's attention takes; None if it takes none."""
        return mask_dtype(self.seqcls)

    def set_normalization(self, gain: Sequence[float], bias: Sequence[float], on: str) -> None:
        self.info.gain, self.info.bias, self.info.normalized_on = list(gain), list(bias), on
        self.norm_gain.copy_(torch.tensor(self.info.gain, dtype=torch.float32))
        self.norm_bias.copy_(torch.tensor(self.info.bias, dtype=torch.float32))

    # --- training path ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        reward_rows: torch.Tensor,
        reward_cols: torch.Tensor,
    ) -> torch.Tensor:
        """Raw rewards of N responses read at given positions.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) padding mask, or (B, 1, T, T) additive mask
                (`shared_prompt_mask`).
            position_ids: (B, T) positions.
            reward_rows: (N,) row of each response's last token.
            reward_cols: (N,) column of each response's last token.

        Returns:
            (N, K) raw rewards, fp32.
        """
        backbone = self.backbone()
        with last_layer_at(backbone, reward_rows, reward_cols, input_ids.shape[1]):
            hidden = backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state  # (B, T, H); exact only at the rows read out
        last = hidden[reward_rows, reward_cols]  # (N, H): only these rows go through the head
        return self.head()(last).float()  # (N, K)

    # --- inference path ---------------------------------------------------------------------
    def score(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        normalized: bool = True,
        reduce: bool = False,
    ) -> torch.Tensor:
        """Rewards of padded rows `prompt + response` (left, right or both padded).

        The reward is read at the rightmost token that is attended and is not the pad token;
        positions are counted over attended tokens (so left padding is handled).

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) 1 for real tokens; None = no padding but the pad token.
            normalized: Apply the stored gain and bias (per head).
            reduce: Average the heads of an ensemble into one reward.

        Returns:
            (B,) for one head or with `reduce=True`; (B, K) for an ensemble of K heads.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(input_ids.device)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        keep = attention_mask.bool()
        if self.pad_token_id is not None:
            keep = keep & (input_ids != self.pad_token_id)
        columns = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (columns * keep).argmax(-1)  # (B,) rightmost kept token
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        rewards = self.forward(input_ids, attention_mask, position_ids, rows, last)  # (B, K)
        if normalized:
            rewards = rewards * self.norm_gain.to(rewards.device) + self.norm_bias.to(
                rewards.device
            )
        if reduce or rewards.shape[-1] == 1:
            return rewards.mean(-1)
        return rewards


# ---------------------------------------------------------------------------------------------
# Building, saving, loading
# ---------------------------------------------------------------------------------------------


def init_reward_head(head: torch.nn.Linear, *, seed: int | None = None) -> None:
    """Head weights N(0, 1/sqrt(d_model + 1)), bias (if any) 0 (Stiennon et al. 2020)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    d_model = head.weight.shape[1]
    values = torch.randn(head.weight.shape, generator=generator) / math.sqrt(d_model + 1)
    with torch.no_grad():
        head.weight.copy_(values.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()


def build_reward_model(
    name_or_path: str,
    *,
    num_heads: int = 1,
    pad_token_id: int | None = None,
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    lora: LoraSettings | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> RewardModel:
    """A reward model to train, from a causal LM (new head) or a reward-model directory.

    The model starts unnormalised (gain 1, bias 0 per head), also from a reward-model directory
    whose `rlhfkit_reward.json` holds a normalisation: that was fitted to the directory's
    weights, which training changes, so it would no longer give mean 0 and std 1. `rlhfkit rm`
    fits a new one after training (`rm.normalize`) or saves the model unnormalised.

    Args:
        name_or_path: A causal-LM checkpoint (hub id or directory) or an rlhfkit reward model.
        num_heads: K heads for an ensemble (1 = plain scalar reward).
        pad_token_id: The tokenizer's pad id, stored in the config (transformers pools on it).
        dtype: Weight dtype (`auto`, `float32`, `bfloat16`).
        gradient_checkpointing: Recompute activations in backward.
        lora: With `r > 0`, LoRA adapters on the backbone; the head stays fully trainable.
        attn_implementation: `sdpa`, `eager`, ...; None = transformers' default.
        seed: Seed of the head's initialisation.
    """
    if num_heads < 1:
        raise ConfigError(f"rm.ensemble: need at least one head, got {num_heads}")
    start = read_reward_info(name_or_path)
    if start is not None and start.num_heads != num_heads:
        raise ConfigError(
            f"rm.ensemble: {name_or_path} is a reward model with {start.num_heads} head(s), "
            f"not {num_heads}; set rm.ensemble={start.num_heads} to train it on, or start from "
            "its causal LM for new heads"
        )
    kwargs = {"dtype": resolve_dtype(dtype), "num_labels": num_heads}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # The new head is reported as "missing" from a causal-LM checkpoint: expected, not news.
    hf_logging.set_verbosity_error()
    try:
        seqcls, loading = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, output_loading_info=True, **kwargs
        )
    except OSError as err:
        raise ConfigError(f"model: cannot load {name_or_path!r}: {err}") from err
    except ValueError as err:
        if attn_implementation and "attention implementation" in str(err).lower():
            # the architecture has the variant; it refuses the attention kernel asked for
            raise ConfigError(f"attn_implementation: {attn_implementation}: {err}") from err
        raise ConfigError(
            f"model: {name_or_path!r} has no sequence-classification variant in transformers: {err}"
        ) from err
    except ImportError as err:
        raise missing_package_error(name_or_path, attn_implementation, err) from err
    finally:
        hf_logging.set_verbosity(verbosity)
    head = seqcls.score
    if any(key.startswith("score.") for key in loading.get("missing_keys", [])):
        init_reward_head(head, seed=seed)
    disable_dropout(seqcls)
    if pad_token_id is not None:
        seqcls.config.pad_token_id = pad_token_id
        seqcls.config.get_text_config().pad_token_id = pad_token_id
    if gradient_checkpointing:
        enable_checkpointing(seqcls)
    if lora is not None and lora.r > 0:
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_targets(seqcls, lora.target_modules),
            task_type="SEQ_CLS",
            modules_to_save=["score"],
        )
        if gradient_checkpointing:
            seqcls.enable_input_require_grads()
        seqcls = get_peft_model(seqcls, peft_config)
    info = RewardInfo(num_heads=num_heads, gain=[1.0] * num_heads, bias=[0.0] * num_heads)
    return RewardModel(seqcls, info)


def read_reward_info(directory: str | os.PathLike) -> RewardInfo | None:
    """`directory`'s `rlhfkit_reward.json`, or None where it has none (or is no directory)."""
    path = Path(directory) / REWARD_INFO_FILE
    if not path.is_file():
        return None
    return RewardInfo.from_json(json.loads(path.read_text()))


def exportable_model(model: RewardModel) -> torch.nn.Module:
    """The plain transformers model to save: LoRA adapters merged into the weights."""
    seqcls = model.seqcls
    if hasattr(seqcls, "merge_and_unload"):
        seqcls = seqcls.merge_and_unload()
        model.seqcls = seqcls
    return seqcls


def save_reward_model(
    model: RewardModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | os.PathLike,
    *,
    state_dict: dict | None = None,
) -> None:
    """Write `save_pretrained` + tokenizer + `rlhfkit_reward.json` to `out_dir` (atomically).

    Args:
        model: The reward model (LoRA adapters are merged first).
        tokenizer: Saved beside the weights.
        out_dir: Destination directory.
        state_dict: Full state dict of `model.seqcls` (from `accelerator.get_state_dict`, with
            the `seqcls.` prefix removed) where the weights are sharded; None = the module's own.
    """
    from rlhfkit.atomic_dirs import replace_dir_atomically

    out = Path(out_dir)
    seqcls = exportable_model(model)
    seqcls.config.num_labels = model.num_heads
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    seqcls.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    (tmp / REWARD_INFO_FILE).write_text(json.dumps(model.info.to_json(), indent=2))
    replace_dir_atomically(tmp, out)


def load_reward_model(
    directory: str | os.PathLike, *, dtype: str = "auto", device: str | torch.device | None = None
) -> RewardModel:
    """Load a saved reward model for scoring (eval mode, no gradients).

    `directory` is one written by `rlhfkit rm` (with `rlhfkit_reward.json`), or a sequence
    classifier from elsewhere with one label and its trained head (scored raw). Anything whose
    weights lack the head, such as a plain causal LM, is refused: transformers would fill the
    head in at random and every score would be noise.
    """
    directory = str(directory)
    if not os.path.isdir(directory):
        raise ConfigError(f"reward_model: {directory!r} is not a directory")
    check_not_run_directory(directory, "reward_model")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a missing head is reported below, as an error
    try:
        seqcls, loading = AutoModelForSequenceClassification.from_pretrained(
            directory, dtype=resolve_dtype(dtype, device), output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"reward_model: cannot load {directory!r}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    stored = read_reward_info(directory)
    check_reward_weights(directory, loading.get("missing_keys", []), has_info=stored is not None)
    num_labels = int(seqcls.config.num_labels)
    if stored is None and num_labels != 1:
        raise ConfigError(
            f"reward_model: {directory} is a sequence classifier with {num_labels} labels and no "
            f"{REWARD_INFO_FILE}: not a reward model (one score, or an rlhfkit rm ensemble)"
        )
    info = stored or RewardInfo(num_heads=1, gain=[1.0], bias=[0.0])
    if info.num_heads != seqcls.config.num_labels:
        raise ConfigError(
            f"reward_model: {REWARD_INFO_FILE} says {info.num_heads} heads, the model has "
            f"{seqcls.config.num_labels}"
        )
    model = RewardModel(seqcls, info)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model


def check_reward_weights(directory: str, missing_keys: Sequence[str], *, has_info: bool) -> None:
    """Raise a one-line `ConfigError` when loading `directory` as a reward model left weights
    missing (`missing_keys`, from transformers' loading info): no `score` head and no
    `rlhfkit_reward.json` means a causal LM; any other gap means a damaged checkpoint."""
    if not missing_keys:
        return
    if not has_info and any(key.startswith("score.") for key in missing_keys):
        raise ConfigError(
            f"reward_model: {directory} is a causal LM, not a reward model: train one with "
            "rlhfkit rm"
        )
    shown = ", ".join(sorted(missing_keys)[:3]) + (" ..." if len(missing_keys) > 3 else "")
    raise ConfigError(f"reward_model: {directory} lacks weights the model needs: {shown}")


# ---------------------------------------------------------------------------------------------
# Text to rewards
# ---------------------------------------------------------------------------------------------


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt,
    response,
    *,
    max_length: int,
    max_prompt_length: int,
    ended: bool = True,
) -> tuple[list[int], list[int]]:
    """Prompt and response ids as training sees them (chat template, EOS, truncation policy).

    A text response to a conversation is the assistant's turn (`as_reply`), as `rm` trains on
    it. `ended=False` is a sampled response the policy did not finish (it ran into
    `max_new_tokens`): its tokens as they are, without the EOS or end of turn that would make
    it read as a finished answer.
    """
    from rlhfkit.data.formats import as_reply
    from rlhfkit.data.tokenize import encode_completion, encode_prompt, truncate

    if isinstance(response, str) and not ended:
        response_ids = tokenizer(response, add_special_tokens=False).input_ids
    else:
        if isinstance(response, str):
            response = as_reply(prompt, response)
        response_ids = encode_completion(tokenizer, prompt, response)
    encoded = truncate(
        encode_prompt(tokenizer, prompt),
        response_ids,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        bos_id=tokenizer.bos_token_id,
    )
    return encoded.prompt_ids, encoded.completion_ids


class RewardScorer(HeadScorer):
    """`(prompts, responses) -> list[float]` over a loaded reward model (normalised rewards).

    Also `score_heads(prompts, responses) -> list[list[float]]` (one list of K per input) and
    `disagreement(prompts, responses) -> list[float]` (std over heads; 0 for one head): see
    `HeadScorer`. After `rlhfkit rm`'s normalisation the disagreement is in units of the
    ensemble reward's std on the reference samples.

    Prompts are text or conversations (rendered with the chat template; a text response to one
    is the assistant's turn). `ended=False` marks a sampled response that ran out of tokens,
    scored without the EOS a finished one gets (`encode_pair`).

    The reward of an ensemble is its heads' mean, less `uncertainty_coef` times their std
    (`ensemble_reward`; 0 unless set with `with_uncertainty_penalty`).
    """

    def __init__(
        self,
        model: RewardModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 16,
        normalized: bool = True,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.normalized = normalized
        self.max_length = max_length or model.info.max_length
        # A prompt leaves the response at least one token of room, whatever `max_length` says
        # (an override below the stored max_prompt_length read every reward at the prompt's
        # last token: all responses to a long prompt scored alike).
        self.max_prompt_length = min(
            max_prompt_length or model.info.max_prompt_length, max(self.max_length - 1, 1)
        )

    @property
    def num_heads(self) -> int:
        return self.model.num_heads

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score_heads(
        self, prompts: Sequence, responses: Sequence, *, ended: Sequence[bool] | None = None
    ) -> list[list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if ended is None:
            ended = [True] * len(responses)
        if len(ended) != len(responses):
            raise ValueError(f"{len(ended)} ended flags for {len(responses)} responses")
        rows = []
        for prompt, response, done in zip(prompts, responses, ended, strict=True):
            prompt_ids, response_ids = encode_pair(
                self.tokenizer,
                prompt,
                response,
                max_length=self.max_length,
                max_prompt_length=self.max_prompt_length,
                ended=bool(done),
            )
            rows.append(prompt_ids + response_ids)
        from rlhfkit.data.collate import pad_right

        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: list[list[float]] = [[] for _ in rows]
        pad_id = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch_rows = [rows[i] for i in chunk]
            input_ids = pad_right(batch_rows, pad_id).to(self.device)
            mask = pad_right([[1] * len(r) for r in batch_rows], 0).to(self.device)
            rewards = self.model.score(input_ids, mask, normalized=self.normalized)
            rewards = rewards.reshape(len(chunk), -1).cpu().tolist()
            for i, value in zip(chunk, rewards, strict=True):
                out[i] = [float(v) for v in value]
        return out


def load_reward_scorer(
    directory: str | os.PathLike,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    dtype: str = "auto",
    normalized: bool = True,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    **_: object,
) -> RewardScorer:
    """Load `directory` (written by `rlhfkit rm`) as a callable `(prompts, responses) -> scores`.

    Args:
        directory: The reward model directory (`OUT/model`).
        batch_size: Rows per forward pass.
        device: Where to run (default: cuda if available, else cpu).
        dtype: Weight dtype.
        normalized: Apply the stored normalisation (mean 0, std 1 on the reference samples).
        max_length: Override the stored maximum length of prompt + response.
        max_prompt_length: Override the stored maximum prompt length (a prompt is cut to leave
            the response at least one token of `max_length` either way).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_reward_model(directory, dtype=dtype, device=device)
    tokenizer = load_tokenizer(str(directory))
    return RewardScorer(
        model, tokenizer, batch_size=batch_size, normalized=normalized, max_length=max_length,
        max_prompt_length=max_prompt_length,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Shared-prompt packing (training)
# ---------------------------------------------------------------------------------------------


@dataclass
class PackedRows:
    """Model inputs for a batch of prompts with their responses, and where each reward is read.

    `input_ids` (B, T); `attention_mask` (B, T) or (B, 1, T, T); `position_ids` (B, T);
    `reward_rows`, `reward_cols` (N,), one per response, in the order responses were given.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    reward_rows: torch.Tensor
    reward_cols: torch.Tensor
    lengths: list[int]  # tokens of each response (for length statistics)

    def to(self, device) -> PackedRows:
        return PackedRows(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.reward_rows.to(device),
            self.reward_cols.to(device),
            self.lengths,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "reward_rows": self.reward_rows,
            "reward_cols": self.reward_cols,
        }


def _last_not_pad(ids: list[int], start: int, pad_id: int | None, fallback: int) -> int:
    """Index of the last token of ids[start:] that is not pad (`fallback` if there is none)."""
    for index in range(len(ids) - 1, start - 1, -1):
        if ids[index] != pad_id:
            return index
    return max(fallback, 0)


def pack_responses(
    prompts: list[list[int]],
    responses: list[list[list[int]]],
    *,
    pad_id: int,
    shared_prompt: bool = True,
    dtype: torch.dtype = torch.float32,
) -> PackedRows:
    """Rows for a batch: each prompt with its responses (rewards read in the given order).

    Args:
        prompts: B prompts (token ids).
        responses: for each prompt, its responses (token ids).
        pad_id: The pad token id.
        shared_prompt: One row `prompt + y_1 + ... + y_K` per prompt with a block mask (the
            prompt is encoded once); False = one ordinary row `prompt + y_i` per response.
        dtype: `torch.bool` (sdpa) or the model's dtype (eager): see `shared_prompt_mask`.
    """
    from rlhfkit.data.collate import pad_right

    rows: list[list[int]] = []
    segments: list[list[int]] = []
    positions: list[list[int]] = []
    reward_rows, reward_cols, lengths = [], [], []
    for prompt, items in zip(prompts, responses, strict=True):
        if shared_prompt:
            row, seg, pos = list(prompt), [0] * len(prompt), list(range(len(prompt)))
            for index, response in enumerate(items, start=1):
                start = len(row)
                row += response
                seg += [index] * len(response)
                pos += range(len(prompt), len(prompt) + len(response))
                reward_rows.append(len(rows))
                reward_cols.append(_last_not_pad(row, start, pad_id, len(prompt) - 1))
                lengths.append(len(response))
            rows.append(row)
            segments.append(seg)
            positions.append(pos)
        else:
            for response in items:
                row = list(prompt) + list(response)
                reward_rows.append(len(rows))
                reward_cols.append(_last_not_pad(row, 0, pad_id, 0))
                lengths.append(len(response))
                rows.append(row)
                positions.append(list(range(len(row))))
    input_ids = pad_right(rows, pad_id)
    position_ids = pad_right(positions, 0)
    if shared_prompt:
        attention_mask = shared_prompt_mask(pad_right(segments, -1), dtype)
    else:
        attention_mask = pad_right([[1] * len(r) for r in rows], 0)
    return PackedRows(
        input_ids,
        attention_mask,
        position_ids,
        torch.tensor(reward_rows, dtype=torch.long),
        torch.tensor(reward_cols, dtype=torch.long),
        lengths,
    )


__all__ = [
    "REWARD_INFO_FILE",
    "PackedRows",
    "RewardInfo",
    "RewardModel",
    "RewardScorer",
    "build_reward_model",
    "encode_pair",
    "ensemble_reward",
    "init_reward_head",
    "is_ensemble",
    "check_reward_weights",
    "load_reward_model",
    "load_reward_scorer",
    "pack_responses",
    "read_reward_info",
    "save_reward_model",
    "shared_prompt_mask",
]
