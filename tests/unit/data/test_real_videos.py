"""Torture test: the 30 real clips of ``../shared/data/real-videos`` (codecs, containers, rotations, broken
files) described by its MANIFEST.csv. Every clip with a decodable video stream must give correctly shaped,
upright frames; the others one DecodeError with the reason in the table below.

Read-only use of /work/shared: clips are decoded in place (decoders only read) or read into bytes.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from vidret.data.video import DecodeError, decode_video, probe, upright_frame

_MANIFEST = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "real-videos" / "MANIFEST.csv"
ROWS: list[dict[str, str]] = list(csv.DictReader(_MANIFEST.open())) if _MANIFEST.is_file() else []

# The only clips no back end can decode, and why (verified with PyAV 18.1 / FFmpeg 8.1 and decord 0.6).
EXPECTED_FAILURES: dict[str, str] = {
    "bbb_1ch_8kHz_aac_lc.m4a": "no_video_stream",  # audio-only M4A
    "sample_audio_only.mp4": "no_video_stream",  # audio-only MP4
    "invalid-bitstream.webm": "corrupt",  # 51 of 52 VP9 packets fail to decode
}
# Decodable by PyAV but not by decord 0.6 (FFmpeg 4.1): `auto` must fall back for these.
DECORD_CANNOT: set[str] = {"hdr10-av1.mp4", "sample_av1.mp4", "sample_vvc.mp4", "sample_h262_mpeg_audio.ts"}
# Big frames (8K, 4K, 1080p HEVC 10-bit): a few seconds each on one core.
HEAVY: set[str] = {"8k24fps_300ms.mp4", "portrait_4k60.mp4", "sample_edit_list.mp4"}


def _params() -> list:
    if not ROWS:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{_MANIFEST} is missing"))]
    return [
        pytest.param(row, id=row["file"], marks=[pytest.mark.slow] if row["file"] in HEAVY else [])
        for row in ROWS
    ]


def _displayed_size(row: dict[str, str]) -> tuple[int, int]:
    width, height = (int(v) for v in row["resolution"].split("x"))
    rotation = int(float(row["rotation"])) if row["rotation"] else 0
    return (height, width) if rotation % 180 == 90 else (width, height)


def test_manifest_lists_thirty_clips_and_the_failure_table_matches_it(shared_dir: Path) -> None:
    files = {row["file"] for row in ROWS}
    assert len(files) == 30
    assert set(EXPECTED_FAILURES) <= files
    assert files >= DECORD_CANNOT
    no_video = {row["file"] for row in ROWS if row["video_codec"] == "(none)"}
    assert no_video == {f for f, r in EXPECTED_FAILURES.items() if r == "no_video_stream"}


@pytest.mark.parametrize("row", _params())
def test_clip_decodes_upright_or_fails_with_reason(row: dict[str, str], shared_dir: Path) -> None:
    path = shared_dir / "data" / "real-videos" / row["file"]
    t = time.perf_counter()
    if row["file"] in EXPECTED_FAILURES:
        with pytest.raises(DecodeError) as info:
            decode_video(str(path), max_frames=4, framerate=4.0, size=64, uri=f"real/{row['file']}")
        assert info.value.reason == EXPECTED_FAILURES[row["file"]]
        assert f"real/{row['file']}" in str(info.value)
        return
    # framerate 4 so sub-second clips give several frames (some open on a black frame)
    frames, mask = decode_video(str(path), max_frames=4, framerate=4.0, size=64, uri=row["file"])
    elapsed = time.perf_counter() - t
    assert frames.shape == (4, 64, 64, 3)
    assert frames.dtype == np.uint8
    n = int(mask.sum())
    assert n >= 1
    assert mask.tolist() == [1] * n + [0] * (4 - n)
    assert max(float(f.std()) for f in frames[:n]) > 1.0, "real frames must carry picture content"
    assert not frames[n:].any()
    # orientation: probe's displayed size and the upright first frame follow the manifest's rotation
    info = probe(str(path), uri=row["file"])
    assert (info["width"], info["height"]) == _displayed_size(row)
    if row["rotation"]:
        assert info["rotation"] == int(float(row["rotation"]))
    width, height = _displayed_size(row)
    if width * height <= 1920 * 1080:  # the upright full-size frame of 4K/8K clips costs seconds
        assert upright_frame(str(path), uri=row["file"]).shape == (height, width, 3)
    assert elapsed < 60


def test_decord_cannot_table_is_accurate(shared_dir: Path) -> None:
    folder = shared_dir / "data" / "real-videos"
    for name in sorted(DECORD_CANNOT):
        with pytest.raises(DecodeError):
            decode_video(str(folder / name), max_frames=2, framerate=1.0, size=32, decoder="decord")
        frames, mask = decode_video(str(folder / name), max_frames=3, framerate=4.0, size=32, decoder="pyav")
        assert mask[0] == 1
        assert max(float(f.std()) for f in frames) > 1.0


def test_rotate_and_reflect_is_the_transpose_of_the_plain_clip(shared_dir: Path) -> None:
    # the two files hold the same H.264 stream; only the display matrix (a transpose) differs
    folder = shared_dir / "data" / "real-videos"
    for decoder in ("pyav", "decord"):
        kw = {"max_frames": 2, "framerate": 1.0, "size": 96, "decoder": decoder}
        plain, _ = decode_video((folder / "sample.mp4").read_bytes(), **kw)
        mirrored, _ = decode_video((folder / "sample_rotate_and_reflect.mp4").read_bytes(), **kw)
        diff = np.abs(mirrored.astype(int) - plain.transpose(0, 2, 1, 3).astype(int))
        assert diff.mean() < 2.0, decoder
        assert np.abs(mirrored.astype(int) - np.rot90(plain, 3, axes=(1, 2)).astype(int)).mean() > 10.0


@pytest.mark.parametrize(
    "name",
    [
        "internal_emulator_transformer_output_270_rotated.mp4",
        "dolbyVision-hdr.MOV",
        "mv_with_2_top_shots.mp4",
    ],
)
def test_both_decoders_agree_on_rotated_clips(name: str, shared_dir: Path) -> None:
    source = (shared_dir / "data" / "real-videos" / name).read_bytes()
    a, ma = decode_video(source, max_frames=2, framerate=1.0, size=64, decoder="pyav")
    b, mb = decode_video(source, max_frames=2, framerate=1.0, size=64, decoder="decord")
    np.testing.assert_array_equal(ma, mb)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3.0


def test_header_over_reporting_frame_count_is_handled(shared_dir: Path) -> None:
    # sample.avi's header says 98 frames, the stream holds 96: the rule is re-applied to 96
    path = str(shared_dir / "data" / "real-videos" / "sample.avi")
    assert probe(path)["num_frames"] == 98
    frames, mask = decode_video(path, max_frames=12, framerate=4.0, size=32, decoder="pyav")
    assert mask.all()
    assert frames.std() > 1.0
