"""`rlhfkit serve` streaming: tokens reach the client while the batch is still generating, the
streamed text adds up to the non-streamed text (stop strings, n > 1, several prompts, log-probs),
multi-byte characters go out whole, and rows end at their EOS or max_tokens."""

from __future__ import annotations

import json
import random
import threading
import time
from contextlib import contextmanager

import pytest

from rlhfkit.serving.batching import BatchedGenerator, GenJob, GenRow
from rlhfkit.serving.text_stream import TextStream, choice_of_row

PROMPT = "User: What is 3+4?\nBot:"
SCRIPT = "the cat sat; é漢 on the mat"  # what `_scripted` makes the tiny model say


@pytest.fixture(scope="module")
def tokenizer(serve_client):
    return serve_client.app_ref.state.batcher.tokenizer


def _events(serve_client, path: str, body: dict) -> tuple[list[dict], bool]:
    """The parsed events of a streamed request, and whether it ended with [DONE]."""
    with serve_client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    done = bool(lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines if line != "data: [DONE]"], done


def _streamed_choices(events: list[dict], chat: bool) -> dict[int, dict]:
    """Per choice index: the joined text, the finish reasons seen, and the streamed tokens."""
    out: dict[int, dict] = {}
    for event in events:
        (choice,) = event["choices"]
        entry = out.setdefault(choice["index"], {"text": "", "finish": [], "tokens": []})
        assert not entry["finish"], "an event came after the choice's finish event"
        if chat:
            entry["text"] += choice["delta"].get("content", "")
            if choice["logprobs"] is not None:
                entry["tokens"] += [t["token"] for t in choice["logprobs"]["content"]]
        else:
            entry["text"] += choice["text"]
            if choice["logprobs"] is not None:
                entry["tokens"] += choice["logprobs"]["tokens"]
        if choice["finish_reason"] is not None:
            entry["finish"].append(choice["finish_reason"])
    return out


@contextmanager
def _scripted(model, tokenizer, texts: list[str]):
    """Make the model's greedy continuation of batch row b spell ``texts[b % len(texts)]``, then
    EOS: a forward hook adds a large bonus to the logit of the row's next scripted byte token (the
    random tiny model alone repeats one token). A forward over more than one position is a
    prefill, and starts the script over."""
    scripts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    step = [0]

    def steer(_module, _args, kwargs, output):
        if kwargs["input_ids"].shape[1] > 1:
            step[0] = 0
        for b in range(output.logits.shape[0]):
            script = scripts[b % len(scripts)]
            token = script[step[0]] if step[0] < len(script) else tokenizer.eos_token_id
            output.logits[b, -1, token] += 100.0
        step[0] += 1
        return output

    handle = model.register_forward_hook(steer, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# TextStream on its own
# ---------------------------------------------------------------------------------------------


class _PieceTokenizer:
    """Token k decodes to PIECES[k], so a token can hold several characters."""

    PIECES = ["ab", "cde", "f", "gh"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.PIECES[i] for i in ids)


def _feed(stream: TextStream, ids: list[int]) -> list[str]:
    """Push ``ids`` one by one; the text handed out after each push, then after close."""
    sent = []
    for token_id in ids:
        sent.append("".join(c.text for c in stream.push(token_id)))
    sent.append("".join(c.text for c in stream.close("length")))
    return sent


def test_text_stream_sends_multibyte_characters_whole_and_as_soon_as_complete(tokenizer):
    text = "aé漢😀b"
    ids = tokenizer(text, add_special_tokens=False).input_ids  # one token per UTF-8 byte
    assert len(ids) == len(text.encode())
    sent = _feed(TextStream(tokenizer, []), ids)
    # "a" goes out with its own token; each multi-byte character with its last byte
    assert sent == ["a", "", "é", "", "", "漢", "", "", "", "😀", "b", ""]
    # a row cut inside a character ends with what it has (U+FFFD), as the non-streamed text does
    stream = TextStream(tokenizer, [])
    assert _feed(stream, ids[:2]) == ["a", "", "\ufffd"] and stream.finish_reason == "length"


def test_text_stream_holds_back_only_what_a_stop_string_could_start_in(tokenizer):
    ids = tokenizer("hello world", add_special_tokens=False).input_ids
    stream = TextStream(tokenizer, ["lo w"])
    sent = _feed(stream, ids)
    # three characters are held back (len("lo w") - 1) until "lo w" is whole, then cut there
    assert sent[:4] == ["", "", "", "h"] and "".join(sent) == "hel"
    assert stream.finish_reason == "stop" and all(s == "" for s in sent[7:])


def test_text_stream_cuts_at_the_earliest_stop_even_if_it_completes_later(tokenizer):
    # "c" is whole first, but "bcd" starts earlier: the text is "a", as without streaming
    ids = tokenizer("abcde", add_special_tokens=False).input_ids
    stream = TextStream(tokenizer, ["c", "bcd"])
    assert "".join(_feed(stream, ids)) == "a" and stream.finish_reason == "stop"


def test_text_stream_sends_the_part_of_a_token_before_a_stop_string_as_text_only():
    stream = TextStream(_PieceTokenizer(), ["de"])
    chunks = stream.push(0, -0.5, [(0, -0.5)]) + stream.push(1, -0.7, [(1, -0.7)])
    assert [(c.text, c.token_ids, c.logprobs) for c in chunks] == [
        ("ab", [0], [-0.5]),
        ("c", [], None),  # the start of token 1, which runs into the stop string
    ]
    assert stream.done and stream.push(2) == [] and stream.close("length") == []
    assert stream.finish_reason == "stop"


def test_streamed_chunks_add_up_to_the_non_streamed_choice(tokenizer):
    """Random byte rows and stop strings: the chunks of a token-by-token stream join to what the
    whole row gives, which is the row's text cut at its earliest stop string."""
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "é", "漢"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if ids and rng.random() < 0.3:
            ids = ids[: rng.randint(0, len(ids))]  # may end inside a character
        full = tokenizer.decode(ids, skip_special_tokens=True)
        stop = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(2)]
        cuts = [at for s in stop if (at := full.find(s)) != -1]
        expected = full[: min(cuts)] if cuts else full
        stream = TextStream(tokenizer, stop)
        assert "".join(_feed(stream, ids)) == expected, (text, ids, stop)
        assert stream.finish_reason == ("stop" if cuts else "length")
        choice = choice_of_row(tokenizer, GenRow(ids, "length"), stop)
        assert choice.text == expected and choice.finish_reason == stream.finish_reason
        assert expected.startswith("".join(choice.tokens))  # whole tokens before the stop


# ---------------------------------------------------------------------------------------------
# The batching worker
# ---------------------------------------------------------------------------------------------


def _collect(job: GenJob, forwards: list[int], seen: dict) -> None:
    """Give ``job`` an on_token that records each step and how many forwards had run by then."""

    def on_token(row, step):
        seen.setdefault(row, []).append((step, forwards[0]))

    job.on_token = on_token


def test_worker_hands_tokens_over_while_generating_and_they_match_the_rows(serve_client, tokenizer):
    model = serve_client.app_ref.state.batcher.model
    batcher = BatchedGenerator(model, tokenizer, max_batch_size=16, wait_s=0.5)
    forwards = [0]
    handle = model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    try:
        streamed = GenJob(tokenizer(PROMPT).input_ids, 2, 5, 0.0, 1.0, 3)
        short = GenJob(tokenizer("User: Hi\nBot:").input_ids, 1, 2, 0.0, 1.0, -1)
        quiet = GenJob(tokenizer(PROMPT).input_ids, 1, 5, 0.0, 1.0, 3)  # no on_token
        seen_streamed, seen_short = {}, {}
        _collect(streamed, forwards, seen_streamed)
        _collect(short, forwards, seen_short)
        with _scripted(model, tokenizer, [SCRIPT]):
            futures = [batcher.submit(job) for job in (streamed, short, quiet)]
            rows = [f.result(timeout=120) for f in futures]
    finally:
        handle.remove()
        batcher.close()
    assert batcher.stats["generate_calls"] == 1 and forwards[0] == 5  # one shared call
    for job, seen, job_rows in ((streamed, seen_streamed, rows[0]), (short, seen_short, rows[1])):
        assert sorted(seen) == list(range(job.n))
        for r, row in enumerate(job_rows):
            steps = [step for step, _ in seen[r]]
            # k-th token handed over right after the k-th forward, long before the call ends
            assert [when for _, when in seen[r][:-1]] == list(range(1, len(row.token_ids) + 1))
            assert [s.token_id for s in steps[:-1]] == row.token_ids
            assert steps[-1].token_id is None and steps[-1].finish_reason == row.finish_reason
            if job.top_logprobs >= 0:
                assert [s.logprob for s in steps[:-1]] == pytest.approx(row.logprobs, abs=1e-6)
                for s, alts in zip(steps[:-1], row.top_logprobs, strict=True):
                    assert [t for t, _ in s.top_logprobs] == [t for t, _ in alts]
    assert tokenizer.decode(rows[0][1].token_ids) == SCRIPT[:5]
    assert tokenizer.decode(rows[1][0].token_ids) == SCRIPT[:2]  # the short job's own max_tokens
    assert rows[2][0].token_ids == rows[0][0].token_ids  # streaming does not change the rows


def test_worker_ends_a_streamed_row_at_its_eos_and_streams_no_padding(serve_client, tokenizer):
    model = serve_client.app_ref.state.batcher.model
    batcher = BatchedGenerator(model, tokenizer, max_batch_size=8, wait_s=0.5)
    ended = GenJob(tokenizer(PROMPT).input_ids, 1, 10, 0.0, 1.0, 0)
    longer = GenJob(tokenizer(PROMPT).input_ids, 1, 10, 0.0, 1.0, -1)
    forwards, seen_ended, seen_longer = [0], {}, {}
    _collect(ended, forwards, seen_ended)
    _collect(longer, forwards, seen_longer)
    count = model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    try:
        with _scripted(model, tokenizer, ["ab", "abcdef"]):
            futures = [batcher.submit(ended), batcher.submit(longer)]
            rows = [f.result(timeout=120)[0] for f in futures]
    finally:
        count.remove()
        batcher.close()
    # row 0 met its EOS after 2 tokens and was padded while row 1 went on to its own EOS
    assert forwards[0] == 7 and batcher.stats["generate_calls"] == 1
    assert tokenizer.decode(rows[0].token_ids) == "ab" and rows[0].finish_reason == "stop"
    assert tokenizer.decode(rows[1].token_ids) == "abcdef" and rows[1].finish_reason == "stop"
    for seen, row in ((seen_ended, rows[0]), (seen_longer, rows[1])):
        steps = [step for step, _ in seen[0]]
        assert [s.token_id for s in steps] == [*row.token_ids, None]  # no EOS, no padding
        assert steps[-1].finish_reason == "stop"
        assert [when for _, when in seen[0]] == [*range(1, len(row.token_ids) + 2)]


def test_worker_stops_generating_a_job_whose_client_went_away(serve_client, tokenizer):
    """A job cancelled mid-call (its client left after two tokens) stops being generated at that
    step: a call of that job alone ends after 2 or 3 forwards, not its 20 (it used to run all 20 for
    nobody); beside a live job, the live job's rows are those of a call without the other."""
    model = serve_client.app_ref.state.batcher.model
    batcher = BatchedGenerator(model, tokenizer, max_batch_size=8, wait_s=0.5)
    forwards = [0]
    count = model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))

    def leaving(job: GenJob, after: int) -> GenJob:
        seen = []

        def on_token(row, step):
            seen.append(step)
            if len(seen) == after:
                job.future.cancel()

        job.on_token = on_token
        job.seen = seen
        return job

    try:
        with _scripted(model, tokenizer, [SCRIPT]):
            alone = leaving(GenJob(tokenizer(PROMPT).input_ids, 1, 20, 0.0, 1.0, -1), 2)
            batcher.submit(alone)
            while batcher.stats["generate_calls"] < 1:
                threading.Event().wait(0.01)
            # `generate` may run one forward ahead of what it hands over
            assert forwards[0] <= 3 and alone.future.cancelled() and len(alone.seen) == 2

            solo = batcher.submit(GenJob(tokenizer(PROMPT).input_ids, 1, 20, 0.0, 1.0, -1))
            expected = solo.result(timeout=120)
            forwards[0] = 0
            gone = leaving(GenJob(tokenizer(PROMPT).input_ids, 1, 20, 0.0, 1.0, -1), 3)
            live = GenJob(tokenizer(PROMPT).input_ids, 1, 20, 0.0, 1.0, -1)
            batcher.submit(gone)
            rows = batcher.submit(live).result(timeout=120)
    finally:
        count.remove()
        batcher.close()
    assert batcher.stats["generate_calls"] == 3  # the gone and the live job shared one call
    assert forwards[0] == 20 and len(gone.seen) == 3  # no token handed over after it left
    assert [r.token_ids for r in rows] == [r.token_ids for r in expected]
    assert rows[0].token_ids == tokenizer(SCRIPT, add_special_tokens=False).input_ids[:20]


def test_a_stream_whose_client_disconnects_stops_its_generation(tiny_model, tokenizer):
    """A real uvicorn server, a real socket: the client reads one event and closes the connection
    (forward 3 of 60 waits until the server has seen it go). The request's job is cancelled, and
    the batcher makes no forward after the third. Before, the job ran to its 60 tokens for
    nobody. (Starlette's TestClient does not always pass a client's close on to the app.)"""
    import httpx
    import uvicorn

    from rlhfkit.recipes.serve import create_app
    from tests.conftest import free_port

    app = create_app(str(tiny_model), model_name="tiny-test", batch_wait_ms=1.0)
    model, batcher = app.state.batcher.model, app.state.batcher
    submitted, forwards, release = [], [0], threading.Event()
    submit = batcher.submit

    def recording_submit(job):
        submitted.append(job)
        return submit(job)

    def hold_third_forward(*_):
        forwards[0] += 1
        if forwards[0] == 3:
            assert release.wait(timeout=60)

    def until(condition, seconds: float = 60.0) -> bool:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        return condition()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    body = {"prompt": PROMPT, "max_tokens": 60, "temperature": 0, "stream": True}
    batcher.submit = recording_submit
    handle = model.register_forward_hook(hold_third_forward)
    try:
        assert until(lambda: server.started)
        with _scripted(model, tokenizer, [SCRIPT]):
            with httpx.Client(timeout=60) as client:
                url = f"http://127.0.0.1:{port}/v1/completions"
                with client.stream("POST", url, json=body) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            break  # one event, then the client goes away
            (job,) = submitted
            assert until(job.future.cancelled)  # the server noticed the disconnect
            release.set()
            assert until(lambda: batcher.stats["generate_calls"] == 1)
    finally:
        release.set()
        handle.remove()
        server.should_exit = True
        thread.join(timeout=60)
    assert forwards[0] <= 3


# ---------------------------------------------------------------------------------------------
# The endpoints
# ---------------------------------------------------------------------------------------------


def test_first_tokens_reach_the_client_while_the_model_is_still_generating(serve_client, tokenizer):
    """The third forward pass blocks until the client has read a token event: without
    incremental streaming no token event could come before it, and the test would stall."""
    model = serve_client.app_ref.state.batcher.model
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 1}
    forwards, blocked, release, stalled = [0], threading.Event(), threading.Event(), []

    def hold_third_forward(*_):
        forwards[0] += 1
        if forwards[0] == 3:
            blocked.set()
            if not release.wait(timeout=60):
                stalled.append(True)

    events = []
    with _scripted(model, tokenizer, [SCRIPT]):
        whole = serve_client.post("/v1/completions", json=body).json()["choices"][0]
        handle = model.register_forward_hook(hold_third_forward)
        try:
            with serve_client.stream(
                "POST", "/v1/completions", json={**body, "stream": True}
            ) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if not events:
                        # the first token arrived, and generation is (still) held in forward 3
                        assert event["choices"][0]["logprobs"] is not None
                        assert blocked.wait(timeout=60) and not release.is_set() and not stalled
                        release.set()
                    events.append(event)
        finally:
            release.set()
            handle.remove()
    assert not stalled and whole["text"] == SCRIPT[:6]
    streamed = _streamed_choices(events, chat=False)[0]
    assert streamed["text"] == whole["text"] and streamed["finish"] == [whole["finish_reason"]]
    assert streamed["tokens"] == whole["logprobs"]["tokens"]
    offsets = [
        o
        for e in events
        if e["choices"][0]["logprobs"]
        for o in e["choices"][0]["logprobs"]["text_offset"]
    ]
    assert offsets == whole["logprobs"]["text_offset"]


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_text_stops_where_the_non_streamed_text_does(serve_client, tokenizer, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    base = {"max_tokens": 60, "temperature": 0, "logprobs": True if chat else 0}
    if chat:
        base["messages"] = [{"role": "user", "content": "What is 3+4?"}]
    else:
        base["prompt"] = PROMPT

    def whole(body):
        choice = serve_client.post(path, json=body).json()["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        logprobs = choice["logprobs"]
        tokens = [t["token"] for t in logprobs["content"]] if chat else logprobs["tokens"]
        return text, choice["finish_reason"], tokens

    cases = [
        ([], SCRIPT, "stop"),  # the scripted EOS
        (["sat"], "the cat ", "stop"),
        ([" on", "漢 "], "the cat sat; é", "stop"),  # the earlier-starting one wins
        (["é"], "the cat sat; ", "stop"),
        (["at;", "at"], "the c", "stop"),
        (["no such text"], SCRIPT, "stop"),
    ]
    with _scripted(serve_client.app_ref.state.batcher.model, tokenizer, [SCRIPT]):
        for stop, expected_text, expected_finish in cases:
            body = {**base, "stop": stop}
            text, finish, tokens = whole(body)
            assert (text, finish) == (expected_text, expected_finish), stop
            events, done = _events(serve_client, path, body)
            streamed = _streamed_choices(events, chat)[0]
            assert done and streamed["text"] == expected_text, stop
            assert streamed["finish"] == [finish] and streamed["tokens"] == tokens
        body = {**base, "max_tokens": 14}  # ends inside "漢": its bytes so far give U+FFFD
        text, finish, _ = whole(body)
        assert text == "the cat sat; \ufffd" and finish == "length"
        events, _ = _events(serve_client, path, body)
        assert _streamed_choices(events, chat)[0]["text"] == text


def test_n_choices_and_several_prompts_stream_side_by_side(serve_client, tokenizer):
    """Row b of a batch says "one two" (even b) or "three" (odd b), then EOS."""
    with _scripted(serve_client.app_ref.state.batcher.model, tokenizer, ["one two", "three"]):
        messages = [{"role": "user", "content": "Hi"}]
        chat = {"messages": messages, "max_tokens": 20, "temperature": 0, "n": 2}
        expected = serve_client.post("/v1/chat/completions", json=chat).json()["choices"]
        events, done = _events(serve_client, "/v1/chat/completions", chat)
        roles = [e for e in events if e["choices"][0]["delta"].get("role") == "assistant"]
        assert done and sorted(e["choices"][0]["index"] for e in roles) == [0, 1]
        streamed = _streamed_choices(events, chat=True)
        assert [c["message"]["content"] for c in expected] == ["one two", "three"]
        assert sorted(streamed) == [0, 1]
        for i in (0, 1):
            assert streamed[i]["text"] == expected[i]["message"]["content"]
            assert streamed[i]["finish"] == [expected[i]["finish_reason"]]

        prompts = {"prompt": [PROMPT, "User: Hi\nBot:"], "max_tokens": 6, "temperature": 0, "n": 2}
        expected = serve_client.post("/v1/completions", json=prompts).json()["choices"]
        events, done = _events(serve_client, "/v1/completions", prompts)
        streamed = _streamed_choices(events, chat=False)
        assert [c["text"] for c in expected] == ["one tw", "three"] * 2
        assert [c["finish_reason"] for c in expected] == ["length", "stop"] * 2
        assert done and sorted(streamed) == [0, 1, 2, 3]
        for i in range(4):
            assert streamed[i]["text"] == expected[i]["text"]
            assert streamed[i]["finish"] == [expected[i]["finish_reason"]]

        sampled = {"prompt": PROMPT, "max_tokens": 4, "temperature": 1.0, "n": 3}
        events, done = _events(serve_client, "/v1/completions", sampled)
        streamed = _streamed_choices(events, chat=False)
        assert done and sorted(streamed) == [0, 1, 2]
        assert all(len(c["finish"]) == 1 for c in streamed.values())


def test_an_error_during_generation_ends_the_stream_with_an_error_event(serve_client):
    model = serve_client.app_ref.state.batcher.model
    forwards = [0]

    def fail_on_second_forward(*_):
        forwards[0] += 1
        if forwards[0] == 2:
            raise RuntimeError("the device fell over")

    handle = model.register_forward_hook(fail_on_second_forward)
    try:
        events, done = _events(
            serve_client,
            "/v1/completions",
            {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "logprobs": 0},
        )
    finally:
        handle.remove()
    assert not done and events[-1]["error"]["message"] == "the device fell over"
    assert events[-1]["error"]["type"] == "server_error"
    assert len(events) == 2 and events[0]["choices"][0]["logprobs"] is not None  # token 1 went out
    # the server goes on serving
    after = serve_client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
    assert after.status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprob_bytes_are_each_tokens_own_and_join_to_the_text(
    serve_client, tokenizer, stream
):
    """SCRIPT has two- and three-byte characters, one byte token each: a token that ends inside
    a character adds no text, but its ``bytes`` are its own byte, so the bytes of all tokens
    join to the message's UTF-8."""
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 60,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 1,
    }
    with _scripted(serve_client.app_ref.state.batcher.model, tokenizer, [SCRIPT]):
        if stream:
            events, done = _events(serve_client, "/v1/chat/completions", body)
            assert done
            content = [
                entry
                for e in events
                if e["choices"][0]["logprobs"] is not None
                for entry in e["choices"][0]["logprobs"]["content"]
            ]
        else:
            choice = serve_client.post("/v1/chat/completions", json=body).json()["choices"][0]
            assert choice["message"]["content"] == SCRIPT
            content = choice["logprobs"]["content"]
    assert len(content) == len(SCRIPT.encode())
    assert b"".join(bytes(entry["bytes"]) for entry in content) == SCRIPT.encode()
    assert "".join(entry["token"] for entry in content) == SCRIPT
    e_acute = content[SCRIPT.encode().index("é".encode())]
    assert e_acute["token"] == "" and e_acute["bytes"] == list("é".encode()[:1])
    # greedy: each step's best alternative is the token taken, with the same bytes
    assert all(entry["top_logprobs"][0]["bytes"] == entry["bytes"] for entry in content)
