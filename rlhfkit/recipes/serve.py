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

Limits: streaming sends each token as its own event, but only once the batch holding the request
has finished generating (no incremental decoding); ``echo``, ``best_of``, ``logit_bias``, tools
and prompts given as token ids are not supported (a 400 error says so); the request ``seed`` is
ignored (the server's generator is seeded once at start).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rlhfkit.config import option
from rlhfkit.data.collate import pad_left
from rlhfkit.errors import ConfigError
from rlhfkit.training.run import console


@dataclass
class ServeConfig:
    """An OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions) over a
    local model, with request batching."""

    model: str = option("", "model directory (or hub id) to serve")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 = every interface)")
    port: int = option(8000, "TCP port")
    model_name: str = option("", "model id clients use; empty = the directory's name")
    dtype: str = option("auto", "weight dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    max_batch_size: int = option(32, "most sequences generated together")
    batch_wait_ms: float = option(5.0, "how long the worker waits for more requests to batch")
    max_prompt_tokens: int = option(2048, "longer prompts are refused (400)")
    default_max_tokens: int = option(256, "max_tokens of a chat request that gives none")
    seed: int = option(0, "seed of the server's sampling generator")
    log_level: str = option("warning", "uvicorn log level: debug, info, warning, error")


class ApiError(Exception):
    """A request the server refuses, reported in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


# ---------------------------------------------------------------------------------------------
# The batching worker
# ---------------------------------------------------------------------------------------------


@dataclass
class GenJob:
    prompt_ids: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_logprobs: int  # alternatives per token; -1 = no log-probs at all
    future: Future = field(default_factory=Future)


@dataclass
class GenRow:
    """One generated sequence: token ids (EOS excluded), why it stopped, and log-probs."""

    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


class BatchedGenerator:
    """A worker thread that gathers concurrent jobs into shared `generate` calls."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 32, wait_s: float = 0.005):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = wait_s
        self.stats = {"batches": 0, "generate_calls": 0, "requests": 0, "sequences": 0}
        self._queue: queue.Queue[GenJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="rlhfkit-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: GenJob) -> Future:
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, rows = [first], first.n
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    job = (
                        self._queue.get(timeout=max(remaining, 0.0))
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                jobs.append(job)
                rows += job.n
            self.stats["batches"] += 1
            self.stats["requests"] += len(jobs)
            groups: dict[tuple[float, float], list[GenJob]] = {}
            for job in jobs:
                groups.setdefault((job.temperature, job.top_p), []).append(job)
            for group in groups.values():
                try:
                    results = self._run(group)
                except Exception as err:  # noqa: BLE001 - handed to the waiting requests
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(err)
                    continue
                for job, rows_of_job in zip(group, results, strict=True):
                    job.future.set_result(rows_of_job)

    @torch.no_grad()
    def _run(self, jobs: list[GenJob]) -> list[list[GenRow]]:
        rows = [(j, job) for j, job in enumerate(jobs) for _ in range(job.n)]
        out: list[list[GenRow]] = [[] for _ in jobs]
        device = next(self.model.parameters()).device
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start : start + self.max_batch_size]
            input_ids = pad_left([job.prompt_ids for _, job in chunk], pad_id).to(device)  # (B, P)
            attention = pad_left([[1] * len(job.prompt_ids) for _, job in chunk], 0).to(device)
            temperature, top_p = chunk[0][1].temperature, chunk[0][1].top_p
            want_logprobs = any(job.top_logprobs >= 0 for _, job in chunk)
            kwargs: dict[str, Any] = {
                "max_new_tokens": max(job.max_tokens for _, job in chunk),
                "pad_token_id": pad_id,
                "eos_token_id": eos_id,
                "use_cache": True,
                "return_dict_in_generate": True,
                "output_logits": want_logprobs,
            }
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(do_sample=False)
            generated = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
            self.stats["generate_calls"] += 1
            self.stats["sequences"] += len(chunk)
            new_tokens = generated.sequences[:, input_ids.shape[1] :]  # (B, N)
            logps = None
            if want_logprobs:
                logps = torch.stack(generated.logits, dim=1).float().log_softmax(-1)  # (B, N, V)
            for b, (j, job) in enumerate(chunk):
                ids = new_tokens[b].tolist()[: job.max_tokens]
                finish = "length"
                if eos_id in ids:
                    ids = ids[: ids.index(eos_id)]
                    finish = "stop"
                row = GenRow(ids, finish)
                if logps is not None and job.top_logprobs >= 0:
                    steps = logps[b, : len(ids)]  # (n, V)
                    row.logprobs = steps.gather(
                        -1, torch.tensor(ids, device=steps.device)[:, None]
                    )[:, 0].tolist()
                    if job.top_logprobs > 0:
                        values, indices = steps.topk(job.top_logprobs, dim=-1)
                        row.top_logprobs = [
                            list(zip(i_row, v_row, strict=True))
                            for i_row, v_row in zip(indices.tolist(), values.tolist(), strict=True)
                        ]
                    else:
                        row.top_logprobs = [[] for _ in ids]
                out[j].append(row)
        return out


# ---------------------------------------------------------------------------------------------
# Decoding the results into OpenAI's shapes
# ---------------------------------------------------------------------------------------------


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds (decoding prefixes, so multi-byte characters come out whole)."""
    pieces, previous = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")  # an incomplete UTF-8 character: wait for its other bytes
            continue
        shared = len(os.path.commonprefix([text, previous]))
        pieces.append(text[shared:])
        previous = text
    return pieces


@dataclass
class Choice:
    text: str
    finish_reason: str
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float] | None
    top_logprobs: list[list[tuple[str, float]]] | None


def _per_token(choice: Choice):
    """(token text, a one-token Choice) for each token of `choice`, for streaming chunks."""
    for k, piece in enumerate(choice.tokens):
        yield (
            piece,
            Choice(
                piece,
                choice.finish_reason,
                [piece],
                choice.token_ids[k : k + 1],
                choice.logprobs[k : k + 1] if choice.logprobs is not None else None,
                choice.top_logprobs[k : k + 1] if choice.top_logprobs is not None else None,
            ),
        )


def _finish(tokenizer, row: GenRow, stop: list[str]) -> Choice:
    pieces = _pieces(tokenizer, row.token_ids)
    text = "".join(pieces)
    finish = row.finish_reason
    keep = len(pieces)
    cut = min((at for s in stop if (at := text.find(s)) != -1), default=-1)
    if cut != -1:
        text, finish = text[:cut], "stop"
        length = 0
        for keep, piece in enumerate(pieces):  # noqa: B007 - keep is used after the loop
            if length + len(piece) > cut:
                break
            length += len(piece)
        else:
            keep = len(pieces)
    top = None
    if row.top_logprobs is not None:
        top = [
            [(tokenizer.decode([t], skip_special_tokens=False), v) for t, v in alts]
            for alts in row.top_logprobs[:keep]
        ]
    return Choice(
        text,
        finish,
        pieces[:keep],
        row.token_ids[:keep],
        row.logprobs[:keep] if row.logprobs is not None else None,
        top,
    )


def _completion_logprobs(choice: Choice, offset: int = 0) -> dict | None:
    if choice.logprobs is None:
        return None
    offsets, position = [], offset
    for piece in choice.tokens:
        offsets.append(position)
        position += len(piece)
    return {
        "tokens": choice.tokens,
        "token_logprobs": choice.logprobs,
        "top_logprobs": [dict(alts) for alts in choice.top_logprobs or []],
        "text_offset": offsets,
    }


def _chat_logprobs(choice: Choice) -> dict | None:
    if choice.logprobs is None:
        return None
    content = []
    for i, (piece, value) in enumerate(zip(choice.tokens, choice.logprobs, strict=True)):
        alts = (choice.top_logprobs or [[]] * len(choice.tokens))[i]
        content.append(
            {
                "token": piece,
                "logprob": value,
                "bytes": list(piece.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alts
                ],
            }
        )
    return {"content": content}


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def _number(body: dict, key: str, default: Any, cast: type, low: float, high: float) -> Any:
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"{key} must be a number", key)
    value = cast(value)
    if not low <= value <= high:
        raise ApiError(f"{key} must be between {low} and {high}, got {value}", key)
    return value


def _stop_list(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise ApiError("stop must be a string or a list of strings", "stop")


def create_app(
    model_dir: str,
    *,
    model_name: str = "",
    dtype: str = "auto",
    max_batch_size: int = 32,
    batch_wait_ms: float = 5.0,
    max_prompt_tokens: int = 2048,
    default_max_tokens: int = 256,
    seed: int = 0,
):
    """The FastAPI app serving ``model_dir`` (the model is loaded here, before it returns)."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype=dtype, trainable=False)
    if torch.cuda.is_available():
        model.to("cuda")
    torch.manual_seed(seed)
    name = model_name or Path(model_dir.rstrip("/")).name or model_dir
    batcher = BatchedGenerator(
        model, tokenizer, max_batch_size=max_batch_size, wait_s=batch_wait_ms / 1000.0
    )
    created = int(time.time())
    vocab = model.get_output_embeddings().weight.shape[0]  # top log-probs: all (OpenAI: 20)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="rlhfkit serve", version="1", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.model_name = name

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": err.message,
                    "type": "invalid_request_error",
                    "param": err.param,
                    "code": None,
                }
            },
            status_code=err.status,
        )

    async def _body(request: Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise ApiError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        for unsupported in ("echo", "best_of", "logit_bias", "tools", "suffix"):
            if body.get(unsupported):
                raise ApiError(f"{unsupported} is not supported by rlhfkit serve", unsupported)
        requested = body.get("model")
        if requested not in (None, "", name, model_dir):
            raise ApiError(
                f"model {requested!r} is not served here; this serves {name!r}", "model", 404
            )
        return body

    def _encode(text: str, special: bool) -> list[int]:
        ids = tokenizer(text, add_special_tokens=special).input_ids
        if not ids:
            ids = [tokenizer.eos_token_id]  # an empty prompt: start from the end-of-text token
        if len(ids) > max_prompt_tokens:
            raise ApiError(f"prompt has {len(ids)} tokens; at most {max_prompt_tokens}", "prompt")
        return ids

    async def _generate(prompts: list[list[int]], body: dict, max_default: int, top: int):
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", max_default, int, 1, 1 << 20)
        temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
        n = _number(body, "n", 1, int, 1, 128)
        jobs = [GenJob(ids, n, max_tokens, temperature, top_p, top) for ids in prompts]
        futures = [batcher.submit(job) for job in jobs]
        rows = []
        for fut in futures:
            rows.extend(await asyncio.wrap_future(fut))
        return rows, sum(len(ids) * n for ids in prompts)

    def _usage(prompt_tokens: int, choices: list[Choice]) -> dict:
        completion = sum(len(c.token_ids) for c in choices)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def _sse(events: list[dict]) -> StreamingResponse:
        async def stream():
            for event in events:
                yield f"data: {json.dumps(event)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, **batcher.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "rlhfkit"}],
        }

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
        top = -1 if logprobs is None else _number(body, "logprobs", 0, int, 0, vocab)
        stop = _stop_list(body)
        encoded = [_encode(p, True) for p in prompts]
        rows, prompt_tokens = await _generate(encoded, body, 16, top)
        choices = [_finish(tokenizer, row, stop) for row in rows]
        rid, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            events = []
            for i, c in enumerate(choices):
                offset = 0
                for piece, one in _per_token(c):
                    events.append(
                        _chunk(
                            rid,
                            now,
                            name,
                            "text_completion",
                            {
                                "index": i,
                                "text": piece,
                                "logprobs": _completion_logprobs(one, offset),
                                "finish_reason": None,
                            },
                        )
                    )
                    offset += len(piece)
                events.append(
                    _chunk(
                        rid,
                        now,
                        name,
                        "text_completion",
                        {
                            "index": i,
                            "text": "",
                            "logprobs": None,
                            "finish_reason": c.finish_reason,
                        },
                    )
                )
            return _sse(events)
        return {
            "id": rid,
            "object": "text_completion",
            "created": now,
            "model": name,
            "choices": [
                {
                    "index": i,
                    "text": c.text,
                    "logprobs": _completion_logprobs(c),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, choices),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _body(request)
        messages = body.get("messages")
        if not (
            isinstance(messages, list)
            and messages
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise ApiError("messages must be a non-empty list of {role, content}", "messages")
        for m in messages:
            if not isinstance(m.get("content"), str):
                raise ApiError("only text message content is supported", "messages")
        if not tokenizer.chat_template:
            raise ApiError("this model's tokenizer has no chat template; use /v1/completions")
        text = tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        top = -1
        if body.get("logprobs"):
            top = _number(body, "top_logprobs", 0, int, 0, vocab)
        stop = _stop_list(body)
        rows, prompt_tokens = await _generate([_encode(text, False)], body, default_max_tokens, top)
        choices = [_finish(tokenizer, row, stop) for row in rows]
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            events = []
            for i, c in enumerate(choices):
                events.append(
                    _chunk(
                        rid,
                        now,
                        name,
                        "chat.completion.chunk",
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        },
                    )
                )
                for piece, one in _per_token(c):
                    events.append(
                        _chunk(
                            rid,
                            now,
                            name,
                            "chat.completion.chunk",
                            {
                                "index": i,
                                "delta": {"content": piece},
                                "logprobs": _chat_logprobs(one),
                                "finish_reason": None,
                            },
                        )
                    )
                events.append(
                    _chunk(
                        rid,
                        now,
                        name,
                        "chat.completion.chunk",
                        {
                            "index": i,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": c.finish_reason,
                        },
                    )
                )
            return _sse(events)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": _chat_logprobs(c),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, choices),
        }

    return app


def _chunk(rid: str, created: int, model: str, obj: str, choice: dict) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


def run(config: ServeConfig) -> int:
    """Load the model and serve it until interrupted."""
    if not config.model:
        raise ConfigError("model: give the model directory to serve (model=DIR)")
    import uvicorn

    app = create_app(
        config.model,
        model_name=config.model_name,
        dtype=config.dtype,
        max_batch_size=config.max_batch_size,
        batch_wait_ms=config.batch_wait_ms,
        max_prompt_tokens=config.max_prompt_tokens,
        default_max_tokens=config.default_max_tokens,
        seed=config.seed,
    )
    console.print(
        f"rlhfkit serve: {config.model} as {app.state.model_name!r} on "
        f"http://{config.host}:{config.port}/v1"
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
    return 0


__all__ = ["ApiError", "BatchedGenerator", "ServeConfig", "create_app", "run"]
