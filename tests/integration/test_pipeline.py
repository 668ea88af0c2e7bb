"""The Ray Data pipeline on a real local Ray instance: shapes, every video once, captions tokenised,
S3-streamed decoding, bad videos skipped and counted, the bad-video budget enforced."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vidret.config import DataConfig
from vidret.data import pipeline
from vidret.data.annotations.manifest import MANIFEST_SCHEMA
from vidret.data.batches import MODEL_COLUMNS, SplitRows, split_rows
from vidret.data.check import TooManyBadVideosError
from vidret.data.pipeline import build_dataset, check_bad_fraction, check_bad_fractions, iter_numpy_batches
from vidret.data.tokenizer import ClipTokenizer
from vidret.data.video import decode_with_config
from vidret.storage import Storage, join

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.ray]

CFG = DataConfig(
    size=32,
    max_frames=4,
    max_words=16,
    decoder="pyav",
    rows_per_block=2,
    decode_concurrency=2,
    max_bad_fraction=0.0,
)


def _collect(built, total: int, cfg: DataConfig = CFG, batch_size: int = 5) -> dict[str, np.ndarray]:
    ds, log = built
    batches = list(iter_numpy_batches(ds, batch_size, log=log, total=total, cfg=cfg))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _with_bad_rows(manifest: pa.Table, tmp_path: Path) -> tuple[pa.Table, dict[str, str]]:
    """The manifest plus a corrupt, a zero-byte and a missing video; returns it and {uri: expected reason}."""
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"definitely not an mp4 " * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.mp4"
    bad = {str(garbage): "corrupt", str(empty): "corrupt", str(missing): "missing"}
    extra = pa.table(
        {
            "video_id": [f"bad{i}" for i in range(3)],
            "video_uri": list(bad),
            "captions": [["a bad video"]] * 3,
            "start": [None] * 3,
            "end": [None] * 3,
            "split": ["all"] * 3,
            "dataset": ["synthetic"] * 3,
        },
        schema=MANIFEST_SCHEMA,
    )
    return pa.concat_tables([manifest.cast(MANIFEST_SCHEMA), extra]), bad


def test_every_video_once_with_model_columns_and_exact_frames(small_corpus) -> None:
    manifest = small_corpus["manifest"]
    rows = split_rows(manifest, "all", pairs=False)
    got = _collect(build_dataset(rows, CFG, Storage()), rows.num_videos)
    n = manifest.num_rows
    assert set(got) == set(MODEL_COLUMNS)
    assert got["video"].shape == (n, 4, 32, 32, 3)
    assert got["video"].dtype == np.uint8
    assert got["video_mask"].shape == (n, 4)
    assert got["video_mask"].dtype == np.int64
    assert got["text_ids"].shape == (n, 16)
    assert got["text_mask"].dtype == np.int64
    assert sorted(got["video_index"].tolist()) == list(range(n))
    uris = manifest.column("video_uri").to_pylist()
    captions = manifest.column("captions").to_pylist()
    ids, mask = ClipTokenizer()([c[0] for c in captions], 16)
    order = np.argsort(got["video_index"])
    np.testing.assert_array_equal(got["text_ids"][order], ids)
    np.testing.assert_array_equal(got["text_mask"][order], mask)
    for i in (0, n - 1):  # the pipeline's frames are the decoder's frames, row by row
        frames, fmask = decode_with_config(uris[i], CFG, uri=uris[i])
        np.testing.assert_array_equal(got["video"][order][i], frames)
        np.testing.assert_array_equal(got["video_mask"][order][i], fmask)


def test_pairs_mode_tokenises_every_caption_once(small_corpus) -> None:
    manifest = small_corpus["manifest"]
    rows = split_rows(manifest, "all", pairs=True)
    got = _collect(build_dataset(rows, CFG, Storage(), shuffle_seed=3), rows.num_videos)
    captions = manifest.column("captions").to_pylist()
    assert Counter(got["video_index"].tolist()) == {i: len(c) for i, c in enumerate(captions)}
    assert sum(len(c) for c in captions) > manifest.num_rows  # the train videos carry several captions
    ids, _ = ClipTokenizer()([c for caps in captions for c in caps], 16)
    owner = [v for v, caps in enumerate(captions) for _ in caps]
    want = Counter((v, tuple(row)) for v, row in zip(owner, ids.tolist(), strict=True))
    assert (
        Counter((int(v), tuple(t)) for v, t in zip(got["video_index"], got["text_ids"].tolist(), strict=True))
        == want
    )


@pytest.mark.s3
def test_decodes_videos_streamed_from_s3(small_corpus, s3_bucket) -> None:
    storage_cfg, bucket = s3_bucket
    storage = Storage(storage_cfg)
    manifest = small_corpus["manifest"].slice(0, 4)
    uris = []
    for local in manifest.column("video_uri").to_pylist():
        uri = join(bucket, "videos", Path(local).name)
        storage.write_bytes(uri, Path(local).read_bytes())
        uris.append(uri)
    remote = manifest.set_column(1, "video_uri", pa.array(uris, pa.string()))
    got = _collect(build_dataset(split_rows(remote, "all", pairs=False), CFG, storage, tokenize=False), 4)
    assert set(got) == {"video", "video_mask", "video_index"}
    order = np.argsort(got["video_index"])
    for i, local in enumerate(manifest.column("video_uri").to_pylist()):
        np.testing.assert_array_equal(got["video"][order][i], decode_with_config(local, CFG)[0])


def test_bad_videos_are_skipped_and_reported(small_corpus, tmp_path: Path) -> None:
    table, bad = _with_bad_rows(small_corpus["manifest"], tmp_path)
    cfg = DataConfig(**{**CFG.__dict__, "max_bad_fraction": 0.25})  # 3 of 15 = 0.2
    rows = split_rows(table, "all", pairs=False)
    ds, log = build_dataset(rows, cfg, Storage())
    got = _collect((ds, log), rows.num_videos, cfg)
    assert sorted(got["video_index"].tolist()) == list(range(small_corpus["manifest"].num_rows))
    report = check_bad_fraction(log, rows.num_videos, cfg)
    assert report["bad"] == bad
    assert report["seen"] == table.num_rows


def test_bad_videos_over_worker_shards_count_once_against_the_videos(small_corpus, tmp_path: Path) -> None:
    """Stage 1 gives each training worker its own shard of one split: a bad video read on two shards is one
    bad video, and the budget is a fraction of the split's videos (not of its caption rows)."""
    table, bad = _with_bad_rows(small_corpus["manifest"], tmp_path)
    rows = split_rows(table, "all", pairs=False)
    n_good, (garbage, _, missing) = small_corpus["manifest"].num_rows, list(bad)
    uri_at = {u: i for i, u in enumerate(rows.table.column("video_uri").to_pylist())}
    shards = [
        list(range(0, 6)) + [uri_at[u] for u in bad],
        [*list(range(6, n_good)), uri_at[garbage], uri_at[missing]],
    ]
    cfg = DataConfig(**{**CFG.__dict__, "max_bad_fraction": 0.25})  # budget floor(15 * 0.25) = 3 videos
    logs = []
    for idx, n_bad in zip(shards, (3, 2), strict=True):
        shard = SplitRows(table=rows.table.take(pa.array(idx)), num_videos=rows.num_videos)
        ds, log = build_dataset(shard, cfg, Storage(), tokenize=False, drop_bad=False)
        assert (~_collect((ds, log), rows.num_videos, cfg)["ok"]).sum() == n_bad
        logs.append(log)
    report = check_bad_fractions(logs, rows.num_videos, cfg)  # 5 failed rows, 3 distinct videos: within
    assert report["bad"] == bad
    assert len(report["failures"]) == 3
    assert report["seen"] == sum(map(len, shards))
    assert report["total"] == rows.num_videos == 15
    assert report["bad_fraction"] == pytest.approx(3 / 15)
    # one video fewer in the budget fails, listing all three
    with pytest.raises(TooManyBadVideosError) as info:
        check_bad_fractions(logs, rows.num_videos, DataConfig(**{**cfg.__dict__, "max_bad_fraction": 0.19}))
    assert info.value.bad == bad


def test_bad_rows_can_be_kept_with_ok_false(small_corpus, tmp_path: Path) -> None:
    table, _bad = _with_bad_rows(small_corpus["manifest"], tmp_path)
    cfg = DataConfig(**{**CFG.__dict__, "max_bad_fraction": 0.25})
    rows = split_rows(table, "all", pairs=False)
    got = _collect(build_dataset(rows, cfg, Storage(), drop_bad=False), rows.num_videos, cfg)
    order = np.argsort(got["video_index"])
    assert got["video_index"][order].tolist() == list(range(table.num_rows))
    n_good = small_corpus["manifest"].num_rows
    assert got["ok"][order].tolist() == [True] * n_good + [False] * 3
    assert not got["video"][order][n_good:].any()
    assert not got["video_mask"][order][n_good:].any()
    assert (got["text_mask"][order][n_good:, 0] == 1).all()  # captions of bad rows are still tokenised


def test_too_many_bad_videos_fails_listing_them(small_corpus, tmp_path: Path) -> None:
    table, bad = _with_bad_rows(small_corpus["manifest"], tmp_path)
    # budget floor(15 * 0.14) = 2 < 3
    cfg = DataConfig(**{**CFG.__dict__, "max_bad_fraction": 0.14})
    rows = split_rows(table, "all", pairs=False)
    with pytest.raises(TooManyBadVideosError) as info:
        _collect(build_dataset(rows, cfg, Storage()), rows.num_videos, cfg)
    assert info.value.bad == bad
    for uri in bad:
        assert uri in str(info.value)


def _kill_decode_actors() -> None:
    """Kill every decode actor still alive, so that a leaked one (a failure of the test below) cannot starve
    the session's later tests."""
    import ray
    from ray._private import state

    for actor_id, a in state.actors().items():
        if a.get("State") != "DEAD" and str(a.get("ActorClassName", "")).startswith("MapWorker"):
            ray._private.worker.global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)


# Without the dataset copy in stream_batches (docs/stack-notes.md P21), Ray Data 2.60 kept decode actors
# of failed passes alive: this test failed in 1 of 2 runs on the 2-core machine (earlier variants in 5 of 7,
# once until the next pass waited forever).
@pytest.mark.timeout(300)
@pytest.mark.slow
def test_repeated_pipelines_complete_and_leave_no_actor_behind(small_corpus, tmp_path: Path) -> None:
    """8 passes, every other one failing on its bad-video budget, with every error kept (as a log or a retry
    loop would): each completes, and no decode actor survives to hold CPUs the next pass's actors need."""
    import gc

    import ray

    from vidret.runtime import live_actors

    table, _bad = _with_bad_rows(small_corpus["manifest"], tmp_path)
    n_good = small_corpus["manifest"].num_rows
    # bad rows first: the pass fails while the other actor still decodes good rows, the case that leaked
    table = pa.concat_tables([table.slice(n_good), table.slice(0, n_good)])
    rows = split_rows(table, "all", pairs=False)
    good = split_rows(small_corpus["manifest"], "all", pairs=False)
    cfg = DataConfig(**{**CFG.__dict__, "decode_cpus": 0.5})  # 2 actors x 0.5 CPU on a 2-CPU instance
    kept: list[BaseException] = []
    try:
        for i in range(8):
            if i % 2:
                with pytest.raises(TooManyBadVideosError) as info:
                    _collect(build_dataset(rows, cfg, Storage(), tokenize=False), rows.num_videos, cfg)
                kept.append(info.value)
            else:
                got = _collect(build_dataset(good, cfg, Storage(), tokenize=False), good.num_videos, cfg)
                assert len(got["video_index"]) == good.num_videos
        gc.collect()
        decode_actors: list[dict[str, str]] = []
        for _ in range(60):  # actor exit is asynchronous: poll (bounded), no timing assertion
            decode_actors = [a for a in live_actors() if a["class"].startswith("MapWorker")]
            free = ray.available_resources().get("CPU", 0)
            if not decode_actors and free == ray.cluster_resources()["CPU"]:
                break
            time.sleep(0.5)
        assert decode_actors == []
        assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
        assert len(kept) == 4
    finally:
        kept.clear()
        _kill_decode_actors()


def test_a_pool_larger_than_the_cluster_fails_instead_of_hanging(small_corpus) -> None:
    rows = split_rows(small_corpus["manifest"], "all", pairs=False)
    cfg = DataConfig(**{**CFG.__dict__, "decode_concurrency": 8, "decode_cpus": 1.0})
    with pytest.raises(ValueError, match=r"data\.decode_concurrency=8 x data\.decode_cpus=1"):
        build_dataset(rows, cfg, Storage(), tokenize=False)


def test_each_decoded_batch_leaves_the_actor_as_its_own_block(small_corpus, monkeypatch) -> None:
    """Input blocks of 6 rows, one row per batch: without the block-size cap Ray Data coalesces a task's
    batches into one output block (memory then grows with the frame size), with it every batch is a block.
    The floor for small frames is lifted, so these 32 px batches behave as long clips' batches do."""
    monkeypatch.setattr(pipeline, "MIN_DECODED_BLOCK_BYTES", 0)
    manifest = small_corpus["manifest"].cast(MANIFEST_SCHEMA)
    table = pa.concat_tables([manifest] * 4)
    ids = [f"v{i}" for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("video_id"), "video_id", pa.array(ids))
    rows = split_rows(table, "all", pairs=False)
    cfg = DataConfig(**{**CFG.__dict__, "rows_per_block": 1, "decode_concurrency": 1})
    ds, _log = build_dataset(rows, cfg, Storage(), tokenize=False)
    assert ds.context.target_max_block_size == 4 * 32 * 32 * 3
    sizes = [m.num_rows for bundle in ds.iter_internal_ref_bundles() for m in bundle.metadata]
    assert sum(sizes) == table.num_rows == 48
    assert sizes == [1] * 48


def test_decoded_blocks_hold_one_long_clip_batch_or_the_floor() -> None:
    long_clips = DataConfig(size=224, max_frames=64, rows_per_block=4)  # configs/activitynet.yaml's shapes
    assert pipeline.decoded_block_bytes(long_clips) == 4 * 64 * 224 * 224 * 3  # 38.5 MB: one batch
    short_clips = DataConfig(size=224, max_frames=12, rows_per_block=4)  # 7.2 MB a batch
    assert pipeline.decoded_block_bytes(short_clips) == pipeline.MIN_DECODED_BLOCK_BYTES == 32 << 20
