"""PPO's critic and the policy+critic module that one optimizer trains.

The critic ``V(x, y_<t)`` estimates, before each response token, the return that follows. Two
layouts:

* a **separate critic** (`ValueModel`): a transformer backbone with a scalar head on every
  position. By default it starts from the reward model (Ziegler et al. 2019; InstructGPT; TRL),
  whose head already maps a state to a score; a reward-model directory written by `rlhfkit rm`
  loads with ``AutoModelForSequenceClassification``, and so does any causal-LM directory (then
  the head is new, drawn by transformers' initialiser);
* a **value head on the policy** (`ActorCritic(value_head=...)`): a Linear(H, 1) on the policy's
  last hidden states, sharing the backbone (cheaper; the two losses then share gradients).

Alignment: both return values in the layout of `TokenLogprobs`: ``values[:, t]`` is the value of
the state that *predicts* token t (the hidden state at position t - 1), so the value, the
log-prob and the reward of a response token sit at the same index.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import (
    check_model_source,
    disable_dropout,
    enable_checkpointing,
    resolve_dtype,
)
from rlhfkit.models.logprobs import _scatter, chunked_token_logprobs, logit_shaping


def is_reward_model_dir(path: str) -> bool:
    """True if `path` holds a sequence-classification (reward) model rather than a causal LM."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    return any("ForSequenceClassification" in name for name in architectures)


def _shifted_values(head_output: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) values at target positions from (B, T) per-position head outputs, shifted by one."""
    predict_mask = target_mask[:, 1:].bool()  # (B, T-1)
    return _scatter(head_output[:, :-1][predict_mask].float(), predict_mask)  # (B, T)


class ValueModel(torch.nn.Module):
    """A backbone (the decoder of a causal LM) and a scalar head applied at every position.

    Args:
        backbone: Module returning ``last_hidden_state`` (B, T, H) for ``input_ids``.
        head: Linear(H, 1).
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self,
        input_ids: torch.Tensor,
        target_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values of the states before each target token.

        Args:
            input_ids: (B, T) token ids.
            target_mask: (B, T) 1 on the tokens whose preceding state is wanted (response tokens).
            attention_mask: (B, T) 1 on real tokens.
            position_ids: (B, T) positions (left padding).

        Returns:
            (B, T) fp32 values, 0 where `target_mask` is 0.
        """
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        return _shifted_values(self.head(hidden).squeeze(-1), target_mask)


def load_value_model(
    path: str, *, dtype: str = "auto", gradient_checkpointing: bool = False
) -> ValueModel:
    """Build the critic from a reward-model directory (head kept, its normalisation folded in:
    `reward_head`) or a causal-LM one (new head).

    Args:
        path: `rlhfkit rm` output `model/` directory, or a policy/SFT directory or hub id.
        dtype: Weight dtype (`auto`, `float32`, `bfloat16`).
        gradient_checkpointing: Recompute the backbone's activations in backward.
    """
    check_model_source(path)
    # A reward model keeps its own head (K heads of an ensemble are averaged into one below);
    # a causal LM gets a new scalar head.
    from_reward_model = is_reward_model_dir(path)
    extra = {} if from_reward_model else {"num_labels": 1}
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # A causal LM's new head is reported as "missing" (with advice to train it): expected here.
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=resolve_dtype(dtype), **extra
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"ppo.value_model: cannot load a critic from {path!r}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    disable_dropout(model)
    if gradient_checkpointing:
        enable_checkpointing(model)
    backbone = getattr(model, model.base_model_prefix)
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"ppo.value_model: {path!r} has no linear `score` head")
    if from_reward_model:
        from rlhfkit.models.reward_model import read_reward_info

        info = read_reward_info(path)
        if info is not None and len(info.gain) != head.out_features:
            raise ConfigError(
                f"ppo.value_model: {path!r}: rlhfkit_reward.json holds {len(info.gain)} "
                f"normalisation gains for a score head of {head.out_features} outputs"
            )
        head = reward_head(head, *((info.gain, info.bias) if info is not None else ([], [])))
    return ValueModel(backbone, head)


def reward_head(head: torch.nn.Linear, gain: list[float], bias: list[float]) -> torch.nn.Linear:
    """The Linear(H, 1) whose output is the reward the scorer gives: the K heads' normalised
    scores averaged, ``mean_k(g_k (w_k·h + b_k) + β_k) = (mean_k g_k w_k)·h + mean_k(g_k b_k +
    β_k)``, one linear map. So a critic started from a reward model predicts, at the start, the
    score PPO is given (normalised), not the raw head's scale (Huang et al. 2024 start theirs
    so). No gains (`[]`): g = 1, β = 0. Always with a bias (`fold_normalization` needs one).

    Args:
        head: Linear(H, K), the reward model's score head(s).
        gain, bias: K normalisation gains and biases (`RewardInfo`), or empty.
    """
    k = head.out_features
    g = torch.tensor(gain or [1.0] * k, dtype=torch.float64)  # (K,)
    beta = torch.tensor(bias or [0.0] * k, dtype=torch.float64)  # (K,)
    weight = head.weight.detach().double()  # (K, H)
    raw_bias = head.bias.detach().double() if head.bias is not None else torch.zeros(k).double()
    out = torch.nn.Linear(head.in_features, 1, bias=True)
    out.to(dtype=head.weight.dtype, device=head.weight.device)
    with torch.no_grad():
        out.weight.copy_((g[:, None] * weight).mean(dim=0, keepdim=True))
        out.bias.copy_((g * raw_bias + beta).mean().reshape(1))
    return out


@torch.no_grad()
def fold_normalization(head: torch.nn.Linear, gain: float, bias: float) -> None:
    """Make `head`'s output `gain * output + bias` in place: what a score normalised afterwards
    (PPO's `ppo.reward_norm_samples`) is, so that the critic predicts it."""
    head.weight.mul_(gain)
    head.bias.mul_(gain).add_(bias)


def new_value_head(lm: torch.nn.Module) -> torch.nn.Linear:
    """A Linear(H, 1) on the policy's hidden states; small weights, bias 0 (values start near 0)."""
    hidden_size = lm.get_output_embeddings().weight.shape[1]
    weight = lm.get_output_embeddings().weight
    head = torch.nn.Linear(hidden_size, 1, dtype=weight.dtype, device=weight.device)
    torch.nn.init.normal_(head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
    torch.nn.init.zeros_(head.bias)
    return head


class ActorCritic(torch.nn.Module):
    """The policy and its critic as one module, so that one `accelerate.prepare`d optimizer (and
    one gradient clipping) covers both.

    Args:
        lm: The policy, a causal LM (possibly peft-wrapped).
        critic: A separate `ValueModel`, or None.
        value_head: A Linear(H, 1) on the policy's hidden states, or None. At most one of
            `critic` and `value_head`; neither for critic-free estimators (RLOO, GRPO).
        chunk_size: Rows per chunk of the LM head's log-softmax.
    """

    def __init__(
        self,
        lm: torch.nn.Module,
        critic: ValueModel | None = None,
        value_head: torch.nn.Linear | None = None,
        *,
        chunk_size: int | None = None,
    ):
        super().__init__()
        if critic is not None and value_head is not None:
            raise ValueError("give a separate critic or a value head, not both")
        self.lm = lm
        self.critic = critic
        self.value_head = value_head
        self.chunk_size = chunk_size
        self.shaping = logit_shaping(lm.config)  # read once, not in every forward

    @property
    def has_values(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def forward(
        self,
        input_ids: torch.Tensor,
        target_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        temperature: float = 1.0,
        with_entropy: bool = False,
        with_values: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Policy log-probs (and entropy, values) at the target tokens.

        Args:
            input_ids: (B, T) prompt + response ids.
            target_mask: (B, T) 1 on response tokens.
            attention_mask: (B, T) 1 on real tokens.
            position_ids: (B, T) positions (left padding).
            temperature: The sampling temperature: log-probs of softmax(logits / T).
            with_entropy: Also return the per-token entropy (no gradient).
            with_values: Also return the critic's values, if there is a critic.

        Returns:
            ``{"logprobs": (B, T), "entropy": (B, T) if asked, "values": (B, T) if asked}``,
            fp32, 0 off the targets.
        """
        hidden = self.lm.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        predict_mask = target_mask[:, 1:].bool()  # (B, T-1): position t-1 predicts token t
        logps, entropy = chunked_token_logprobs(
            hidden[:, :-1][predict_mask],  # (N, H)
            self.lm.get_output_embeddings(),
            input_ids[:, 1:][predict_mask],  # (N,)
            temperature=temperature,
            chunk_size=self.chunk_size,
            with_entropy=with_entropy,
            shaping=self.shaping,
        )
        out = {"logprobs": _scatter(logps, predict_mask)}
        if with_entropy:
            out["entropy"] = _scatter(entropy, predict_mask)
        if with_values and self.value_head is not None:
            out["values"] = _shifted_values(self.value_head(hidden).squeeze(-1), target_mask)
        elif with_values and self.critic is not None:
            out["values"] = self.critic(input_ids, target_mask, attention_mask, position_ids)
        return out


__all__ = [
    "ActorCritic",
    "ValueModel",
    "fold_normalization",
    "is_reward_model_dir",
    "load_value_model",
    "new_value_head",
    "reward_head",
]
