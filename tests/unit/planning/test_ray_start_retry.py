"""A local Ray start that hits Ray's fixed 30 s start-up timeout is tried again, after the processes the
failed attempt left are killed; other errors are not retried (vidret.runtime.start_with_retries). The
timeout itself cannot be produced on demand, so the start here is a function that starts a real process and
raises Ray's message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vidret.runtime import start_with_retries

TIMED_OUT = (
    "The current node timed out during startup. This could happen because some of the raylet failed to "
    "startup or the GCS has become overloaded."
)


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_a_timed_out_start_is_retried_after_its_processes_are_killed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    left: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        for proc in left:  # what the previous attempt left is gone before this one begins
            assert proc.wait(timeout=10) == -9, "a failed attempt's process was not killed"
        if len(left) < 2:
            left.append(_sleeper())
            raise Exception(TIMED_OUT)

    kept = _sleeper()  # started before the first attempt: not the attempts' to kill
    try:
        start_with_retries(start, attempts=3)
        assert len(left) == 2
        assert kept.poll() is None, "a process that predates the start was killed"
    finally:
        kept.kill()
        kept.wait()
    err = capsys.readouterr().err
    assert "starting it again (2/3)" in err and "starting it again (3/3)" in err, err


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def start() -> None:
        calls.append(1)
        raise ValueError("num_cpus must be positive")

    with pytest.raises(ValueError, match="num_cpus"):
        start_with_retries(start, attempts=3)
    assert len(calls) == 1


def test_the_last_timeout_is_raised() -> None:
    calls: list[int] = []

    def start() -> None:
        calls.append(1)
        raise Exception(TIMED_OUT)

    with pytest.raises(Exception, match="timed out during startup"):
        start_with_retries(start, attempts=2)
    assert len(calls) == 2
