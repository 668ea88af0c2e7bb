"""The pending watchdog's escalation, without Ray: a fake source of pending work, a main thread that swallows
interrupts, each case in its own interpreter (the hard exit ends the process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PLATFORM = str(Path(__file__).resolve().parents[3] / "platform")

SCRIPT = """
import signal, sys, time
from vidret import watchdog
from vidret.watchdog import Pending, PendingTimeoutError, PendingWatchdog

watchdog._REINTERRUPT_S = 0.3
swallow = int(sys.argv[1])  # interrupts the main thread swallows (as a library catching Ctrl-C would)
seen = 0


def on_interrupt(signum, frame):  # what interrupt_main runs: counted exactly, wherever it lands
    global seen
    seen += 1
    if seen > swallow:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_interrupt)
pending = [Pending("actor", "a1", "Probe", "{CPU: 64}")]
try:
    dog = PendingWatchdog(0.2, poll_s=0.05, hard_exit_after_s=5.0, job_id="01", source=lambda job: pending)
    with dog:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # short sleeps: a simulated interrupt does not wake a long one
            time.sleep(0.01)
    print("the block ended without an error")
except PendingTimeoutError as e:
    print(f"raised after {seen} interrupt(s): {e}")
"""


def _run(swallow: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(swallow)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": PLATFORM, "PATH": "/usr/bin:/bin"},
    )


def test_an_interrupt_the_block_swallows_is_repeated_until_it_ends() -> None:
    out = _run(swallow=2)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("raised after 3 interrupt(s): pending for more than 0.2 s"), out.stdout


def test_a_block_that_never_ends_exits_naming_the_error() -> None:
    out = _run(swallow=10**6)
    assert out.returncode == 1, (out.stdout, out.stderr[-2000:])
    assert "the block ended" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert lines[-2] == "[watchdog] the job did not stop within 5 s; exiting", lines[-3:]
    assert lines[-1].startswith("vidret.watchdog.PendingTimeoutError: pending for more than 0.2 s"), lines[-1]
