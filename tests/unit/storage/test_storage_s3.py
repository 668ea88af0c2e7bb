"""S3 through a real moto server on 127.0.0.1: round trips, listing, atomic writes, pyarrow, pickling."""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidret.config import StorageConfig
from vidret.storage import Storage, StorageError, StorageNotFoundError, StoragePermissionError, join

pytestmark = pytest.mark.s3

Bucket = tuple[StorageConfig, str]


@functools.cache
def _admin(endpoint_url: str):
    """A boto3 client, independent of the code under test, with the session's test credentials."""
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


def _keys(cfg: StorageConfig, bucket_uri: str) -> list[str]:
    """Object keys as S3 itself reports them."""
    resp = _admin(cfg.endpoint_url).list_objects_v2(Bucket=bucket_uri.removeprefix("s3://"))
    return sorted(o["Key"] for o in resp.get("Contents", []))


def test_bytes_and_text_round_trip(s3_bucket: Bucket) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    payload = bytes(range(256)) * 40
    st.write_bytes(join(bucket, "a", "blob.bin"), payload)
    st.write_text(join(bucket, "a", "t.txt"), "héllo wörld")
    assert st.read_bytes(f"{bucket}/a/blob.bin") == payload
    assert st.read_text(f"{bucket}/a/t.txt") == "héllo wörld"
    assert _keys(cfg, bucket) == ["a/blob.bin", "a/t.txt"]


def test_exists_list_copy_delete(s3_bucket: Bucket, tmp_path: Path) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    for key in ["runs/b/2.txt", "runs/a.txt", "runs/b/c/3.txt", "runsx/other.txt"]:
        st.write_text(f"{bucket}/{key}", key)
    assert st.list(f"{bucket}/runs") == [f"{bucket}/runs/{k}" for k in ["a.txt", "b/2.txt", "b/c/3.txt"]]
    assert st.list(f"{bucket}/runs/b/") == [f"{bucket}/runs/b/2.txt", f"{bucket}/runs/b/c/3.txt"]
    assert len(st.list(bucket)) == 4
    assert st.list(f"{bucket}/nothing-here") == []
    assert st.exists(f"{bucket}/runs/a.txt")
    assert st.exists(f"{bucket}/runs/b")
    assert st.exists(bucket)
    assert not st.exists(f"{bucket}/runs/zzz.txt")
    assert not st.exists("s3://vidret-no-such-bucket-1234")

    st.copy(f"{bucket}/runs/a.txt", f"{bucket}/copies/a.txt")  # server-side
    st.copy(f"{bucket}/runs/b/2.txt", str(tmp_path / "local" / "2.txt"))  # download
    (tmp_path / "up.txt").write_text("uploaded")
    st.copy(str(tmp_path / "up.txt"), f"{bucket}/copies/up.txt")  # upload
    assert st.read_text(f"{bucket}/copies/a.txt") == "runs/a.txt"
    assert (tmp_path / "local" / "2.txt").read_text() == "runs/b/2.txt"
    assert st.read_text(f"{bucket}/copies/up.txt") == "uploaded"

    st.delete(f"{bucket}/copies/a.txt")
    assert not st.exists(f"{bucket}/copies/a.txt")
    with pytest.raises(StorageNotFoundError, match=r"copies/a\.txt"):
        st.delete(f"{bucket}/copies/a.txt")
    st.delete(f"{bucket}/copies/a.txt", missing_ok=True)
    st.delete(f"{bucket}/runs", recursive=True)
    assert _keys(cfg, bucket) == ["copies/up.txt", "runsx/other.txt"]
    st.makedirs(f"{bucket}/new/dir")  # a no-op on S3
    assert _keys(cfg, bucket) == ["copies/up.txt", "runsx/other.txt"]


def test_missing_key_and_bucket_are_not_found_errors(s3_bucket: Bucket, tmp_path: Path) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    with pytest.raises(StorageNotFoundError) as err:
        st.read_bytes(f"{bucket}/nope.bin")
    assert f"{bucket}/nope.bin" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="vidret-no-such-bucket-1234/x"):
        st.open_read("s3://vidret-no-such-bucket-1234/x")
    with pytest.raises(StorageNotFoundError, match="s3://vidret-no-such-bucket-1234"):
        st.list("s3://vidret-no-such-bucket-1234/prefix")
    with pytest.raises(StorageNotFoundError, match=r"nope\.bin"):
        st.copy(f"{bucket}/nope.bin", f"{bucket}/dst.bin")
    with pytest.raises(StorageNotFoundError, match="no-such-local"):
        st.copy(str(tmp_path / "no-such-local"), f"{bucket}/dst.bin")
    assert _keys(cfg, bucket) == []


@pytest.mark.parametrize("existed", [False, True])
def test_interrupted_atomic_write_leaves_old_object_or_nothing(s3_bucket: Bucket, existed: bool) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    uri = f"{bucket}/out/result.json"
    if existed:
        st.write_text(uri, "old")
    with pytest.raises(RuntimeError, match="midway"), st.atomic_write(uri) as f:
        f.write(b"x" * 100_000)
        f.flush()
        raise RuntimeError("crashed midway")
    assert _keys(cfg, bucket) == (["out/result.json"] if existed else [])  # no partial or temp objects
    if existed:
        assert st.read_text(uri) == "old"


def test_atomic_write_uploads_all_chunks(s3_bucket: Bucket) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    with st.atomic_write(f"{bucket}/big.bin") as f:
        for i in range(4):
            f.write(bytes([i]) * 50_000)
    data = st.read_bytes(f"{bucket}/big.bin")
    assert len(data) == 200_000
    assert data[49_999] == 0
    assert data[50_000] == 1
    assert data[-1] == 3


def test_open_read_streams_and_seeks(s3_bucket: Bucket) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    payload = bytes(i % 251 for i in range(600_000))
    st.write_bytes(f"{bucket}/v.mp4", payload)
    with st.open_read(f"{bucket}/v.mp4") as f:
        assert f.seekable()
        assert f.readable()
        assert f.read(10) == payload[:10]
        f.seek(-5, io.SEEK_END)
        assert f.tell() == len(payload) - 5
        assert f.read() == payload[-5:]
        f.seek(123_456)
        buf = bytearray(1000)
        assert f.readinto(buf) == 1000
        assert bytes(buf) == payload[123_456:124_456]
    assert f.closed


def test_pyarrow_fs_writes_parquet_visible_to_storage(s3_bucket: Bucket) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    fs, path = st.pyarrow_fs(f"{bucket}/manifests/m.parquet")
    assert path == f"{bucket.removeprefix('s3://')}/manifests/m.parquet"
    table = pa.table({"video_id": ["v1", "v2", "v3"], "start": [0.0, None, 2.5]})
    pq.write_table(table, path, filesystem=fs)
    assert st.list(f"{bucket}/manifests") == [f"{bucket}/manifests/m.parquet"]
    assert pq.read_table(io.BytesIO(st.read_bytes(f"{bucket}/manifests/m.parquet"))).equals(table)
    assert pq.read_table(path, filesystem=fs).equals(table)


def test_unpickled_storage_builds_its_own_client(s3_bucket: Bucket) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    st.write_text(f"{bucket}/a.txt", "from the driver")  # builds the live client
    state = pickle.dumps(st)
    clone = pickle.loads(state)
    assert b"S3FileSystem" not in state
    assert b"aiobotocore" not in state
    clone.write_text(f"{bucket}/b.txt", "from a worker")
    assert st.read_text(f"{bucket}/b.txt") == "from a worker"
    assert clone.read_text(f"{bucket}/a.txt") == "from the driver"


def test_config_credentials_and_anonymous_reads(s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, bucket = s3_bucket
    Storage(cfg).write_text(f"{bucket}/private.txt", "members only")
    Storage(cfg).write_text(f"{bucket}/public.txt", "open data")
    _admin(cfg.endpoint_url).put_object_acl(
        Bucket=bucket.removeprefix("s3://"), Key="public.txt", ACL="public-read"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match=r"cannot read .*public.txt: NoCredentialsError"):
        Storage(StorageConfig(endpoint_url=cfg.endpoint_url, region=cfg.region)).read_text(
            f"{bucket}/public.txt"
        )
    keyed = StorageConfig(
        endpoint_url=cfg.endpoint_url,
        region=cfg.region,
        access_key_id="cfg-key-id",
        secret_access_key="cfg-secret",
    )
    assert Storage(keyed).read_text(f"{bucket}/private.txt") == "members only"
    anon = Storage(StorageConfig(endpoint_url=cfg.endpoint_url, region=cfg.region, anonymous=True))
    assert anon.read_text(f"{bucket}/public.txt") == "open data"
    with pytest.raises(StoragePermissionError, match=r"private\.txt"):
        anon.read_text(f"{bucket}/private.txt")  # unsigned requests cannot read a private object


def test_half_given_credentials_are_rejected() -> None:
    with pytest.raises(ValueError, match="access_key_id and secret_access_key must be given together"):
        Storage(StorageConfig(access_key_id="only-the-id"))
