"""Progress: plain periodic lines with step, %, rate, ETA and fields; a live bar on a terminal."""

from __future__ import annotations

import io
import re

from vidret.console.progress import Progress, format_duration, progress_callback


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_are_periodic_and_carry_eta_and_fields() -> None:
    clock, out = _Clock(), io.StringIO()
    p = Progress("train", 100, unit="step", stream=out, live=False, every_s=10, clock=clock)
    for _ in range(50):
        clock.t += 1.0
        p.update(samples=32, data_wait_s=0.25, loss=0.5123)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # t = 1, 11, 21, 31, 41: one line every 10 s, not one per step
    last = p.line()
    assert last == "[train] step 50/100 (50%) 1 step/s ETA 0:00:50 loss 0.5123 samples/s 32.0 data 25%"
    for _ in range(50):
        clock.t += 0.01
        p.update()
    assert out.getvalue().splitlines()[-1].startswith("[train] step 100/100 (100%)")  # the end always shows


def test_unknown_total_has_no_eta() -> None:
    p = Progress("cache", None, unit="batch", stream=io.StringIO(), live=False)
    p.update(3)
    assert "ETA" not in p.line() and "batch 3" in p.line()
    assert format_duration(float("inf")) == "?"
    assert format_duration(3725) == "1:02:05"


def test_live_bar_on_a_terminal_and_disabled_ranks_print_nothing() -> None:
    out = io.StringIO()
    with Progress("eval", 4, stream=out, live=True) as p:
        p.update(4, loss=1.0)
    assert re.search(r"eval: 100%.*4/4", out.getvalue())
    quiet = io.StringIO()
    Progress("train", 4, stream=quiet, live=False, enabled=False).update(4)
    assert quiet.getvalue() == ""


def test_callback_adapter_for_done_total_reporters() -> None:
    out = io.StringIO()
    report = progress_callback("check", unit="video", stream=out, live=False, every_s=1e9)
    for done in range(1, 9):
        report(done, 8)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[check] video 1/8 (12%)")
    assert lines[-1].startswith("[check] video 8/8 (100%)") and "ETA 0:00:00" in lines[-1]


def test_a_resumed_step_counts_its_rate_and_eta_from_where_it_resumed() -> None:
    clock, out = _Clock(), io.StringIO()
    p = Progress("train", 100, unit="step", stream=out, live=False, clock=clock, initial=60)
    assert p.eta_s() == float("inf")
    clock.t = 10.0
    p.set(70)  # 10 steps in 10 s since the resume, 30 left
    assert p.rate() == 1.0 and p.eta_s() == 30.0
    assert out.getvalue().startswith("[train] step 70/100 (70%) 1 step/s ETA 0:00:30")


def test_callback_clock_starts_when_the_callback_is_made() -> None:
    clock, out = _Clock(), io.StringIO()
    report = progress_callback("check", unit="video", stream=out, live=False, clock=clock)
    clock.t = 4.0  # Ray started, the first results arrive
    report(2000, 40000)
    assert out.getvalue().startswith("[check] video 2000/40000 (5%) 500 video/s ETA 0:01:16")
    clock.t = 4.5
    report(40000, 40000)  # fast rates in plain digits, not 1e+04
    assert "40000/40000 (100%) 8889 video/s" in out.getvalue().splitlines()[-1]
