"""Fixtures for the storage tests: retry-log capture, a dead endpoint, and one that comes up late."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

RETRY_LOGGER = "vidret.storage"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_retry(record: logging.LogRecord) -> bool:
    return record.name == RETRY_LOGGER and "retrying" in record.getMessage()


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """Returns a function listing the retry warnings the storage layer has logged so far."""
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    return lambda: [r.getMessage() for r in caplog.records if _is_retry(r)]


@pytest.fixture
def dead_endpoint() -> str:
    """URL of an S3 endpoint on 127.0.0.1 where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{_free_port()}"


class LateEndpoint(logging.Handler):
    """An S3 endpoint whose moto server starts when the client logs its ``up_after``-th retry.

    Attempts 1..up_after get "connection refused"; the server comes up while the client backs off, so
    attempt ``up_after + 1`` succeeds. Starting it from the log record rather than a timer keeps the
    attempt count exact on a loaded machine. In-process moto servers share one backend, so this server
    sees the buckets of the session's ``moto_server``.
    """

    def __init__(self, up_after: int) -> None:
        super().__init__(level=logging.WARNING)
        self.port = _free_port()
        self.up_after = up_after
        self.retries_seen = 0
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def emit(self, record: logging.LogRecord) -> None:
        if not _is_retry(record):
            return
        self.retries_seen += 1
        if self.retries_seen == self.up_after and self.server is None:
            from moto.server import ThreadedMotoServer

            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()


@pytest.fixture
def late_endpoint(moto_server: str) -> Iterator[LateEndpoint]:
    """A ``LateEndpoint`` that comes up at the client's 2nd retry, so its 3rd attempt succeeds."""
    ep = LateEndpoint(up_after=2)
    log = logging.getLogger(RETRY_LOGGER)
    log.addHandler(ep)
    try:
        yield ep
    finally:
        log.removeHandler(ep)
        if ep.server is not None:
            ep.server.stop()
