"""Bounded retries with exponential backoff for transient S3 failures, and translation to StorageError.

Transient: connection failures (refused, reset, closed, timed out, a body cut off) from botocore, aiohttp
or the OS, and throttling / 5xx responses. Everything else fails at once: not-found becomes
``StorageNotFoundError``,
access denied ``StoragePermissionError``, the rest ``StorageError``. The s3fs client this wraps is built
with botocore and s3fs retries off, so this loop is the only retry layer and ``max_retries`` is exact.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import aiohttp
import botocore.exceptions as bce

from vidret.storage.errors import StorageError, StorageNotFoundError, StoragePermissionError

logger = logging.getLogger("vidret.storage")

T = TypeVar("T")

# Errors a storage call may raise that we translate; anything else (a TypeError from a bug) propagates.
STORAGE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    OSError,
    bce.BotoCoreError,
    bce.ClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    http.client.HTTPException,
)
# A response cut off mid-body: the connection dropped, the same request can succeed.
_TRUNCATED = (aiohttp.ClientPayloadError, bce.IncompleteReadError, http.client.IncompleteRead)
_CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EPIPE,
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
_MAX_DELAY_S = 30.0
_MIN_SECRET_LEN = 6  # shorter strings would redact ordinary words


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then its causes (s3fs keeps the botocore ClientError as ``__cause__``)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 8:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether retrying could help: a connection-level failure, throttling or a 5xx response."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    for e in _chain(exc):
        if isinstance(e, bce.ClientError):
            meta = e.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            code = str(e.response.get("Error", {}).get("Code", ""))
            return status >= 500 or status == 429 or code in _TRANSIENT_CODES
        if isinstance(e, bce.SSLError):
            return False  # a certificate problem does not go away by retrying
        if isinstance(
            e, (bce.ConnectionError, bce.HTTPClientError, aiohttp.ClientConnectionError, *_TRUNCATED)
        ):
            return True
        if isinstance(e, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        if isinstance(e, OSError) and e.errno in _CONNECTION_ERRNOS:
            return True
    return False


def redact(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for s in secrets:
        if s and len(s) >= _MIN_SECRET_LEN:
            text = text.replace(s, "***")
    return text


def describe(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """A one-line reason for ``exc``, with secrets redacted."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename!r}" if exc.filename else "")
    else:
        text = str(exc) or "(no message)"
    return redact(f"{type(exc).__name__}: {text}", secrets)


def translate(exc: BaseException, *, op: str, uri: str, secrets: Sequence[str] = ()) -> StorageError:
    """Map a failed call to the StorageError subclass that says what went wrong, naming ``uri``."""
    reason = describe(exc, secrets)
    if isinstance(exc, FileNotFoundError):
        return StorageNotFoundError(f"not found: {uri} ({op}: {reason})", uri)
    if isinstance(exc, PermissionError):
        return StoragePermissionError(f"permission denied: cannot {op} {uri}: {reason}", uri)
    return StorageError(f"cannot {op} {uri}: {reason}", uri)


def backoff_delay(base_s: float, attempt: int) -> float:
    """Delay after failed ``attempt`` (1-based): base * 2**(attempt-1), capped, with jitter in [0.5, 1]."""
    return min(base_s * 2.0 ** (attempt - 1), _MAX_DELAY_S) * random.uniform(0.5, 1.0)


def call_with_retries(
    fn: Callable[[], T],
    *,
    op: str,
    uri: str,
    max_retries: int,
    backoff_s: float,
    secrets: Sequence[str] = (),
) -> T:
    """Run ``fn``; retry transient failures up to ``max_retries`` times, then raise StorageError."""
    attempts = max_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except STORAGE_EXCEPTIONS as exc:
            # An original error that quotes a secret is not chained: tracebacks would print it.
            cause = None if describe(exc) != describe(exc, secrets) else exc
            if not is_transient(exc):
                raise translate(exc, op=op, uri=uri, secrets=secrets) from cause
            reason = describe(exc, secrets)
            if attempt == attempts:
                raise StorageError(
                    f"cannot {op} {uri}: {reason} (gave up after {attempts} attempts)", uri
                ) from cause
            delay = backoff_delay(backoff_s, attempt)
            logger.warning(
                "storage: %s %s failed (attempt %d/%d: %s); retrying in %.2f s",
                op,
                uri,
                attempt,
                attempts,
                reason,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
