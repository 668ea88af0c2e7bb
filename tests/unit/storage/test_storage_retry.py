"""Bounded retries: transient failures are retried with backoff, permanent ones fail at once."""

from __future__ import annotations

import errno
from collections.abc import Callable

import aiohttp
import botocore.exceptions as bce
import pytest
import s3fs.core
from s3fs.errors import translate_boto_error

from vidret.config import StorageConfig
from vidret.storage import Storage, StorageError, StorageNotFoundError, StoragePermissionError
from vidret.storage.retry import backoff_delay, is_transient

pytestmark = pytest.mark.s3

Bucket = tuple[StorageConfig, str]
RetryLog = Callable[[], list[str]]


def _client_error(code: str, status: int) -> Exception:
    """A botocore ClientError as s3fs hands it on (translated, with the original as ``__cause__``)."""
    err = bce.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )
    return translate_boto_error(err)


@pytest.mark.parametrize(
    ("make", "transient"),
    [
        (lambda: bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k"), True),
        (lambda: bce.ConnectionClosedError(endpoint_url="http://127.0.0.1:1/b/k"), True),
        (lambda: bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b/k"), True),
        (aiohttp.ServerDisconnectedError, True),
        (lambda: aiohttp.ClientPayloadError("Response payload is not completed"), True),
        (lambda: bce.IncompleteReadError(actual_bytes=10, expected_bytes=20), True),
        (lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True),
        (lambda: OSError(errno.ECONNRESET, "Connection reset by peer"), True),
        (lambda: _client_error("SlowDown", 503), True),
        (lambda: _client_error("InternalError", 500), True),
        (lambda: _client_error("ThrottlingException", 400), True),
        (lambda: _client_error("NoSuchKey", 404), False),
        (lambda: _client_error("AccessDenied", 403), False),
        (bce.NoCredentialsError, False),
        (lambda: bce.SSLError(endpoint_url="https://x", error="bad cert"), False),
        (lambda: OSError(errno.ENOSPC, "No space left on device"), False),
    ],
)
def test_transient_classification(make: Callable[[], Exception], transient: bool) -> None:
    assert is_transient(make()) is transient


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    for attempt, nominal in [(1, 0.5), (2, 1.0), (4, 4.0)]:
        d = backoff_delay(0.5, attempt)
        assert 0.5 * nominal <= d <= nominal
    assert backoff_delay(0.5, 30) <= 30.0


def test_read_succeeds_when_the_endpoint_comes_back(
    s3_bucket: Bucket, late_endpoint, retry_log: RetryLog
) -> None:
    cfg, bucket = s3_bucket
    Storage(cfg).write_bytes(f"{bucket}/k.bin", b"survived")
    flaky = Storage(StorageConfig(endpoint_url=late_endpoint.url, max_retries=5, retry_backoff_s=0.01))
    assert flaky.read_bytes(f"{bucket}/k.bin") == b"survived"
    warnings = retry_log()
    assert len(warnings) == 2  # attempts 1 and 2 refused, attempt 3 succeeded
    assert all(f"{bucket}/k.bin" in w and "/6" in w for w in warnings)


def test_write_succeeds_when_the_endpoint_comes_back(
    s3_bucket: Bucket, late_endpoint, retry_log: RetryLog
) -> None:
    cfg, bucket = s3_bucket
    flaky = Storage(StorageConfig(endpoint_url=late_endpoint.url, max_retries=3, retry_backoff_s=0.01))
    flaky.write_text(f"{bucket}/w.txt", "written on attempt 3")
    assert len(retry_log()) == 2
    assert Storage(cfg).read_text(f"{bucket}/w.txt") == "written on attempt 3"


def test_dead_endpoint_gives_up_after_max_retries(dead_endpoint: str, retry_log: RetryLog) -> None:
    st = Storage(StorageConfig(endpoint_url=dead_endpoint, max_retries=2, retry_backoff_s=0.001))
    uri = "s3://videos-bucket/clips/v1.mp4"
    with pytest.raises(StorageError) as err:
        st.read_bytes(uri)
    msg = str(err.value)
    assert uri in msg
    assert "gave up after 3 attempts" in msg
    assert "EndpointConnectionError" in msg
    assert not isinstance(err.value, FileNotFoundError)
    assert len(retry_log()) == 2
    with pytest.raises(StorageError, match="gave up after 3 attempts"):
        st.exists(uri)  # connection failures are errors, never a silent False


def test_no_retries_configured_means_one_attempt(dead_endpoint: str, retry_log: RetryLog) -> None:
    st = Storage(StorageConfig(endpoint_url=dead_endpoint, max_retries=0))
    with pytest.raises(StorageError, match="gave up after 1 attempts"):
        st.write_bytes("s3://videos-bucket/x", b"1")
    assert retry_log() == []


def test_not_found_is_not_retried(s3_bucket: Bucket, retry_log: RetryLog) -> None:
    cfg, bucket = s3_bucket
    st = Storage(StorageConfig(endpoint_url=cfg.endpoint_url, max_retries=4, retry_backoff_s=0.01))
    with pytest.raises(StorageNotFoundError):
        st.read_bytes(f"{bucket}/missing")
    assert retry_log() == []


def _fail_then_delegate(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, errors: list[Exception]
) -> list[int]:
    """Make ``target.name`` raise ``errors`` one per call, then behave normally; returns the call counter."""
    real = getattr(target, name)
    calls = [0]

    def wrapper(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return calls


def test_throttling_is_retried_and_access_denied_is_not(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch, retry_log: RetryLog
) -> None:
    cfg, bucket = s3_bucket
    st = Storage(StorageConfig(endpoint_url=cfg.endpoint_url, max_retries=4, retry_backoff_s=0.001))
    st.write_bytes(f"{bucket}/t.bin", b"throttled")
    fs = st._s3()  # the live client of this Storage: inject S3 error responses in front of it
    calls = _fail_then_delegate(monkeypatch, fs, "cat_file", [_client_error("SlowDown", 503)] * 2)
    assert st.read_bytes(f"{bucket}/t.bin") == b"throttled"
    assert calls[0] == 3
    assert len(retry_log()) == 2

    calls = _fail_then_delegate(monkeypatch, fs, "cat_file", [_client_error("AccessDenied", 403)])
    with pytest.raises(StoragePermissionError, match=f"{bucket}/t.bin"):
        st.read_bytes(f"{bucket}/t.bin")
    assert calls[0] == 1
    assert len(retry_log()) == 2


def test_streamed_read_retries_a_dropped_range_request(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch, retry_log: RetryLog
) -> None:
    cfg, bucket = s3_bucket
    st = Storage(StorageConfig(endpoint_url=cfg.endpoint_url, max_retries=2, retry_backoff_s=0.001))
    payload = bytes(i % 253 for i in range(200_000))
    st.write_bytes(f"{bucket}/v.bin", payload)
    # s3fs binds the range fetcher when the file opens, so the failure is injected first.
    calls = _fail_then_delegate(
        monkeypatch, s3fs.core.S3File, "_fetch_range", [bce.ConnectionClosedError(endpoint_url="x")]
    )
    with st.open_read(f"{bucket}/v.bin") as f:
        f.seek(50_000)
        assert f.read(1000) == payload[50_000:51_000]
    assert calls[0] == 2
    assert len(retry_log()) == 1
