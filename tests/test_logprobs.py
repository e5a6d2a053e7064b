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


def test_packed_sft_rows_give_each_example_its_own_logprobs(tiny_model):
    """SFT's packed rows (`sft.packing=true`) restart positions per example and pass no 2-D mask;
    transformers then gives each example a block-diagonal causal mask (only without a KV cache,
    hence `use_cache=False` in every training forward). Each example's log-probs in a packed row
    (two examples, then a padded tail) equal those it gets alone; a mask that let the second
    example see the first would change them by whole nats (measured: up to 9 in the logits)."""
    from rlhfkit.data.collate import pack_examples
    from rlhfkit.models.loading import load_causal_lm
    from rlhfkit.models.logprobs import TokenLogprobs
    from rlhfkit.recipes.sft import _batch

    model = TokenLogprobs(load_causal_lm(str(tiny_model), trainable=False).eval())
    prompts = [[40, 41, 42, 43, 44], [50, 51, 52]]
    completions = [[60, 61, 62], [70, 71, 72, 73]]
    rows = pack_examples(prompts, completions, block_size=16, completion_only=False)
    rows.append({"input_ids": [80, 81], "completion_mask": [0, 1], "position_ids": [0, 1]})
    packed = _batch(rows, [0, 1], pad_id=0, device="cpu")
    assert packed["input_ids"].shape == (2, 15)  # 8 + 7 tokens in one row; the other padded
    with torch.no_grad():
        together = model(**packed)["logprobs"][0]  # (15,)
        offset = 0  # the examples sit in the packed row in the order they get rows alone
        for example in pack_examples(prompts, completions, 8, completion_only=False):
            ids = example["input_ids"]
            assert packed["input_ids"][0, offset : offset + len(ids)].tolist() == ids
            alone = model(**_batch([example], [0], pad_id=0, device="cpu"))["logprobs"][0]
            torch.testing.assert_close(
                together[offset : offset + len(ids)], alone, rtol=1e-5, atol=1e-5
            )
            offset += len(ids)
        assert offset == 15


@pytest.mark.parametrize(
    ("model_type", "shaping"),
    [
        ("gemma2", {"final_logit_softcapping": 2.0}),  # c · tanh(z / c), c = 2
        ("cohere", {"logit_scale": 0.5}),  # z · 0.5
        ("granite", {"logits_scaling": 4.0}),  # z / 4
        ("llama", {}),
    ],
)
def test_log_probs_reproduce_the_models_own_logit_shaping(model_type, shaping):
    """Log-probs apply the head's weight to the hidden states, so whatever the model's forward
    does to its logits after the head must be done here too: without it a tiny Gemma 2 with a
    soft cap of 2 differed from its own forward (review: 1.2e-3 here, more with real logit
    sizes), a Cohere or Granite model by its scale. At temperature 0.7 and 1, every target's
    log-prob equals log_softmax(forward logits / T) of the model itself to 1e-5."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhfkit.models.logprobs import TokenLogprobs

    config = AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, **shaping,
    )  # fmt: skip
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        lm.get_output_embeddings().weight.mul_(30)  # logits large enough for a cap to bite
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.ones_like(ids)
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            full = (lm(input_ids=ids).logits[:, :-1] / temperature).log_softmax(-1)
            want = full.gather(-1, ids[:, 1:, None]).squeeze(-1)
            got = TokenLogprobs(lm)(ids, mask, temperature=temperature)["logprobs"][:, 1:]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
