"""Which examples each optimizer step sees: deterministic, resumable, identical across layouts.

The order is a permutation drawn from `seed + epoch`, so step `s` always sees the same examples
whether the run started at step 0 or resumed at step `s`, and whether one process with
`grad_accum=8` or two processes with `grad_accum=4` compute it: the global batch of a step is
fixed, then split into micro-batches (in time) and shards (across processes). That is what
makes "resume equals uninterrupted", "1x8 equals 8x1" and "2 processes equal 1" hold exactly.

The last incomplete global batch of an epoch is dropped (counted in `dropped_per_epoch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class BatchPlan:
    num_examples: int
    batch_size: int  # per device, per micro-batch
    grad_accum: int
    world_size: int
    seed: int
    max_steps: int = -1
    epochs: float = 1.0
    # what sets the global batch, for the error of `check` (PPO: its prompts per step)
    batch_keys: str = "batch_size x grad_accum x processes"
    # (epoch, its order): the callers of one step (micro-batches, token counts) share it
    _order: tuple[int, list[int]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    @property
    def dropped_per_epoch(self) -> int:
        return self.num_examples - self.steps_per_epoch * self.global_batch

    @property
    def total_steps(self) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.steps_per_epoch * self.epochs))

    def check(self, unit: str = "examples") -> None:
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.num_examples} {unit} are fewer than one global batch of "
                f"{self.global_batch} ({self.batch_keys})"
            )

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def global_indices(self, step: int) -> list[int]:
        """Indices of the whole global batch of optimizer step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:  # drawn once per epoch, not per call
            self._order = (epoch, self._permutation(epoch))
        start = within * self.global_batch
        return self._order[1][start : start + self.global_batch]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This process's micro-batches for `step`: `grad_accum` lists of `batch_size` indices.

        Micro-batch `m` of the global batch is split contiguously across processes, so rank
        `r` takes slice `[(m·W + r)·b, (m·W + r + 1)·b)`.
        """
        indices = self.global_indices(step)
        out = []
        for micro in range(self.grad_accum):
            start = (micro * self.world_size + rank) * self.batch_size
            out.append(indices[start : start + self.batch_size])
        return out


def eval_shards(
    num_examples: int, batch_size: int, world_size: int, rank: int
) -> list[tuple[list[int], bool]]:
    """Evaluation batches for this process, as `(indices, counted)`.

    Rank `r` takes examples `r, r + W, r + 2W, ...` in batches of `batch_size`, so every example
    is counted exactly once across processes. Every process gets the same number of batches,
    ceil(ceil(n / W) / batch_size): a process with fewer examples runs filler batches (example
    0, `counted=False`) whose results it must discard. Wrapped models run collectives inside
    their forward (DDP's buffer broadcast after a training step, FSDP's all-gathers), so a
    process that skipped a forward the others make would hang them all.
    """
    mine = list(range(rank, num_examples, world_size))
    batches = [(mine[i : i + batch_size], True) for i in range(0, len(mine), batch_size)]
    rank0_examples = math.ceil(num_examples / world_size)
    most = math.ceil(rank0_examples / batch_size)
    return batches + [([0], False)] * (most - len(batches))
