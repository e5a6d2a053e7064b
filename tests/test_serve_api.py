"""`rlhfkit serve` in process: the OpenAI shapes, log-probs equal to the model's own, streaming,
stop strings, errors, and request batching."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.serving.batching import BatchedGenerator, GenJob
from rlhfkit.serving.openai_protocol import TokenTable

PROMPT = "User: What is 3+4?\nBot:"


def test_models_and_health(serve_client):
    body = serve_client.get("/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["id"] == "tiny-test"
    assert serve_client.get("/health").json()["status"] == "ok"


def test_greedy_completion_logprobs_are_the_models(serve_client):
    body = serve_client.post(
        "/v1/completions",
        json={
            "model": "tiny-test",
            "prompt": PROMPT,
            "max_tokens": 4,
            "temperature": 0,
            "logprobs": 3,
        },
    ).json()
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and choice["finish_reason"] in ("length", "stop")
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
    assert "".join(lp["tokens"]) == choice["text"]
    # recompute with one forward pass of the same model
    app = serve_client.app_ref
    model, tokenizer = app.state.batcher.model, app.state.batcher.tokenizer
    prompt_ids = tokenizer(PROMPT).input_ids
    new_ids = tokenizer(choice["text"], add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + new_ids])).logits[0].float()
    logp = logits.log_softmax(-1)
    for k, token_id in enumerate(new_ids):
        row = logp[len(prompt_ids) - 1 + k]
        assert lp["token_logprobs"][k] == pytest.approx(row[token_id].item(), abs=1e-4)
        assert token_id == int(row.argmax())  # greedy
        assert max(lp["top_logprobs"][k].values()) == pytest.approx(row.max().item(), abs=1e-4)
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)


def test_n_samples_stop_and_several_prompts(serve_client):
    body = serve_client.post(
        "/v1/completions",
        json={
            "prompt": [PROMPT, "User: Hi\nBot:"],
            "max_tokens": 6,
            "n": 3,
            "temperature": 1.0,
            "top_p": 0.9,
        },
    ).json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert all(c["logprobs"] is None for c in body["choices"])
    greedy = serve_client.post(
        "/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    ).json()
    text = greedy["choices"][0]["text"]
    if len(text) >= 2:
        cut = serve_client.post(
            "/v1/completions",
            json={"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "stop": [text[1:]]},
        ).json()["choices"][0]
        assert cut["text"] == text[: text.find(text[1:])] and cut["finish_reason"] == "stop"


def test_chat_completion_uses_the_chat_template_and_streams(serve_client):
    messages = [{"role": "user", "content": "What is 3+4?"}]
    body = serve_client.post(
        "/v1/chat/completions",
        json={
            "messages": messages,
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        },
    ).json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    assert all(len(t["top_logprobs"]) == 2 for t in content)
    tokenizer = serve_client.app_ref.state.batcher.tokenizer
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert body["usage"]["prompt_tokens"] == len(
        tokenizer(rendered, add_special_tokens=False).input_ids
    )

    with serve_client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 5, "temperature": 0, "stream": True},
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert streamed == choice["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]


def test_errors_have_the_openai_shape(serve_client):
    bad = serve_client.post("/v1/completions", json={"prompt": 3})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "prompt"
    hot = {"prompt": "x", "temperature": 5}
    assert serve_client.post("/v1/completions", json=hot).status_code == 400
    unknown = {"prompt": "x", "model": "gpt-9"}
    assert serve_client.post("/v1/completions", json=unknown).status_code == 404
    assert serve_client.post("/v1/completions", content=b"{not json").status_code == 400
    assert serve_client.post("/v1/chat/completions", json={"messages": []}).status_code == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"prompt": "x", "n": Infinity}', "n must be between 1 and 128, got inf"),
        (
            b'{"prompt": "x", "temperature": NaN}',
            "temperature must be between 0.0 and 2.0, got nan",
        ),
        (b'{"prompt": "x", "top_p": 1e400}', "top_p must be between 0.0 and 1.0, got inf"),
        (b'{"prompt": "x", "max_tokens": ' + b"9" * 400 + b"}", "got a larger integer"),
        (b'{"prompt": "x", "n": 1.9}', "n must be an integer, got 1.9"),
    ],
)
def test_numbers_json_lets_through_are_a_400_not_a_500(serve_client, body, message):
    """Python's JSON reader takes NaN, Infinity, 1e400 (inf) and 400-digit integers; casting
    those raised OverflowError or ValueError, answered as a 500. A fraction where an integer is
    asked for was silently truncated."""
    response = serve_client.post(
        "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_a_temperature_too_small_to_divide_by_is_greedy(serve_client):
    """Logits / 1e-45 overflow to inf and sampling failed (a 500); below 1e-5 the server decodes
    greedily, the limit of sampling as the temperature goes to 0."""
    ask = {"prompt": PROMPT, "max_tokens": 4, "logprobs": 1}
    tiny = serve_client.post("/v1/completions", json={**ask, "temperature": 1e-45})
    greedy = serve_client.post("/v1/completions", json={**ask, "temperature": 0})
    assert tiny.status_code == 200
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


def test_concurrent_requests_share_generate_calls(tiny_model):
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model), trainable=False)
    batcher = BatchedGenerator(model, tokenizer, max_batch_size=16, wait_s=0.5)
    prompt_ids = tokenizer(PROMPT).input_ids
    jobs = [GenJob(prompt_ids, 2, 3 + i % 2, 0.0, 1.0, -1) for i in range(5)]
    futures = [batcher.submit(job) for job in jobs]
    results = [f.result(timeout=120) for f in futures]
    batcher.close()
    assert batcher.stats["batches"] == 1 and batcher.stats["generate_calls"] == 1
    assert batcher.stats["requests"] == 5 and batcher.stats["sequences"] == 10
    # each job gets its own max_tokens; greedy rows of one prompt are identical
    for job, rows in zip(jobs, results, strict=True):
        assert len(rows) == 2 and rows[0].token_ids == rows[1].token_ids
        assert len(rows[0].token_ids) <= job.max_tokens


# ---------------------------------------------------------------------------------------------
# Log-probs: as many alternatives as asked, best first, each token's own bytes
# ---------------------------------------------------------------------------------------------


def _expected_label(token_id: int) -> str:
    """The byte tokenizer's ids, labelled by hand: 0-2 special, 3 + b the byte b, then none."""
    if token_id < 3:
        return ["<|pad|>", "<|im_end|>", "<|im_start|>"][token_id]
    if token_id < 259:
        byte = token_id - 3
        return chr(byte) if byte < 0x80 else f"bytes:\\x{byte:02x}"
    return f"token_id:{token_id}"


def _expected_bytes(token_id: int) -> list[int] | None:
    if token_id < 3:
        return list(_expected_label(token_id).encode())
    return [token_id - 3] if token_id < 259 else None


def _first_step_top(serve_client, prompt_ids: list[int], k: int) -> tuple[list[int], list[float]]:
    """The model's own k best next tokens after the prompt, and their log-probs."""
    model = serve_client.app_ref.state.batcher.model
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].float()
    values, indices = logits.log_softmax(-1).topk(k)
    return indices.tolist(), values.tolist()


def test_completion_top_logprobs_are_as_many_as_asked_and_best_first(serve_client):
    body = serve_client.post(
        "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 3, "temperature": 0, "logprobs": 50},
    ).json()
    tops = body["choices"][0]["logprobs"]["top_logprobs"]
    assert len(tops) >= 1
    for top in tops:
        values = list(top.values())
        assert len(top) == 50 and values == sorted(values, reverse=True)
    tokenizer = serve_client.app_ref.state.batcher.tokenizer
    ids, values = _first_step_top(serve_client, tokenizer("Hi").input_ids, 50)
    assert list(tops[0]) == [_expected_label(i) for i in ids]  # bytes:\x.. and token_id:N kept
    assert list(tops[0].values()) == pytest.approx(values, abs=1e-4)
    vocab = serve_client.app_ref.state.batcher.model.get_output_embeddings().weight.shape[0]
    whole = serve_client.post(
        "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 1, "temperature": 0, "logprobs": vocab},
    ).json()["choices"][0]["logprobs"]["top_logprobs"][0]
    assert len(whole) == vocab  # every row of the output layer, none merged


def test_chat_top_logprobs_carry_each_tokens_own_bytes(serve_client):
    messages = [{"role": "user", "content": "Hi"}]
    body = serve_client.post(
        "/v1/chat/completions",
        json={
            "messages": messages,
            "max_tokens": 2,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 50,
        },
    ).json()
    first = body["choices"][0]["logprobs"]["content"][0]
    tokenizer = serve_client.app_ref.state.batcher.tokenizer
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids, values = _first_step_top(
        serve_client, tokenizer(rendered, add_special_tokens=False).input_ids, 50
    )
    alts = first["top_logprobs"]
    assert [a["token"] for a in alts] == [_expected_label(i) for i in ids]
    assert [a["bytes"] for a in alts] == [_expected_bytes(i) for i in ids]
    assert [a["logprob"] for a in alts] == pytest.approx(values, abs=1e-4)
    assert first["bytes"] == _expected_bytes(ids[0])  # greedy: the best alternative was taken


def test_token_table_bytes_and_labels(serve_client):
    tokenizer = serve_client.app_ref.state.batcher.tokenizer
    table = TokenTable(tokenizer)
    e_acute = "é".encode()  # two byte tokens, neither a character on its own
    assert table.token_bytes(3 + e_acute[0]) == e_acute[:1]
    assert table.label(3 + e_acute[0]) == f"bytes:\\x{e_acute[0]:02x}"
    assert table.label(3 + ord("A")) == "A" and table.token_bytes(1) == b"<|im_end|>"
    assert table.token_bytes(300) is None and table.label(300) == "token_id:300"
    # two ids with the same text keep distinct labels, so a dict keeps both
    table._bytes[301] = b"A"
    labels = [label for label, _, _ in table.alternatives([(3 + ord("A"), -1.0), (301, -2.0)])]
    assert labels == ["A", "token_id:301"]


class _SentencePieceLike:
    """A slow SentencePiece-style tokenizer: byte-fallback tokens and "▁" for spaces."""

    added_tokens_decoder: dict = {}
    TOKENS = ["<0xE6>", "\u2581the", "<unk>"]

    def __len__(self):
        return len(self.TOKENS)

    def convert_ids_to_tokens(self, token_id):
        return self.TOKENS[token_id]


def test_token_table_reads_sentencepiece_byte_fallback_and_spaces():
    table = TokenTable(_SentencePieceLike())
    assert not table.byte_level
    assert table.token_bytes(0) == b"\xe6" and table.label(0) == "bytes:\\xe6"
    assert table.token_bytes(1) == b" the" and table.label(1) == " the"


# ---------------------------------------------------------------------------------------------
# Errors, roles, content parts, unsupported parameters
# ---------------------------------------------------------------------------------------------


def test_unknown_paths_and_methods_answer_in_the_openai_shape(serve_client):
    missing = serve_client.post("/v1/embeddings", json={"input": "x"})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "no such endpoint: POST /v1/embeddings",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    wrong = serve_client.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["message"] == (
        "GET /v1/chat/completions: method not allowed; use POST"
    )


USER_HI = {"role": "user", "content": "Hi"}


def _chat(serve_client, messages, **extra):
    return serve_client.post(
        "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 3, "temperature": 0, **extra},
    )


def test_chat_roles_are_checked(serve_client):
    wizard = _chat(serve_client, [{"role": "wizard", "content": "Hi"}])
    assert wizard.status_code == 400 and wizard.json()["error"]["param"] == "messages"
    assert "messages[0].role must be one of system, developer, user, assistant" in wizard.text
    tool = _chat(serve_client, [{"role": "tool", "content": "42"}])
    assert tool.status_code == 400 and "tool calls are not supported" in tool.text
    # "developer" is OpenAI's newer name for a system message
    system = _chat(serve_client, [{"role": "system", "content": "Be brief."}, USER_HI]).json()
    developer = _chat(serve_client, [{"role": "developer", "content": "Be brief."}, USER_HI])
    assert developer.status_code == 200
    assert developer.json()["usage"] == system["usage"]
    assert developer.json()["choices"][0]["message"] == system["choices"][0]["message"]


def test_text_content_parts_are_joined_and_other_parts_refused(serve_client):
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "3+4?"}]
    joined = _chat(serve_client, [{"role": "user", "content": parts}])
    plain = _chat(serve_client, [{"role": "user", "content": "What is\n3+4?"}])
    assert joined.status_code == 200
    assert joined.json()["usage"] == plain.json()["usage"]
    assert joined.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    refused = _chat(serve_client, [{"role": "user", "content": image}])
    assert refused.status_code == 400
    assert (
        "messages[0].content[0]: only text parts are supported, got type 'image_url'"
        in (refused.json()["error"]["message"])
    )
    for content in ([], None, [{"type": "text", "text": 3}]):
        assert _chat(serve_client, [{"role": "user", "content": content}]).status_code == 400


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
        ("response_format", {"type": "json_object"}),
        ("best_of", 2),
        ("echo", True),
        ("logit_bias", {"65": 5}),
        ("tool_choice", "required"),
        ("presence_penalty", False),
    ],
)
def test_unsupported_parameters_are_refused(serve_client, key, value):
    response = serve_client.post("/v1/completions", json={"prompt": "Hi", key: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == key and "is not supported by rlhfkit serve" in error["message"]


def test_unsupported_parameters_at_their_defaults_are_accepted(serve_client):
    defaults = {
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "response_format": {"type": "text"},
        "best_of": 1,
        "echo": False,
        "logit_bias": {},
        "tools": [],
        "tool_choice": "none",
        "suffix": None,
    }
    plain = serve_client.post(
        "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0}
    ).json()
    with_defaults = serve_client.post(
        "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0, **defaults},
    )
    assert with_defaults.status_code == 200
    assert with_defaults.json()["choices"] == plain["choices"]
    chat = _chat(serve_client, [USER_HI], **defaults)
    assert chat.status_code == 200


def _sse_events(serve_client, path: str, body: dict) -> list[dict]:
    with serve_client.stream("POST", path, json={**body, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_usage_counts_each_prompt_once_and_streams_report_it_when_asked(serve_client):
    """`usage.prompt_tokens` was multiplied by `n` (OpenAI and vLLM count a prompt once), and
    `stream_options.include_usage` was ignored: a stream now ends with a chunk of no choices and
    the usage, the same as the request's without streaming (greedy, so the same tokens)."""
    tokenizer = serve_client.app_ref.state.batcher.tokenizer
    prompts = [PROMPT, "User: Hi\nBot:"]
    ask = {"prompt": prompts, "max_tokens": 3, "n": 2}
    usage = serve_client.post("/v1/completions", json=ask).json()["usage"]
    assert usage["prompt_tokens"] == sum(len(tokenizer(p).input_ids) for p in prompts)
    assert usage["completion_tokens"] <= 2 * 2 * 3
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    once = serve_client.post("/v1/chat/completions", json=chat).json()["usage"]
    twice = serve_client.post("/v1/chat/completions", json={**chat, "n": 2}).json()["usage"]
    assert twice["prompt_tokens"] == once["prompt_tokens"]

    for path, body in (
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "n": 2}),
        ("/v1/chat/completions", {**chat, "temperature": 0, "n": 2}),
    ):
        whole = serve_client.post(path, json=body).json()["usage"]
        assert whole["completion_tokens"] > 0
        events = _sse_events(
            serve_client, path, {**body, "stream_options": {"include_usage": True}}
        )
        assert events[-1]["choices"] == [] and events[-1]["usage"] == whole
        assert all("usage" not in e for e in events[:-1])
        plain = _sse_events(serve_client, path, body)
        assert all(e["choices"] for e in plain)  # no usage chunk unless asked
    refused = serve_client.post(
        "/v1/completions",
        json={"prompt": PROMPT, "stream": True, "stream_options": {"include_usage": "yes"}},
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "include_usage"


def test_chat_logprobs_must_be_a_boolean_and_come_with_top_logprobs(serve_client):
    """`"logprobs": "false"` switched log-probs on (read by truthiness), and `top_logprobs`
    without `logprobs: true` was silently ignored; OpenAI answers 400 to both."""
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for extra, param in (
        ({"logprobs": "false"}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ):
        response = serve_client.post("/v1/chat/completions", json={**chat, **extra})
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    off = serve_client.post("/v1/chat/completions", json={**chat, "logprobs": False}).json()
    assert off["choices"][0]["logprobs"] is None


def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_model_not_found(serve_client):
    """`client.models.retrieve(id)` (GET /v1/models/{id}) had no route (404 "no such
    endpoint"); an unknown model's error now carries OpenAI's code, `model_not_found`."""
    card = serve_client.get("/v1/models/tiny-test").json()
    assert card == serve_client.get("/v1/models").json()["data"][0]
    for response in (
        serve_client.get("/v1/models/gpt-9"),
        serve_client.post("/v1/completions", json={"prompt": "x", "model": "gpt-9"}),
    ):
        error = response.json()["error"]
        assert response.status_code == 404
        assert error["code"] == "model_not_found" and error["param"] == "model"


def test_the_checkpoints_generation_config_does_not_change_what_is_served(tiny_model, tmp_path):
    """A checkpoint's generation_config.json (Qwen2.5-Instruct ships a repetition_penalty) was
    applied by `generate` to every request: greedy decoding then picked tokens other than the
    argmax of the log-probs the server reported. The server samples with the request's settings
    only, as `rlhfkit generate` and PPO do (`only_given_settings`): the same model with a
    repetition_penalty of 3 and no_repeat_ngram_size 2 in that file serves the same tokens."""
    import shutil

    from fastapi.testclient import TestClient

    from rlhfkit.recipes.serve import create_app

    changed = tmp_path / "penalised"
    shutil.copytree(tiny_model, changed)
    config_file = changed / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config.update(repetition_penalty=3.0, no_repeat_ngram_size=2)
    config_file.write_text(json.dumps(config))
    ask = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 1}
    served = []
    for directory in (tiny_model, changed):
        with TestClient(create_app(str(directory), batch_wait_ms=1.0)) as client:
            served.append(client.post("/v1/completions", json=ask).json()["choices"][0])
    assert served[1]["text"] == served[0]["text"]
    logprobs = served[1]["logprobs"]
    for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True):
        assert list(top) == [token]  # greedy: each token is the argmax of its step
