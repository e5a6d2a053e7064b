"""`rlhfkit serve` limits: request bodies over ``max_request_bytes`` are refused (413) as they
arrive, chunked or not; prompts are checked by characters before they are tokenised, and
tokenised off the event loop; prompt + max_tokens must fit the model's context (400, worded as
OpenAI and vLLM word it), and rows that share a `generate` call fit it together; ``stop`` takes
at most 4 strings and a request at most ``max_choices`` choices (prompts x n)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi.testclient import TestClient

from rlhfkit.config import load_config
from rlhfkit.errors import ConfigError
from rlhfkit.recipes.serve import ServeConfig, create_app
from rlhfkit.serving.batching import BatchedGenerator, GenJob
from rlhfkit.serving.http_errors import ApiError
from rlhfkit.serving.prompt_limits import PromptEncoder, PromptLimits, model_context_length

# The small app: a context of 128 tokens, prompts of at most 64, bodies of at most 4096 bytes,
# at most 8 choices per request.
CONTEXT, PROMPT_LIMIT, BODY_LIMIT, CHOICE_LIMIT = 128, 64, 4096, 8


@pytest.fixture(scope="module")
def small_app(tiny_model):
    return create_app(
        str(tiny_model),
        model_name="small",
        batch_wait_ms=1.0,
        max_model_len=CONTEXT,
        max_prompt_tokens=PROMPT_LIMIT,
        max_request_bytes=BODY_LIMIT,
        max_choices=CHOICE_LIMIT,
    )


@pytest.fixture(scope="module")
def small_client(small_app):
    with TestClient(small_app) as client:
        yield client


@contextmanager
def _listening(app):
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread; yields the port.
    Without lifespan events: the app is shared by the module, and its shutdown would close the
    batcher, leaving later requests of other tests waiting forever."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _status_line(sock: socket.socket) -> bytes:
    """The first line of the server's answer."""
    answer = b""
    while b"\r\n" not in answer:
        data = sock.recv(4096)
        if not data:
            break
        answer += data
    return answer.split(b"\r\n", 1)[0]


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# ---------------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_with_413(small_client):
    with_length = small_client.post("/v1/completions", content=b" " * (BODY_LIMIT + 1))
    assert with_length.status_code == 413
    assert f"larger than {BODY_LIMIT} bytes" in _error(with_length)["message"]
    # no Content-Length: the body arrives in chunks and is counted as it comes
    chunked = small_client.post("/v1/chat/completions", content=(b" " * 1000 for _ in range(5)))
    assert chunked.status_code == 413 and _error(chunked)["type"] == "invalid_request_error"
    at_limit = b'{"prompt": "hi", "max_tokens": 1}'.ljust(BODY_LIMIT)
    assert small_client.post("/v1/completions", content=at_limit).status_code == 200


def test_a_chunked_body_is_refused_before_it_ends(small_app):
    """Over a real socket: the 413 comes while the chunked body is still open (its last chunk is
    never sent), and a declared Content-Length over the limit is refused before any body."""
    with _listening(small_app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b'{"prompt": "' + b"a" * 1000
            for _ in range(5):  # 5 KB, over the 4 KB limit; no terminating 0-chunk
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            assert _status_line(sock).startswith(b"HTTP/1.1 413 ")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 30000000\r\n\r\n"
            )
            assert _status_line(sock).startswith(b"HTTP/1.1 413 ")


# ---------------------------------------------------------------------------------------------
# Prompts: characters, tokens, the event loop
# ---------------------------------------------------------------------------------------------


class _RecordingTokenizer:
    """Counts calls; each character is one token."""

    eos_token_id = 0

    def __init__(self):
        self.calls = 0

    def __call__(self, text, add_special_tokens=True):
        self.calls += 1
        return type("Encoding", (), {"input_ids": [1] * len(text)})()


def test_a_prompt_too_long_in_characters_is_refused_without_tokenising():
    tokenizer = _RecordingTokenizer()
    encoder = PromptEncoder(tokenizer, PromptLimits(context=100, chars_per_token=3))
    # 99 tokens of at most 3 characters hold at most 297 characters
    with pytest.raises(ApiError, match="the prompt has 298 characters, more than 99 tokens"):
        encoder.encode("a" * 298, special=True, param="prompt")
    assert tokenizer.calls == 0
    assert len(encoder.encode("a" * 99, special=True, param="prompt")) == 99
    assert tokenizer.calls == 1


def test_prompt_limits_are_the_models_context_and_max_prompt_tokens(serve_client, small_client):
    tokenizer = serve_client.app_ref.state.batcher.tokenizer
    limits = serve_client.app_ref.state.prompts.limits
    model_config = serve_client.app_ref.state.batcher.model.config
    assert limits.context == model_context_length(model_config) == 1024
    # a byte per token, and "<|im_start|>" (12 characters) is one token
    assert limits.chars_per_token == max(len(t) for t in tokenizer.get_vocab()) == 12
    assert limits.prompt_budget == 1023  # by default a prompt may fill the context but one token

    long = small_client.post("/v1/completions", json={"prompt": "a" * 100, "max_tokens": 1})
    assert long.status_code == 400 and _error(long)["param"] == "prompt"
    assert _error(long)["message"] == (
        "the prompt has 100 tokens; this server takes prompts of at most 64 tokens "
        "(max_prompt_tokens)"
    )
    huge = small_client.post("/v1/completions", json={"prompt": "a" * (64 * 12 + 1)})
    assert huge.status_code == 400
    assert "the prompt has 769 characters, more than 64 tokens can hold" in _error(huge)["message"]
    chat = {"messages": [{"role": "user", "content": "b" * 70}], "max_tokens": 1}
    assert (
        "prompts of at most 64 tokens"
        in _error(small_client.post("/v1/chat/completions", json=chat))["message"]
    )


def test_a_request_past_the_context_is_refused_as_openai_words_it(serve_client):
    def refused(body):
        response = serve_client.post("/v1/completions", json=body)
        assert response.status_code == 400
        return _error(response)

    # the audit's requests: 2000 + 200 and 1 + 3000 tokens on a 1024-token model
    error = refused({"prompt": "a" * 2000, "max_tokens": 200})
    assert error["message"] == (
        "this model's maximum context length is 1024 tokens; the request needs 2200 "
        "(2000 prompt + 200 new)"
    )
    assert error["param"] == "prompt"
    error = refused({"prompt": "x", "max_tokens": 3000})
    assert error["message"].endswith("the request needs 3001 (1 prompt + 3000 new)")
    assert error["param"] == "max_tokens"
    assert refused({"prompt": "a" * 1000, "max_tokens": 25})["param"] == "max_tokens"
    chat = {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 1020}
    response = serve_client.post("/v1/chat/completions", json=chat)
    assert response.status_code == 400 and "maximum context length is 1024" in response.text
    # exactly the context: served
    fits = serve_client.post(
        "/v1/completions", json={"prompt": "a" * 1000, "max_tokens": 24, "temperature": 0}
    )
    assert fits.status_code == 200 and fits.json()["usage"]["prompt_tokens"] == 1000


def test_without_max_tokens_the_default_is_capped_at_the_room_left(serve_client):
    body = serve_client.post("/v1/completions", json={"prompt": "a" * 1020, "temperature": 0})
    assert body.status_code == 200
    usage, choice = body.json()["usage"], body.json()["choices"][0]
    assert usage["prompt_tokens"] == 1020 and usage["total_tokens"] <= 1024
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 4  # not the default 16
    full = serve_client.post("/v1/completions", json={"prompt": "a" * 1024})
    assert "needs 1025 (1024 prompt + 1 new)" in _error(full)["message"]


def test_prompts_are_tokenised_off_the_event_loop(serve_client):
    """The prompt encoder blocks until /health has answered: were it run on the event loop,
    /health could not answer while it waits, and the wait would time out."""
    app = serve_client.app_ref
    encoder = app.state.prompts
    entered, health_answered, waited = threading.Event(), threading.Event(), []

    class SlowEncoder:
        limits = encoder.limits

        def completion(self, prompts):
            entered.set()
            waited.append(health_answered.wait(timeout=20))
            return encoder.completion(prompts)

    app.state.prompts = SlowEncoder()
    try:
        with ThreadPoolExecutor(1) as pool:
            body = {"prompt": "User: Hi\nBot:", "max_tokens": 2}
            pending = pool.submit(serve_client.post, "/v1/completions", json=body)
            assert entered.wait(timeout=60)
            health = serve_client.get("/health")
            health_answered.set()
            completion = pending.result(timeout=120)
    finally:
        app.state.prompts = encoder
    assert health.status_code == 200 and waited == [True]
    assert completion.status_code == 200


# ---------------------------------------------------------------------------------------------
# Stop strings and choices per request: bounded, refused before any tokenising
# ---------------------------------------------------------------------------------------------


class _CountingEncoder:
    """Wraps the app's prompt encoder and counts the prompts it is given."""

    def __init__(self, encoder):
        self.encoder, self.limits, self.prompts = encoder, encoder.limits, 0

    def completion(self, prompts):
        self.prompts += len(prompts)
        return self.encoder.completion(prompts)

    def chat(self, messages):
        self.prompts += 1
        return self.encoder.chat(messages)


@contextmanager
def _counting(app):
    encoder = app.state.prompts
    app.state.prompts = _CountingEncoder(encoder)
    try:
        yield app.state.prompts
    finally:
        app.state.prompts = encoder


@pytest.mark.parametrize("count", [5, 10_000])
def test_more_than_four_stop_strings_are_refused(serve_client, count):
    """Every stop string is looked for after every new token, on the event loop: 10,000 of them
    held it for seconds. OpenAI takes at most 4; so does this server, as a 400 naming ``stop``."""
    stop = [f"<stop {k}>" for k in range(count)]
    with _counting(serve_client.app_ref) as encoder:
        for path, body in [
            ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "stop": stop}),
            (
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "hi"}], "stop": stop},
            ),
        ]:
            response = serve_client.post(path, json=body)
            assert response.status_code == 400, response.text
            error = _error(response)
            assert error["param"] == "stop"
            assert error["message"] == f"stop takes at most 4 strings, got {count}"
        assert encoder.prompts == 0  # refused before tokenising


def test_four_stop_strings_are_served(small_client):
    body = {
        "prompt": "hi",
        "max_tokens": 2,
        "temperature": 0,
        "stop": ["\n\n", "User:", "zzz", "!?"],
    }
    assert small_client.post("/v1/completions", json=body).status_code == 200
    assert small_client.post("/v1/completions", json={**body, "stop": "zz"}).status_code == 200


def test_choices_per_request_are_capped_at_max_choices(small_client):
    """prompts x n choices: 5,000 prompts x n=128 were all generated, and their text made on the
    event loop. Past ``max_choices`` (8 here) a request is refused before anything is tokenised,
    naming ``prompt`` where the prompts alone are too many, else ``n``."""
    with _counting(small_client.app) as encoder:

        def refused(path, body):
            response = small_client.post(path, json={"max_tokens": 1, **body})
            assert response.status_code == 400, response.text
            return _error(response)

        error = refused("/v1/completions", {"prompt": ["a", "b", "c"], "n": 3})
        assert error["param"] == "n"
        assert error["message"] == (
            "the request asks for 9 choices (3 prompts × n=3); this server gives at most 8 "
            "per request (max_choices)"
        )
        error = refused("/v1/completions", {"prompt": ["p"] * 9})
        assert (
            error["param"] == "prompt"
            and "asks for 9 choices (9 prompts × n=1)" in error["message"]
        )
        error = refused("/v1/completions", {"prompt": "p", "n": 9})
        assert error["param"] == "n" and "asks for 9 choices (n=9)" in error["message"]
        chat = {"messages": [{"role": "user", "content": "hi"}], "n": 9, "stream": True}
        error = refused("/v1/chat/completions", chat)
        assert error["param"] == "n" and "at most 8 per request" in error["message"]
        assert encoder.prompts == 0  # refused before tokenising
        served = small_client.post(
            "/v1/completions", json={"prompt": ["a", "b", "c", "d"], "n": 2, "max_tokens": 1}
        )
        assert served.status_code == 200 and len(served.json()["choices"]) == 8


def test_by_default_a_request_gets_at_most_128_choices(serve_client):
    response = serve_client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 65})
    assert response.status_code == 400
    assert (
        "asks for 130 choices (2 prompts × n=65); this server gives at most 128"
        in (_error(response)["message"])
    )
    response = serve_client.post("/v1/completions", json={"prompt": ["p"] * 129})
    assert response.status_code == 400 and _error(response)["param"] == "prompt"
    response = serve_client.post("/v1/completions", json={"prompt": "p", "n": 129})
    assert _error(response)["message"] == "n must be between 1 and 128, got 129"


# ---------------------------------------------------------------------------------------------
# Configuration and shared generate calls
# ---------------------------------------------------------------------------------------------


def test_limits_that_leave_no_room_are_refused_at_start(tiny_model):
    with pytest.raises(ConfigError, match="max_prompt_tokens: 1024 leaves no room"):
        create_app(str(tiny_model), max_prompt_tokens=1024)
    with pytest.raises(ConfigError, match="max_request_bytes"):
        create_app(str(tiny_model), max_request_bytes=0)
    with pytest.raises(ConfigError, match="max_choices: must be at least 1"):
        create_app(str(tiny_model), max_choices=0)
    with pytest.raises(ConfigError, match="max_choices: must be >= 1, got 0"):
        load_config(ServeConfig, None, ["max_choices=0"])
    assert load_config(ServeConfig, None, ["max_choices=4"]).max_choices == 4


def test_the_context_override_is_used(small_client):
    error = _error(small_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 128}))
    assert error["message"] == (
        "this model's maximum context length is 128 tokens; the request needs 129 "
        "(1 prompt + 128 new)"
    )


def test_rows_share_a_generate_call_only_where_they_fit_the_context(serve_client):
    """A long prompt with few new tokens and a short prompt with many: together the batch would
    run the long row past the context, so they get a call each."""
    model = serve_client.app_ref.state.batcher.model
    tokenizer = serve_client.app_ref.state.batcher.tokenizer
    long_prompt = tokenizer("a" * 20, add_special_tokens=False).input_ids
    short_prompt = tokenizer("bcd", add_special_tokens=False).input_ids

    def run(max_length):
        batcher = BatchedGenerator(model, tokenizer, wait_s=0.5, max_length=max_length)
        jobs = [
            GenJob(long_prompt, 1, 4, 0.0, 1.0, -1),
            GenJob(short_prompt, 2, 30, 0.0, 1.0, -1),
            GenJob(short_prompt, 1, 4, 0.0, 1.0, -1),
        ]
        futures = [batcher.submit(job) for job in jobs]
        rows = [f.result(timeout=120) for f in futures]
        batcher.close()
        return batcher.stats, rows

    stats, rows = run(max_length=40)  # 20 + 30 > 40
    assert stats["batches"] == 1 and stats["generate_calls"] == 2
    unlimited_stats, unlimited_rows = run(max_length=None)
    assert unlimited_stats["generate_calls"] == 1
    assert [[r.token_ids for r in job] for job in rows] == [
        [r.token_ids for r in job] for job in unlimited_rows
    ]
    assert [len(job) for job in rows] == [1, 2, 1]


def test_a_port_in_use_is_a_one_line_error_before_the_model_loads():
    """uvicorn found the port taken only after the model had loaded and the banner had said
    "serving on ...", and exited with code 3."""
    import socket

    from rlhfkit.errors import ConfigError
    from rlhfkit.recipes.serve import ServeConfig, run

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^port: cannot listen on 127.0.0.1:{port} "):
            run(ServeConfig(model="no/such/model/loaded", port=port))
