"""Object-storage faults against a real moto S3 server behind a fault proxy (no Ray).

The server goes away mid-read and mid-write, answers 503 SlowDown, or is slow: reads and writes retry a
bounded
number of times, then fail with a ``StorageError`` naming the URI; a later run, with the server back,
completes.
Checkpoints, feature-cache shards + index, manifests and reports are never read as valid when half written:
each either loads completely or raises.
"""

from __future__ import annotations

import io
import json
import os
import time

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fault_helpers import ProxiedBucket
from s3proxy import CUT_REQUEST, CUT_RESPONSE, PASS, REFUSE, SLOW_DOWN, Request

from vidret.data.annotations.manifest import MANIFEST_SCHEMA, read_manifest, write_manifest
from vidret.eval.report import write_report
from vidret.features import store as cache
from vidret.layout import checkpoint_exists
from vidret.model.checkpoint import CheckpointError, load_state, save_state
from vidret.storage import Storage, StorageError, StorageNotFoundError, join

pytestmark = pytest.mark.s3

ATTEMPTS = 3  # max_retries=2 in the proxied bucket's StorageConfig


def _objects(pb: ProxiedBucket) -> dict[str, bytes]:
    """What the server really holds (read around the proxy)."""
    client = boto3.client("s3", endpoint_url=pb.direct.endpoint_url, region_name=pb.direct.region)
    bucket = pb.root.removeprefix("s3://")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _put_direct(pb: ProxiedBucket, uri: str, data: bytes) -> None:
    Storage(pb.direct).write_bytes(uri, data)


def _first_n(n: int, action: str, method: str, contains: str = ""):
    """A policy applying ``action`` to the first ``n`` matching requests, then passing everything."""
    hits = {"n": 0}

    def policy(req: Request) -> str:
        if req.method == method and contains in req.path and hits["n"] < n:
            hits["n"] += 1
            return action
        return PASS

    return policy


# -- reads and writes ------------------------------------------------------------------------------------
def test_server_down_read_and_write_give_bounded_retries_then_error_naming_uri(
    proxied_bucket: ProxiedBucket, faults, caplog: pytest.LogCaptureFixture
) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    uri = join(pb.root, "data", "blob.bin")
    payload = os.urandom(200_000)
    st.write_bytes(uri, payload)
    faults.inject("storage", "S3 server down during read and write")
    pb.proxy.down()
    caplog.set_level("WARNING", logger="vidret.storage")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=rf"cannot read {uri}:.*gave up after {ATTEMPTS} attempts"):
        st.read_bytes(uri)
    with pytest.raises(
        StorageError, match=rf"cannot write {join(pb.root, 'new.bin')}:.*after {ATTEMPTS} attempts"
    ):
        st.write_bytes(join(pb.root, "new.bin"), b"x")
    assert time.monotonic() - t0 < 10, "retries are bounded: two calls with 2 retries each"
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 * (ATTEMPTS - 1), retries
    pb.proxy.up()  # restart: the same calls now succeed and nothing half-written exists
    assert st.read_bytes(uri) == payload
    assert "new.bin" not in _objects(pb)
    st.write_bytes(join(pb.root, "new.bin"), b"x")
    assert _objects(pb)["new.bin"] == b"x"


def test_connection_cut_mid_read_is_retried_and_never_returns_partial_bytes(
    proxied_bucket: ProxiedBucket, faults
) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    uri = join(pb.root, "video.bin")
    payload = os.urandom(300_000)
    st.write_bytes(uri, payload)
    faults.inject("storage", "connection dropped mid-read once (whole-object and streamed reads)")
    pb.proxy.policy = _first_n(1, CUT_RESPONSE, "GET")
    assert st.read_bytes(uri) == payload
    pb.proxy.policy = _first_n(1, CUT_RESPONSE, "GET")
    with st.open_read(uri) as f:
        f.seek(1000)
        assert f.read(50_000) == payload[1000:51_000]
    faults.inject("storage", "connection dropped mid-read on every attempt")
    pb.proxy.policy = lambda req: CUT_RESPONSE if req.method == "GET" else PASS
    with pytest.raises(
        StorageError, match=rf"cannot read {uri}:.*ClientPayloadError.*after {ATTEMPTS} attempts"
    ):
        st.read_bytes(uri)
    assert pb.proxy.count("GET", "video.bin") >= 2 + ATTEMPTS


def test_connection_cut_mid_write_leaves_no_object_then_retry_completes(
    proxied_bucket: ProxiedBucket, faults
) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    uri = join(pb.root, "out", "shard.bin")
    payload = os.urandom(250_000)
    faults.inject("storage", "connection dropped mid-upload on every attempt")
    pb.proxy.policy = lambda req: CUT_REQUEST if req.method == "PUT" else PASS
    with pytest.raises(StorageError, match=rf"cannot write {uri}:.*after {ATTEMPTS} attempts"):
        st.write_bytes(uri, payload)
    # bounded: aiohttp itself resends once a request that died on a reused keep-alive connection
    assert ATTEMPTS <= pb.proxy.count("PUT", "shard.bin") <= 2 * ATTEMPTS
    assert "out/shard.bin" not in _objects(pb), "a half-uploaded object appeared"
    faults.inject("storage", "connection dropped mid-upload once")
    pb.proxy.policy = _first_n(1, CUT_REQUEST, "PUT")
    with st.atomic_write(uri) as f:
        f.write(payload)
    assert _objects(pb)["out/shard.bin"] == payload


def test_throttling_and_a_slow_server_are_survived(proxied_bucket: ProxiedBucket, faults) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    uri = join(pb.root, "t.json")
    faults.inject("storage", "503 SlowDown on the first two attempts")
    pb.proxy.policy = _first_n(2, SLOW_DOWN, "PUT")
    st.write_text(uri, '{"a": 1}')
    pb.proxy.policy = _first_n(2, SLOW_DOWN, "GET")
    assert json.loads(st.read_text(uri)) == {"a": 1}
    faults.inject("storage", "every request delayed by 0.3 s")
    pb.proxy.policy = lambda req: 0.3
    assert st.read_text(uri) == '{"a": 1}'
    faults.inject("storage", "503 SlowDown on every attempt")
    pb.proxy.policy = lambda req: SLOW_DOWN
    with pytest.raises(StorageError, match=rf"cannot read {uri}:.*after {ATTEMPTS} attempts"):
        st.read_text(uri)


# -- checkpoints -----------------------------------------------------------------------------------------
def _state(v: float) -> dict:
    return {
        "model": {"w": torch.full((64, 64), v), "b": torch.arange(8.0) * v},
        "step": int(v),
        "key": f"k{v}",
    }


def _same(a: dict, b: dict) -> bool:
    return a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_checkpoint_upload_interrupted_is_never_loaded_and_reupload_works(
    proxied_bucket: ProxiedBucket, faults
) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    uri = join(pb.root, "run", "checkpoints", "discrimination")
    save_state(uri, _state(1.0), st)
    assert _same(load_state(uri, st), _state(1.0))
    corrupted = 0
    faults.inject("storage", "server gone between state.pt and meta.json of a checkpoint overwrite")
    pb.proxy.policy = lambda req: REFUSE if req.method == "PUT" and req.key.endswith("meta.json") else PASS
    with pytest.raises(StorageError, match=r"meta\.json"):
        save_state(uri, _state(2.0), st)
    pb.proxy.policy = lambda req: PASS
    assert not checkpoint_exists(uri, st), "an incomplete checkpoint is visible"
    try:
        loaded = load_state(uri, st)
        corrupted += 1  # anything loaded here is old meta over new state or similar
        pytest.fail(f"an incomplete checkpoint loaded (step {loaded.get('step')})")
    except StorageNotFoundError as exc:
        assert "meta.json" in str(exc)
        assert uri in str(exc)
    faults.inject("storage", "checkpoint state.pt truncated on the server")
    save_state(uri, _state(3.0), st)
    full = _objects(pb)["run/checkpoints/discrimination/state.pt"]
    _put_direct(pb, join(uri, "state.pt"), full[: len(full) // 2])
    with pytest.raises(CheckpointError, match=r"state\.pt: \d+ bytes, meta\.json says"):
        load_state(uri, st)
    faults.loss(checkpoints_corrupted=corrupted)
    save_state(uri, _state(4.0), st)  # the re-run completes the checkpoint
    assert _same(load_state(uri, st), _state(4.0))


# -- feature cache ---------------------------------------------------------------------------------------
V, T = 6, 12  # videos, captions of a tiny split


def _texts(lo: int, hi: int) -> dict[str, np.ndarray]:
    rows = np.arange(lo, hi)
    return {
        "text": np.random.default_rng(lo).standard_normal((hi - lo, 4, 8)).astype(np.float32),
        "video_index": rows // 2,
        "caption_row": rows,
    }


def _videos(lo: int, hi: int) -> dict[str, np.ndarray]:
    rows = np.arange(lo, hi)
    return {
        "video": np.random.default_rng(100 + lo).standard_normal((hi - lo, 3, 8)).astype(np.float32),
        "video_index": rows,
        "ok": np.ones(hi - lo, bool),
    }


def _write_split(st: Storage, uri: str) -> dict:
    tw, vw = cache.ShardWriter(st, uri, "texts", rows_per_shard=4), cache.ShardWriter(st, uri, "videos", 2)
    for lo in range(0, T, 3):
        tw.add(_texts(lo, lo + 3))
    for lo in range(0, V, 2):
        vw.add(_videos(lo, lo + 2))
    return cache.write_index(
        st, uri, {"split": "test", "video_ids": [f"v{i}" for i in range(V)]}, tw.close(), vw.close()
    )


def _rows(st: Storage, uri: str, index: dict, kind: str, key: str) -> np.ndarray:
    parts = list(cache._load_shards(st, uri, index[kind]))
    return np.concatenate([p[key] for p in parts])


def test_feature_cache_split_interrupted_is_invalid_then_rebuilt_complete(
    proxied_bucket: ProxiedBucket, faults
) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    uri = join(pb.root, "run", "features", "abc", "test")
    faults.inject("storage", "server down after the first video shard of a feature-cache split")
    pb.proxy.policy = lambda req: REFUSE if req.method == "PUT" and "videos-00001" in req.path else PASS
    with pytest.raises(StorageError, match=r"videos-00001\.npz"):
        _write_split(st, uri)
    assert "run/features/abc/test/videos-00000.npz" in _objects(pb)  # some shards are there ...
    assert cache.read_index(st, uri) is None  # ... but without index.json the split is not valid
    with pytest.raises(ValueError, match=rf"{uri}: no complete feature cache"):
        cache.read_index(st, uri) or cache.load_split(st, uri)
    pb.proxy.policy = lambda req: PASS
    index = _write_split(st, uri)  # the re-run rebuilds the split
    assert cache.read_index(st, uri) == index
    videos = _rows(st, uri, index, "videos", "video_index")
    captions = _rows(st, uri, index, "texts", "caption_row")
    lost = (V - len(set(videos.tolist()))) + (T - len(set(captions.tolist())))
    faults.loss(rows_lost=lost)
    assert sorted(videos.tolist()) == list(range(V))
    assert sorted(captions.tolist()) == list(range(T))
    faults.inject("storage", "a feature shard truncated on the server after the index was written")
    shard = index["videos"][1]["name"]
    _put_direct(pb, join(uri, shard), _objects(pb)[f"run/features/abc/test/{shard}"][:100])
    with pytest.raises(ValueError, match=rf"{shard}: 100 bytes, index says"):
        _rows(st, uri, index, "videos", "video_index")
    faults.inject("storage", "a feature shard missing after the index was written")
    Storage(pb.direct).delete(join(uri, shard))
    assert cache.read_index(st, uri) is None


# -- manifests and reports -------------------------------------------------------------------------------
def _manifest(n: int) -> pa.Table:
    return pa.table(
        {
            "video_id": [f"v{i}" for i in range(n)],
            "video_uri": [f"s3://b/v{i}.mp4" for i in range(n)],
            "captions": [[f"caption {i}"] for i in range(n)],
            "start": [None] * n,
            "end": [None] * n,
            "split": ["test"] * n,
            "dataset": ["custom"] * n,
        },
        schema=MANIFEST_SCHEMA,
    )


def test_manifest_write_interrupted_is_absent_and_a_truncated_one_is_refused(
    proxied_bucket: ProxiedBucket, faults
) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    uri = join(pb.root, "manifest", "test.parquet")
    faults.inject("storage", "connection dropped mid-upload of a manifest")
    pb.proxy.policy = lambda req: CUT_REQUEST if req.method == "PUT" else PASS
    with pytest.raises(StorageError, match=rf"cannot write {uri}"):
        write_manifest(_manifest(50), uri, st)
    pb.proxy.policy = lambda req: PASS
    with pytest.raises(StorageNotFoundError, match=rf"not found: {uri}"):
        read_manifest(uri, st)
    faults.inject("storage", "a truncated manifest object on the server")
    buf = io.BytesIO()
    pq.write_table(_manifest(50), buf)
    _put_direct(pb, uri, buf.getvalue()[:-200])
    with pytest.raises(ValueError, match=rf"{uri}: not a readable Parquet manifest"):
        read_manifest(uri, st)
    write_manifest(_manifest(50), uri, st)  # the re-run
    table = read_manifest(uri, st)
    faults.loss(rows_lost=50 - table.num_rows)
    assert table.column("video_id").to_pylist() == [f"v{i}" for i in range(50)]


def test_report_write_interrupted_leaves_no_partial_report(proxied_bucket: ProxiedBucket, faults) -> None:
    pb, st = proxied_bucket, Storage(proxied_bucket.storage)
    out = join(pb.root, "run", "eval", "generation")
    metrics = {"stage 1": {"t2v": {"R1": 10.0, "R5": 50.0}, "v2t": {"R1": 12.0, "R5": 40.0}}}
    kwargs = {
        "metrics": metrics,
        "ranks": {},
        "samples": [],
        "thumbnails": {},
        "title": "t",
        "config_yaml": "a: 1\n",
    }
    faults.inject("storage", "connection dropped mid-upload of report.html on every attempt")
    pb.proxy.policy = lambda req: CUT_REQUEST if req.method == "PUT" and "report.html" in req.path else PASS
    with pytest.raises(StorageError, match=rf"cannot write {join(out, 'report.html')}"):
        write_report(out, st, **kwargs)
    held = _objects(pb)
    assert "run/eval/generation/report.html" not in held
    assert json.loads(held["run/eval/generation/metrics.json"]) == metrics  # written first, complete
    pb.proxy.policy = lambda req: PASS
    uri = write_report(out, st, **kwargs)
    assert st.read_text(uri).rstrip().endswith("</html>")
