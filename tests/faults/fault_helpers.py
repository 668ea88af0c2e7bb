"""Helpers of the fault tests: the proxied bucket, polling (Ray process lookup is ``train_helpers.ray_pids``).

Shared types live here, not in ``conftest.py``: ``from conftest import ...`` would find another directory's
conftest module when pytest collects several test folders in one session."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from s3proxy import FaultProxy

from vidret.config import StorageConfig


def wait_until(cond: Callable[[], Any], timeout_s: float, poll_s: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy (returned) or ``timeout_s`` passes (returns None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll_s)
    return None


@dataclass(frozen=True)
class ProxiedBucket:
    storage: StorageConfig  # endpoint = the proxy; 2 retries, fast backoff
    direct: StorageConfig  # endpoint = moto itself (to inspect what the server really holds)
    root: str  # s3://<bucket>
    proxy: FaultProxy
