"""Credentials never show up in logs, printed output, error messages, tracebacks, repr or pickles."""

from __future__ import annotations

import logging
import os
import pickle
import traceback

import pytest

from vidret.config import StorageConfig
from vidret.storage import Storage, StorageError

pytestmark = pytest.mark.s3

Bucket = tuple[StorageConfig, str]
CFG_KEY_ID = "AKIACONFIGKEYID77"
CFG_SECRET = "cfg-SECRET-b61d0e93aa"
CFG_TOKEN = "cfg-TOKEN-5c2f8e1d07"


def _all_text(err: BaseException) -> str:
    return str(err) + repr(err) + "".join(traceback.format_exception(err))


def test_env_secret_never_leaks(
    s3_bucket: Bucket,
    dead_endpoint: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg, bucket = s3_bucket
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # set by the moto_server fixture
    caplog.set_level(logging.DEBUG)  # every logger, botocore and s3fs included
    st = Storage(cfg)
    st.write_text(f"{bucket}/a.txt", "x")
    assert st.read_text(f"{bucket}/a.txt") == "x"
    errors = []
    for call in (
        lambda: st.read_bytes(f"{bucket}/missing"),
        lambda: Storage(
            StorageConfig(endpoint_url=dead_endpoint, max_retries=1, retry_backoff_s=0.001)
        ).read_bytes(f"{bucket}/a.txt"),
    ):
        with pytest.raises(StorageError) as err:
            call()
        errors.append(err.value)
    out = capsys.readouterr()
    assert caplog.records, "expected DEBUG records from botocore/s3fs and a retry warning"
    for text in [caplog.text, out.out, out.err, repr(st), *map(_all_text, errors)]:
        assert secret not in text
    assert secret.encode() not in pickle.dumps(st)


def test_config_credentials_never_leak_into_repr_logs_or_errors(
    dead_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    cfg = StorageConfig(
        endpoint_url=dead_endpoint,
        access_key_id=CFG_KEY_ID,
        secret_access_key=CFG_SECRET,
        session_token=CFG_TOKEN,
        max_retries=1,
        retry_backoff_s=0.001,
    )
    st = Storage(cfg)
    with pytest.raises(StorageError) as err:
        st.write_text("s3://some-bucket/x.txt", "data")
    assert "s3://some-bucket/x.txt" in str(err.value)
    assert "credentials=config" in repr(st)
    for text in [caplog.text, repr(st), _all_text(err.value)]:
        for s in (CFG_KEY_ID, CFG_SECRET, CFG_TOKEN):
            assert s not in text


def test_secrets_inside_a_failure_reason_are_redacted(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, bucket = s3_bucket
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    st = Storage(cfg)

    def leaky(*args: object, **kwargs: object) -> bytes:
        raise OSError(f"backend echoed the request: secret={secret}")

    monkeypatch.setattr(st._s3(), "cat_file", leaky)
    with pytest.raises(StorageError) as err:
        st.read_bytes(f"{bucket}/a.txt")
    assert "secret=***" in str(err.value)
    assert secret not in _all_text(err.value)  # the original error is not chained into the traceback


def test_endpoint_userinfo_is_hidden_in_repr() -> None:
    st = Storage(StorageConfig(endpoint_url="http://user:pa55word@127.0.0.1:9000"))
    assert "pa55word" not in repr(st)
    assert "127.0.0.1:9000" in repr(st)
