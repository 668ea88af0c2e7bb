"""The pipeline's pure per-batch functions and the bad-video accounting, without Ray."""

from __future__ import annotations

import pickle
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from vidret.config import DataConfig
from vidret.data.annotations.manifest import MANIFEST_SCHEMA
from vidret.data.batches import augment_rows, decode_rows, split_rows
from vidret.data.check import (
    FAILURE_REASONS,
    TooManyBadVideosError,
    bad_budget,
    classify,
    enforce_budget,
    summarise,
    verdict_lines,
)
from vidret.data.video import DecodeError, decode_with_config
from vidret.storage import Storage, StorageError, StorageNotFoundError

CFG = DataConfig(size=32, max_frames=4, decoder="pyav", decode_timeout_s=30.0)


def _manifest() -> pa.Table:
    return pa.table(
        {
            "video_id": ["a", "b", "c"],
            "video_uri": ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"],
            "captions": [["a one", "a two"], ["b one"], ["c one", "c two", "c three"]],
            "start": [None, 1.0, None],
            "end": [None, 2.5, None],
            "split": ["train", "train", "test"],
            "dataset": ["custom"] * 3,
        },
        schema=MANIFEST_SCHEMA,
    )


def test_split_rows_pairs_and_videos() -> None:
    pairs = split_rows(_manifest(), "train", pairs=True)
    assert pairs.num_videos == 2
    assert pairs.table.column("caption").to_pylist() == ["a one", "a two", "b one"]
    assert pairs.table.column("video_index").to_pylist() == [0, 0, 1]
    assert pairs.table.column("caption_index").to_pylist() == [0, 1, 0]
    assert pairs.table.column("start").to_pylist() == [None, None, 1.0]
    videos = split_rows(_manifest(), "test", pairs=False)
    assert videos.table.column("caption").to_pylist() == ["c one"]
    assert videos.num_videos == 1
    with pytest.raises(ValueError, match=r"'val'.*test, train"):
        split_rows(_manifest(), "val", pairs=True)


def _clip(path: Path) -> str:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(16):
            img = np.full((64, 64, 3), 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


def test_decode_rows_marks_bad_rows_instead_of_raising(tmp_path: Path) -> None:
    good = _clip(tmp_path / "good.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 100)
    uris = np.array([good, str(tmp_path / "junk.mp4"), str(tmp_path / "gone.mp4"), good], dtype=object)
    batch = {
        "video_uri": uris,
        "start": np.array([None, None, None, 3.0], dtype=object),
        "end": np.array([None, None, None, 1.0], dtype=object),
        "video_index": np.arange(4),
    }
    out = decode_rows(batch, CFG, Storage())
    assert out["ok"].tolist() == [True, False, False, False]
    assert out["reason"].tolist() == ["", "corrupt", "missing", "invalid_row"]  # end < start
    assert out["video"].shape == (4, 4, 32, 32, 3)
    assert not out["video"][1:].any()
    np.testing.assert_array_equal(out["video"][0], decode_with_config(good, CFG)[0])
    assert out["video_index"].tolist() == [0, 1, 2, 3]


def _video_batch(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (n, 3, 16, 16, 3), dtype=np.uint8)
    video[:, 2] = 0  # a padding frame
    return {"video": video, "video_index": np.arange(n), "caption_index": np.zeros(n, np.int64)}


def test_augmentation_is_seeded_per_row_and_keeps_padding_zero() -> None:
    batch = _video_batch(4)
    a = augment_rows(batch, seed=1)["video"]
    assert a.shape == batch["video"].shape
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, augment_rows(batch, seed=1)["video"])
    single = augment_rows({k: v[2:3] for k, v in batch.items()}, seed=1)["video"]
    np.testing.assert_array_equal(a[2:3], single)  # independent of how rows are batched
    assert not np.array_equal(a, augment_rows(batch, seed=2)["video"])
    assert not np.array_equal(a, batch["video"])
    assert not a[:, 2].any()
    with pytest.raises(ValueError, match="seed"):
        augment_rows(batch, seed=-1)


def test_augmentation_of_a_horizontal_ramp_is_a_crop_or_its_mirror() -> None:
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], (16, 1, 3))
    batch = {"video": np.tile(ramp, (8, 2, 1, 1, 1)), "video_index": np.arange(8)}
    out = augment_rows(batch, seed=5)["video"].astype(int)
    for row in out:
        diffs = np.diff(row[0, 8, :, 0])
        assert (diffs >= -1).all() or (diffs <= 1).all()  # monotone either way: no scrambling
        np.testing.assert_array_equal(row[0], row[1])  # one crop for every frame of a clip


def test_budget_and_error_listing() -> None:
    assert bad_budget(100, 0.01) == 1
    assert bad_budget(15, 0.2) == 3
    assert bad_budget(7, 0.0) == 0
    enforce_budget({"s3://b/x.mp4": "corrupt"}, 100, 0.01)
    bad = {f"s3://b/{i}.mp4": "missing" for i in range(2)}
    with pytest.raises(
        TooManyBadVideosError, match=r"2 of 100 .*s3://b/0.mp4 \(missing\); s3://b/1.mp4"
    ) as info:
        enforce_budget(bad, 100, 0.01)
    again = pickle.loads(pickle.dumps(info.value))
    assert again.bad == bad
    assert str(again) == str(info.value)
    assert isinstance(again, ValueError)


def test_classify_and_summarise() -> None:
    assert classify(DecodeError("u", "timeout", "slow")) == ("timeout", "slow")
    assert classify(StorageNotFoundError("gone", "s3://b/k"))[0] == "missing"
    assert classify(StorageError("throttled", "s3://b/k"))[0] == "read_error"
    assert classify(ValueError("end < start"))[0] == "invalid_row"
    with pytest.raises(TypeError):
        classify(KeyError("x"))
    failures = [
        {"video_id": "b", "video_uri": "/v/b", "reason": "corrupt", "detail": ""},
        {"video_id": "a", "video_uri": "/v/a", "reason": "missing", "detail": ""},
    ]
    s = summarise(failures, 10, 0.1, manifest="m")
    assert (s["total"], s["ok"], s["failed"], s["bad_videos"], s["within_budget"]) == (10, 8, 2, 2, False)
    assert set(s["by_reason"]) == set(FAILURE_REASONS)
    assert s["by_reason"]["corrupt"] == 1
    assert [f["video_id"] for f in s["failures"]] == ["a", "b"]
    assert s["manifest"] == "m"


def test_verdict_groups_by_reason_with_one_example_each() -> None:
    failures = [
        {"video_id": "a", "video_uri": "/v/b.webm", "reason": "corrupt", "detail": "51 of 52 packets failed"},
        {"video_id": "b", "video_uri": "/v/a.m4a", "reason": "no_video_stream", "detail": "streams: audio"},
        {"video_id": "c", "video_uri": "/v/c.mp4", "reason": "no_video_stream", "detail": "streams: audio"},
    ]
    summary = summarise(failures, 8, 0.01)
    assert summary["examples"]["no_video_stream"] == {"video_uri": "/v/a.m4a", "detail": "streams: audio"}
    lines = verdict_lines(summary, "/x/check.json")
    assert lines[0] == "  no_video_stream: 2, e.g. /v/a.m4a (streams: audio)"
    assert lines[1] == "  corrupt: 1, e.g. /v/b.webm (51 of 52 packets failed)"
    assert lines[-1] == (
        "3 of 8 videos failed (38% > max_bad_fraction 1%): no_video_stream 2, corrupt 1"
        " - details in /x/check.json"
    )
    assert verdict_lines(summarise([], 4, 0.01), "s.json") == ["all 4 videos decoded - details in s.json"]
