"""Evaluation shards: every example counted once, and every process runs as many forwards."""

import pytest

from rlhfkit.training.batches import eval_shards


@pytest.mark.parametrize(
    ("examples", "batch_size", "world", "expected"),
    [
        # One example, two processes: rank 1 has none and runs example 0 uncounted.
        (1, 4, 2, [[([0], True)], [([0], False)]]),
        # 9 examples: rank 0 takes 0, 2, ..., 8 (5: two batches), rank 1 takes 1, ..., 7 (4: one
        # batch and a filler).
        (9, 4, 2, [[([0, 2, 4, 6], True), ([8], True)], [([1, 3, 5, 7], True), ([0], False)]]),
        (8, 4, 2, [[([0, 2, 4, 6], True)], [([1, 3, 5, 7], True)]]),
        (5, 2, 3, [[([0, 3], True)], [([1, 4], True)], [([2], True)]]),
        (3, 1, 1, [[([0], True), ([1], True), ([2], True)]]),
        (0, 4, 2, [[], []]),
    ],
)
def test_eval_shards_count_each_example_once_in_equally_many_batches(
    examples, batch_size, world, expected
):
    shards = [eval_shards(examples, batch_size, world, rank) for rank in range(world)]
    assert shards == expected
    counted = sorted(i for shard in shards for batch, keep in shard if keep for i in batch)
    assert counted == list(range(examples))
    assert len({len(shard) for shard in shards}) == 1
