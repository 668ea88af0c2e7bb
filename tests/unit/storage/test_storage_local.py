"""Local paths and file:// URIs: round trips, listing, atomic writes and clear errors."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from vidret.storage import Storage, StorageError, StorageNotFoundError


@pytest.fixture
def st() -> Storage:
    return Storage()


def test_bytes_and_text_round_trip_plain_path_and_file_uri(st: Storage, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 3
    plain = str(tmp_path / "deep" / "dir" / "blob.bin")  # parents do not exist yet
    st.write_bytes(plain, payload)
    assert st.read_bytes(plain) == payload
    assert st.read_bytes(f"file://{plain}") == payload  # the same file through a file:// URI

    uri = f"file://{tmp_path}/notes/ü.txt"
    st.write_text(uri, "héllo\nwörld")
    assert st.read_text(uri) == "héllo\nwörld"
    assert (tmp_path / "notes" / "ü.txt").read_bytes() == "héllo\nwörld".encode()


def test_overwrite_replaces_content_and_keeps_permissions(st: Storage, tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    st.write_text(str(p), "old content that is longer")
    os.chmod(p, 0o640)
    st.write_text(str(p), "new")
    assert p.read_text() == "new"
    assert p.stat().st_mode & 0o777 == 0o640


def test_new_files_get_umask_permissions_not_mkstemp_ones(st: Storage, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        st.write_bytes(str(tmp_path / "new.bin"), b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640


def test_open_read_is_seekable(st: Storage, tmp_path: Path) -> None:
    st.write_bytes(str(tmp_path / "v.bin"), b"0123456789")
    with st.open_read(f"file://{tmp_path}/v.bin") as f:
        f.seek(6)
        assert f.read(3) == b"678"
        assert f.tell() == 9


@pytest.mark.parametrize("existed", [False, True])
def test_interrupted_atomic_write_leaves_old_content_or_nothing(
    st: Storage, tmp_path: Path, existed: bool
) -> None:
    target = tmp_path / "out" / "result.json"
    if existed:
        st.write_text(str(target), "old")
    with pytest.raises(RuntimeError, match="midway"), st.atomic_write(str(target)) as f:
        f.write(b'{"partial": ')
        f.flush()
        raise RuntimeError("crashed midway")
    if existed:
        assert target.read_text() == "old"
    else:
        assert not target.exists()
    assert sorted(os.listdir(target.parent)) == (["result.json"] if existed else [])  # no temp files left


def test_atomic_write_streams_chunks(st: Storage, tmp_path: Path) -> None:
    with st.atomic_write(str(tmp_path / "big.bin")) as f:
        for i in range(5):
            f.write(bytes([i]) * 100_000)
    data = (tmp_path / "big.bin").read_bytes()
    assert len(data) == 500_000
    assert data[0] == 0
    assert data[-1] == 4


def test_list_is_recursive_sorted_and_keeps_the_prefix_form(st: Storage, tmp_path: Path) -> None:
    for rel in ["b/2.txt", "a.txt", "b/c/3.txt", "b/1.txt"]:
        st.write_text(str(tmp_path / "root" / rel), rel)
    root = tmp_path / "root"
    assert st.list(str(root)) == [str(root / r) for r in ["a.txt", "b/1.txt", "b/2.txt", "b/c/3.txt"]]
    assert st.list(f"file://{root}/b/") == [f"file://{root}/b/{r}" for r in ["1.txt", "2.txt", "c/3.txt"]]
    assert st.list(str(root / "a.txt")) == [str(root / "a.txt")]
    assert st.list(str(tmp_path / "missing")) == []


def test_list_relative_prefix(st: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    st.write_text("runs/x/m.json", "{}")
    assert st.list("runs") == ["runs/x/m.json"]


def test_exists_copy_delete(st: Storage, tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.bin"), f"file://{tmp_path}/copies/dst.bin"
    assert not st.exists(src)
    st.write_bytes(src, b"payload")
    assert st.exists(src)
    assert st.exists(str(tmp_path))
    st.copy(src, dst)
    assert st.read_bytes(dst) == b"payload"
    st.delete(src)
    assert not st.exists(src)
    assert st.exists(dst)
    with pytest.raises(StorageNotFoundError, match=re.escape(src)):
        st.delete(src)
    st.delete(src, missing_ok=True)
    st.delete(str(tmp_path / "copies"), recursive=True)
    assert not (tmp_path / "copies").exists()


def test_missing_file_is_a_not_found_error_naming_the_uri(st: Storage, tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/nope.bin"
    with pytest.raises(StorageNotFoundError) as err:
        st.read_bytes(uri)
    assert isinstance(err.value, FileNotFoundError)
    assert isinstance(err.value, StorageError)
    assert uri in str(err.value)
    assert err.value.uri == uri
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        st.open_read(uri)
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        st.copy(uri, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_unwritable_location_names_the_path(st: Storage, tmp_path: Path) -> None:
    # A regular file where a directory is needed fails even for root (chmod would not).
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file")
    target = str(blocker / "sub" / "x.bin")
    with pytest.raises(StorageError) as err:
        st.write_bytes(target, b"1")
    assert target in str(err.value)
    assert f"{blocker} exists and is not a directory" in str(err.value)
    with pytest.raises(StorageError, match="is not a directory"):
        st.makedirs(str(blocker / "d"))
    with pytest.raises(StorageError, match=re.escape(str(blocker / "x"))):
        st.read_bytes(str(blocker / "x"))
    assert blocker.read_text() == "I am a file"


def test_read_text_rejects_invalid_utf8_naming_the_uri(st: Storage, tmp_path: Path) -> None:
    st.write_bytes(str(tmp_path / "bad.txt"), b"ok\xff\xfe")
    with pytest.raises(ValueError, match=r"bad\.txt: expected UTF-8 text, byte 2"):
        st.read_text(str(tmp_path / "bad.txt"))


def test_pyarrow_fs_local_parquet_round_trip(
    st: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = st.pyarrow_fs("manifests/m.parquet")
    assert isinstance(fs, pyarrow.fs.LocalFileSystem)
    assert path == str(tmp_path / "manifests" / "m.parquet")
    st.makedirs("manifests")
    pq.write_table(pa.table({"video_id": ["v1", "v2"]}), path, filesystem=fs)
    with st.open_read("manifests/m.parquet") as f:
        assert pq.read_table(f).column("video_id").to_pylist() == ["v1", "v2"]


def test_storage_pickles_without_live_state(st: Storage, tmp_path: Path) -> None:
    st.write_text(str(tmp_path / "a.txt"), "x")
    clone = pickle.loads(pickle.dumps(st))
    assert clone.config == st.config
    assert clone.read_text(str(tmp_path / "a.txt")) == "x"
