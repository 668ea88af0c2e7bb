"""Local scratch folders that a killed process does not leave behind for good.

A process killed with SIGKILL (the kernel's OOM killer, a lost Ray worker, a node drain) runs no cleanup, so
the folder it was staging a checkpoint in (a model's whole state: 32 MB for the tiny preset, GBs for ViT-B
with its optimizer) would stay in the temp dir until the machine is wiped. Every scratch folder's name
carries its owner's process id, ``vidret-<kind>-<pid>-<random>``; making a new one first removes the
folders of this user whose owner no longer runs and that nothing has written to for ``STALE_AFTER_S``.

```python
with scratch_dir("ckpt") as tmp:       # removed on exit, like tempfile.TemporaryDirectory
    save_checkpoint(tmp, state)
path = make_scratch_dir("tb")          # the caller removes it (shutil.rmtree)
```
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# A folder whose owner is gone but that was written to in the last 10 minutes is left alone: in a container
# that shares the temp dir but not the process-id namespace, "no such process" is not proof of death.
STALE_AFTER_S = 600.0
_NAME = re.compile(r"^vidret-(?P<kind>[a-z]+)-(?P<pid>\d+)-")
_KIND = re.compile(r"^[a-z]+$")


def make_scratch_dir(kind: str, *, stale_after_s: float = STALE_AFTER_S) -> str:
    """A new private folder ``<tmp>/vidret-<kind>-<pid>-<random>`` (after :func:`sweep_stale`)."""
    if not _KIND.match(kind):
        raise ValueError(f"scratch kind must be lower-case letters, got {kind!r}")
    sweep_stale(stale_after_s=stale_after_s)
    return tempfile.mkdtemp(prefix=f"vidret-{kind}-{os.getpid()}-")


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[str]:
    """:func:`make_scratch_dir`, removed when the block ends (also on an exception)."""
    path = make_scratch_dir(kind)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale(*, root: str | None = None, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Remove this user's scratch folders under ``root`` (the temp dir) whose owning process is gone and
    whose newest entry is older than ``stale_after_s``; returns the removed paths. Never raises: a folder
    that cannot be inspected or removed is left for the next sweep."""
    base = Path(root or tempfile.gettempdir())
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _NAME.match(entry.name)
        if m is None or not _is_own_dir(entry) or _alive(int(m["pid"])):
            continue
        if now - _newest_mtime(Path(entry.path)) < stale_after_s:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.exists(entry.path):
            removed.append(entry.path)
    if removed:
        log.info("removed %d scratch folder(s) of processes that no longer run: %s", len(removed), removed)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def _is_own_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
    except OSError:
        return False


def _newest_mtime(path: Path) -> float:
    newest = 0.0
    with contextlib.suppress(OSError):
        newest = path.stat().st_mtime
        for child in path.rglob("*"):
            with contextlib.suppress(OSError):
                newest = max(newest, child.stat().st_mtime)
    return newest
