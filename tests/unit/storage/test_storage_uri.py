"""URI parsing, join and is_remote; malformed URIs fail with ValueError before any I/O."""

from __future__ import annotations

import pytest

from vidret.storage import Storage, is_remote, join, parse_uri


@pytest.mark.parametrize(
    ("uri", "scheme", "path", "bucket", "key"),
    [
        ("runs/a.json", "file", "runs/a.json", "", ""),
        ("/abs/a.json", "file", "/abs/a.json", "", ""),
        ("file:///abs/a.json", "file", "/abs/a.json", "", ""),
        ("file://localhost/abs/a.json", "file", "/abs/a.json", "", ""),
        ("s3://videos/x/y.mp4", "s3", "videos/x/y.mp4", "videos", "x/y.mp4"),
        ("s3://videos", "s3", "videos", "videos", ""),
        ("s3://videos/dir/", "s3", "videos/dir", "videos", "dir"),
        ("s3://my.bucket-01/k", "s3", "my.bucket-01/k", "my.bucket-01", "k"),
    ],
)
def test_parse_valid(uri: str, scheme: str, path: str, bucket: str, key: str) -> None:
    loc = parse_uri(uri)
    assert (loc.scheme, loc.path, loc.bucket, loc.key) == (scheme, path, bucket, key)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://", "missing bucket"),
        ("s3:///key", "missing bucket"),
        ("s3://ab/x", "not a valid bucket name"),
        ("s3://Bucket_Bad/x", "not a valid bucket name"),
        ("s3://-bucket/x", "not a valid bucket name"),
        ("s3://b..ucket/x", "not a valid bucket name"),
        ("s3://bucket//x", "empty path segment"),
        ("gs://bucket/x", "unsupported URI scheme 'gs'"),
        ("s3a://bucket/x", "unsupported URI scheme 's3a'"),
        ("file://relative/x", "file:///absolute/path"),
        ("s3:/bucket/x", "followed by '://'"),
        ("s3:bucket/x", "followed by '://'"),
    ],
)
def test_malformed_uri_names_uri_and_expectation(uri: str, expected: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_uri(uri)
    assert repr(uri) in str(err.value)
    assert expected in str(err.value)


def test_empty_and_non_string_uri() -> None:
    with pytest.raises(ValueError, match="empty storage URI"):
        parse_uri("")
    with pytest.raises(TypeError, match="must be a str"):
        parse_uri(42)  # type: ignore[arg-type]


def test_bucket_only_uri_rejected_where_a_file_is_needed() -> None:
    with pytest.raises(ValueError, match=r"'s3://videos' names a bucket only"):
        parse_uri("s3://videos", need_key=True)
    assert parse_uri("s3://videos/", need_key=False).key == ""


@pytest.mark.parametrize(
    "call",
    [
        lambda st: st.read_bytes("gs://b/x"),
        lambda st: st.write_bytes("s3://ab/x", b"1"),
        lambda st: st.write_text("s3://videos", "bucket only"),
        lambda st: st.list("s3://"),
        lambda st: st.exists("s3:///key"),
        lambda st: st.copy("s3://Bad_Bucket/x", "/tmp/x"),
        lambda st: st.delete("ftp://host/x"),
        lambda st: st.pyarrow_fs("s3://ab"),
        lambda st: st.open_read("file://relative"),
    ],
)
def test_storage_methods_validate_uris_before_io(call) -> None:
    # No endpoint is configured: a ValueError here proves nothing was attempted over the network.
    with pytest.raises(ValueError, match="expected"):
        call(Storage())


def test_is_remote() -> None:
    assert is_remote("s3://videos/a.mp4")
    assert not is_remote("/data/a.mp4")
    assert not is_remote("file:///data/a.mp4")
    with pytest.raises(ValueError, match="gs"):
        is_remote("gs://videos/a.mp4")


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://bkt/runs", ("x", "y.json"), "s3://bkt/runs/x/y.json"),
        ("s3://bkt/runs/", ("/x/", "y.json"), "s3://bkt/runs/x/y.json"),
        ("s3://bkt", ("k",), "s3://bkt/k"),
        ("file:///", ("tmp", "a"), "file:///tmp/a"),
        ("/data", ("a/b", "", "c"), "/data/a/b/c"),
        ("rel", (), "rel"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(base, *parts) == expected


def test_join_validates_base() -> None:
    with pytest.raises(ValueError, match="'gs://b'"):
        join("gs://b", "x")
