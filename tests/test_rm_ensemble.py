"""Ensembles of independently trained reward models (`DIR,DIR,...`): pooled heads, their mean
and spread worked by hand, loading through the reward spec, errors naming the bad part, and
`rlhfkit eval`'s scoring mode over one."""

import json
import math

import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.models.head_scorer import HeadScorer, is_ensemble
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward_ensemble import RewardEnsemble, reward_model_dirs
from rlhfkit.models.reward_fn import load_reward_function, score_samples
from rlhfkit.models.reward_model import build_reward_model, load_reward_scorer, save_reward_model
from tests.conftest import run_cli, write_jsonl

PROMPTS = ["User: What is 3+4?\nBot:", "User: Name a fruit.\nBot:"]
RESPONSES = [" Sure! 3+4 is 7.", " An apple."]


class FixedHeads(HeadScorer):
    """A scorer whose every input gets the same head scores (and which records `ended`)."""

    def __init__(self, heads):
        self.heads = list(heads)
        self.ended_seen = []

    @property
    def num_heads(self):
        return len(self.heads)

    def score_heads(self, prompts, responses, *, ended=None):
        self.ended_seen.append(ended)
        return [list(self.heads) for _ in prompts]


@pytest.fixture(scope="module")
def members(tiny_model, tmp_path_factory):
    """Two reward models saved from the tiny preset: 1 head (seed 1) and 2 heads (seed 2)."""
    root = tmp_path_factory.mktemp("ensemble")
    tokenizer = load_tokenizer(str(tiny_model))
    paths = []
    for name, heads, seed in (("a", 1, 1), ("b", 2, 2)):
        model = build_reward_model(str(tiny_model), num_heads=heads, seed=seed)
        model.set_normalization([1.5] * heads, [0.25] * heads, "test")
        save_reward_model(model, tokenizer, root / name)
        paths.append(str(root / name))
    return paths


def test_pooled_heads_mean_and_spread_by_hand():
    """Members with heads (1, 3) and (5): the ensemble's heads are (1, 3, 5), in member order.
    Mean (1 + 3 + 5)/3 = 3; population std sqrt(((1-3)^2 + 0 + (5-3)^2)/3) = sqrt(8/3)
    = 1.6329932. With uncertainty_coef 0.5: 3 - 0.5 x 1.6329932 = 2.1835034. (The mean of the
    members' means, (2 + 5)/2 = 3.5, would weight a one-head member as much as a two-head one;
    pooling weights every head alike.) `ended` reaches every member."""
    first, second = FixedHeads([1.0, 3.0]), FixedHeads([5.0])
    ensemble = RewardEnsemble([first, second])
    assert ensemble.num_heads == 3 and is_ensemble(ensemble)
    assert ensemble.score_heads(PROMPTS, RESPONSES) == [[1.0, 3.0, 5.0]] * 2
    rewards, spread = ensemble.score_with_disagreement(PROMPTS, RESPONSES, ended=[True, False])
    assert rewards == [3.0, 3.0]
    assert spread == pytest.approx([1.6329932] * 2, rel=1e-7)
    assert math.sqrt(8 / 3) == pytest.approx(1.6329932, rel=1e-7)
    assert first.ended_seen[-1] == [True, False] and second.ended_seen[-1] == [True, False]
    penalised = ensemble.with_uncertainty_penalty(0.5)
    assert penalised(PROMPTS, RESPONSES) == pytest.approx([2.1835034] * 2, rel=1e-7)
    assert ensemble(PROMPTS, RESPONSES) == [3.0, 3.0]  # the original keeps no penalty
    # Sampled responses reach an ensemble as they reach one reward model: with `ended`.
    score_samples(ensemble, PROMPTS, RESPONSES, rendered=PROMPTS, ended=[False, True])
    assert first.ended_seen[-1] == [False, True]
    with pytest.raises(ValueError, match="at least 2 members"):
        RewardEnsemble([first])


def test_a_spec_of_directories_loads_their_heads_in_order(members):
    """`load_reward_function("A,B")` scores every input with A's head, then B's two heads, each
    with its own stored normalisation (gain 1.5, bias 0.25): exactly what each member's own
    scorer gives."""
    spec = ",".join(members)
    ensemble = load_reward_function(spec, device="cpu")
    assert isinstance(ensemble, RewardEnsemble) and ensemble.num_heads == 3
    alone = [load_reward_scorer(path, device="cpu") for path in members]
    first, second = (m.score_heads(PROMPTS, RESPONSES) for m in alone)
    expected = [a + b for a, b in zip(first, second, strict=True)]
    got = ensemble.score_heads(PROMPTS, RESPONSES)
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, rel=1e-6, abs=1e-7)
    heads = torch.tensor(got)  # (2, 3)
    assert ensemble(PROMPTS, RESPONSES) == pytest.approx(heads.mean(1).tolist(), rel=1e-6)
    spread = heads.std(1, unbiased=False).tolist()
    assert ensemble.disagreement(PROMPTS, RESPONSES) == pytest.approx(spread, rel=1e-5)
    # Spaces around the commas are allowed.
    assert reward_model_dirs(" , ".join(members)) == members


def test_bad_ensemble_specs_name_the_part(members, tmp_path):
    """A part that is not a directory, or an empty part, is a one-line error naming it."""
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"reward_model: '.*nope' \(in the ensemble"):
        load_reward_function(f"{members[0]},{missing}")
    with pytest.raises(ConfigError, match="two or more reward-model directories"):
        load_reward_function(f"{members[0]},")
    assert reward_model_dirs(members[0]) is None
    with pytest.raises(ConfigError, match="neither a directory, several directories"):
        load_reward_function(missing)


def test_eval_scores_a_file_with_an_ensemble(members, tmp_path):
    """`rlhfkit eval reward_model=A,B data=pairs` writes the three pooled heads of every
    response and reports their mean disagreement."""
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, [{"prompt": PROMPTS[0], "chosen": " 7.", "rejected": " 8."}])
    out = tmp_path / "scored"
    run_cli("eval", f"reward_model={','.join(members)}", f"data={data}", f"output_dir={out}")
    (row,) = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    ensemble = load_reward_function(",".join(members), device="cpu")
    heads = ensemble.score_heads([PROMPTS[0]] * 2, [" 7.", " 8."])
    assert row["chosen_score"] == pytest.approx(sum(heads[0]) / 3, rel=1e-5)
    assert row["rejected_score"] == pytest.approx(sum(heads[1]) / 3, rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    spreads = [torch.tensor(h).std(unbiased=False).item() for h in heads]
    assert summary["disagreement"] == pytest.approx(sum(spreads) / 2, rel=1e-5)


def test_a_max_length_below_the_stored_prompt_length_leaves_the_response_room(members):
    """Stored max_prompt_length 256; `max_length=20` as an override: a 60-token prompt was kept
    whole (60 > 20), the response got no room, and every response scored the reward of the
    prompt's last token. The prompt is now cut to 19 tokens, leaving one for the response, so
    two different responses score differently."""
    scorer = load_reward_scorer(members[0], device="cpu", max_length=20)
    assert scorer.max_prompt_length == 19
    good, bad = scorer(["x" * 60] * 2, ["good answer", "terrible"])
    assert good != bad
