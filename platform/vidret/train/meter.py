"""Throughput of the training loop, from the steps it really took.

A log line can come after ``train.log_every`` steps, at an epoch end or at a checkpoint, and a resumed run
starts mid-interval: the meter counts the steps since its last reading instead of assuming any of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Throughput:
    """Samples per second and data-wait seconds over the steps since the last ``read``."""

    def __init__(self, samples_per_step: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.samples_per_step, self.clock = samples_per_step, clock
        self.steps, self.wait_s = 0, 0.0
        self.since = clock()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent inside the block counts as waiting for data."""
        t0 = self.clock()
        try:
            yield
        finally:
            self.wait_s += self.clock() - t0

    def step(self) -> None:
        """One optimiser step was taken."""
        self.steps += 1

    def read(self) -> dict[str, float]:
        """``samples_per_s`` and ``data_wait_s`` since the last reading (or the start); then start over."""
        now = self.clock()
        out = {
            "samples_per_s": self.steps * self.samples_per_step / max(now - self.since, 1e-9),
            "data_wait_s": self.wait_s,
        }
        self.steps, self.wait_s, self.since = 0, 0.0, now
        return out
