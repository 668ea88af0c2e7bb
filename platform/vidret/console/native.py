"""Drop known native-library noise that is written straight to file descriptor 2.

Ray's C++ core worker writes its error-level log lines to the process's stderr as well as to its log file.
In a Ray *worker* those lines reach the console through the driver's log printer, which drops what
``RAY_DEDUP_LOGS_SKIP_REGEX`` matches (``logs.py``); in the *driver* (the ``vidret`` command, which creates
the feature cache's and the evaluation's actor pools itself) they bypass Python entirely. The one that shows
on every run is the advice that an actor restart *could* fail, logged for every Ray Data actor pool.

:func:`filter_native_stderr` points fd 2 at a pipe read by a small child process (``stderr_filter.py``, plain
standard library) that copies every line to the real stderr except those containing one of the given plain
strings. Python's own ``sys.stderr`` is re-opened on the real stream, so vidret's lines, tracebacks and
terminal detection (live progress, colours) do not pass through the pipe. The child outlives a crash of the
parent and drains the pipe to its end, so a native fatal error printed just before an abort is not lost; it
ignores Ctrl-C for the same reason. A line without a newline is passed on after 0.2 s.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Sequence

FILTER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stderr_filter.py")
_state: dict[str, object] = {}


def filter_native_stderr(drop: Sequence[str]) -> bool:
    """Filter fd 2 of this process (and of the processes it starts later) through the child; returns whether
    the filter is on. Idempotent; does nothing when fd 2 is closed or the child cannot start."""
    if "proc" in _state or not drop:
        return "proc" in _state
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, AttributeError, ValueError):
        return False
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", FILTER_SCRIPT, *drop],
            stdin=read_end,
            stdout=real,
            stderr=real,
            close_fds=True,
        )
    except OSError:
        for fd in (read_end, write_end, real):
            os.close(fd)
        return False
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    os.set_inheritable(real, False)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(real, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    _state.update(proc=proc, real=real)
    atexit.register(restore_native_stderr)
    return True


def restore_native_stderr(timeout_s: float = 2.0) -> None:
    """Point fd 2 back at the real stderr and let the child drain what is left (waits up to ``timeout_s``:
    a process this one started may still hold the pipe open)."""
    proc = _state.pop("proc", None)
    real = _state.pop("real", None)
    if not isinstance(proc, subprocess.Popen) or not isinstance(real, int):
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(real, 2)  # closes this process's write end of the pipe
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
