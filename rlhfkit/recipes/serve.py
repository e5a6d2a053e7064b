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
and prompt + ``max_tokens`` must fit the model's context (400, worded as OpenAI and vLLM word
it). A client that disconnects mid-stream does not stop its rows from being generated (the
batch they share runs on); streams carry no ``usage``; OpenAI parameters this server does not
implement (``echo``, ``best_of``, ``logit_bias``, ``presence_penalty``, ``response_format``,
tools, ...) are accepted at their default value and refused otherwise, as are prompts given as
token ids and non-text message parts; the request ``seed`` is ignored (the server's generator is
seeded once at start).

A reward-model directory (one holding ``rlhfkit_reward.json``) is served as the HTTP scorer
that ``ppo.reward_model`` and ``eval`` accept instead: see `rlhfkit.recipes.serve_reward`.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
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
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers.generation.streamers import BaseStreamer

from rlhfkit.config import option
from rlhfkit.data.collate import pad_left
from rlhfkit.errors import ConfigError
from rlhfkit.models.tokenizer import _byte_alphabet
from rlhfkit.training.run import console


@dataclass
class ServeConfig:
    """An OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions) over a
    local model, with request batching; a reward-model directory is served as an HTTP scorer
    (POST /score)."""

    model: str = option("", "model directory (or hub id) to serve")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 = every interface)")
    port: int = option(8000, "TCP port", minimum=1, maximum=65535)
    model_name: str = option("", "model id clients use; empty = the directory's name")
    dtype: str = option("auto", "weight dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    max_batch_size: int = option(32, "most sequences generated (or scored) together")
    batch_wait_ms: float = option(5.0, "how long the worker waits for more requests to batch")
    max_model_len: int = option(
        0, "context length that prompt + max_tokens must fit; 0 = the model's (its config)"
    )
    max_prompt_tokens: int = option(
        0, "longer prompts are refused (400); 0 = as long as the context allows"
    )
    max_request_bytes: int = option(8 << 20, "larger request bodies are refused (413)")
    default_max_tokens: int = option(256, "max_tokens of a chat request that gives none")
    seed: int = option(0, "seed of the server's sampling generator")
    log_level: str = option("warning", "uvicorn log level: debug, info, warning, error")


class ApiError(Exception):
    """A request the server refuses, reported in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's shape: refused requests (`ApiError`), unknown
    paths (404), wrong methods (405, with its ``Allow`` header) and unexpected failures (500)."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(error_body(err.message, param=err.param), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(_http_message(request, err)),
            status_code=err.status_code,
            headers=err.headers,
        )

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, err: Exception) -> JSONResponse:
        message = f"internal error: {type(err).__name__}: {err}"
        return JSONResponse(error_body(message, "server_error"), status_code=500)


def _http_message(request: Request, err: StarletteHTTPException) -> str:
    """What a routing error (404, 405, ...) means for this request, in words."""
    where = f"{request.method} {request.url.path}"
    if err.status_code == 404:
        return f"no such endpoint: {where}"
    if err.status_code == 405:
        headers = {key.lower(): value for key, value in (err.headers or {}).items()}
        allowed = headers.get("allow", "")
        return f"{where}: method not allowed" + (f"; use {allowed}" if allowed else "")
    return f"{where}: {err.detail}"


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The request's body parsed as JSON; a body over ``max_bytes`` is refused with 413.

    A ``Content-Length`` over the limit is refused before anything is read; otherwise bytes are
    counted as they arrive, so a chunked body (no ``Content-Length``) is cut off at the limit
    too, and never held whole. Parsing runs off the event loop.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return await asyncio.to_thread(json.loads, raw)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError("the request body is not valid JSON") from None


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        f"the request body is larger than {max_bytes} bytes (the server's max_request_bytes)",
        status=413,
    )


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
    tokens of jobs that have an ``on_token`` callback while they are generated.

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer (pad and EOS ids).
        max_batch_size: Most rows in one `generate` call.
        wait_s: How long to wait for more jobs to gather.
        max_length: The model's context: rows share a `generate` call only where the longest
            prompt plus the largest ``max_tokens`` among them fits it, since every row of a call
            runs to the call's end (None = no such limit).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 32,
        wait_s: float = 0.005,
        max_length: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = wait_s
        self.max_length = max_length
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

    def _chunks(self, rows: list[tuple[int, GenJob, int]]) -> list[list[tuple[int, GenJob, int]]]:
        """Consecutive runs of ``rows`` (so each job's rows stay in order), one per `generate`
        call: at most ``max_batch_size`` rows whose longest prompt plus largest ``max_tokens``
        fits ``max_length``."""
        chunks: list[list[tuple[int, GenJob, int]]] = []
        longest = most = 0
        for row in rows:
            job = row[1]
            fits = self.max_length is None or (
                max(longest, len(job.prompt_ids)) + max(most, job.max_tokens) <= self.max_length
            )
            if not chunks or len(chunks[-1]) >= self.max_batch_size or not fits:
                chunks.append([])
                longest = most = 0
            chunks[-1].append(row)
            longest, most = max(longest, len(job.prompt_ids)), max(most, job.max_tokens)
        return chunks

    @torch.no_grad()
    def _run(self, jobs: list[GenJob]) -> list[list[GenRow]]:
        rows = [(j, job, r) for j, job in enumerate(jobs) for r in range(job.n)]
        out: list[list[GenRow]] = [[] for _ in jobs]
        device = next(self.model.parameters()).device
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        for chunk in self._chunks(rows):
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
    top_logprobs: list[list[tuple[int, float]]] | None  # (token id, log-prob), best first


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
        return Choice(
            entry.piece,
            None,
            [entry.piece],
            [entry.token_id],
            None if entry.logprob is None else [entry.logprob],
            None if entry.top is None else [list(entry.top)],
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


_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_BYTE_OF_CHAR = {char: byte for byte, char in enumerate(_byte_alphabet())}


def _decoder_types(tokenizer) -> set[str]:
    """The types of the decoders of a fast tokenizer's backend (nested ones too); empty for a
    slow tokenizer."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return set()
    return set(re.findall(r'"type":\s*"(\w+)"', decoder.__getstate__().decode()))


class TokenTable:
    """What each token id is on its own, for log-probs: its bytes, and a label that names it.

    Bytes: an added or special token is its text (UTF-8); a token of a byte-level tokenizer is
    one byte per character of GPT-2's byte alphabet; a SentencePiece byte-fallback token
    ``<0xNN>`` is byte NN, and ``▁`` is a space; an id the tokenizer does not know (a row of the
    output layer past the vocabulary) has none. The label is the token's text where its bytes are
    whole UTF-8 characters, ``bytes:\\xNN...`` where they are not (OpenAI's convention), and
    ``token_id:N`` where it has no bytes (vLLM's).

    Args:
        tokenizer: The served model's tokenizer.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        self.byte_level = "ByteLevel" in _decoder_types(tokenizer)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.added = {int(i): token.content for i, token in added.items()}
        self._bytes: dict[int, bytes | None] = {}

    def token_bytes(self, token_id: int) -> bytes | None:
        """The bytes token ``token_id`` stands for; None if it stands for none."""
        if token_id not in self._bytes:
            self._bytes[token_id] = self._lookup(token_id)
        return self._bytes[token_id]

    def _lookup(self, token_id: int) -> bytes | None:
        if token_id in self.added:
            return self.added[token_id].encode()
        if not 0 <= token_id < self.size:
            return None
        token = self.tokenizer.convert_ids_to_tokens(token_id)
        if token is None:
            return None
        if self.byte_level and all(char in _BYTE_OF_CHAR for char in token):
            return bytes(_BYTE_OF_CHAR[char] for char in token)
        match = _SENTENCEPIECE_BYTE.fullmatch(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("\u2581", " ").encode()

    def label(self, token_id: int) -> str:
        """The token's text, ``bytes:\\xNN...`` or ``token_id:N`` (see the class)."""
        data = self.token_bytes(token_id)
        if data is None:
            return f"token_id:{token_id}"
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{byte:02x}" for byte in data)

    def alternatives(self, top: list[tuple[int, float]]) -> list[tuple[str, bytes | None, float]]:
        """(label, bytes, log-prob) of each alternative, in the given order, with labels made
        unique within the list: a label already taken (two ids with the same text) becomes
        ``token_id:N``, so a dict keyed by label keeps every alternative."""
        seen: set[str] = set()
        out = []
        for token_id, value in top:
            label = self.label(token_id)
            if label in seen:
                label = f"token_id:{token_id}"
            seen.add(label)
            out.append((label, self.token_bytes(token_id), value))
        return out


def _byte_list(data: bytes | None) -> list[int] | None:
    return None if data is None else list(data)


def _completion_logprobs(choice: Choice, table: TokenTable, offset: int = 0) -> dict | None:
    """The legacy log-probs of a completion choice: ``tokens`` (the text each token adds, so
    they join to the choice's text), ``token_logprobs``, ``top_logprobs`` (one dict per token,
    label -> log-prob, best first, one entry per alternative asked for) and ``text_offset``."""
    if choice.logprobs is None:
        return None
    offsets, position = [], offset
    for piece in choice.tokens:
        offsets.append(position)
        position += len(piece)
    return {
        "tokens": choice.tokens,
        "token_logprobs": choice.logprobs,
        "top_logprobs": [
            {label: value for label, _, value in table.alternatives(alts)}
            for alts in choice.top_logprobs or []
        ],
        "text_offset": offsets,
    }


def _chat_logprobs(choice: Choice, table: TokenTable) -> dict | None:
    """The chat log-probs of a choice: per token its text (what it adds to the message), its
    log-prob, its own ``bytes`` (so a character split over tokens is whole once their bytes are
    joined), and its alternatives (label, log-prob, bytes), best first."""
    if choice.logprobs is None:
        return None
    content = []
    for i, (piece, token_id, value) in enumerate(
        zip(choice.tokens, choice.token_ids, choice.logprobs, strict=True)
    ):
        alts = choice.top_logprobs[i] if choice.top_logprobs else []
        content.append(
            {
                "token": piece,
                "logprob": value,
                "bytes": _byte_list(table.token_bytes(token_id)),
                "top_logprobs": [
                    {"token": label, "logprob": v, "bytes": _byte_list(data)}
                    for label, data, v in table.alternatives(alts)
                ],
            }
        )
    return {"content": content}


# ---------------------------------------------------------------------------------------------
# Requests: parameters, messages, prompt limits
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


def _requested_max_tokens(body: dict) -> int | None:
    """``max_completion_tokens`` or ``max_tokens`` as the request gives it; None if neither."""
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            return _number(body, key, None, int, 1, 1 << 20)
    return None


# OpenAI parameters this server does not implement, each with the values that leave it off (what
# clients send by default): those, and null, are accepted; any other value is refused, so that no
# request is silently served differently from what it asked for.
_UNSUPPORTED: dict[str, tuple] = {
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
}


def _check_unsupported(body: dict) -> None:
    """Refuse (400) an unimplemented parameter set to anything but its default."""
    for key, accepted in _UNSUPPORTED.items():
        value = body.get(key)
        if value is None or any(_same(value, default) for default in accepted):
            continue
        hint = f"leave it out or send {json.dumps(accepted[0])}" if accepted else "leave it out"
        raise ApiError(f"{key}={json.dumps(value)} is not supported by rlhfkit serve; {hint}", key)


def _same(value: Any, default: Any) -> bool:
    """Whether ``value`` is ``default`` in JSON terms (0 and 0.0 are; 0 and false are not)."""

    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    comparable = type(value) is type(default) or (is_number(value) and is_number(default))
    return comparable and value == default


# Roles a chat request may use, and the role the chat template gets: OpenAI's "developer"
# messages are its newer name for system messages.
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _chat_messages(messages: Any) -> list[dict[str, str]]:
    """The request's messages as ``{role, content}`` with text content, or a 400 saying which
    message is wrong and why. Content is a string or a list of text parts, which are joined
    with newlines (as vLLM joins them)."""
    if not (isinstance(messages, list) and messages):
        raise ApiError("messages must be a non-empty list of {role, content}", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(f"{where} must be an object with role and content", "messages")
        role = message.get("role")
        if role not in _CHAT_ROLES:
            why = "; tool calls are not supported" if role in ("tool", "function") else ""
            raise ApiError(
                f"{where}.role must be one of {', '.join(_CHAT_ROLES)}, got {role!r}{why}",
                "messages",
            )
        out.append({"role": _CHAT_ROLES[role], "content": _message_text(message, where)})
    return out


def _message_text(message: dict, where: str) -> str:
    """A message's content as text: a string, or its text parts joined with newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not (isinstance(content, list) and content):
        raise ApiError(f"{where}.content must be a string or a list of text parts", "messages")
    texts = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise ApiError(
                f"{where}.content[{k}]: only text parts are supported, got type {kind!r}",
                "messages",
            )
        if not isinstance(part.get("text"), str):
            raise ApiError(f"{where}.content[{k}].text must be a string", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_context_length(model_config) -> int | None:
    """The context length a transformers config states (None if it states none)."""
    text_config = model_config.get_text_config()
    for key in _CONTEXT_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class PromptLimits:
    """What a request may ask for, in tokens.

    Args:
        context: The model's context length: prompt + new tokens must fit it.
        max_prompt_tokens: The server's own limit on prompts (0 = as the context allows).
        chars_per_token: The most characters one token can stand for (its longest token
            string), so a prompt with more than ``chars_per_token`` times the budget in
            characters is refused without tokenising it.
    """

    context: int
    max_prompt_tokens: int = 0
    chars_per_token: int = 1

    @property
    def prompt_budget(self) -> int:
        """The most tokens a prompt may have (at least one new token must fit after it)."""
        return self.max_prompt_tokens or self.context - 1

    def _why(self) -> str:
        if self.max_prompt_tokens:
            return f"this server takes prompts of at most {self.max_prompt_tokens} tokens"
        return f"this model's maximum context length is {self.context} tokens"

    def check_chars(self, characters: int, param: str) -> None:
        """Refuse a prompt too long in characters to fit the budget in any tokenisation."""
        if characters > self.prompt_budget * self.chars_per_token:
            raise ApiError(
                f"{self._why()}; the prompt has {characters} characters, more than "
                f"{self.prompt_budget} tokens can hold",
                param,
            )

    def check_prompt(self, prompt_tokens: int, param: str) -> None:
        """Refuse a prompt over ``max_prompt_tokens`` (the context is checked with the new
        tokens, in `new_tokens`)."""
        if self.max_prompt_tokens and prompt_tokens > self.max_prompt_tokens:
            raise ApiError(
                f"the prompt has {prompt_tokens} tokens; {self._why()} (max_prompt_tokens)",
                param,
            )

    def new_tokens(self, prompt_tokens: int, requested: int | None, default: int, param: str):
        """The new tokens of a prompt: ``requested``, or ``default`` capped at the room left
        (as OpenAI and vLLM do); refused (400) where prompt + new tokens overrun the context."""
        new = requested if requested is not None else min(default, self.context - prompt_tokens)
        new = max(new, 1)
        if prompt_tokens + new > self.context:
            raise ApiError(
                f"this model's maximum context length is {self.context} tokens; the request "
                f"needs {prompt_tokens + new} ({prompt_tokens} prompt + {new} new)",
                "max_tokens" if requested is not None and prompt_tokens < self.context else param,
            )
        return new


class PromptEncoder:
    """Prompts to token ids within `PromptLimits`. Its methods are meant to run in a worker
    thread: rendering and tokenising a long prompt on the event loop would stall every other
    request.

    Args:
        tokenizer: The served model's tokenizer.
        limits: The limits each prompt is checked against (characters first, then tokens).
    """

    def __init__(self, tokenizer, limits: PromptLimits):
        self.tokenizer = tokenizer
        self.limits = limits

    def encode(self, text: str, *, special: bool, param: str) -> list[int]:
        """``text``'s token ids (an empty prompt starts from the end-of-text token)."""
        self.limits.check_chars(len(text), param)
        ids = self.tokenizer(text, add_special_tokens=special).input_ids
        if not ids:
            ids = [self.tokenizer.eos_token_id]
        self.limits.check_prompt(len(ids), param)
        return ids

    def completion(self, prompts: list[str]) -> list[list[int]]:
        """The token ids of each prompt of a completion request (special tokens added)."""
        return [self.encode(text, special=True, param="prompt") for text in prompts]

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of a conversation rendered with the chat template, ready for the
        assistant's turn."""
        from jinja2 import TemplateError

        if not self.tokenizer.chat_template:
            raise ApiError("this model's tokenizer has no chat template; use /v1/completions")
        self.limits.check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as err:
            raise ApiError(f"the chat template refused these messages: {err}", "messages") from err
        return self.encode(text, special=False, param="messages")


def _longest_token(tokenizer) -> int:
    """The most characters one token of ``tokenizer`` stands for (its longest token string:
    a byte-level token has a character per byte, a byte-fallback token ``<0xNN>`` six)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def _prompt_limits(model, tokenizer, *, max_model_len: int, max_prompt_tokens: int):
    """The server's `PromptLimits`: the context from ``max_model_len`` or the model's config."""
    if max_model_len < 0 or max_prompt_tokens < 0:
        raise ConfigError("max_model_len and max_prompt_tokens must be >= 0 (0 = automatic)")
    context = max_model_len or model_context_length(model.config)
    if context is None:
        raise ConfigError(
            "max_model_len: the model's config states no context length "
            f"({', '.join(_CONTEXT_KEYS)}); give it, as max_model_len=N"
        )
    if max_prompt_tokens >= context:
        raise ConfigError(
            f"max_prompt_tokens: {max_prompt_tokens} leaves no room for new tokens in the "
            f"model's context of {context} tokens; give less, or 0 for as many as fit"
        )
    return PromptLimits(context, max_prompt_tokens, _longest_token(tokenizer))


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


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
    default_max_tokens: int = 256,
    seed: int = 0,
):
    """The FastAPI app serving ``model_dir`` (the model is loaded here, before it returns).

    A reward-model directory gets the scorer app of `rlhfkit.recipes.serve_reward` instead.
    """
    from rlhfkit.recipes.serve_reward import create_reward_app, is_reward_model

    if max_request_bytes < 1:
        raise ConfigError(f"max_request_bytes: must be at least 1, got {max_request_bytes}")
    name = model_name or Path(model_dir.rstrip("/")).name or model_dir
    if is_reward_model(model_dir):
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
    limits = _prompt_limits(
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
        _check_unsupported(body)
        requested = body.get("model")
        if requested not in (None, "", name, model_dir):
            raise ApiError(
                f"model {requested!r} is not served here; this serves {name!r}", "model", 404
            )
        return body

    def _jobs(prompts: list[list[int]], body: dict, max_default: int, top: int, param: str):
        """The jobs of a request (validating its sampling keys and that each prompt and its
        new tokens fit the context), and its prompt token count."""
        requested = _requested_max_tokens(body)
        temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
        n = _number(body, "n", 1, int, 1, 128)
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
        encoded = await asyncio.to_thread(app.state.prompts.completion, prompts)
        jobs, prompt_tokens = _jobs(encoded, body, 16, top, "prompt")
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
                            "logprobs": _completion_logprobs(c, table, offsets[i]),
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
                    "logprobs": _completion_logprobs(c, table),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, choices),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _body(request)
        messages = _chat_messages(body.get("messages"))
        top = -1
        if body.get("logprobs"):
            top = _number(body, "top_logprobs", 0, int, 0, vocab)
        stop = _stop_list(body)
        encoded = await asyncio.to_thread(app.state.prompts.chat, messages)
        jobs, prompt_tokens = _jobs([encoded], body, default_max_tokens, top, "messages")
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
                                "logprobs": _chat_logprobs(c, table),
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
                    "logprobs": _chat_logprobs(c, table),
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
        max_model_len=config.max_model_len,
        max_prompt_tokens=config.max_prompt_tokens,
        max_request_bytes=config.max_request_bytes,
        default_max_tokens=config.default_max_tokens,
        seed=config.seed,
    )
    console.print(
        f"rlhfkit serve: {config.model} as {app.state.model_name!r} ({app.state.served_as}) on "
        f"http://{config.host}:{config.port}{app.state.path}"
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
    return 0


__all__ = [
    "ApiError",
    "BatchedGenerator",
    "PromptLimits",
    "ServeConfig",
    "TokenTable",
    "create_app",
    "error_body",
    "install_error_handlers",
    "model_context_length",
    "read_json_body",
    "run",
]
