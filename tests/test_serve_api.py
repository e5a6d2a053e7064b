"""`rlhfkit serve` in process: the OpenAI shapes, log-probs equal to the model's own, streaming,
stop strings, errors, and request batching."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.recipes.serve import BatchedGenerator, GenJob

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
