"""Statistics over the real (unpadded) tokens of a padded batch, and whitening.

``mask`` is 1 (or True) on the tokens that count -- the response tokens -- and 0 on padding.
Padding entries never enter a result, even if they hold ``inf`` or ``nan`` (they are selected
away with ``torch.where`` rather than multiplied by 0).

Whitening follows OpenAI's lm-human-preferences (``whiten`` in ``lm_human_preferences/utils``)
with a mask added, as TRL does: the mean and the *biased* variance over the masked entries,
``(x - mean) * rsqrt(var + 1e-8)``, and the mean added back when ``shift_mean=False`` (used for
rewards, whose sign carries meaning). Departure: masked positions of the result are 0, where the
references leave whatever the arithmetic gives.

An empty mask gives NaN (0 / 0); a recipe's divergence check reports it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is non-zero.

    Args:
        x: Values, any shape, e.g. (B, T).
        mask: Same shape as ``x``; non-zero marks the entries that count.
        dim: Reduce along this dimension only; ``None`` reduces over everything.

    Returns:
        A 0-dim tensor, or ``x``'s shape without ``dim``.
    """
    keep = mask.bool()  # (B, T)
    total = torch.where(keep, x, torch.zeros_like(x))  # (B, T)
    if dim is None:
        return total.sum() / keep.sum()
    return total.sum(dim) / keep.sum(dim)


def masked_var(x: Tensor, mask: Tensor, *, unbiased: bool = False) -> Tensor:
    """Variance of ``x`` over the entries where ``mask`` is non-zero.

    Args:
        x: Values, any shape, e.g. (B, T).
        mask: Same shape as ``x``; non-zero marks the entries that count.
        unbiased: Divide by ``n - 1`` (Bessel) instead of ``n``. The default, biased, is what
            whitening uses.

    Returns:
        A 0-dim tensor.
    """
    keep = mask.bool()  # (B, T)
    mean = masked_mean(x, keep)  # ()
    centered = torch.where(keep, x - mean, torch.zeros_like(x))  # (B, T)
    count = keep.sum()  # ()
    variance = (centered**2).sum() / count  # ()
    if unbiased:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalises ``x`` to unit variance (and zero mean) over the masked entries.

    Args:
        x: Values to whiten, e.g. advantages, shape (B, T).
        mask: Same shape as ``x``; non-zero marks the entries that count.
        shift_mean: If False, the mean is added back: only the scale changes.
        eps: Added to the variance before the square root.

    Returns:
        ``(x - mean) * rsqrt(var + eps)`` (``+ mean`` if not ``shift_mean``), shape (B, T),
        with 0 at masked positions.
    """
    keep = mask.bool()  # (B, T)
    mean = masked_mean(x, keep)  # ()
    variance = masked_var(x, keep)  # ()  biased
    whitened = (x - mean) * torch.rsqrt(variance + eps)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean  # (B, T)
    return torch.where(keep, whitened, torch.zeros_like(whitened))  # (B, T)


__all__ = ["masked_mean", "masked_var", "masked_whiten"]
