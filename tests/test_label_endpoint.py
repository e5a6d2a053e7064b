"""Endpoint failures: down, slow, malformed JSON and 5xx give a clear error after retries with
back-off; an answer of the wrong shape (HTTP 200) gives a clear error naming the URL and the
part at fault; a run stopped by a failing endpoint keeps its judgments and a rerun continues."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhfkit.feedback.ai_labeller import EndpointLM
from rlhfkit.feedback.openai_client import EndpointError, OpenAIClient, normalise_base_url
from rlhfkit.recipes.label import LabelConfig, label
from rlhfkit.rollout.sampling import SamplingParams
from tests.conftest import free_port, write_jsonl

GOOD = {
    "choices": [
        {
            "index": 0,
            "text": "A",
            "logprobs": {
                "tokens": ["A"],
                "token_logprobs": [-0.25],
                "top_logprobs": [{"A": -0.25, "B": -1.75, "x": -4.0}],
                "text_offset": [0],
            },
            "finish_reason": "length",
        }
    ]
}


class FakeEndpoint:
    """A scripted OpenAI-compatible server: `modes` is consumed one entry per request
    ("ok", "malformed", "slow", "503", "400", or a dict: that body with HTTP 200); when it runs
    out, `default` is used."""

    def __init__(self, modes=(), default="ok"):
        self.modes, self.default, self.requests = list(modes), default, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (what the "slow" mode tests)

            def do_GET(self):  # /v1/models
                self._reply(200, json.dumps({"data": [{"id": "fake"}]}).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(json.loads(self.rfile.read(length)))
                mode = outer.modes.pop(0) if outer.modes else outer.default
                if mode == "slow":
                    time.sleep(1.0)
                    mode = "ok"
                if isinstance(mode, dict):
                    self._reply(200, json.dumps(mode).encode())
                elif mode == "malformed":
                    self._reply(200, b'{"choices": [ oops')
                elif mode == "503":
                    self._reply(503, b'{"error": {"message": "overloaded"}}')
                elif mode == "400":
                    self._reply(400, b'{"error": {"message": "bad max_tokens"}}')
                else:
                    self._reply(200, json.dumps(GOOD).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    servers = []

    def make(modes=(), default="ok"):
        servers.append(FakeEndpoint(modes, default))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _client(url, **kw):
    return OpenAIClient(url, model="fake", timeout=0.3, max_retries=2, backoff=0.01, **kw)


def test_base_url_forms():
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/completions"):
        assert normalise_base_url(url) == "http://h:1/v1"


def test_endpoint_down_is_a_clear_error_after_retries():
    url = f"http://127.0.0.1:{free_port()}"
    client = _client(url)
    with pytest.raises(EndpointError, match=r"not reachable .*gave up after 3 tries") as err:
        client.completions("hi", max_tokens=1)
    assert f"{url}/v1/completions" in str(err.value)
    assert client.retries_used == 2


def test_slow_endpoint_times_out(endpoint):
    server = endpoint(default="slow")
    with pytest.raises(EndpointError, match=r"no answer within 0.3 s \(timeout\)"):
        _client(server.url).completions("hi", max_tokens=1)
    assert len(server.requests) == 3


def test_malformed_json_and_5xx_are_retried_then_succeed(endpoint):
    server = endpoint(modes=["malformed", "503"])
    client = _client(server.url)
    body = client.completions("hi", max_tokens=1)
    assert body["choices"][0]["text"] == "A"
    assert client.retries_used == 2 and len(server.requests) == 3


def test_malformed_json_every_time_names_the_problem(endpoint):
    server = endpoint(default="malformed")
    with pytest.raises(EndpointError, match=r"malformed JSON in the answer"):
        _client(server.url).completions("hi", max_tokens=1)


def test_client_error_is_not_retried(endpoint):
    server = endpoint(default="400")
    with pytest.raises(EndpointError, match="HTTP 400: bad max_tokens"):
        _client(server.url).completions("hi", max_tokens=1)
    assert len(server.requests) == 1


def _pairs(tmp_path, n):
    rows = [
        {"prompt": f"User: What is {i}+1?\nBot:", "responses": [f" {i + 1}.", " I don't know."]}
        for i in range(1, n + 1)
    ]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_label_stopped_by_a_failing_endpoint_keeps_its_work_and_continues(endpoint, tmp_path):
    """Two pairs per step, both orders: 4 requests per step. The endpoint answers 4 requests, then
    fails: the first step's judgments are kept, the run stops with a clear error; a rerun once the
    endpoint is back judges only the remaining pairs.

    Each judgment reads P(A) = sigmoid(-0.25 - (-1.75)) = sigmoid(1.5) = 0.8175744762 from the
    top log-probs, so every pair's label is (0.8175744762 + 1 - 0.8175744762) / 2 = 0.5."""
    data = _pairs(tmp_path, 5)
    out = tmp_path / "labels.jsonl"
    failing = endpoint(modes=["ok"] * 4, default="503")
    config = LabelConfig(
        judge=failing.url,
        train_data=str(data),
        output=str(out),
        constitution="world",
        batch_size=2,
        concurrency=1,
        max_retries=1,
        retry_backoff=0.01,
        timeout=2.0,
        progress=False,
    )
    with pytest.raises(EndpointError, match=r"2 of 5 pairs are judged and kept in .*run the same"):
        label(config)
    judgments = tmp_path / "labels.judgments.jsonl"
    assert len(judgments.read_text().splitlines()) == 4
    assert not out.exists()
    # the prompt asks for the option after the shared prefix " (", with log-probs
    assert failing.requests[0]["prompt"].endswith("\nAnswer: (")
    assert failing.requests[0]["logprobs"] >= 2 and failing.requests[0]["max_tokens"] >= 1

    failing.default = "ok"  # the endpoint is back
    sent_before = len(failing.requests)
    summary = label(config)
    assert summary["resumed_pairs"] == 2 and summary["pairs"] == 5
    assert len(failing.requests) - sent_before == 3 * 2
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 5
    p_first = 1 / (1 + math.exp(-1.5))
    assert all(r["soft_label"] == pytest.approx(0.5, rel=1e-9) for r in records)
    rows = [json.loads(x) for x in judgments.read_text().splitlines()]
    assert all(j["p_first"] == pytest.approx(p_first, rel=1e-9) for j in rows)
    assert all(j["source"] == "logprobs" for j in rows)


def test_endpoint_without_logprobs_falls_back_to_the_parsed_answer(endpoint, tmp_path):
    server = endpoint()
    GOOD_NO_LOGPROBS = {"choices": [{"index": 0, "text": "B)", "finish_reason": "stop"}]}
    server.server.RequestHandlerClass.do_POST = lambda self: (
        self.rfile.read(int(self.headers.get("Content-Length", 0))),
        self._reply(200, json.dumps(GOOD_NO_LOGPROBS).encode()),
    )
    out = tmp_path / "labels.jsonl"
    summary = label(
        LabelConfig(
            judge=server.url,
            train_data=str(_pairs(tmp_path, 1)),
            output=str(out),
            constitution="world",
            progress=False,
        )
    )
    assert summary["sources"] == {"parsed": 2}
    # always (B): P(A) = 0 in both orders -> P(a) = (0 + 1 - 0) / 2 = 0.5
    assert json.loads(out.read_text())["soft_label"] == 0.5


def test_options_missing_from_the_top_logprobs_are_counted_warned_and_not_scored(
    endpoint, tmp_path, capsys
):
    """The audit's case: neither option is among the endpoint's top log-probs, so every answer
    is parsed; the text names no option, so every judgment is P(A) = 0.5 and every label 0.5.
    The labels are still written (soft_label 0.5: no pull for a soft-label loss), but flagged:
    the summary counts 3 undecided pairs, gold_agreement leaves them out (the old code scored
    the tie "response a chosen" as a decision: 1.0 here, since a is the right answer), and the
    console says why and what to do."""
    server = endpoint()
    no_option = {
        "choices": [
            {
                "index": 0,
                "text": "x",
                "logprobs": {
                    "tokens": ["x"],
                    "token_logprobs": [-0.1],
                    "top_logprobs": [{"x": -0.1, "y": -2.5}],
                    "text_offset": [0],
                },
                "finish_reason": "length",
            }
        ]
    }
    server.server.RequestHandlerClass.do_POST = lambda self: (
        self.rfile.read(int(self.headers.get("Content-Length", 0))),
        self._reply(200, json.dumps(no_option).encode()),
    )
    out = tmp_path / "labels.jsonl"
    summary = label(
        LabelConfig(
            judge=server.url,
            train_data=str(_pairs(tmp_path, 3)),
            output=str(out),
            constitution="world",
            progress=False,
        )
    )
    assert summary["sources"] == {"parsed": 6}
    assert summary["undecided_pairs"] == 3
    assert "gold_agreement" not in summary
    assert summary["gold_decided_pairs"] == 0 and summary["gold_undecided_pairs"] == 3
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 3 and all(r["soft_label"] == 0.5 for r in records)
    assert json.loads((tmp_path / "labels.summary.json").read_text()) == summary
    err = " ".join(capsys.readouterr().err.split())
    assert "judgments by source: 6 parsed" in err
    assert "6 of 6 judgments were parsed from the answer text" in err
    assert "raise judge_top_logprobs" in err and "judge_top_logprobs=20" in err
    assert "3 of 3 pairs are undecided (soft_label 0.5)" in err
    assert "agreement with the gold reward" not in err


def test_judgment_warnings_thresholds():
    """Warn when more than half of the judgments are parsed, or of the pairs undecided."""
    from rlhfkit.recipes.label import judgment_warnings

    config = LabelConfig(judge_top_logprobs=5)
    assert judgment_warnings({"logprobs": 2, "parsed": 2}, 1, 2, config) == []
    parsed, undecided = judgment_warnings({"logprobs": 1, "parsed": 2}, 2, 3, config)
    assert parsed.startswith("2 of 3 judgments were parsed") and "judge_top_logprobs=5" in parsed
    assert undecided.startswith("2 of 3 pairs are undecided")
    assert judgment_warnings({}, 0, 0, config) == []


# ---------------------------------------------------------------------------------------------
# Answers of the wrong shape (HTTP 200)
# ---------------------------------------------------------------------------------------------


def _completion(logprobs, text="A"):
    return {"choices": [{"index": 0, "text": text, "logprobs": logprobs}]}


def _chat(logprobs, message=None):
    message = {"role": "assistant", "content": "A"} if message is None else message
    return {"choices": [{"index": 0, "message": message, "logprobs": logprobs}]}


def _chat_entry(**fields):
    return {"content": [{"token": "A", "logprob": -0.25, "top_logprobs": [], **fields}]}


# (api, answer, the part of it the error names); each raised KeyError, TypeError, ValueError or
# AttributeError out of `rlhfkit label` (a traceback) instead of an endpoint error
WRONG_SHAPES = [
    ("completions", {"choices": [None]}, "choices[0] is not an object"),
    ("completions", {"choices": [{"index": 0}]}, "choices[0].text is missing"),
    ("completions", _completion([]), "choices[0].logprobs is not an object or null"),
    ("completions", _completion({"top_logprobs": {"A": -1}}), "top_logprobs is not a list"),
    ("completions", _completion({"top_logprobs": [{"A": None}]}), '[0]["A"] is not a number'),
    ("completions", _completion({"top_logprobs": [{"A": "-1"}]}), '[0]["A"] is not a number'),
    (
        "completions",
        _completion({"top_logprobs": [{"A": float("nan")}]}),
        '[0]["A"] is not a log-prob',
    ),
    (
        "completions",
        _completion({"tokens": [["A"]], "token_logprobs": [-1.0]}),
        "tokens[0] is not a string",
    ),
    (
        "completions",
        _completion({"tokens": ["A"], "token_logprobs": ["x"]}),
        "token_logprobs[0] is not a number",
    ),
    ("chat", {"choices": [{"index": 0}]}, "choices[0].message is missing or not an object"),
    ("chat", _chat(None, message="A"), "choices[0].message is missing or not an object"),
    ("chat", _chat({"content": {"token": "A"}}), "logprobs.content is not a list"),
    ("chat", _chat({"content": [None]}), "logprobs.content[0] is not an object"),
    ("chat", _chat({"content": [{"logprob": -1.0}]}), "content[0].token is missing"),
    ("chat", _chat(_chat_entry(logprob=None)), "content[0].logprob is not a number"),
    ("chat", _chat(_chat_entry(top_logprobs=[None])), "content[0].top_logprobs[0] is not an"),
    (
        "chat",
        _chat(_chat_entry(top_logprobs=[{"token": "B"}])),
        "content[0].top_logprobs[0].logprob is missing",
    ),
]


class _ScriptedClient:
    """Stands in for `OpenAIClient`: every request gets ``answer``."""

    base_url = "http://judge.example:8000/v1"

    def __init__(self, answer):
        self.answer = answer

    def completions(self, prompt, **params):
        return self.answer

    def chat(self, messages, **params):
        return self.answer


@pytest.mark.parametrize(("api", "answer", "where"), WRONG_SHAPES)
def test_an_answer_of_the_wrong_shape_is_an_endpoint_error(api, answer, where):
    lm = EndpointLM(_ScriptedClient(answer), api=api, concurrency=1)
    with pytest.raises(EndpointError) as err:
        lm.option_scores(["Which is better?"], (" (A)", " (B)"))
    message = str(err.value)
    url = "http://judge.example:8000/v1/" + ("chat/completions" if api == "chat" else "completions")
    assert message.startswith(f"{url}: the answer is not in OpenAI's {api} shape: ")
    assert where in message
    assert type(err.value).__name__ == "EndpointAnswerError"


def test_a_choice_without_its_text_is_an_endpoint_error_when_generating():
    """`cai revise` generates critiques and revisions: a chat answer without a message was an
    AttributeError (a string), or silently an empty revision (missing)."""
    params = SamplingParams(8, 1.0, 1.0)
    for api, answer in [
        ("chat", {"choices": [{"index": 0, "message": "A revision."}]}),
        ("chat", {"choices": [{"index": 0, "text": "A revision."}]}),
        ("completions", {"choices": [{"index": 0, "message": {"content": "A revision."}}]}),
    ]:
        lm = EndpointLM(_ScriptedClient(answer), api=api, concurrency=1)
        with pytest.raises(EndpointError, match="is missing or not"):
            lm.generate(["Revise this."], params, seeds=[0])


def test_answers_offering_no_log_probs_are_still_parsed():
    """Null or empty log-probs are an endpoint that offers none, not a wrong shape: the answer
    is parsed (see test_endpoint_without_logprobs_falls_back_to_the_parsed_answer)."""
    offering_none = [
        ("completions", _completion(None)),
        ("completions", _completion({"top_logprobs": [], "tokens": [], "token_logprobs": []})),
        ("completions", _completion({"top_logprobs": [None], "tokens": ["A"]})),
        ("completions", _completion({"top_logprobs": [{}], "token_logprobs": [None]})),
        ("chat", _chat(None)),
        ("chat", _chat({"content": None})),
        ("chat", _chat({"content": []}, message={"role": "assistant", "content": None})),
    ]
    for api, answer in offering_none:
        lm = EndpointLM(_ScriptedClient(answer), api=api, concurrency=1)
        [score] = lm.option_scores(["Which is better?"], (" (A)", " (B)"))
        assert score.source == "parsed", (api, answer)


@pytest.mark.parametrize(
    ("api", "bad", "where"),
    [
        ("completions", _completion({"top_logprobs": [{"A": None, "B": -1.0}]}), '["A"]'),
        ("chat", {"choices": [{"index": 0, "logprobs": None}]}, "choices[0].message"),
    ],
)
def test_label_stopped_by_an_answer_of_the_wrong_shape_keeps_its_work(
    endpoint, tmp_path, api, bad, where
):
    """The endpoint answers 4 requests well (the first step: 2 pairs, both orders), then with
    HTTP 200 and a body of the wrong shape: `rlhfkit label` stops with the endpoint error that
    says where the work is kept (it raised TypeError or AttributeError, a traceback), and a
    rerun once the endpoint answers well judges only the remaining pairs."""
    good = GOOD
    if api == "chat":
        good = _chat(
            {
                "content": [
                    {
                        "token": "A",
                        "logprob": -0.25,
                        "top_logprobs": [
                            {"token": "A", "logprob": -0.25},
                            {"token": "B", "logprob": -1.75},
                        ],
                    }
                ]
            }
        )
    server = endpoint(modes=[good] * 4, default=bad)
    config = LabelConfig(
        judge=server.url,
        judge_api=api,
        train_data=str(_pairs(tmp_path, 5)),
        output=str(tmp_path / "labels.jsonl"),
        constitution="world",
        batch_size=2,
        concurrency=1,
        progress=False,
    )
    with pytest.raises(EndpointError) as err:
        label(config)
    message = str(err.value)
    path = "chat/completions" if api == "chat" else "completions"
    assert message.startswith(f"{server.url}/v1/{path}: the answer is not in OpenAI's {api} shape")
    assert where in message
    assert "2 of 5 pairs are judged and kept in" in message
    assert message.endswith("run the same command again to continue")
    judgments = tmp_path / "labels.judgments.jsonl"
    assert len(judgments.read_text().splitlines()) == 4
    assert len(server.requests) == 5  # not retried: the same answer would come again

    server.default = good
    summary = label(config)
    assert summary["resumed_pairs"] == 2 and summary["pairs"] == 5
    assert summary["sources"] == {"logprobs": 10}


def test_a_missing_option_is_bounded_by_the_mass_the_listed_tokens_leave():
    """With only the sampled token's log-prob (no alternatives), the missing option was put at
    log 2 under it, so P(A) = sigmoid(log 2) = 2/3 whether A had probability 0.999 or 0.05. It
    is now also at most log(1 - exp(lp_A)): lp_A = -0.001 leaves 0.0009995 for B, so
    P(A) = 0.999 / (0.999 + 0.0009995) = 0.999; lp_A = -3 leaves 0.95, where log 2 under -3 is
    the lower bound and P(A) stays 2/3."""
    from rlhfkit.feedback.ai_labeller import choice_probability, missing_option_floor

    sure = choice_probability(-0.001, missing_option_floor({"A": -0.001}))
    assert sure == pytest.approx(0.999, abs=1e-3)
    unsure = choice_probability(-3.0, missing_option_floor({"A": -3.0}))
    assert unsure == pytest.approx(2 / 3)


def test_a_chat_reply_that_opens_with_the_whole_option_is_scored_by_its_log_probs():
    """A chat reply opens a new message, so its first token may be "(A" rather than the "A"
    that follows the prompt's " (" in a completion. Such tokens used to match no option and the
    answer was parsed (a hard 1 or 0). Now "(A" counts for A: P(A) = e^-0.5 / (e^-0.5 + e^-2)
    = 1 / (1 + e^-1.5) = 0.8176; "(" starts both options and counts for neither. A completion
    continues the prompt's " (", where "(A" is not a way to go on: it still counts for nothing."""
    tops = [
        {"token": "(A", "logprob": -0.5},
        {"token": "(B", "logprob": -2.0},
        {"token": "(", "logprob": -1.0},
    ]
    chat = _chat({"content": [{**tops[0], "top_logprobs": tops}]}, message={"content": "(A"})
    [score] = EndpointLM(_ScriptedClient(chat), api="chat", concurrency=1).option_scores(
        ["Which is better?"], (" (A)", " (B)")
    )
    assert score.source == "logprobs"
    assert score.p_first == pytest.approx(1 / (1 + math.exp(-1.5)))
    completion = _completion({"top_logprobs": [{t["token"]: t["logprob"] for t in tops}]}, "(A")
    [score] = EndpointLM(
        _ScriptedClient(completion), api="completions", concurrency=1
    ).option_scores(["Which is better?"], (" (A)", " (B)"))
    assert score.source == "parsed"
