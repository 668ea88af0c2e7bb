"""A persistent child process that decodes videos, so a hung or crashing decoder cannot take the caller down.

Why a child process: decoders hang inside C calls (decord has open upstream hang bugs; opening a FIFO or a
stalled network file blocks in FFmpeg), where neither threads nor ``signal.alarm`` can interrupt them.
Why persistent: starting a child (importing numpy, PyAV, decord, PIL) costs ~1 s, paid once per decoding
process instead of once per file; per file the cost is pickling the input bytes and the ``(F, S, S, 3)``
result through a socket (a few ms for 12 frames at 224).

Why not ``multiprocessing``: its ``spawn`` and ``forkserver`` children re-run the caller's main script, so a
plain script calling the decode API at top level (no ``if __name__ == "__main__":`` guard) recursed into
dozens of bootstrap errors; ``fork`` is unsafe in processes holding threads (Ray workers, PyTorch). The
child is a fresh interpreter running :func:`child_main` (``python -c ...``), connected
over a socket pair; it never imports the caller's ``__main__``, so the API works from any script.

Nothing is left behind: on timeout the child is killed (SIGKILL) and the next call starts a fresh one; the
child exits when its socket closes (the parent exited or died, even by SIGKILL); :meth:`DecodeWorker.close`
and interpreter exit stop it. A child that dies (for example a segfault in a decoder) surfaces as
``DecodeError(reason="corrupt")`` naming the exit code. The child is also recycled every ``max_decodes``
files to bound any leak in the decoders.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from vidret.console.logs import quiet_ffmpeg, verbose_requested
from vidret.data.video.local import decode_local
from vidret.data.video.types import DecodeError, Source

_STARTUP_TIMEOUT_S = 120.0  # importing numpy/PyAV/decord in a fresh child; generous on a loaded machine
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


_CHILD_CODE = "import sys; from vidret.data.video.worker import child_main; child_main(sys.argv[1:])"


def serve(conn: Connection) -> None:
    """Serve decode requests until the socket closes: ``(source, kwargs)`` -> ``("ok", frames, mask)`` or
    error."""
    conn.send(("ready",))  # imports done: the parent's timeout clock starts only after this
    while True:
        try:
            source, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            frames_FSS3, mask_F = decode_local(source, **kwargs)
            conn.send(("ok", frames_FSS3, mask_F))
        except DecodeError as exc:
            conn.send(("err", exc))
        except ValueError as exc:  # argument errors: re-raised as such in the parent
            conn.send(("value_error", str(exc)))


def _child_env() -> dict[str, str]:
    """The caller's environment with this package's source root first on ``PYTHONPATH`` (the child must import
    the same ``vidret`` as the parent, e.g. a checkout shadowing an installed copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


class DecodeWorker:
    """Owns one decode child process. Not thread-safe across calls; one call at a time (a lock enforces
    it)."""

    def __init__(self, max_decodes: int = 1000) -> None:
        if max_decodes < 1:
            raise ValueError(f"max_decodes must be >= 1, got {max_decodes}")
        self.max_decodes = max_decodes
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._served = 0
        self._lock = threading.Lock()
        self._started = 0
        self.restarts = 0  # children started after the first (timeouts, crashes, recycling)

    def _ensure(self) -> Connection:
        if self._proc is not None and (self._proc.poll() is not None or self._served >= self.max_decodes):
            self._stop()
        if self._proc is None:
            mine, theirs = socket.socketpair()
            fd = theirs.fileno()
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(fd)],
                pass_fds=(fd,),
                env=_child_env(),
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            parent = Connection(mine.detach())
            if not parent.poll(_STARTUP_TIMEOUT_S) or parent.recv() != ("ready",):
                proc.kill()
                proc.wait(timeout=5)
                parent.close()
                raise RuntimeError(f"the decode worker did not start within {_STARTUP_TIMEOUT_S} s")
            self.restarts += self._started
            self._started = 1
            self._proc, self._conn, self._served = proc, parent, 0
        assert self._conn is not None
        return self._conn

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc, self._conn = None, None

    @property
    def pid(self) -> int | None:
        """PID of the current child, or None when none is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def decode(self, source: Source, *, timeout_s: float, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Run :func:`vidret.data.video.local.decode_local` in the child; kill it after ``timeout_s`` seconds.

        File objects are read into bytes here (they cannot cross a process boundary). The timeout covers
        the decode, not the start-up of a fresh child (waited for separately, so a cold start never
        counts as a timeout).
        """
        uri = str(kwargs.get("uri", "<bytes>"))
        if not isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
            source = source.read()
        payload = bytes(source) if isinstance(source, (bytearray, memoryview)) else source
        if isinstance(payload, os.PathLike):
            payload = os.fspath(payload)
        with self._lock:
            conn = self._ensure()
            self._served += 1
            try:
                conn.send((payload, kwargs))
                ready = conn.poll(timeout_s)
            except (BrokenPipeError, EOFError, OSError) as exc:
                self._stop()
                raise DecodeError(uri, "corrupt", f"decode worker pipe failed: {exc}") from None
            if not ready:
                self._stop()
                raise DecodeError(uri, "timeout", f"no result after {timeout_s:g} s; decode worker restarted")
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                code = self._proc.wait(timeout=5) if self._proc is not None else None
                self._stop()
                raise DecodeError(uri, "corrupt", f"decode worker died (exit code {code})") from None
        if msg[0] == "ok":
            return msg[1], msg[2]
        if msg[0] == "err":
            raise msg[1]
        raise ValueError(msg[1])

    def close(self) -> None:
        """Stop the child process (idempotent)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> DecodeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DEFAULT: dict[int, DecodeWorker] = {}  # one per process (keyed by pid so forked children get their own)


def default_worker() -> DecodeWorker:
    """This process's decode worker, started on first use and stopped at interpreter exit."""
    pid = os.getpid()
    worker = _DEFAULT.get(pid)
    if worker is None:
        worker = _DEFAULT[pid] = DecodeWorker()
        atexit.register(worker.close)
    return worker


def child_main(argv: list[str]) -> None:
    """Child entry point: serve on the inherited socket (file descriptor ``argv[0]``).

    FFmpeg prints only fatal errors here unless ``VIDRET_LOG=debug`` (inherited from the caller): a broken
    video is reported by the ``DecodeError`` it raises, not by lines like ``[vp9 @ 0x..] Invalid sync code``.
    The child is no Ray worker, so the workers' setup hook does not reach it."""
    if not verbose_requested():
        quiet_ffmpeg()
    conn = Connection(int(argv[0]))
    try:
        serve(conn)
    finally:
        conn.close()
