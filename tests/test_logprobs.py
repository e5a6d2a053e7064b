"""Chunked LM-head log-probs (`models/logprobs.py`): chunk sizes follow the vocabulary, and any
chunking gives the values and gradients of one full log-softmax."""

import pytest
import torch

from rlhfkit.models.logprobs import LOGITS_PER_CHUNK, chunked_token_logprobs, rows_per_chunk


def test_rows_per_chunk_by_hand():
    """2^27 = 134,217,728 logits per chunk: 134,217,728 // 151,936 = 883 rows (Qwen2's vocab;
    883 x 151,936 = 134,159,488 <= 2^27 < 884 x 151,936); 2^27 // 320 = 419,430 rows (tiny);
    never fewer than one row."""
    assert LOGITS_PER_CHUNK == 134_217_728
    assert rows_per_chunk(151_936) == 883
    assert rows_per_chunk(320) == 419_430
    assert rows_per_chunk(10, budget=3) == 1


@pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
@pytest.mark.parametrize("recompute", [False, True])
def test_any_chunking_matches_one_full_log_softmax(chunk_size, recompute):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=True)
    hidden = torch.randn(10, 8, requires_grad=True)
    targets = torch.randint(0, 11, (10,))

    full = (head(hidden) / 0.7).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    (full_grad,) = torch.autograd.grad(full.sum(), hidden)

    chunked, entropy = chunked_token_logprobs(
        hidden, head, targets, temperature=0.7, chunk_size=chunk_size, recompute=recompute,
        with_entropy=True,
    )  # fmt: skip
    (chunked_grad,) = torch.autograd.grad(chunked.sum(), hidden)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_grad, full_grad, rtol=0, atol=1e-6)
    logp = (head(hidden) / 0.7).log_softmax(-1)
    torch.testing.assert_close(entropy, -(logp.exp() * logp).sum(-1).detach(), rtol=0, atol=1e-6)
