"""Reward model: shared-prompt packing, head initialisation, dropout off, ensemble heads and their
disagreement, save/load with transformers, normalisation in the scorer (and its reset when a
reward model is trained again), LoRA, and the ranking loss of the recipe (worked by hand)."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.data.formats import PreferenceExample, RankingExample
from rlhfkit.data.tokenize import TokenStats
from rlhfkit.errors import ConfigError
from rlhfkit.losses.bradley_terry import ranking_pairs
from rlhfkit.models.loading import LoraSettings, load_tokenizer
from rlhfkit.models.reward_fn import load_reward_function
from rlhfkit.models.reward_model import (
    REWARD_INFO_FILE,
    RewardScorer,
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


def _checkpoint_with_dropout(tiny_model, out):
    """A copy of the tiny model whose config asks for dropout 0.5 everywhere it has a rate
    (`attention_dropout` for Llama, plus any other `*dropout*` / `*pdrop*` float field)."""
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in list(config.items()):
        if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)):
            config[key] = 0.5
    config["attention_dropout"] = 0.5
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_dropout_off_in_train_mode(tiny_model, tokenizer, tmp_path):
    """The reward is a deterministic function of the text while training (issue: "dropout
    off"). The tiny Llama has no `nn.Dropout` module: its only dropout is the attention
    kernel's `dropout_p`, which each attention module copies from `config.attention_dropout`
    into a float when it is built. From a checkpoint asking for 0.5, a plain transformers
    classifier in train mode gives two different rewards for one batch (so the check can
    fail); the reward model built by rlhfkit must give identical ones."""
    checkpoint = _checkpoint_with_dropout(tiny_model, tmp_path / "dropout")
    prompts, responses = _ids(tokenizer)
    rows = pack_responses(prompts, responses, pad_id=tokenizer.pad_token_id, shared_prompt=False)
    mask = (rows.input_ids != tokenizer.pad_token_id).long()

    torch.manual_seed(0)
    plain = AutoModelForSequenceClassification.from_pretrained(checkpoint).train()
    assert plain.config.attention_dropout == 0.5
    with torch.no_grad():
        first = plain(input_ids=rows.input_ids, attention_mask=mask).logits
        second = plain(input_ids=rows.input_ids, attention_mask=mask).logits
    assert not torch.equal(first, second)  # dropout is live in this checkpoint

    model = build_reward_model(str(checkpoint), num_heads=2, pad_token_id=tokenizer.pad_token_id)
    model.train()
    assert model.training
    with torch.no_grad():
        first = model(**rows.model_inputs())  # (5, 2), the training path
        second = model(**rows.model_inputs())
        scored = [model.score(rows.input_ids, mask, normalized=False) for _ in range(2)]
    assert torch.equal(first, second)
    assert torch.equal(scored[0], scored[1])
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_ensemble_heads_start_different(tiny_model, tokenizer):
    """K = 3 heads are drawn as one (3, d_model) matrix from N(0, 1/sqrt(d_model + 1)), so each
    row is its own draw: no two rows agree, each head gives each input a different reward, and
    the untrained ensemble already disagrees. The same seed draws the same heads."""
    model = build_reward_model(str(tiny_model), num_heads=3, pad_token_id=tokenizer.pad_token_id)
    weight = model.head().weight.detach()  # (3, 160)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(weight[i], weight[j], atol=1e-3)
    again = build_reward_model(str(tiny_model), num_heads=3, seed=0)
    assert torch.equal(again.head().weight, model.head().weight)
    scorer = RewardScorer(model.eval(), tokenizer, max_length=64, max_prompt_length=32)
    heads = scorer.score_heads([PROMPTS[0]] * 3, RESPONSES[0])  # (3 inputs, 3 heads)
    for row in heads:
        assert len(set(row)) == 3
    assert all(value > 0 for value in scorer.disagreement([PROMPTS[0]] * 3, RESPONSES[0]))


def test_scorer_disagreement_by_hand(tiny_model, tokenizer):
    """`RewardScorer.disagreement` is the population std (ddof 0) across heads of each input's
    normalised head scores, sqrt((1/K) sum_k (s_k - s̄)^2).

    Case 1, head weights all 0 and biases (1, 2, 6) (gain 1): every input scores s = (1, 2, 6),
    s̄ = 3, deviations (-2, -1, 3), variance (4 + 1 + 9)/3 = 14/3, std 2.1602469
    (ddof 1 would give sqrt(14/2) = 2.6457513).
    Case 2, head rows (w, -w, 0) for one vector w (gain 1, bias 0): the raw scores are (a, -a, 0)
    with a = w · h the first head's reward, s̄ = 0, variance 2a²/3, std |a| sqrt(2/3)
    = 0.8164966 |a|. With gains (2, 2, 2) and biases (5, 5, 5) every score is 2 s_k + 5:
    the std doubles."""
    model = build_reward_model(str(tiny_model), num_heads=3, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    scorer = RewardScorer(model, tokenizer, max_length=64, max_prompt_length=32)
    prompts, responses = [PROMPTS[0]] * 3, RESPONSES[0]
    head = model.head()
    with torch.no_grad():
        head.weight.zero_()
    model.set_normalization([1.0, 1.0, 1.0], [1.0, 2.0, 6.0], "test")
    assert scorer.score_heads(prompts, responses) == [[1.0, 2.0, 6.0]] * 3
    assert scorer.disagreement(prompts, responses) == pytest.approx(
        [2.160246899469287] * 3, rel=1e-6
    )
    assert math.sqrt(14 / 3) == pytest.approx(2.160246899469287, rel=1e-12)

    w = torch.linspace(-0.05, 0.05, head.weight.shape[1])  # (d_model,)
    with torch.no_grad():
        head.weight.copy_(torch.stack([w, -w, torch.zeros_like(w)]))
    model.set_normalization([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], "")
    heads = scorer.score_heads(prompts, responses)
    for a, minus_a, zero in heads:
        assert minus_a == pytest.approx(-a, rel=1e-6) and zero == 0.0 and abs(a) > 1e-4
    expected = [abs(h[0]) * math.sqrt(2 / 3) for h in heads]
    assert scorer.disagreement(prompts, responses) == pytest.approx(expected, rel=1e-5)
    model.set_normalization([2.0, 2.0, 2.0], [5.0, 5.0, 5.0], "")
    assert scorer.disagreement(prompts, responses) == pytest.approx(
        [2 * e for e in expected], rel=1e-5
    )
    one = build_reward_model(str(tiny_model), pad_token_id=tokenizer.pad_token_id).eval()
    assert RewardScorer(one, tokenizer).disagreement(prompts, responses) == [0.0] * 3


def test_uncertainty_penalised_reward_by_hand(tiny_model, tokenizer):
    """Heads (1, 2, 6) on every input (weights 0, biases 1, 2, 6): mean 3, population std
    sqrt(14/3) = 2.1602469. With uncertainty_coef 0.5 the reward is 3 - 0.5 x 2.1602469 =
    1.9198765; the plain scorer's stays the mean, 3. One head has no spread: refused."""
    from rlhfkit.models.reward_model import ensemble_reward

    assert ensemble_reward([1.0, 2.0, 6.0]) == 3.0
    assert ensemble_reward([1.0, 2.0, 6.0], 0.5) == pytest.approx(1.9198765, rel=1e-7)
    model = build_reward_model(str(tiny_model), num_heads=3, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        model.head().weight.zero_()
    model.set_normalization([1.0, 1.0, 1.0], [1.0, 2.0, 6.0], "test")
    scorer = RewardScorer(model, tokenizer, max_length=64, max_prompt_length=32)
    prompts, responses = [PROMPTS[0]] * 2, RESPONSES[0][:2]
    penalised = scorer.with_uncertainty_penalty(0.5)
    assert penalised(prompts, responses) == pytest.approx([1.9198765] * 2, rel=1e-6)
    assert scorer(prompts, responses) == [3.0, 3.0] and penalised.model is scorer.model
    one = build_reward_model(str(tiny_model), pad_token_id=tokenizer.pad_token_id).eval()
    with pytest.raises(ValueError, match="needs an ensemble"):
        RewardScorer(one, tokenizer).with_uncertainty_penalty(0.5)


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


def test_training_a_reward_model_again_starts_unnormalised(tiny_model, tokenizer, tmp_path):
    """A normalisation is fitted to the weights it was measured with; building a reward model
    to train from a directory that stores one (gains (2, 3), biases (-0.5, 0.25)) keeps the
    trained head but starts at gain 1, bias 0, which is what `rlhfkit rm rm.normalize=false`
    then saves (`test_rm_cli`)."""
    model = build_reward_model(str(tiny_model), num_heads=2, pad_token_id=tokenizer.pad_token_id)
    model.set_normalization([2.0, 3.0], [-0.5, 0.25], "old samples")
    save_reward_model(model, tokenizer, tmp_path / "rm")
    again = build_reward_model(str(tmp_path / "rm"), num_heads=2, seed=7)
    assert torch.equal(again.head().weight, model.head().weight)  # loaded, not drawn anew
    assert again.info.gain == [1.0, 1.0] and again.info.bias == [0.0, 0.0]
    assert again.info.normalized_on == ""
    assert again.norm_gain.tolist() == [1.0, 1.0] and again.norm_bias.tolist() == [0.0, 0.0]


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


def test_pairs_identical_after_truncation_are_skipped_and_counted(tokenizer):
    """Responses that differ only past max_length are one sequence to the model (Δr = 0 for any
    weights). With room for 3 response tokens: a preference " Same start. A" / " Same start. B"
    is skipped; a ranking of [" Same start. A", " Same start. B", " No"] keeps the 2 pairs with
    " No" and drops (0, 1); both are counted in the stats."""
    prompt = "P:"
    room = len(tokenizer(prompt).input_ids) + 3
    preference = PreferenceExample(prompt, " Same start. A", " Same start. B")
    ranking = RankingExample(prompt, [" Same start. A", " Same start. B", " No"], [0, 1, 2])
    stats = TokenStats()
    comparisons = encode_comparisons(
        [preference, ranking], tokenizer, max_length=room, max_prompt_length=32, stats=stats
    )
    assert len(comparisons) == 1 and comparisons[0].pairs == [(0, 2), (1, 2)]
    assert stats.kept == 1 and stats.skipped == {
        "chosen == rejected after truncation to max_length": 1,
        "responses identical after truncation in a ranking (pairs dropped)": 1,
    }


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


def test_another_head_count_than_the_starting_reward_models_is_a_one_line_error(
    tiny_model, tmp_path
):
    """Starting from a 1-head reward model with rm.ensemble=3 raised transformers' size
    mismatch, whose message points at a report the quiet logging had hidden."""
    path = tmp_path / "rm1"
    save_reward_model(build_reward_model(str(tiny_model)), load_tokenizer(str(tiny_model)), path)
    with pytest.raises(ConfigError, match=r"^rm\.ensemble: .* is a reward model with 1 head"):
        build_reward_model(str(path), num_heads=3)
    assert build_reward_model(str(path), num_heads=1).info.num_heads == 1


def test_flash_attention_without_its_package_is_a_one_line_error(tiny_model, monkeypatch):
    """transformers raises ImportError when flash-attn is missing (a traceback before); the
    loaders' `from_pretrained` is made to raise it here, so the test runs whether or not
    flash-attn is installed."""
    import transformers

    from rlhfkit.models.loading import load_causal_lm, missing_package_error

    def missing(*args, **kwargs):
        raise ImportError("FlashAttention2 has been toggled on, but the package is not installed")

    for auto in (
        transformers.AutoModelForCausalLM,
        transformers.AutoModelForSequenceClassification,
    ):
        monkeypatch.setattr(auto, "from_pretrained", missing)
    for load in (build_reward_model, load_causal_lm):
        with pytest.raises(ConfigError, match="^attn_implementation: flash_attention_2: "):
            load(str(tiny_model), attn_implementation="flash_attention_2")
    # a package the model itself needs (custom code, quantisation) is the model's error
    error = missing_package_error("m", None, ImportError("No module named 'bitsandbytes'"))
    assert str(error) == "model: cannot load 'm': No module named 'bitsandbytes'"


def test_an_attention_kernel_the_architecture_refuses_is_named_as_such(tiny_model, monkeypatch):
    """transformers refuses sdpa for Gemma 2's sequence-classification model with a ValueError,
    which rm reported as "has no sequence-classification variant"; the attention setting is what
    to change."""
    from rlhfkit.models.reward_model import build_reward_model

    def refuse(*_args, **_kwargs):
        raise ValueError(
            "Gemma2ForSequenceClassification does not support an attention implementation "
            "through torch.nn.functional.scaled_dot_product_attention yet."
        )

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", refuse)
    with pytest.raises(ConfigError, match=r"^attn_implementation: sdpa: Gemma2ForSeq"):
        build_reward_model(str(tiny_model), attn_implementation="sdpa")
    with pytest.raises(ConfigError, match="has no sequence-classification variant"):
        build_reward_model(str(tiny_model))
