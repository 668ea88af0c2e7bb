"""Small local-filesystem helpers for atomic writes and clear errors."""

from __future__ import annotations

import contextlib
import os


def raise_error(exc: OSError) -> None:
    """``os.walk`` onerror hook: raise instead of skipping unreadable directories silently."""
    raise exc


def unlink_if_present(path: str) -> None:
    """Remove ``path`` if it exists (cleanup of a temp file)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def first_non_directory(directory: str) -> str | None:
    """The first existing path component of ``directory`` that is not a directory, if any."""
    probe = os.path.abspath(directory)
    parts: list[str] = []
    while probe and probe != os.path.dirname(probe):
        parts.append(probe)
        probe = os.path.dirname(probe)
    for p in reversed(parts):
        if os.path.exists(p) and not os.path.isdir(p):
            return p
    return None


def new_file_mode(path: str) -> int:
    """Keep an existing file's permissions; new files get 0o666 minus the umask (mkstemp uses 0o600)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Reading the umask via os.umask() would briefly change it for every thread of the process.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        return 0o022  # no /proc (not Linux): the common default
    return 0o022
