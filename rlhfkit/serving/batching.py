"""Request batching for the text-generation server: handlers put their work (`GenJob`) on a
queue; one worker thread takes the first waiting job, gathers whatever else arrives within
``wait_s`` (up to ``max_batch_size`` sequences), and runs one `generate` call per group of equal
(temperature, top_p) -- so concurrent clients share forward passes. Log-probs are those of the
model's own distribution (temperature 1, before top-p), as OpenAI reports them.

A job with an ``on_token`` callback is streamed: a streamer inside the batched `generate` call
hands each row's new token (`StepToken`) to its job as it is made.

A job's future may be cancelled (its client went away): a job cancelled while it waits is not
run, and one cancelled while its batch runs stops being generated at the next step and has its
rows dropped (a call whose rows are all gone ends early); the other jobs of the batch get theirs
either way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from rlhfkit.data.collate import pad_left
from rlhfkit.rollout.sampling import end_ids, only_given_settings


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
    job its row belongs to. A row ends at an end token (which is not passed on, nor the padding
    that follows it) or at its job's ``max_tokens``.

    Args:
        rows: (job, row within the job) of each batch row.
        eos_ids: The end-of-sequence token ids (`end_ids`).
        logits: The list a forward hook appends each step's next-token logits (B, V) to, or None
            when no streamed row wants log-probs.
    """

    def __init__(self, rows: list[tuple[GenJob, int]], eos_ids: list[int], logits: list | None):
        self.rows, self.eos_ids, self.logits = rows, eos_ids, logits
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
            if job.future.cancelled():  # its client is gone: nothing more to hand over
                self.live[b] = False
                continue
            if token in self.eos_ids:
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


class _CancelledRows(StoppingCriteria):
    """Ends each row whose job's future is cancelled (its client went away): `generate` pads it
    from then on, and stops once every row has ended, making no tokens for clients that left.

    Args:
        jobs: The job of each batch row.
    """

    def __init__(self, jobs: list[GenJob]):
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        gone = [job.future.cancelled() for job in self.jobs]
        return torch.tensor(gone, dtype=torch.bool, device=input_ids.device)  # (B,)


def _resolve(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Hand ``result`` (or ``error``) to ``future`` unless it is already done: a request whose
    client went away may have cancelled it, even while its batch ran. Setting a cancelled
    future raises, which would end the worker thread and strand every later request."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set (another thread)
        pass


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
            # a job whose request is gone (its future cancelled while it waited) is not run
            jobs = [job for job in jobs if not job.future.cancelled()]
            if not jobs:
                continue
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
                        _resolve(job.future, error=err)
                    continue
                for job, rows_of_job in zip(group, results, strict=True):
                    _resolve(job.future, rows_of_job)

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
        pad_id, eos_ids = self.tokenizer.pad_token_id, end_ids(self.model, self.tokenizer)
        for chunk in self._chunks(rows):
            row_jobs = [job for _, job, _ in chunk]
            prompts = [job.prompt_ids for job in row_jobs]
            input_ids = pad_left(prompts, pad_id).to(device)  # (B, P)
            attention = pad_left([[1] * len(ids) for ids in prompts], 0).to(device)  # (B, P)
            temperature, top_p = chunk[0][1].temperature, chunk[0][1].top_p
            want_logprobs = any(job.top_logprobs >= 0 for _, job, _ in chunk)
            kwargs: dict[str, Any] = {
                "max_new_tokens": max(job.max_tokens for _, job, _ in chunk),
                "pad_token_id": pad_id,
                "eos_token_id": eos_ids,
                "use_cache": True,
                "return_dict_in_generate": True,
                "output_logits": want_logprobs,
                "stopping_criteria": StoppingCriteriaList([_CancelledRows(row_jobs)]),
            }
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(do_sample=False)
            hook = None
            if any(job.on_token is not None for _, job, _ in chunk):
                logits = None
                if any(job.on_token is not None and job.top_logprobs >= 0 for _, job, _ in chunk):
                    # one recorded entry per forward, so one forward per token: the prefill is
                    # not split in chunks (only a checkpoint's generation config asks for that,
                    # and `only_given_settings` leaves it out)
                    logits = []
                    hook = self.model.register_forward_hook(_logits_recorder(logits))
                kwargs["streamer"] = _RowStreamer(
                    [(job, r) for _, job, r in chunk], eos_ids, logits
                )
            try:
                # the request's settings only: a checkpoint's generation_config.json (a
                # repetition_penalty, no_repeat_ngram_size, ...) would change the distribution
                # the reported log-probs are of, and make temperature 0 other than greedy
                with only_given_settings(self.model):
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
                end = next((i for i, token in enumerate(ids) if token in eos_ids), None)
                if end is not None:
                    ids = ids[:end]
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


__all__ = ["BatchedGenerator", "GenJob", "GenRow", "StepToken"]
