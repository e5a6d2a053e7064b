"""`rlhfkit serve model=DIR [--host 127.0.0.1] [--port 8000]`: an OpenAI-compatible HTTP API over a
local model, so a critic or judge can run as its own process and any OpenAI client can talk to a
trained policy.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the
tokenizer's chat template; ``max_tokens`` / ``max_completion_tokens``, ``temperature``,
``top_p``, ``n``, ``stop``, ``logprobs`` / ``top_logprobs`` (up to the whole vocabulary, where
OpenAI stops at 20), ``stream``), and ``GET /health`` (readiness, with batching counters).
Errors come back in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

Request batching: handlers put their work on a queue; one worker thread takes the first waiting
request, gathers whatever else arrives within ``batch_wait_ms`` (up to ``max_batch_size``
sequences), and runs one `generate` call per group of equal (temperature, top_p) -- so
concurrent clients share forward passes. Log-probs are those of the model's own distribution
(temperature 1, before top-p), as OpenAI reports them.

Streaming (``stream: true``) is incremental: a streamer inside the batched `generate` call hands
each row's new token to its request as it is made, and the request turns tokens into text events
with `TextStream`, the same code that makes the non-streamed text, so both say the same. A
character split over several byte tokens goes out whole, with its last token; with ``stop``
strings the last ``len(longest stop) - 1`` characters are held back until more text (or the
row's end) shows whether a stop string starts there, so nothing past a stop string is sent. Each
choice gets its finish event as soon as its row ends; log-probs stream with their tokens.

Limits: a request body over ``max_request_bytes`` is refused (413) while it arrives, chunked or
not; a prompt is checked by its length in characters before it is tokenised (off the event loop),
and prompt + ``max_tokens`` must fit the model's context (400, worded as OpenAI and vLLM word it);
``stop`` takes at most 4 strings (as OpenAI's API) and a request at most ``max_choices`` choices
(prompts × ``n``), 400 past either, before anything is tokenised. A client that disconnects mid-
stream cancels its request: its rows stop at the next step (the batch's other rows go on); a non-
streamed request runs to its end; streams carry no ``usage``; OpenAI parameters this server does
not implement (``echo``, ``best_of``, ``logit_bias``, ``presence_penalty``, ``response_format``,
tools, ...) are accepted at their default value and refused otherwise, as are prompts given as
token ids and non-text message parts; the request ``seed`` is ignored (the server's generator is
seeded once at start).

A reward-model directory (one holding ``rlhfkit_reward.json``) is served as the HTTP scorer
that ``ppo.reward_model`` and ``eval`` accept instead: see `rlhfkit.recipes.serve_reward`.

This module holds the routes; the pieces they use live in `rlhfkit.serving` (errors,
batching, text streams, OpenAI's request and response shapes, prompt limits).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from rlhfkit.config import SEED_RANGE, check_limits, option
from rlhfkit.errors import ConfigError
from rlhfkit.serving.batching import BatchedGenerator, GenJob
from rlhfkit.serving.http_errors import ApiError, install_error_handlers, read_json_body
from rlhfkit.serving.openai_protocol import (
    TokenTable,
    bool_param,
    chat_logprobs,
    chat_messages,
    check_unsupported,
    choices_per_prompt,
    chunk_event,
    completion_logprobs,
    number_param,
    requested_max_tokens,
    stop_list,
    stream_usage,
)
from rlhfkit.serving.prompt_limits import PromptEncoder, server_prompt_limits
from rlhfkit.serving.text_stream import Choice, TextStream, choice_of_row
from rlhfkit.training.run import console

# A temperature below this decodes greedily (its limit): dividing logits by ~1e-45 overflows.
GREEDY_BELOW = 1e-5


@dataclass
class ServeConfig:
    """An OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions) over a
    local model, with request batching; a reward-model directory is served as an HTTP scorer
    (POST /score)."""

    model: str = option(
        "",
        "model directory (or hub id) to serve; reward-model directories joined by ',' are "
        "served as one ensemble scorer",
    )
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 = every interface)")
    port: int = option(8000, "TCP port", minimum=1, maximum=65535)
    model_name: str = option("", "model id clients use; empty = the directory's name")
    dtype: str = option("auto", "weight dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    max_batch_size: int = option(32, "most sequences generated (or scored) together", minimum=1)
    batch_wait_ms: float = option(
        5.0, "how long the worker waits for more requests to batch", minimum=0
    )
    max_model_len: int = option(
        0, "context length that prompt + max_tokens must fit; 0 = the model's (its config)"
    )
    max_prompt_tokens: int = option(
        0, "longer prompts are refused (400); 0 = as long as the context allows"
    )
    max_request_bytes: int = option(8 << 20, "larger request bodies are refused (413)", minimum=1)
    max_choices: int = option(
        128, "most choices (prompts x n) one request may ask for; more are refused (400)", minimum=1
    )
    default_max_tokens: int = option(256, "max_tokens of a chat request that gives none", minimum=1)
    seed: int = option(0, "seed of the server's sampling generator", **SEED_RANGE)
    log_level: str = option(
        "warning", "uvicorn log level", choices=("debug", "info", "warning", "error")
    )


def create_app(
    model_dir: str,
    *,
    model_name: str = "",
    dtype: str = "auto",
    max_batch_size: int = 32,
    batch_wait_ms: float = 5.0,
    max_model_len: int = 0,
    max_prompt_tokens: int = 0,
    max_request_bytes: int = 8 << 20,
    max_choices: int = 128,
    default_max_tokens: int = 256,
    seed: int = 0,
):
    """The FastAPI app serving ``model_dir`` (the model is loaded here, before it returns).

    A reward-model directory, or several joined by commas (an ensemble), gets the scorer app of
    `rlhfkit.recipes.serve_reward` instead.
    """
    from rlhfkit.recipes.serve_reward import create_reward_app, is_reward_model, serves_ensemble

    if max_request_bytes < 1:
        raise ConfigError(f"max_request_bytes: must be at least 1, got {max_request_bytes}")
    if max_choices < 1:
        raise ConfigError(f"max_choices: must be at least 1, got {max_choices}")
    name = model_name or Path(model_dir.rstrip("/")).name or model_dir
    if serves_ensemble(model_dir) or is_reward_model(model_dir):
        return create_reward_app(
            model_dir,
            model_name=name,
            dtype=dtype,
            batch_size=max_batch_size,
            max_request_bytes=max_request_bytes,
        )
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype=dtype, trainable=False)
    limits = server_prompt_limits(
        model, tokenizer, max_model_len=max_model_len, max_prompt_tokens=max_prompt_tokens
    )
    if torch.cuda.is_available():
        model.to("cuda")
    torch.manual_seed(seed)
    batcher = BatchedGenerator(
        model,
        tokenizer,
        max_batch_size=max_batch_size,
        wait_s=batch_wait_ms / 1000.0,
        max_length=limits.context,
    )
    created = int(time.time())
    vocab = model.get_output_embeddings().weight.shape[0]  # top log-probs: all (OpenAI: 20)
    table = TokenTable(tokenizer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="rlhfkit serve", version="1", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.model_name = name
    app.state.prompts = PromptEncoder(tokenizer, limits)  # read per request (tests wrap it)
    app.state.served_as, app.state.path = "text generation", "/v1"
    install_error_handlers(app)

    async def _body(request: Request) -> dict:
        body = await read_json_body(request, max_request_bytes)
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        check_unsupported(body)
        _check_model(body.get("model"))
        return body

    def _check_model(requested: str | None) -> None:
        if requested not in (None, "", name, model_dir):
            raise ApiError(
                f"model {requested!r} is not served here; this serves {name!r}",
                "model",
                404,
                code="model_not_found",
            )

    def _model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "rlhfkit"}

    def _jobs(prompts: list[list[int]], n: int, body: dict, max_default: int, top: int, param: str):
        """The jobs of a request, ``n`` rows per prompt (validating its sampling keys and that
        each prompt and its new tokens fit the context), and its prompt token count (each
        prompt counted once, whatever ``n``, as OpenAI and vLLM count it)."""
        requested = requested_max_tokens(body)
        temperature = number_param(body, "temperature", 1.0, float, 0.0, 2.0)
        if temperature < GREEDY_BELOW:  # logits / 1e-45 overflow; sampling's limit is greedy
            temperature = 0.0
        top_p = number_param(body, "top_p", 1.0, float, 0.0, 1.0)
        jobs = [
            GenJob(
                ids,
                n,
                limits.new_tokens(len(ids), requested, max_default, param),
                temperature,
                top_p,
                top,
            )
            for ids in prompts
        ]
        return jobs, sum(len(ids) for ids in prompts)

    async def _generate(jobs: list[GenJob], stop: list[str]) -> list[Choice]:
        """Generate ``jobs`` and decode their rows (off the event loop, which serves the other
        clients meanwhile). Should the request end first (an error, the server shutting down),
        its jobs are cancelled, so the batcher stops generating them."""
        futures = [batcher.submit(job) for job in jobs]
        try:
            rows = [row for fut in futures for row in await asyncio.wrap_future(fut)]
        finally:
            for fut in futures:
                fut.cancel()  # a no-op on a finished job
        return await asyncio.to_thread(lambda: [choice_of_row(tokenizer, r, stop) for r in rows])

    async def _stream(
        jobs: list[GenJob], stop: list[str], sent_tokens: list[int]
    ) -> AsyncIterator[tuple[int, Choice]]:
        """Generate ``jobs`` and yield (choice index, chunk) as their text can be sent: each
        choice's text chunks (finish_reason None), then one empty chunk with its finish_reason.
        ``sent_tokens[0]`` grows by the tokens of the chunks yielded (the usage of a finished
        stream). Raises what generation raised."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def deliver(item: tuple) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        n = jobs[0].n
        streams = [TextStream(tokenizer, stop) for _ in range(len(jobs) * n)]
        for j, job in enumerate(jobs):
            job.on_token = lambda row, step, j=j: deliver(("token", j * n + row, step))
            # the worker resolves a future after the last token of its job: the queue keeps order
            job.future.add_done_callback(lambda fut, j=j: deliver(("done", j, fut)))
            batcher.submit(job)
        ended = [False] * len(streams)  # whether the choice's finish chunk is sent
        try:
            while not all(ended):
                kind, key, item = await inbox.get()
                if kind == "done":
                    if item.exception() is not None:
                        raise item.exception()
                    ends = [(key * n + r, row.finish_reason) for r, row in enumerate(item.result())]
                elif item.token_id is None:
                    ends = [(key, item.finish_reason)]
                else:
                    stream = streams[key]
                    for chunk in stream.push(item.token_id, item.logprob, item.top_logprobs):
                        sent_tokens[0] += len(chunk.token_ids)
                        yield key, chunk
                    ends = [(key, "stop")] if stream.done else []  # a stop string ended it
                for i, finish in ends:
                    if ended[i]:
                        continue
                    for chunk in streams[i].close(finish):
                        sent_tokens[0] += len(chunk.token_ids)
                        yield i, chunk
                    yield i, Choice("", streams[i].finish_reason, [], [], None, None)
                    ended[i] = True
        finally:  # done, or the client went away: the batcher stops what is still running
            for job in jobs:
                job.future.cancel()

    def _usage(prompt_tokens: int, completion: int) -> dict:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
        """Server-sent events, each sent as soon as ``events`` yields it; an error after the
        response has started goes out as a last event in OpenAI's error shape."""

        async def stream():
            try:
                async for event in events:
                    yield f"data: {json.dumps(event)}\n\n"
            except Exception as err:  # noqa: BLE001 - the status line is sent: report in-stream
                error = {"message": str(err), "type": "server_error", "param": None, "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    def _usage_chunk(rid: str, now: int, obj: str, prompt_tokens: int, sent: int) -> dict:
        """The last chunk of a stream with ``stream_options.include_usage``: no choices, the
        request's usage (OpenAI's shape)."""
        usage = _usage(prompt_tokens, sent)
        return {
            "id": rid,
            "object": obj,
            "created": now,
            "model": name,
            "choices": [],
            "usage": usage,
        }

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, **batcher.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        _check_model(model_id)
        return _model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            raise ApiError("prompt must be a string or a list of strings", "prompt")
        logprobs = body.get("logprobs")
        top = -1 if logprobs is None else number_param(body, "logprobs", 0, int, 0, vocab)
        stop = stop_list(body)
        n = choices_per_prompt(body, len(prompts), max_choices)  # before any tokenising
        encoded = await asyncio.to_thread(app.state.prompts.completion, prompts)
        jobs, prompt_tokens = _jobs(encoded, n, body, 16, top, "prompt")
        rid, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            include_usage = stream_usage(body)

            async def events():
                offsets = [0] * (len(jobs) * jobs[0].n)  # text_offset of each choice's next token
                sent = [0]
                async for i, c in _stream(jobs, stop, sent):
                    if c.finish_reason is None and not c.text and c.logprobs is None:
                        continue  # nothing to say
                    yield chunk_event(
                        rid,
                        now,
                        name,
                        "text_completion",
                        {
                            "index": i,
                            "text": c.text,
                            "logprobs": completion_logprobs(c, table, offsets[i]),
                            "finish_reason": c.finish_reason,
                        },
                    )
                    offsets[i] += len(c.text)
                if include_usage:
                    yield _usage_chunk(rid, now, "text_completion", prompt_tokens, sent[0])

            return _sse(events())
        choices = await _generate(jobs, stop)
        return {
            "id": rid,
            "object": "text_completion",
            "created": now,
            "model": name,
            "choices": [
                {
                    "index": i,
                    "text": c.text,
                    "logprobs": completion_logprobs(c, table),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, sum(len(c.token_ids) for c in choices)),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _body(request)
        messages = chat_messages(body.get("messages"))
        top = -1
        if bool_param(body, "logprobs"):
            top = number_param(body, "top_logprobs", 0, int, 0, vocab)
        elif body.get("top_logprobs") is not None:
            raise ApiError("top_logprobs needs logprobs set to true", "top_logprobs")
        stop = stop_list(body)
        n = choices_per_prompt(body, 1, max_choices)
        encoded = await asyncio.to_thread(app.state.prompts.chat, messages)
        jobs, prompt_tokens = _jobs([encoded], n, body, default_max_tokens, top, "messages")
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            include_usage = stream_usage(body)

            def event(choice: dict) -> dict:
                return chunk_event(rid, now, name, "chat.completion.chunk", choice)

            async def events():
                for i in range(jobs[0].n):
                    yield event(
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
                sent = [0]
                async for i, c in _stream(jobs, stop, sent):
                    if c.finish_reason is not None:
                        yield event(
                            {
                                "index": i,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": c.finish_reason,
                            }
                        )
                    elif c.text or c.logprobs is not None:
                        yield event(
                            {
                                "index": i,
                                "delta": {"content": c.text},
                                "logprobs": chat_logprobs(c, table),
                                "finish_reason": None,
                            }
                        )
                if include_usage:
                    yield _usage_chunk(rid, now, "chat.completion.chunk", prompt_tokens, sent[0])

            return _sse(events())
        choices = await _generate(jobs, stop)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": chat_logprobs(c, table),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, sum(len(c.token_ids) for c in choices)),
        }

    return app


def _check_port_free(host: str, port: int) -> None:
    """A one-line error now if ``host:port`` cannot be listened on (uvicorn would say so only
    after the model has loaded, with exit code 3)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except socket.gaierror as err:
            raise ConfigError(f"host: cannot resolve {host!r}: {err}") from None
        except OSError as err:
            raise ConfigError(
                f"port: cannot listen on {host}:{port} ({err.strerror}); choose another port"
            ) from None


def run(config: ServeConfig) -> int:
    """Load the model and serve it until interrupted."""
    if not config.model:
        raise ConfigError("model: give the model directory to serve (model=DIR)")
    check_limits(config)  # as the command line checks them, for a config built in Python
    _check_port_free(config.host, config.port)  # before the model loads, not after
    import uvicorn

    app = create_app(
        config.model,
        model_name=config.model_name,
        dtype=config.dtype,
        max_batch_size=config.max_batch_size,
        batch_wait_ms=config.batch_wait_ms,
        max_model_len=config.max_model_len,
        max_prompt_tokens=config.max_prompt_tokens,
        max_request_bytes=config.max_request_bytes,
        max_choices=config.max_choices,
        default_max_tokens=config.default_max_tokens,
        seed=config.seed,
    )
    console.print(
        f"rlhfkit serve: {config.model} as {app.state.model_name!r} ({app.state.served_as}) on "
        f"http://{config.host}:{config.port}{app.state.path}"
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
    return 0


__all__ = ["ServeConfig", "create_app", "run"]
