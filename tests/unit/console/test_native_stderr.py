"""console/native.py: fd 2 filtered through a child process, in real subprocesses (the filter changes the
process's file descriptors, so it never runs inside the pytest process)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap

import pytest

from vidret.console.logs import RAY_DRIVER_SKIP

NOISE = (
    "[2026-12-07 12:35:14,250 E 19784 19784] core_worker.cc:2465: Actor with class name: 'MapWorker' and ID: "
    "'9d' has constructor arguments in the object store and max_restarts > 0. If the arguments ..."
)
PRELUDE = textwrap.dedent(
    """
    import os, sys
    from vidret.console.logs import RAY_DRIVER_SKIP
    from vidret.console.native import filter_native_stderr
    on = filter_native_stderr(RAY_DRIVER_SKIP)
    """
)


def _run(body: str, stderr: int = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr, timeout=60)


def test_native_noise_is_dropped_and_everything_else_passes_in_order() -> None:
    assert any(s in NOISE for s in RAY_DRIVER_SKIP)
    proc = _run(
        f"""
        assert on
        os.write(2, b"native 1\\n{NOISE}\\nnative 2\\n")
        print("python line", file=sys.stderr, flush=True)
        os.write(2, b"no newline at the end")
        """
    )
    assert proc.returncode == 0
    err = proc.stderr.decode()
    assert "constructor arguments" not in err
    assert "native 1\nnative 2\n" in err
    assert "python line\n" in err
    assert err.endswith("no newline at the end")  # the partial line is drained at exit


def test_a_process_killed_right_after_a_native_write_loses_nothing() -> None:
    """A native fatal error is printed just before an abort: the child still passes it on."""
    proc = _run(
        f"""
        os.write(2, b"{NOISE}\\nfatal: check failed in the core worker\\n")
        os.abort()
        """
    )
    assert proc.returncode != 0
    assert proc.stderr.decode().splitlines() == ["fatal: check failed in the core worker"]


def test_python_stderr_stays_a_terminal() -> None:
    """Live progress and colours depend on sys.stderr being a terminal: the pipe must not hide it."""
    primary, secondary = pty.openpty()
    try:
        proc = _run("print(on, sys.stderr.isatty(), os.isatty(2), flush=True)\n", stderr=secondary)
    finally:
        os.close(secondary)
        os.close(primary)
    assert proc.stdout.decode().split() == ["True", "True", "False"]


@pytest.mark.parametrize(("flags", "filtered"), [([], True), (["--verbose"], False)])
def test_the_cli_filters_fd_2_unless_verbose(flags: list[str], filtered: bool) -> None:
    """`vidret` with no command prints its help after the filter decision; fd 2 is a pipe only if filtered."""
    code = textwrap.dedent(
        f"""
        import os, stat, sys
        from vidret.cli import main
        main({flags!r}, own_process=True)
        print(stat.S_ISFIFO(os.fstat(2).st_mode))
        """
    )
    with open(os.devnull, "w") as sink:
        proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=sink, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.decode().split()[-1] == str(filtered)
