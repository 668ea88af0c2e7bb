"""`vidret check` and `vidret prepare` orchestration on a real local Ray instance (and moto S3)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from vidret.config import Config, DataConfig
from vidret.data.annotations.manifest import MANIFEST_SCHEMA, read_manifest, write_manifest
from vidret.data.check import TooManyBadVideosError
from vidret.data.executors import run_check, run_prepare
from vidret.data.video import decode_video, probe
from vidret.storage import Storage, join

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.ray]

DATA = DataConfig(size=32, max_frames=4, decoder="pyav", rows_per_block=2)


def _manifest(rows: list[tuple[str, str, float | None, float | None]], split: str) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "video_id": [r[0] for r in rows],
            "video_uri": [r[1] for r in rows],
            "captions": [[f"caption of {r[0]}"] for r in rows],
            "start": [r[2] for r in rows],
            "end": [r[3] for r in rows],
            "split": [split] * n,
            "dataset": ["custom"] * n,
        },
        schema=MANIFEST_SCHEMA,
    )


def test_check_counts_failures_by_reason_and_writes_the_summary(small_corpus, tmp_path: Path) -> None:
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 200)
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = small_corpus["manifest"].cast(MANIFEST_SCHEMA)
    bad = _manifest(
        [
            ("g", str(tmp_path / "garbage.mp4"), None, None),
            ("e", str(tmp_path / "empty.mp4"), None, None),
            ("m", str(tmp_path / "missing.mp4"), None, None),
        ],
        "all",
    )
    uri = str(tmp_path / "manifest" / "all.parquet")
    write_manifest(pa.concat_tables([good, bad]), uri, Storage())
    cfg = Config(data=DataConfig(**{**DATA.__dict__, "max_bad_fraction": 0.1}))
    summary = run_check(cfg, uri)
    assert (summary["total"], summary["ok"], summary["failed"]) == (good.num_rows + 3, good.num_rows, 3)
    assert summary["by_reason"]["corrupt"] == 2
    assert summary["by_reason"]["missing"] == 1
    assert summary["by_reason"]["timeout"] == 0
    assert {f["video_id"] for f in summary["failures"]} == {"g", "e", "m"}
    assert summary["within_budget"] is False  # 3 of 15 > 10 %
    assert json.loads(Path(uri + ".check.json").read_text()) == summary


def _clip(
    path: Path, *, w: int = 64, h: int = 48, fps: int = 10, frames: int = 20, rotation: float | None = None
) -> str:
    """An H.264 clip whose frame i has a bright bar at column 3*i and a red top-left corner."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            img = np.full((h, w, 3), 40, np.uint8)
            img[:, (3 * i) % w : (3 * i) % w + 4] = 220
            img[:8, :8] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


@pytest.mark.s3
def test_prepare_transcodes_resumes_and_reports_bad_sources(tmp_path: Path, s3_bucket) -> None:
    storage_cfg, bucket = s3_bucket
    src = tmp_path / "src"
    src.mkdir()
    wide = _clip(src / "wide.mp4")
    turned = _clip(src / "turned.mp4", rotation=-90.0)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    manifests = tmp_path / "manifest"
    write_manifest(
        _manifest([("wide", wide, 0.5, 1.5), ("broken", str(src / "broken.mp4"), None, None)], "train"),
        str(manifests / "train.parquet"),
        Storage(),
    )
    write_manifest(
        _manifest([("turned", turned, None, None)], "test"), str(manifests / "test.parquet"), Storage()
    )
    out = join(bucket, "prepared")
    data = DataConfig(
        **{
            **DATA.__dict__,
            "manifest": str(manifests),
            "prepare_out": out,
            "prepare_fps": 4.0,
            "prepare_short_side": 32,
            "max_bad_fraction": 0.5,
        }
    )
    cfg = Config(storage=storage_cfg, data=data)

    first = run_prepare(cfg)
    assert (first["transcoded"], first["skipped"], first["failed"]) == (2, 0, 1)
    assert [(f["video_uri"], f["reason"]) for f in first["failures"]] == [
        (str(src / "broken.mp4"), "corrupt")
    ]
    assert first["splits"]["train"] == {"rows": 1, "dropped": ["broken"]}

    storage = Storage(storage_cfg)
    train = read_manifest(join(out, "manifest", "train.parquet"), storage).to_pylist()
    test = read_manifest(join(out, "manifest", "test.parquet"), storage).to_pylist()
    assert [(r["video_id"], r["start"], r["end"]) for r in train] == [("wide", 0.5, 1.5)]
    assert train[0]["video_uri"] == join(out, "videos", "wide.mp4")
    for row, shown in ((train[0], (42, 32)), (test[0], (32, 42))):  # 64x48 -> short side 32, long 42 (even)
        blob = storage.read_bytes(row["video_uri"])
        info = probe(blob)
        assert (info["width"], info["height"]) == shown
        assert info["rotation"] == 0
        assert info["fps"] == pytest.approx(4.0)
        assert info["num_frames"] == 8
        with av.open(io.BytesIO(blob)) as container:
            assert len(container.streams.audio) == 0
            keys = [p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size]
        assert [i for i, k in enumerate(keys) if k] == [0, 4]  # one keyframe per second
    upright, _ = decode_video(blob, max_frames=1, framerate=1.0, size=32)
    source, _ = decode_video(turned, max_frames=1, framerate=1.0, size=32)
    assert np.abs(upright.astype(int) - source).mean() < 12  # same picture, the same way up

    second = run_prepare(cfg)
    assert (second["transcoded"], second["skipped"], second["failed"]) == (0, 2, 1)

    strict = Config(storage=storage_cfg, data=DataConfig(**{**data.__dict__, "max_bad_fraction": 0.0}))
    with pytest.raises(TooManyBadVideosError, match=r"broken\.mp4") as info:
        run_prepare(strict)
    assert info.value.what == "prepare"


# The clips of ../shared/data/real-videos that no back end decodes, and why (PyAV 18 / FFmpeg 8, decord 0.6).
REAL_FAILURES = {
    "bbb_1ch_8kHz_aac_lc.m4a": "no_video_stream",  # audio-only M4A
    "sample_audio_only.mp4": "no_video_stream",  # audio-only MP4
    "invalid-bitstream.webm": "corrupt",  # 51 of 52 VP9 packets fail to decode
}


@pytest.mark.slow
def test_check_over_the_real_clips_reports_the_known_failures(shared_dir: Path, tmp_path: Path) -> None:
    import csv
    import shutil

    from vidret.data.annotations.manifest import build_manifest
    from vidret.data.check import verdict_lines

    source = shared_dir / "data" / "real-videos"
    if not (source / "MANIFEST.csv").is_file():
        pytest.skip(f"{source / 'MANIFEST.csv'} is missing")
    names = [row["file"] for row in csv.DictReader((source / "MANIFEST.csv").open())]
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in names:  # never read in place: copies only
        shutil.copyfile(source / name, videos / name)
    table = tmp_path / "anns.csv"
    table.write_text("video,caption\n" + "".join(f"{n},a clip\n" for n in names))
    storage = Storage()
    result = build_manifest("custom", str(table), str(videos), "all", storage)
    assert result.table.num_rows == 30  # sample.mp4/.avi/.flv keep distinct ids
    uri = str(tmp_path / "manifest" / "all.parquet")
    write_manifest(result, uri, storage)
    data = DataConfig(size=32, max_frames=4, framerate=4.0, rows_per_block=2, max_bad_fraction=0.1)
    summary = run_check(Config(data=data), uri)
    got = {Path(f["video_uri"]).name: f["reason"] for f in summary["failures"]}
    assert got == REAL_FAILURES
    assert summary["within_budget"]
    assert verdict_lines(summary, uri)[-1].startswith(
        "3 of 30 videos failed (10% <= max_bad_fraction 10%): no_video_stream 2, corrupt 1"
    )
