"""Which rows each worker sees at each step: the reason results do not depend on the number of workers.

The driver draws one seeded permutation of the training rows per epoch and cuts it into global batches of
``train.batch_size`` rows (the last incomplete batch is dropped, as the method's ``drop_last=True``). Worker
``r`` of ``W`` gets rows ``[r * B/W, (r+1) * B/W)`` of every global batch, so the all-gathered batch, in rank
order, is exactly the global batch a single worker would have seen. Resuming at step ``s`` starts every worker
at row ``s * B/W`` of its own plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepPlan:
    """``rows_S_B[s]`` are the row ids of global step ``s`` (epochs laid end to end)."""

    rows_S_B: np.ndarray  # int64 (total_steps, batch_size)
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return int(self.rows_S_B.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.rows_S_B.shape[1])

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def worker_rows(self, rank: int, world_size: int, start_step: int = 0) -> np.ndarray:
        """Row ids worker ``rank`` consumes from global step ``start_step`` on, in order (1-D int64)."""
        if self.batch_size % world_size:
            raise ValueError(
                f"train.batch_size {self.batch_size} is not a multiple of the {world_size} workers"
            )
        local = self.batch_size // world_size
        return self.rows_S_B[start_step:, rank * local : (rank + 1) * local].reshape(-1)


def make_plan(num_rows: int, batch_size: int, epochs: int, seed: int, max_steps: int = 0) -> StepPlan:
    """Seeded per-epoch permutations cut into global batches; ``max_steps`` > 0 truncates the run."""
    if num_rows < batch_size:
        raise ValueError(f"train.batch_size {batch_size} is larger than the {num_rows} training rows")
    steps = num_rows // batch_size
    rng = np.random.default_rng(seed)
    perms = [
        rng.permutation(num_rows)[: steps * batch_size].reshape(steps, batch_size) for _ in range(epochs)
    ]
    rows = np.concatenate(perms).astype(np.int64)
    if max_steps > 0:
        rows = rows[:max_steps]
    return StepPlan(rows, steps)
