"""Per-token log-probabilities of chosen tokens, computed without a full fp32 logits tensor.

Every stage needs `log π(x_t | x_<t)` at completion positions only (SFT's NLL, DPO's sequence
log-probs, PPO's ratios). A plain forward materialises logits of shape (B, T, V) and, upcast to
fp32 for a stable log-softmax, that tensor dominates memory for real vocabularies (151,936 for
Qwen2: 8 × 512 × 151,936 × 4 bytes = 2.5 GB). Here the backbone runs once, hidden states are
gathered at the N completion positions only, and the LM head plus log-softmax run over them in
chunks of rows; with `recompute=True` (default when the logits are large) each chunk's logits are
recomputed in the backward pass instead of being kept.

A chunk holds at most `LOGITS_PER_CHUNK` logits (2^27: 512 MB in fp32), so its rows follow the
vocabulary: 883 rows for Qwen2's 151,936 tokens, every row at once for a small vocabulary. Fewer,
larger chunks launch fewer kernels; smaller ones hold less memory (the chunk's logits live in
bf16 and fp32 at once, and again in the backward pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Above this many logits elements per call, chunks are recomputed in backward to save memory.
RECOMPUTE_THRESHOLD = 1 << 24
# Most logits elements in one chunk (rows per chunk = this // vocabulary size).
LOGITS_PER_CHUNK = 1 << 27


def rows_per_chunk(vocab_size: int, budget: int = LOGITS_PER_CHUNK) -> int:
    """Rows of hidden states per LM-head chunk so that a chunk has at most `budget` logits."""
    return max(1, budget // max(1, vocab_size))


def _chunk_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """(n, V) fp32 logits of the tempered distribution: head(h) / temperature, after the
    model's own soft cap `c · tanh(logits / c)` where it has one (Gemma 2 and 3)."""
    logits = F.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits / temperature if temperature != 1.0 else logits


def _chunk_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """(n,) log softmax(logits)[target] = logits[target] - logsumexp(logits)."""
    logits = _chunk_logits(hidden, weight, bias, temperature, softcap)  # (n, V)
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n,)
    return target_logits - torch.logsumexp(logits, dim=-1)


def _chunk_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both from one LM-head matmul: (n,) log-probs (with gradient) and (n,) entropy
    H = -sum_v p_v log p_v (without), where log p = logits - logsumexp(logits)."""
    logits = _chunk_logits(hidden, weight, bias, temperature, softcap)  # (n, V)
    logz = torch.logsumexp(logits, dim=-1)  # (n,)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    with torch.no_grad():
        logp = logits - logz.unsqueeze(-1)  # (n, V)
        entropy = -(logp.exp() * logp).sum(-1)
    return logprobs, entropy


@torch.no_grad()
def _chunk_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """(n,) entropy of the tempered distribution, for chunks whose logits are not kept."""
    logp = _chunk_logits(hidden, weight, bias, temperature, softcap).log_softmax(-1)  # (n, V)
    return -(logp.exp() * logp).sum(-1)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    recompute: bool | None = None,
    with_entropy: bool = False,
    shaping: tuple[float, float | None] = (1.0, None),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(h) / temperature)[target] for N rows, chunk by chunk.

    Args:
        hidden: (N, H) hidden states at the positions that predict `targets`.
        head: The LM head (weight (V, H), optional bias).
        targets: (N,) token ids.
        temperature: Sampling temperature; log-probs are those of the tempered distribution.
        chunk_size: Rows per chunk; None = `rows_per_chunk(V)`.
        recompute: Recompute chunk logits in backward (memory O(N·H) instead of O(N·V)).
            None chooses by size.
        with_entropy: Also return the entropy of each row's distribution (no gradient).
        shaping: The model's own logit shaping `(scale, softcap)` (`logit_shaping`): logits
            are multiplied by `scale`, then soft-capped, then tempered, as its forward does.

    Returns:
        (logprobs (N,), entropy (N,) or None).
    """
    scale, softcap = shaping
    if softcap is None:
        temperature = temperature / scale  # (s · z) / T = z / (T / s)
    elif scale != 1.0:  # no model has both; `logit_shaping` refuses such a config
        raise ValueError("a logit scale and a soft cap together are not supported")
    n_rows, vocab = hidden.shape[0], head.weight.shape[0]
    chunk_size = chunk_size or rows_per_chunk(vocab)
    if recompute is None:
        recompute = torch.is_grad_enabled() and n_rows * vocab > RECOMPUTE_THRESHOLD
    pieces, entropies = [], []
    for start in range(0, n_rows, chunk_size):
        h = hidden[start : start + chunk_size]  # (n, H)
        t = targets[start : start + chunk_size]  # (n,)
        if recompute:
            lp = checkpoint(
                _chunk_logprobs, h, head.weight, head.bias, t, temperature, softcap,
                use_reentrant=False,
            )  # fmt: skip
            if with_entropy:  # the logits are not kept, so the entropy takes its own matmul
                entropies.append(
                    _chunk_entropy(h.detach(), head.weight, head.bias, temperature, softcap)
                )
        elif with_entropy:
            lp, entropy = _chunk_logprobs_and_entropy(
                h, head.weight, head.bias, t, temperature, softcap
            )
            entropies.append(entropy)
        else:
            lp = _chunk_logprobs(h, head.weight, head.bias, t, temperature, softcap)
        pieces.append(lp)
    if not pieces:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(pieces), (torch.cat(entropies) if with_entropy else None)


def logit_shaping(config) -> tuple[float, float | None]:
    """`(scale, softcap)` a model's forward applies to its head's logits, which log-probs
    computed from the head's weight must apply too: Cohere multiplies them by `logit_scale`,
    Granite divides them by `logits_scaling`, Gemma 2 and 3 soft-cap them at
    `final_logit_softcapping` (c · tanh(z / c)). (1.0, None) for every other model."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = float(getattr(text, "logit_scale", None) or 1.0)
    scaling = getattr(text, "logits_scaling", None)
    if scaling:
        scale /= float(scaling)
    softcap = getattr(text, "final_logit_softcapping", None)
    if softcap is not None and scale != 1.0:
        from rlhfkit.errors import ConfigError

        raise ConfigError(
            f"model: {type(config).__name__} both scales and soft-caps its logits, which "
            "rlhfkit's log-probs do not reproduce"
        )
    return scale, (float(softcap) if softcap else None)


class TokenLogprobs(torch.nn.Module):
    """Wraps a causal LM so that its forward returns log π(x_t | x_<t) at masked positions.

    Wrapping (rather than calling the LM's parts from a recipe) keeps `accelerate.prepare`
    (DDP, FSDP2, DeepSpeed) in charge of the forward pass. `self.lm` is the HF (or peft) model:
    save it with `save_pretrained` as usual.
    """

    def __init__(self, lm: torch.nn.Module, *, chunk_size: int | None = None):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size
        self.shaping = logit_shaping(lm.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        target_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        predicted_from: torch.Tensor | None = None,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Log-probs of the tokens where `target_mask` is 1.

        Args:
            input_ids: (B, T) token ids.
            target_mask: (B, T) 1 where log π(x_t | x_<t) is wanted (position 0 is ignored
                unless `predicted_from` says where it is predicted from).
            attention_mask: (B, T) 1 for real tokens; (B, 1, T, T) for shared-prompt rows
                (`rlhfkit.models.shared_prompt`); None with `position_ids` for packed rows.
            position_ids: (B, T) explicit positions (left padding, packing); None = 0..T-1.
            predicted_from: (B, T) for each target position t, the position whose hidden state
                predicts it; None = t - 1. Shared-prompt rows need it: every response's first
                token is predicted from the prompt's last token.
            temperature: Divide logits by this before the softmax.
            with_entropy: Also return per-token entropy (B, T), no gradient.

        Returns:
            `{"logprobs": (B, T) fp32, zero where target_mask is 0, "entropy": (B, T) if asked}`.
        """
        decoder = self.lm.get_decoder()
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        if predicted_from is None:
            predict_mask = target_mask[:, 1:].bool()  # (B, T-1): position t-1 predicts token t
            rows = hidden[:, :-1][predict_mask]  # (N, H)
            where = F.pad(predict_mask, (1, 0))  # (B, T): the targets (never position 0)
        else:
            where = target_mask.bool()  # (B, T)
            rows_of_targets = where.nonzero(as_tuple=True)[0]  # (N,)
            rows = hidden[rows_of_targets, predicted_from[where]]  # (N, H)
        logps, entropy = chunked_token_logprobs(
            rows,
            self.lm.get_output_embeddings(),
            input_ids[where],  # (N,)
            temperature=temperature,
            chunk_size=self.chunk_size,
            with_entropy=with_entropy,
            shaping=self.shaping,
        )
        out = {"logprobs": _place(logps, where)}
        if with_entropy:
            out["entropy"] = _place(entropy, where)
        return out


def _place(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Put N values at the True positions of a (B, T) zero tensor."""
    full = values.new_zeros(where.shape)  # (B, T)
    full[where] = values
    return full


def _scatter(values: torch.Tensor, predict_mask: torch.Tensor) -> torch.Tensor:
    """Put N values back at the masked positions of a (B, T) zero tensor (shifted by one):
    `predict_mask` (B, T-1) marks the positions t-1 whose prediction of token t was taken."""
    return _place(values, F.pad(predict_mask, (1, 0)))


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    target_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference implementation with a full logits tensor, for tests: (B, T) log-probs."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).logits.float()  # (B, T, V)
    logp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    full = torch.zeros_like(input_ids, dtype=torch.float32)
    full[:, 1:] = logp * target_mask[:, 1:]
    return full
