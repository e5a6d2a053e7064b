"""Reward model: shared-prompt packing, head initialisation, save/load with transformers,
normalisation in the scorer, LoRA, and the ranking loss of the recipe (worked by hand)."""

import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.data.formats import PreferenceExample, RankingExample
from rlhfkit.losses.bradley_terry import ranking_pairs
from rlhfkit.models.loading import LoraSettings, load_tokenizer
from rlhfkit.models.reward_fn import load_reward_function
from rlhfkit.models.reward_model import (
    REWARD_INFO_FILE,
    build_reward_model,
    init_reward_head,
    load_reward_model,
    pack_responses,
    save_reward_model,
)
from rlhfkit.recipes.rm import _batch_inputs, comparison_loss, encode_comparisons

PROMPTS = ["User: What is 3+4?\nBot:", "User: Name a fruit.\nBot:"]
RESPONSES = [[" Sure! 3+4 is 7.", " 8.", " Go away."], [" An apple.", " Ugh, no."]]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def _ids(tokenizer):
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    responses = [
        [tokenizer(r).input_ids + [tokenizer.eos_token_id] for r in rs] for rs in RESPONSES
    ]
    return prompts, responses


def test_shared_prompt_rows_equal_plain_rows_and_transformers(tiny_model, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_reward_model(str(tiny_model), num_heads=2, pad_token_id=tokenizer.pad_token_id)
    prompts, responses = _ids(tokenizer)
    shared = pack_responses(prompts, responses, pad_id=tokenizer.pad_token_id)
    plain = pack_responses(prompts, responses, pad_id=tokenizer.pad_token_id, shared_prompt=False)
    assert shared.input_ids.shape[0] == 2 and plain.input_ids.shape[0] == 5
    # Shared rows hold each prompt once: fewer tokens than one row per response.
    assert int(shared.attention_mask.shape[-1]) < sum(
        len(p) + len(r) for p, rs in zip(prompts, responses, strict=True) for r in rs
    )
    with torch.no_grad():
        from_shared = model(**shared.model_inputs())  # (5, 2)
        as_bool = pack_responses(
            prompts, responses, pad_id=tokenizer.pad_token_id, dtype=torch.bool
        )
        torch.testing.assert_close(model(**as_bool.model_inputs()), from_shared)
        eager = build_reward_model(
            str(tiny_model), num_heads=2, attn_implementation="eager", seed=0
        )
        eager.load_state_dict(model.state_dict())
        assert eager.shared_prompt_mask_dtype() == torch.float32
        torch.testing.assert_close(eager(**shared.model_inputs()), from_shared)
        from_plain = model(**plain.model_inputs())
        scored = model.score(plain.input_ids, (plain.input_ids != tokenizer.pad_token_id).long())
    assert from_shared.shape == (5, 2)
    torch.testing.assert_close(from_shared, from_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scored, from_plain, rtol=1e-5, atol=1e-6)

    save_reward_model(model, tokenizer, tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert hf.config.num_labels == 2 and hf.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        logits = hf(
            input_ids=plain.input_ids,
            attention_mask=(plain.input_ids != tokenizer.pad_token_id).long(),
        ).logits
    torch.testing.assert_close(logits, from_plain, rtol=1e-5, atol=1e-6)


def test_score_handles_left_padding(tiny_model, tokenizer):
    model = build_reward_model(str(tiny_model), pad_token_id=tokenizer.pad_token_id)
    ids = tokenizer("User: hi\nBot: Hello.").input_ids + [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id
    right = torch.tensor([ids + [pad, pad]])
    left = torch.tensor([[pad, pad] + ids])
    with torch.no_grad():
        a = model.score(right, (right != pad).long())
        b = model.score(left, (left != pad).long())
    assert a.shape == (1,)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_head_initialisation(tiny_model, tokenizer):
    """Head N(0, 1/sqrt(d_model + 1)): d_model = 160 -> std 1/sqrt(161) = 0.0788; with 8 heads
    there are 1280 weights, enough to see the std within 10 %. transformers' head has no bias
    (a bias cancels in the Bradley-Terry loss); a Linear with one gets bias 0."""
    model = build_reward_model(str(tiny_model), num_heads=8, seed=3)
    weight = model.head().weight.detach()
    assert weight.shape == (8, 160)
    assert abs(float(weight.std()) - 1 / math.sqrt(161)) < 0.1 / math.sqrt(161)
    assert abs(float(weight.mean())) < 0.01
    assert model.head().bias is None
    linear = torch.nn.Linear(1000, 4)
    init_reward_head(linear, seed=0)
    assert torch.all(linear.bias == 0)
    assert abs(float(linear.weight.detach().std()) - 1 / math.sqrt(1001)) < 0.003
    # Dropout off everywhere.
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_normalisation_stored_and_applied(tiny_model, tokenizer, tmp_path):
    model = build_reward_model(str(tiny_model), pad_token_id=tokenizer.pad_token_id)
    model.set_normalization([2.0], [-0.5], "test")
    save_reward_model(model, tokenizer, tmp_path / "rm")
    info = json.loads((tmp_path / "rm" / REWARD_INFO_FILE).read_text())
    assert info["gain"] == [2.0] and info["bias"] == [-0.5] and info["num_heads"] == 1
    raw_scorer = load_reward_function(str(tmp_path / "rm"), normalized=False, device="cpu")
    scorer = load_reward_function(str(tmp_path / "rm"), device="cpu")
    prompts = [PROMPTS[0]] * 3
    raw = raw_scorer(prompts, RESPONSES[0])
    normed = scorer(prompts, RESPONSES[0])
    assert normed == pytest.approx([2.0 * r - 0.5 for r in raw], rel=1e-5, abs=1e-6)
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.info.normalized_on == "test"


def test_lora_keeps_head_trainable_and_exports_plain_model(tiny_model, tokenizer, tmp_path):
    model = build_reward_model(
        str(tiny_model),
        pad_token_id=tokenizer.pad_token_id,
        lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)
    assert any("lora_" in n for n in trainable)
    assert not any("mlp" in n for n in trainable)
    prompts, responses = _ids(tokenizer)
    rows = pack_responses(prompts, responses, pad_id=tokenizer.pad_token_id)
    model(**rows.model_inputs()).sum().backward()
    assert model.head().weight.grad is not None
    with torch.no_grad():
        before = model(**rows.model_inputs())
    save_reward_model(model, tokenizer, tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert not any("lora" in k for k in hf.state_dict())
    reloaded = load_reward_model(tmp_path / "rm")
    with torch.no_grad():
        after = reloaded(**rows.model_inputs())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_ranking_becomes_all_pairs_of_one_batch_element(tokenizer):
    ranking = RankingExample(PROMPTS[0], RESPONSES[0], [2, 0, 1])
    preference = PreferenceExample(PROMPTS[1], RESPONSES[1][0], RESPONSES[1][1], margin=0.5)
    same = PreferenceExample(PROMPTS[1], " A.", " A.")
    comparisons = encode_comparisons(
        [ranking, preference, same], tokenizer, max_length=64, max_prompt_length=32
    )
    assert len(comparisons) == 2  # chosen == rejected is skipped
    assert comparisons[0].pairs == ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    rows, pairs = _batch_inputs(comparisons, [0, 1], tokenizer.pad_token_id, True, torch.float32)
    assert rows.input_ids.shape[0] == 2  # one row per comparison
    assert pairs["better"].tolist() == [2, 2, 0, 3]
    assert pairs["worse"].tolist() == [0, 1, 1, 4]
    assert pairs["weight"].tolist() == pytest.approx([1 / 3] * 3 + [1.0])
    assert pairs["margin"].tolist() == [0.0, 0.0, 0.0, 0.5]


def test_comparison_loss_by_hand():
    """Ranking of three responses with rewards r = (1, 0, -1), best first: pairs (0,1), (0,2),
    (1,2) with gaps 1, 2, 1, each weighted 1/3:
    -log σ(1) = 0.3132617, -log σ(2) = 0.1269280 -> (2 * 0.3132617 + 0.1269280) / 3 = 0.2511505.
    Centring with c = 0.1 adds c (r_w + r_l)^2 = 0.1 * (1, 0, 1) -> + 0.2 / 3 = 0.3178172.
    A margin of 0.5 on every pair (use_margin) gives gaps 0.5, 1.5, 0.5:
    -log σ(0.5) = 0.4740770, -log σ(1.5) = 0.2014133 -> (2 * 0.4740770 + 0.2014133) / 3
    = 0.3831891. Two identical heads give the same loss (the mean over heads)."""
    rewards = torch.tensor([[1.0], [0.0], [-1.0]], dtype=torch.float64)
    pairs = {
        "better": torch.tensor([0, 0, 1]),
        "worse": torch.tensor([1, 2, 2]),
        "margin": torch.full((3,), 0.5, dtype=torch.float64),
        "weight": torch.full((3,), 1 / 3, dtype=torch.float64),
    }
    loss, chosen, rejected = comparison_loss(rewards, pairs, use_margin=False, center_coef=0.0)
    assert float(loss) == pytest.approx(0.25115046202647278, rel=1e-6)
    assert chosen.tolist() == [1.0, 1.0, 0.0] and rejected.tolist() == [0.0, -1.0, -1.0]
    loss, _, _ = comparison_loss(rewards, pairs, use_margin=False, center_coef=0.1)
    assert float(loss) == pytest.approx(0.25115046202647278 + 0.2 / 3, rel=1e-6)
    loss, _, _ = comparison_loss(rewards, pairs, use_margin=True, center_coef=0.0)
    assert float(loss) == pytest.approx((2 * 0.4740769841801067 + 0.2014132779827524) / 3)
    two_heads = rewards.repeat(1, 2)
    loss, _, _ = comparison_loss(two_heads, pairs, use_margin=False, center_coef=0.0)
    assert float(loss) == pytest.approx(0.25115046202647278, rel=1e-6)


def test_sampled_responses_are_scored_as_rm_trained_on_them(tiny_model, tokenizer):
    """A text response to a conversation is the assistant's turn (`as_reply`), so the reward is
    read where `rm` trained it to be read (after the template's end of turn), not at a bare EOS
    after the rendered prompt text; a response that ran out of tokens (`ended=False`) is scored
    as sampled, without the EOS that would make it a finished answer."""
    from rlhfkit.data.tokenize import encode_completion, encode_prompt, render_prompt
    from rlhfkit.models.reward_fn import score_samples
    from rlhfkit.models.reward_model import RewardScorer, encode_pair

    chat = [{"role": "user", "content": "Name a fruit."}]
    limits = {"max_length": 256, "max_prompt_length": 128}
    prompt_ids, response_ids = encode_pair(tokenizer, chat, "A pear.", **limits)
    assert prompt_ids == encode_prompt(tokenizer, chat)
    reply = [{"role": "assistant", "content": "A pear."}]
    assert response_ids == encode_completion(tokenizer, chat, reply)
    # The old path: the text plus a bare EOS, read at <|im_end|> instead of after the turn.
    assert tokenizer.decode(response_ids) == "A pear.<|im_end|>\n"
    _, unfinished = encode_pair(tokenizer, chat, "A pe", ended=False, **limits)
    assert unfinished == tokenizer("A pe", add_special_tokens=False).input_ids
    _, plain = encode_pair(tokenizer, "User: hi\nBot:", " Hello", ended=False, **limits)
    assert plain[-1] != tokenizer.eos_token_id
    _, plain_done = encode_pair(tokenizer, "User: hi\nBot:", " Hello", **limits)
    assert plain_done == plain + [tokenizer.eos_token_id]

    model = build_reward_model(str(tiny_model), pad_token_id=tokenizer.pad_token_id).eval()
    scorer = RewardScorer(model, tokenizer, max_length=256, max_prompt_length=128)

    def direct(ids: list[int]) -> float:
        with torch.no_grad():
            return float(model.score(torch.tensor([ids]))[0])

    rendered = render_prompt(tokenizer, chat)
    got = score_samples(
        scorer, [chat, chat], ["A pear.", "A pe"], rendered=[rendered] * 2, ended=[True, False]
    )
    assert got == pytest.approx(
        [direct(prompt_ids + response_ids), direct(prompt_ids + unfinished)]
    )
    seen = []
    score_samples(
        lambda p, r: seen.append((p, r)) or [0.0] * len(p),
        [chat], ["A pe"], rendered=[rendered], ended=[False],
    )  # fmt: skip
    assert seen == [([rendered], ["A pe"])]  # other rewards keep the text contract
