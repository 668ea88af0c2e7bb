"""Helpers of the fault tests: Ray worker processes of this driver's local Ray, polling."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def ray_pids(marker: str) -> list[int]:
    """Live processes below this one (our local Ray's workers) whose command line contains ``marker``."""
    import psutil
    import ray  # noqa: F401 - psutil is vendored by ray (ray-notes P16)

    out = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def wait_until(cond: Callable[[], Any], timeout_s: float, poll_s: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy (returned) or ``timeout_s`` passes (returns None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll_s)
    return None
