"""The batcher's worker thread outlives requests that go away: a job whose future is cancelled
(its client disconnected) while its batch runs, or while it waits, must not stop the other jobs
of the batch, nor later batches, from getting their rows."""

from __future__ import annotations

import threading

import pytest

from rlhfkit.serving.batching import BatchedGenerator, GenJob, GenRow


class _GatedGenerator(BatchedGenerator):
    """A batcher without a model: each batch waits for ``release`` (once ``started`` is set),
    then gives every job one row holding its prompt, or raises ``fail`` when set."""

    def __init__(self, **kwargs):
        self.started, self.release = threading.Event(), threading.Event()
        self.batches: list[list[list[int]]] = []
        self.fail: Exception | None = None
        super().__init__(model=None, tokenizer=None, **kwargs)

    def _run(self, jobs: list[GenJob]) -> list[list[GenRow]]:
        self.batches.append([job.prompt_ids for job in jobs])
        self.started.set()
        assert self.release.wait(timeout=60)
        if self.fail is not None:
            raise self.fail
        return [[GenRow(list(job.prompt_ids), "length")] for job in jobs]


def _job(k: int) -> GenJob:
    return GenJob([k], 1, 1, 0.0, 1.0, -1)


@pytest.fixture
def gated():
    batcher = _GatedGenerator(max_batch_size=3, wait_s=30.0)  # gathers until 3 rows
    yield batcher
    batcher.release.set()
    batcher.close()


def test_a_job_cancelled_while_its_batch_runs_leaves_the_others_their_rows(gated):
    """Setting the result of a cancelled future raised InvalidStateError in the worker thread:
    the thread died, the jobs after it in the batch never got their rows, and every later
    request waited forever."""
    jobs = [_job(k) for k in range(3)]
    futures = [gated.submit(job) for job in jobs]
    assert gated.started.wait(timeout=60) and gated.batches == [[[0], [1], [2]]]
    assert futures[1].cancel()  # the client of job 1 goes away mid-batch
    gated.release.set()
    assert futures[0].result(timeout=10)[0].token_ids == [0]
    assert futures[2].result(timeout=10)[0].token_ids == [2]
    assert futures[1].cancelled()
    # the worker is still there for the next request
    later = [gated.submit(_job(k)) for k in (3, 4, 5)]
    assert [f.result(timeout=10)[0].token_ids for f in later] == [[3], [4], [5]]


def test_a_job_cancelled_while_a_failing_batch_runs_leaves_the_others_the_error(gated):
    gated.fail = RuntimeError("CUDA out of memory")
    futures = [gated.submit(_job(k)) for k in range(3)]
    assert gated.started.wait(timeout=60)
    assert futures[0].cancel()
    gated.release.set()
    for future in futures[1:]:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=10)
    gated.fail = None
    later = [gated.submit(_job(k)) for k in (3, 4, 5)]
    assert [f.result(timeout=10)[0].token_ids for f in later] == [[3], [4], [5]]


def test_a_job_cancelled_while_it_waits_is_not_run(gated):
    """A job whose client left before its batch began is dropped from the batch (no generation
    for nobody); the rest of its batch is served."""
    first = [gated.submit(_job(k)) for k in range(3)]
    assert gated.started.wait(timeout=60)  # batch 1 runs; the next jobs wait in the queue
    waiting = [gated.submit(_job(k)) for k in (3, 4, 5)]
    assert waiting[1].cancel()
    gated.release.set()
    assert [f.result(timeout=10)[0].token_ids for f in first] == [[0], [1], [2]]
    assert waiting[0].result(timeout=10)[0].token_ids == [3]
    assert waiting[2].result(timeout=10)[0].token_ids == [5]
    assert gated.batches == [[[0], [1], [2]], [[3], [5]]]
    assert gated.stats["requests"] == 5
