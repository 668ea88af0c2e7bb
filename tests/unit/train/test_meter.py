"""The throughput meter counts the steps really taken between two readings."""

from __future__ import annotations

import pytest

from vidret.train.meter import Throughput


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_samples_per_second_uses_the_steps_taken_not_log_every() -> None:
    """An epoch end after 3 steps (log_every 10) logs 3 steps' samples, not 10 (the bug this replaced)."""
    clock = _Clock()
    meter = Throughput(samples_per_step=4, clock=clock)
    for _ in range(3):
        with meter.waiting():
            clock.now += 0.1  # waiting for the batch
        clock.now += 0.4  # the step itself
        meter.step()
    out = meter.read()
    assert out["samples_per_s"] == pytest.approx(3 * 4 / 1.5)  # 8.0; the old formula gave 10 * 4 / 1.5
    assert out["data_wait_s"] == pytest.approx(0.3)


def test_a_reading_starts_the_next_interval() -> None:
    clock = _Clock()
    meter = Throughput(samples_per_step=2, clock=clock)
    clock.now += 1.0
    meter.step()
    meter.read()
    clock.now += 2.0
    meter.step()
    meter.step()
    out = meter.read()
    assert out["samples_per_s"] == pytest.approx(2 * 2 / 2.0)
    assert out["data_wait_s"] == 0.0
