"""Progress with an ETA for every long step: a live bar on a terminal, a periodic plain line otherwise.

One :class:`Progress` per step (synth, manifest, check, prepare, training, the feature cache, evaluation,
tune). On a terminal it drives a tqdm bar; elsewhere (CI, ``ray job logs``, a Ray Train worker, whose stderr
is a pipe) it prints one line every ``every_s`` seconds and at the end::

    [train] step 40/200 (20%) 3.1 step/s ETA 0:00:51 loss 0.512 samples/s 99 data 12%

Optional fields: ``loss`` (or any number), ``samples`` (counted into samples/s) and ``data_wait_s`` (time
spent waiting for the next batch, shown as its share of the elapsed time: ``data 12%``). Call it on the
driver, or on Ray Train rank 0 only (the others pass ``enabled=False``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from vidret.console.logs import use_color


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress of one step with ``total`` units (``None``: unknown total, no % or ETA)."""

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "it",
        stream: TextIO | None = None,
        live: bool | None = None,
        every_s: float = 10.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        initial: int = 0,
    ) -> None:
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.stream = sys.stderr if stream is None else stream
        self.enabled, self.clock = enabled, clock
        # a resumed step starts at ``initial``: the rate and ETA count only the units done since
        self.initial = self.done = initial
        self.samples, self.data_wait_s = 0, 0.0
        self.fields: dict[str, Any] = {}
        self.start = clock()
        self._last_line: float | None = None
        self._bar: Any = None
        live = use_color(self.stream) if live is None else live
        if enabled and live:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=label, unit=unit, file=self.stream, dynamic_ncols=True
            )

    # ------------------------------------------------------------------------------------------ numbers
    @property
    def elapsed_s(self) -> float:
        """Seconds since the step started."""
        return max(self.clock() - self.start, 0.0)

    def rate(self) -> float:
        """Units per second so far (0 before the first)."""
        elapsed = self.elapsed_s
        return (self.done - self.initial) / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float:
        """Seconds left at the rate so far (``inf`` while unknown)."""
        if self.total is None or self.done <= self.initial:
            return float("inf")
        return max(self.total - self.done, 0) / max(self.rate(), 1e-12)

    def extras(self) -> dict[str, str]:
        """The optional fields as they are shown: user fields, samples/s and the data-wait share."""
        out = {k: _number(v) for k, v in self.fields.items()}
        elapsed = self.elapsed_s
        if self.samples and elapsed > 0:
            out["samples/s"] = f"{self.samples / elapsed:.1f}"
        if self.data_wait_s and elapsed > 0:
            out["data"] = f"{min(self.data_wait_s / elapsed, 1.0):.0%}"
        return out

    def line(self) -> str:
        """The plain line: ``[label] step done/total (pct%) rate unit/s ETA h:mm:ss key value ...``."""
        parts = [f"[{self.label}]"]
        if self.total:
            parts.append(f"{self.unit} {self.done}/{self.total} ({self.done / self.total:.0%})")
        else:
            parts.append(f"{self.unit} {self.done}")
        rate = self.rate()
        parts.append(f"{rate:.0f} {self.unit}/s" if rate >= 1000 else f"{rate:.3g} {self.unit}/s")
        if self.total:
            parts.append(f"ETA {format_duration(self.eta_s())}")
        parts += [f"{k} {v}" for k, v in self.extras().items()]
        return " ".join(parts)

    # ------------------------------------------------------------------------------------------ updates
    def update(self, n: int = 1, *, samples: int = 0, data_wait_s: float = 0.0, **fields: Any) -> None:
        """Advance by ``n`` units; add ``samples`` and ``data_wait_s``; set the named fields (e.g. loss)."""
        self.set(self.done + n, samples=samples, data_wait_s=data_wait_s, **fields)

    def set(self, done: int, *, samples: int = 0, data_wait_s: float = 0.0, **fields: Any) -> None:
        """Set the units done (a callback that knows ``done`` rather than the increment)."""
        if not self.enabled:
            return
        step = done - self.done
        self.done = done
        self.samples += samples
        self.data_wait_s += data_wait_s
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.set_postfix(self.extras(), refresh=False)
            self._bar.update(step)
            return
        now = self.clock()
        finished = self.total is not None and done >= self.total
        if finished or self._last_line is None or now - self._last_line >= self.every_s:
            self._last_line = now
            # a write, not ``print``: Ray Train patches ``print`` in its workers to also log each line
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar (the plain mode has already printed its last line)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_callback(label: str, *, unit: str = "it", **kwargs: Any) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback (the signature synth, check and prepare already take) over a
    :class:`Progress` created on the first call, when the total is known; its clock starts here, when the
    callback is made (just before the work), so the first report's rate is not that of an instant."""
    state: dict[str, Progress] = {}
    started = kwargs.get("clock", time.monotonic)()

    def report(done: int, total: int) -> None:
        if "p" not in state:
            state["p"] = Progress(label, total, unit=unit, **kwargs)
            state["p"].start = started
        bar = state["p"]
        bar.set(done)
        if done >= total:
            bar.close()

    return report
