"""`rlhfkit serve model=RM_DIR`: a reward model is served as the HTTP scorer that
``ppo.reward_model=http://...`` reads (`reward_fn.HttpScorer`), with the reward model's
normalised scores; text-generation endpoints are refused with a message saying why."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from rlhfkit.errors import ConfigError
from rlhfkit.models.reward_fn import load_reward_function
from rlhfkit.models.reward_model import load_reward_scorer
from rlhfkit.recipes.serve import create_app
from rlhfkit.recipes.serve_reward import is_reward_model
from tests.conftest import ROOT, cli_env, free_port, wait_until_healthy

GAIN, BIAS = 2.0, 0.5  # the normalisation stored with the test reward model

PROMPTS = [
    "User: What is 2+2?\nBot:",
    "User: What is 2+2?\nBot:",
    "User: Insult my boss.\nBot:",
    [{"role": "user", "content": "Say something kind."}],
    "",
]
RESPONSES = [" 4.", " 5, I think, or maybe more.", " Sorry, I won't do that.", "You matter.", "x"]


@pytest.fixture(scope="module")
def rm_dir(tiny_model, tmp_path_factory):
    """A tiny reward model as `rlhfkit rm` writes it, with a non-trivial normalisation."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    tokenizer = load_tokenizer(str(tiny_model))
    model = build_reward_model(str(tiny_model), pad_token_id=tokenizer.pad_token_id, seed=3)
    model.set_normalization([GAIN], [BIAS], on="test")
    out = tmp_path_factory.mktemp("rm") / "model"
    save_reward_model(model, tokenizer, out)
    return out


@pytest.fixture(scope="module")
def local_scores(rm_dir):
    return load_reward_scorer(rm_dir)(PROMPTS, RESPONSES)


@pytest.fixture(scope="module")
def reward_client(rm_dir):
    app = create_app(str(rm_dir), model_name="rm-test", max_request_bytes=4096)
    with TestClient(app) as client:
        client.app_ref = app
        yield client


def test_a_reward_model_directory_is_served_as_a_scorer(reward_client, rm_dir, local_scores):
    assert is_reward_model(str(rm_dir))
    app = reward_client.app_ref
    assert app.state.served_as == "reward model scorer" and app.state.path == "/score"
    body = {"prompts": PROMPTS, "responses": RESPONSES}
    scored = reward_client.post("/score", json=body)
    assert scored.status_code == 200 and set(scored.json()) == {"scores"}
    assert scored.json()["scores"] == pytest.approx(local_scores, abs=1e-5)
    # the client posts to the URL it is given: the root answers too
    assert reward_client.post("/", json=body).json()["scores"] == pytest.approx(local_scores)
    # normalised: gain and bias applied to the raw head output
    raw = load_reward_scorer(rm_dir, normalized=False)(PROMPTS, RESPONSES)
    assert local_scores == pytest.approx([GAIN * r + BIAS for r in raw], abs=1e-5)
    assert len(set(round(s, 4) for s in local_scores)) > 1  # the scores do tell pairs apart
    empty = reward_client.post("/score", json={"prompts": [], "responses": []})
    assert empty.json() == {"scores": []}
    health = reward_client.get("/health").json()
    assert health["kind"] == "reward_model" and health["scored"] >= 2 * len(PROMPTS)


def test_an_ensemble_of_reward_model_directories_is_served_as_one_scorer(
    tiny_model, rm_dir, tmp_path
):
    """`model=A,B` serves the ensemble's reward (the mean of both members' normalised heads),
    as `load_reward_function("A,B")` scores in process; a member that is a causal LM is a
    one-line error naming it."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    other = tmp_path / "rm_b"
    save_reward_model(build_reward_model(str(tiny_model), seed=4), load_tokenizer(str(tiny_model)),
                      other)  # fmt: skip
    spec = f"{rm_dir},{other}"
    expected = load_reward_function(spec)(PROMPTS, RESPONSES)
    alone = [load_reward_scorer(path)(PROMPTS, RESPONSES) for path in (rm_dir, other)]
    assert expected == pytest.approx([(a + b) / 2 for a, b in zip(*alone, strict=True)])
    with TestClient(create_app(spec, model_name="rm-pair")) as client:
        scored = client.post("/score", json={"prompts": PROMPTS, "responses": RESPONSES})
        assert scored.status_code == 200
        assert scored.json()["scores"] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match=r"model: .*tiny \(in the ensemble .*is not a reward"):
        create_app(f"{rm_dir},{tiny_model}")


def test_text_generation_endpoints_are_refused_with_a_clear_message(reward_client):
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
    ):
        response = reward_client.request(
            method, path, json={"messages": [{"role": "user", "content": "Hi"}]}
        )
        assert response.status_code == 400, path
        message = response.json()["error"]["message"]
        assert "'rm-test' is a reward model" in message and "POST /score" in message


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompts": ["a", "b"], "responses": ["c"]}, "responses", "2 prompts but 1 responses"),
        ({"prompts": "a", "responses": ["c"]}, "prompts", "prompts must be a list"),
        ({"prompts": ["a", 3], "responses": ["c", "d"]}, "prompts", "prompts[1] must be"),
        ({"prompts": ["a"], "responses": [[{"role": "assistant"}]]}, "responses", "responses[0]"),
        (
            {"prompts": ["a"], "responses": [[{"role": "assistant", "content": "c"}]]},
            "responses",
            "needs a conversation prompt",
        ),
        (["a"], None, "must be a JSON object"),
        (
            {"prompts": ["a"], "responses": ["c"], "chat_prompts": ["a", "b"]},
            "chat_prompts",
            "chat_prompts must be a list of 1 prompts",
        ),
        (
            {"prompts": ["a"], "responses": ["c"], "chat_prompts": [[{"role": "user"}]]},
            "chat_prompts",
            "chat_prompts[0] must be",
        ),
        ({"prompts": ["a"], "responses": ["c"], "ended": [1]}, "ended", "1 true/false values"),
        ({"prompts": ["a"], "responses": ["c"], "ended": True}, "ended", "ended must be a list"),
    ],
)
def test_malformed_scoring_requests_are_refused(reward_client, body, param, words):
    response = reward_client.post("/score", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert words in error["message"] and error["param"] == param


def test_sampled_responses_are_scored_as_in_process(reward_client, rm_dir):
    """`chat_prompts` and `ended` (what `score_samples` sends for PPO's and eval's samples):
    the server scores the conversation as a conversation and a response cut at the sampling
    limit without an end of turn, as the reward model does in process; without them, the
    rendered text and a finished response (the text-only contract)."""
    scorer = load_reward_scorer(rm_dir)
    conversation = [{"role": "user", "content": "Say something kind."}]
    rendered = "<rendered by the policy's template>"
    responses, ended = ["You matter.", "You matter."], [True, False]
    expected = scorer([conversation, conversation], responses, ended=ended)
    assert expected[0] != pytest.approx(expected[1], abs=1e-4)  # the end of turn does count
    body = {
        "prompts": [rendered, rendered],
        "responses": responses,
        "chat_prompts": [conversation, conversation],
        "ended": ended,
    }
    assert reward_client.post("/score", json=body).json()["scores"] == pytest.approx(
        expected, abs=1e-5
    )
    text_only = {"prompts": [rendered, rendered], "responses": responses}
    assert reward_client.post("/score", json=text_only).json()["scores"] == pytest.approx(
        scorer([rendered, rendered], responses), abs=1e-5
    )


def test_the_client_sends_chat_prompts_and_ended_for_samples(monkeypatch):
    """`score_samples` gives an HTTP scorer the rendered text as `prompts` (the contract every
    scorer speaks) plus the prompts as loaded and the ended flags; a plain call sends text."""
    from rlhfkit.models import reward_fn as module

    sent = []

    class Answer:
        status_code = 200

        def raise_for_status(self):
            pass

        def json(self):
            return {"scores": [0.5] * len(sent[-1]["prompts"])}

    def post(url, json, timeout):
        sent.append(json)
        return Answer()

    monkeypatch.setattr(httpx, "post", post)
    scorer = load_reward_function("http://127.0.0.1:1/score")
    conversation = [{"role": "user", "content": "Hi"}]
    scores = module.score_samples(
        scorer, [conversation, "Q:"], ["a", "b"], rendered=["<user>Hi", "Q:"], ended=[True, False]
    )
    assert scores == [0.5, 0.5]
    assert sent[-1] == {
        "prompts": ["<user>Hi", "Q:"],
        "responses": ["a", "b"],
        "chat_prompts": [conversation, "Q:"],
        "ended": [True, False],
    }
    scorer(["Q:"], ["a"])
    assert sent[-1] == {"prompts": ["Q:"], "responses": ["a"]}


def test_scoring_request_limits(reward_client):
    assert reward_client.post("/score", content=b"{").status_code == 400
    big = {"prompts": ["a" * 5000], "responses": ["b"]}
    response = reward_client.post("/score", json=big)
    assert response.status_code == 413 and "4096 bytes" in response.json()["error"]["message"]
    wrong_method = reward_client.get("/score")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_client_mistakes_in_conversations_and_text_are_400s(reward_client):
    """A response that opens with a user turn (the template renders the prompt otherwise once it
    follows: an RlhfkitError) and a lone surrogate in the JSON were 500s."""
    user_reply = {
        "prompts": [[{"role": "user", "content": "hi"}]],
        "responses": [[{"role": "user", "content": "again"}]],
        "chat_prompts": [[{"role": "user", "content": "hi"}]],
    }
    for body in (user_reply, None):
        response = (
            reward_client.post("/score", json=body)
            if body
            else reward_client.post(
                "/score",
                content=b'{"prompts": ["a\\ud800"], "responses": ["b"]}',
                headers={"content-type": "application/json"},
            )
        )
        assert response.status_code == 400, response.text


def test_a_classifier_with_several_labels_is_refused(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model), num_labels=2
    ).save_pretrained(tmp_path / "classifier")
    assert not is_reward_model(str(tiny_model))
    with pytest.raises(ConfigError, match="sequence classifier with 2 labels"):
        create_app(str(tmp_path / "classifier"))


def test_ppo_reward_url_scores_through_a_served_reward_model(rm_dir, local_scores):
    """End to end: `rlhfkit serve model=RM_DIR` in its own process, scored through the client
    that `ppo.reward_model=http://...` uses, equals the local reward model's scores."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit", "serve", f"model={rm_dir}", "--port", str(port)],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url)
        reward_fn = load_reward_function(f"{url}/score")
        assert reward_fn(PROMPTS, RESPONSES) == pytest.approx(local_scores, abs=1e-5)
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi"}, timeout=30)
        assert refused.status_code == 400 and "is a reward model" in refused.text
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    banner = " ".join(process.stdout.read().split())  # the console wraps long lines
    assert "(reward model scorer)" in banner and f"{url}/score" in banner


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"scores": [float("nan")]}, "scores[0] is not finite"),
        ({"scores": [float("inf")]}, "scores[0] is not finite"),
        ({"scores": "7"}, 'expected {"scores": [...]}'),  # read as ["7"] before
        ({"scores": [True]}, "scores[0] is not a number"),
        ({"scores": [1.0, 2.0]}, "2 scores for 1 inputs"),
    ],
)
def test_an_http_scorer_answer_that_is_no_finite_score_per_input_is_refused(
    monkeypatch, answer, problem
):
    """Python's JSON reader takes NaN and Infinity, which then flowed into PPO's advantages; a
    string "7" passed as one score per character."""
    import httpx

    from rlhfkit.models.reward_fn import HttpScorer

    class Answer:
        status_code = 200

        def raise_for_status(self):
            pass

        def json(self):
            return answer

    monkeypatch.setattr(httpx, "post", lambda url, json, timeout: Answer())
    with pytest.raises(ConfigError, match=re.escape(problem)):
        HttpScorer("http://127.0.0.1:1/score", retries=1)(["Q:"], ["a"])


def test_an_http_scorer_that_refuses_the_request_is_not_asked_again(monkeypatch):
    """A 4xx other than 429 is the request's fault: one try, and the server's message."""
    import httpx

    from rlhfkit.models.reward_fn import HttpScorer

    calls = []

    class Refusal:
        status_code, text = 422, "prompts: expected a list"

    def post(url, json, timeout):
        calls.append(url)
        return Refusal()

    monkeypatch.setattr(httpx, "post", post)
    with pytest.raises(ConfigError, match="HTTP 422: prompts: expected a list"):
        HttpScorer("http://127.0.0.1:1/score", retries=5)(["Q:"], ["a"])
    assert len(calls) == 1
