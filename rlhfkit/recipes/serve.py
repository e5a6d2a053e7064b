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

Limits: a client that disconnects mid-stream does not stop its rows from being generated (the
batch they share runs on); streams carry no ``usage``; ``echo``, ``best_of``, ``logit_bias``,
tools and prompts given as token ids are not supported (a 400 error says so); the request
``seed`` is ignored (the server's generator is seeded once at start).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers.generation.streamers import BaseStreamer

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
class StepToken:
    """One step of one streamed row: a new token (with its log-probs when the job asked for
    them), or, with ``token_id`` None, the end of the row and why it ended."""

    token_id: int | None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" (EOS) or "length", on the row's end only


@dataclass
class GenJob:
    """One prompt to generate ``n`` rows for. With ``on_token``, the worker thread calls
    ``on_token(row, step)`` for each row's tokens as they are generated and once at the row's end
    (the future still resolves to every row, at the end of the batch)."""

    prompt_ids: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_logprobs: int  # alternatives per token; -1 = no log-probs at all
    on_token: Callable[[int, StepToken], None] | None = None
    future: Future = field(default_factory=Future)


@dataclass
class GenRow:
    """One generated sequence: token ids (EOS excluded), why it stopped, and log-probs."""

    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


def _logits_recorder(logits: list) -> Callable:
    """A forward hook that appends each forward's next-token logits (B, V), as the float32 copy
    `generate` samples from, to ``logits``."""

    def hook(_module, _args, output) -> None:
        logits.append(output.logits[:, -1].to(torch.float32, copy=True))

    return hook


class _RowStreamer(BaseStreamer):
    """Hands each token of a batched `generate` call, as it is made, to the ``on_token`` of the
    job its row belongs to. A row ends at its EOS (which is not passed on, nor the padding that
    follows it) or at its job's ``max_tokens``.

    Args:
        rows: (job, row within the job) of each batch row.
        eos_id: The end-of-sequence token id.
        logits: The list a forward hook appends each step's next-token logits (B, V) to, or None
            when no streamed row wants log-probs.
    """

    def __init__(self, rows: list[tuple[GenJob, int]], eos_id: int, logits: list | None):
        self.rows, self.eos_id, self.logits = rows, eos_id, logits
        self.made = [0] * len(rows)
        self.live = [job.on_token is not None for job, _ in rows]
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # `generate` hands over the prompts (B, P) first
            self.prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()  # (B,)
        # first in, first out: `generate` may run one forward ahead of what it streams
        logps = self.logits.pop(0).log_softmax(-1) if self.logits is not None else None  # (B, V)
        for b, token in enumerate(tokens):
            if not self.live[b]:
                continue
            job, _ = self.rows[b]
            if token == self.eos_id:
                self._send(b, StepToken(None, finish_reason="stop"))
                continue
            step = StepToken(token)
            if logps is not None and job.top_logprobs >= 0:
                step.logprob = logps[b, token].item()
                values, indices = logps[b].topk(job.top_logprobs)
                step.top_logprobs = list(zip(indices.tolist(), values.tolist(), strict=True))
            self.made[b] += 1
            self._send(b, step)
            if self.live[b] and self.made[b] >= job.max_tokens:
                self._send(b, StepToken(None, finish_reason="length"))

    def end(self) -> None:
        for b in range(len(self.rows)):
            if self.live[b]:
                self._send(b, StepToken(None, finish_reason="length"))

    def _send(self, b: int, step: StepToken) -> None:
        job, row = self.rows[b]
        if step.token_id is None:
            self.live[b] = False
        try:
            job.on_token(row, step)
        except Exception:  # noqa: BLE001 - e.g. a closed event loop: this row's client is gone
            self.live[b] = False


class BatchedGenerator:
    """A worker thread that gathers concurrent jobs into shared `generate` calls, and streams the
    tokens of jobs that have an ``on_token`` callback while they are generated."""

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
        rows = [(j, job, r) for j, job in enumerate(jobs) for r in range(job.n)]
        out: list[list[GenRow]] = [[] for _ in jobs]
        device = next(self.model.parameters()).device
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start : start + self.max_batch_size]
            prompts = [job.prompt_ids for _, job, _ in chunk]
            input_ids = pad_left(prompts, pad_id).to(device)  # (B, P)
            attention = pad_left([[1] * len(ids) for ids in prompts], 0).to(device)  # (B, P)
            temperature, top_p = chunk[0][1].temperature, chunk[0][1].top_p
            want_logprobs = any(job.top_logprobs >= 0 for _, job, _ in chunk)
            kwargs: dict[str, Any] = {
                "max_new_tokens": max(job.max_tokens for _, job, _ in chunk),
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
            hook = None
            if any(job.on_token is not None for _, job, _ in chunk):
                logits = None
                if any(job.on_token is not None and job.top_logprobs >= 0 for _, job, _ in chunk):
                    logits = []
                    # one recorded entry per forward, so one forward per token: the prefill is
                    # not split in chunks (only set when the model's config asks for chunks)
                    if getattr(self.model.generation_config, "prefill_chunk_size", None):
                        kwargs["prefill_chunk_size"] = None
                    hook = self.model.register_forward_hook(_logits_recorder(logits))
                kwargs["streamer"] = _RowStreamer([(job, r) for _, job, r in chunk], eos_id, logits)
            try:
                generated = self.model.generate(
                    input_ids=input_ids, attention_mask=attention, **kwargs
                )
            finally:
                if hook is not None:
                    hook.remove()
            self.stats["generate_calls"] += 1
            self.stats["sequences"] += len(chunk)
            new_tokens = generated.sequences[:, input_ids.shape[1] :]  # (B, N)
            logps = None
            if want_logprobs:
                logps = torch.stack(generated.logits, dim=1).float().log_softmax(-1)  # (B, N, V)
            for b, (j, job, _) in enumerate(chunk):
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


@dataclass
class Choice:
    """Generated text with its tokens; also one streamed chunk of it (``finish_reason`` None)."""

    text: str
    finish_reason: str | None
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float] | None
    top_logprobs: list[list[tuple[str, float]]] | None


@dataclass
class _Pending:
    """A token of a `TextStream` not handed out yet."""

    token_id: int
    logprob: float | None
    top: list[tuple[int, float]] | None
    piece: str | None = None  # its text; None while it may end inside a multi-byte character
    end: int = 0  # where its text ends in the row's text


class TextStream:
    """One generated row turned into text chunks token by token, never past a stop string.

    A token's text (its piece) is what decoding the row so far adds to the previous decoding; a
    token that leaves an incomplete UTF-8 character (a trailing U+FFFD) adds "" and the token
    that completes the character carries it, unless it is the row's last token. A token is handed
    out once its piece is known and it ends at least ``len(longest stop) - 1`` characters before
    the text known so far, so no stop string can start inside it. Once the earliest stop string
    is certain, the text up to it goes out -- the part of a token before it as a text-only chunk
    (no token, no log-probs) -- and the row is over with finish_reason "stop".

    Fed the whole row at once it gives what a non-streamed request returns (`_finish`), so the
    chunks of a stream add up to the non-streamed choice.

    Args:
        tokenizer: Decodes the row's token ids.
        stop: Stop strings (empty ones are ignored).
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.decoded = ""  # the decoding of the tokens whose pieces are known
        self.text = ""  # those pieces joined: the row's text so far
        self.sent = 0  # characters of `text` handed out; no stop string starts before them
        self.pending: list[_Pending] = []
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(
        self,
        token_id: int,
        logprob: float | None = None,
        top: list[tuple[int, float]] | None = None,
    ) -> list[Choice]:
        """Add the row's next token; returns the chunks that can now be handed out."""
        if self.done:
            return []
        if self.pending and self.pending[-1].piece is None:
            self._settle(self.pending[-1], "")  # a later token carries its character
        self.ids.append(token_id)
        entry = _Pending(token_id, logprob, top)
        self.pending.append(entry)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not decoded.endswith("\ufffd"):
            self._settle(entry, self._added(decoded))
        return self._release(final=False)

    def close(self, finish_reason: str) -> list[Choice]:
        """End the row (``finish_reason`` unless a stop string ended it first); returns the
        chunks still held back."""
        if self.done:
            return []
        if self.pending and self.pending[-1].piece is None:  # the last token: send what it has
            decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            self._settle(self.pending[-1], self._added(decoded))
        chunks = self._release(final=True)
        if not self.done:
            self.finish_reason = finish_reason
        return chunks

    def _added(self, decoded: str) -> str:
        piece = decoded[len(os.path.commonprefix([decoded, self.decoded])) :]
        self.decoded = decoded
        return piece

    def _settle(self, entry: _Pending, piece: str) -> None:
        entry.piece = piece
        self.text += piece
        entry.end = len(self.text)

    def _release(self, final: bool) -> list[Choice]:
        # A stop string starting before `limit` is already whole in `text`, so the earliest one
        # found there is the earliest the row will have.
        limit = len(self.text) if final else len(self.text) - self.hold
        cut = min((at for s in self.stop if (at := self.text.find(s, self.sent)) != -1), default=-1)
        stopped = cut != -1 and cut <= limit
        bound = cut if stopped else limit
        chunks = []
        while self.pending and self.pending[0].piece is not None and self.pending[0].end <= bound:
            entry = self.pending.pop(0)
            chunks.append(self._token_chunk(entry))
            self.sent = entry.end
        if stopped:
            if self.sent < cut:
                chunks.append(Choice(self.text[self.sent : cut], None, [], [], None, None))
                self.sent = cut
            self.pending.clear()
            self.finish_reason = "stop"
        return chunks

    def _token_chunk(self, entry: _Pending) -> Choice:
        top = None
        if entry.top is not None:
            top = [
                [(self.tokenizer.decode([t], skip_special_tokens=False), v) for t, v in entry.top]
            ]
        return Choice(
            entry.piece,
            None,
            [entry.piece],
            [entry.token_id],
            None if entry.logprob is None else [entry.logprob],
            top,
        )


def _finish(tokenizer, row: GenRow, stop: list[str]) -> Choice:
    """The choice a non-streamed request returns for ``row``: `TextStream` fed the whole row."""
    stream = TextStream(tokenizer, stop)
    chunks = []
    for k, token_id in enumerate(row.token_ids):
        chunks += stream.push(
            token_id,
            row.logprobs[k] if row.logprobs is not None else None,
            row.top_logprobs[k] if row.top_logprobs is not None else None,
        )
    chunks += stream.close(row.finish_reason)
    return Choice(
        "".join(c.text for c in chunks),
        stream.finish_reason,
        [t for c in chunks for t in c.tokens],
        [t for c in chunks for t in c.token_ids],
        [v for c in chunks for v in c.logprobs or []] if row.logprobs is not None else None,
        [a for c in chunks for a in c.top_logprobs or []] if row.top_logprobs is not None else None,
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

    def _jobs(prompts: list[list[int]], body: dict, max_default: int, top: int):
        """The jobs of a request (validating its sampling keys), and its prompt token count."""
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", max_default, int, 1, 1 << 20)
        temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
        n = _number(body, "n", 1, int, 1, 128)
        jobs = [GenJob(ids, n, max_tokens, temperature, top_p, top) for ids in prompts]
        return jobs, sum(len(ids) * n for ids in prompts)

    async def _generate(jobs: list[GenJob]) -> list[GenRow]:
        futures = [batcher.submit(job) for job in jobs]
        rows = []
        for fut in futures:
            rows.extend(await asyncio.wrap_future(fut))
        return rows

    async def _stream(jobs: list[GenJob], stop: list[str]) -> AsyncIterator[tuple[int, Choice]]:
        """Generate ``jobs`` and yield (choice index, chunk) as their text can be sent: each
        choice's text chunks (finish_reason None), then one empty chunk with its finish_reason.
        Raises what generation raised."""
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
                    yield key, chunk
                ends = [(key, "stop")] if stream.done else []  # a stop string ended it
            for i, finish in ends:
                if ended[i]:
                    continue
                for chunk in streams[i].close(finish):
                    yield i, chunk
                yield i, Choice("", streams[i].finish_reason, [], [], None, None)
                ended[i] = True

    def _usage(prompt_tokens: int, choices: list[Choice]) -> dict:
        completion = sum(len(c.token_ids) for c in choices)
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
        jobs, prompt_tokens = _jobs(encoded, body, 16, top)
        rid, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):

            async def events():
                offsets = [0] * (len(jobs) * jobs[0].n)  # text_offset of each choice's next token
                async for i, c in _stream(jobs, stop):
                    if c.finish_reason is None and not c.text and c.logprobs is None:
                        continue  # nothing to say
                    yield _chunk(
                        rid,
                        now,
                        name,
                        "text_completion",
                        {
                            "index": i,
                            "text": c.text,
                            "logprobs": _completion_logprobs(c, offsets[i]),
                            "finish_reason": c.finish_reason,
                        },
                    )
                    offsets[i] += len(c.text)

            return _sse(events())
        rows = await _generate(jobs)
        choices = [_finish(tokenizer, row, stop) for row in rows]
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
        jobs, prompt_tokens = _jobs([_encode(text, False)], body, default_max_tokens, top)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):

            def event(choice: dict) -> dict:
                return _chunk(rid, now, name, "chat.completion.chunk", choice)

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
                async for i, c in _stream(jobs, stop):
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
                                "logprobs": _chat_logprobs(c),
                                "finish_reason": None,
                            }
                        )

            return _sse(events())
        rows = await _generate(jobs)
        choices = [_finish(tokenizer, row, stop) for row in rows]
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
