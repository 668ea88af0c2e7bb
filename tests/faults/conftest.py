"""Fault-suite fixtures: the fault recorder, an S3 fault proxy, one local Ray per module, Ray process lookup.

Every test that injects a fault takes the ``faults`` fixture and calls ``faults.inject(kind, detail)``;
when the
test ends the fixture records one JSON line per injected fault: ``{"test", "kind", "detail", "survived",
"rows_lost", "checkpoints_corrupted", "bug"}``. ``survived`` is the test's verdict (it passed: the system
recovered, or failed with the clear error the test demands); ``bug`` is the xfail reason of a known bug. Lines
go to the file named by ``$VIDRET_FAULTS_LOG`` (``benchmarks/faults.py`` sets it and aggregates); the terminal
summary prints the totals either way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import ProxiedBucket
from s3proxy import FaultProxy

from vidret.config import StorageConfig

FAULTS_LOG_ENV = "VIDRET_FAULTS_LOG"
INTEGRATION_DIR = Path(__file__).resolve().parents[1] / "integration"
if str(INTEGRATION_DIR) not in sys.path:  # reuse the training helpers (corpus, configs, TensorBoard readers)
    sys.path.append(str(INTEGRATION_DIR))

_SESSION_RECORDS: list[dict[str, Any]] = []


# -- the recorder ----------------------------------------------------------------------------------------
@dataclass
class FaultRecorder:
    """Collects the faults one test injects and what they cost (rows lost, corrupt checkpoints loaded)."""

    test: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    def inject(self, kind: str, detail: str) -> None:
        """Note a fault about to be injected (``kind``: worker_loss, storage, bad_corpus, bad_input,
        security)."""
        self.entries.append(
            {"test": self.test, "kind": kind, "detail": detail, "rows_lost": 0, "checkpoints_corrupted": 0}
        )

    def loss(self, *, rows_lost: int = 0, checkpoints_corrupted: int = 0) -> None:
        """Record the damage measured after the last injected fault (before asserting it is zero)."""
        if not self.entries:
            raise AssertionError("faults.loss() before faults.inject()")
        self.entries[-1]["rows_lost"] += int(rows_lost)
        self.entries[-1]["checkpoints_corrupted"] += int(checkpoints_corrupted)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_REPORT] = report


_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[FaultRecorder]:
    recorder = FaultRecorder(request.node.nodeid)
    yield recorder
    report = request.node.stash.get(_REPORT, None)
    survived = bool(report is not None and report.passed)
    bug = getattr(report, "wasxfail", None) if report is not None else None
    path = os.environ.get(FAULTS_LOG_ENV)
    for entry in recorder.entries:
        entry.update(survived=survived, bug=bug)
        _SESSION_RECORDS.append(entry)
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SESSION_RECORDS:
        return
    recs = _SESSION_RECORDS
    terminalreporter.write_line(
        f"faults: {len(recs)} injected, {sum(r['survived'] for r in recs)} survived, "
        f"rows lost {sum(r['rows_lost'] for r in recs)}, "
        f"checkpoints corrupted {sum(r['checkpoints_corrupted'] for r in recs)}, "
        f"known bugs {sum(1 for r in recs if r['bug'])}"
    )


# -- S3 behind a fault proxy -----------------------------------------------------------------------------
@pytest.fixture
def fault_proxy(moto_server: str) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` on 127.0.0.1 in front of the session's moto server (policy: pass everything)."""
    proxy = FaultProxy(moto_server)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def proxied_bucket(s3_bucket: tuple[StorageConfig, str], fault_proxy: FaultProxy) -> ProxiedBucket:
    """A fresh bucket reached through the fault proxy, with ``max_retries=2`` and a 20 ms backoff base."""
    direct, root = s3_bucket
    via_proxy = StorageConfig(
        endpoint_url=fault_proxy.url, region=direct.region, max_retries=2, retry_backoff_s=0.02
    )
    return ProxiedBucket(storage=via_proxy, direct=direct, root=root, proxy=fault_proxy)
