"""Padding lists of token ids into batches, and packing SFT examples into fixed-length rows."""

from __future__ import annotations

import torch


def pad_right(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    """(B, T) tensor, each row followed by `pad_value`."""
    length = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def pad_left(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    """(B, T) tensor, each row preceded by `pad_value` (prompts for generation)."""
    length = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            out[i, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
    return out


def collate_completions(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion rows.

    Returns:
        input_ids (B, T), attention_mask (B, T), completion_mask (B, T) — 1 on completion tokens.
    """
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    input_ids = pad_right(rows, pad_id)
    attention_mask = pad_right([[1] * len(r) for r in rows], 0)
    completion_mask = pad_right(
        [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions, strict=True)], 0
    )
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
    }


def pack_examples(
    prompts: list[list[int]],
    completions: list[list[int]],
    block_size: int,
    completion_only: bool = True,
) -> list[dict[str, list[int]]]:
    """Greedy first-fit packing into rows of at most `block_size` tokens.

    Each packed row keeps position ids restarting at 0 for every example; transformers turns
    that into a block-diagonal causal mask (no attention across examples) when no 2-D attention
    mask is passed. Examples longer than `block_size` get a row of their own (already truncated
    upstream). `completion_mask` marks the completion tokens, or (``completion_only=False``)
    every token; either way never an example's first token, which nothing in the example
    predicts (unpacked rows never score position 0 either).
    """
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(completions[i])))
    shortest = min((len(p) + len(c) for p, c in zip(prompts, completions, strict=True)), default=0)
    rows: list[dict[str, list[int]]] = []
    open_rows: list[dict[str, list[int]]] = []  # rows with room for at least the shortest example
    for i in order:
        ids = prompts[i] + completions[i]
        if completion_only:
            mask = [0] * len(prompts[i]) + [1] * len(completions[i])
        else:
            mask = [1] * len(ids)
        # An example's first token is predicted by nothing of its own: in a packed row its
        # left neighbour is the previous example's last token (a `{"text"}` record has no prompt).
        mask[:1] = [0]
        for row in open_rows:
            if len(row["input_ids"]) + len(ids) <= block_size:
                break
        else:
            row = {"input_ids": [], "completion_mask": [], "position_ids": []}
            rows.append(row)
            open_rows.append(row)
        row["input_ids"] += ids
        row["completion_mask"] += mask
        row["position_ids"] += list(range(len(ids)))
        if len(row["input_ids"]) + shortest > block_size:
            open_rows.remove(row)  # full for good: no later example fits
    return rows
