"""The child process of ``native.py``: copy stdin to stdout, dropping lines that contain any argument.

Run as ``python -I -S stderr_filter.py STRING...`` with stdin the pipe that the parent's fd 2 writes to and
stdout the real stderr. Standard library only (it must not import vidret, torch or ray). It ignores SIGINT
(Ctrl-C reaches the whole process group; the parent's last lines must still get through) and exits at the end
of its input, that is when every process holding the pipe's write end has closed it or died.
"""

from __future__ import annotations

import os
import select
import signal
import sys

PARTIAL_AFTER_S = 0.2  # a line without a newline (a prompt, a crash mid-line) is passed on after this


def _write(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:  # the terminal is gone: keep draining so the writers never block
            return
        data = data[n:]


def run(drop: list[bytes], src: int = 0, dst: int = 1) -> None:
    """Filter ``src`` into ``dst`` until the end of ``src``."""
    buf = b""
    passing = False  # the start of the current line was already passed on: pass its rest unfiltered
    while True:
        ready, _, _ = select.select([src], [], [], PARTIAL_AFTER_S if buf else None)
        if not ready:
            _write(dst, buf)
            buf, passing = b"", True
            continue
        chunk = os.read(src, 65536)
        if not chunk:
            _write(dst, buf)
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        out = []
        for line in lines:
            if passing or not any(d in line for d in drop):
                out.append(line + b"\n")
            passing = False
        _write(dst, b"".join(out))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run([a.encode() for a in sys.argv[1:] if a])


if __name__ == "__main__":
    main()
