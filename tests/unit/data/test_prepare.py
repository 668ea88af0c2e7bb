"""Transcoding for `vidret prepare` without Ray: geometry, frame rate, keyframes, orientation, names,
resumability through the sidecar, and how bad sources are reported."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidret.data.video import DecodeError, decode_video, probe
from vidret.data.video.prepare import (
    PrepareSettings,
    output_names,
    output_size,
    plan_outputs,
    prepare_one,
    sidecar_uri,
    transcode,
)
from vidret.storage import Storage


def _clip(
    path: Path,
    *,
    w: int = 80,
    h: int = 60,
    fps: int = 30,
    frames: int = 45,
    rotation: float | None = None,
    gop: int = 250,
) -> Path:
    """H.264 clip; frame i is flat grey of level 5*i (so a frame's level names its index), red top-left."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "crf": "10"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            img = np.full((h, w, 3), 5 * i, np.uint8)
            img[:10, :10] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _levels_and_keys(path: Path) -> tuple[list[int], list[int]]:
    """Grey level of every frame (bottom-right pixel) and the indices of keyframes."""
    levels, keys = [], []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            levels.append(int(frame.to_ndarray(format="rgb24")[-1, -1].mean()))
            if frame.key_frame:
                keys.append(i)
    return levels, keys


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((320, 240), (298, 224)),
        ((240, 320), (224, 298)),
        ((224, 224), (224, 224)),
        ((100, 50), (448, 224)),
        ((1920, 1080), (398, 224)),
    ],
)
def test_output_size_keeps_aspect_with_even_sides(size: tuple[int, int], expected: tuple[int, int]) -> None:
    w, h = output_size(*size, 224)
    assert (w, h) == expected
    assert w % 2 == 0
    assert h % 2 == 0


def test_output_size_rejects_empty_frames() -> None:
    with pytest.raises(ValueError, match="0x10"):
        output_size(0, 10, 224)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="even"):
        PrepareSettings(short_side=225)
    with pytest.raises(ValueError, match="fps"):
        PrepareSettings(fps=0)
    assert PrepareSettings(fps=3.0).gop == 3
    assert PrepareSettings(fps=2.5).gop == 2


def test_output_names_are_unique_and_stable() -> None:
    uris = [
        "s3://b/a/video1.mp4",
        "s3://b/c/video1.avi",
        "/x/video2.mp4",
        "/x/we ird#name.mp4",
        "/x/video2.mp4",
    ]
    names = output_names(uris)
    assert len(names) == 4
    assert len(set(names.values())) == 4
    assert names["/x/video2.mp4"] == "video2.mp4"
    assert names["s3://b/a/video1.mp4"].startswith("video1-")
    assert names["s3://b/a/video1.mp4"].endswith(".mp4")
    assert " " not in names["/x/we ird#name.mp4"]
    assert "#" not in names["/x/we ird#name.mp4"]
    assert output_names(list(reversed(uris))) == names
    assert plan_outputs(["/x/video2.mp4"], "s3://bucket/prep") == {
        "/x/video2.mp4": "s3://bucket/prep/videos/video2.mp4"
    }


def test_transcode_resamples_to_the_target_rate_with_one_keyframe_per_second(tmp_path: Path) -> None:
    src = _clip(tmp_path / "src.mp4")  # 45 frames at 30 fps = 1.5 s
    out = tmp_path / "out.mp4"
    facts = transcode(str(src), str(out), PrepareSettings(short_side=32, fps=4.0), uri="src")
    info = probe(str(out))
    assert (info["width"], info["height"]) == (42, 32)
    assert (facts["width"], facts["height"]) == (42, 32)
    assert info["fps"] == pytest.approx(4.0)
    assert facts["frames"] == info["num_frames"] == 6
    levels, keys = _levels_and_keys(out)
    # output frame k shows the source frame on screen at k/4 s: source index floor(30 * k / 4)
    assert levels == pytest.approx([5 * int(30 * k / 4) for k in range(6)], abs=4)
    assert keys == [0, 4]


def test_transcode_repeats_frames_when_the_source_is_slower(tmp_path: Path) -> None:
    src = _clip(tmp_path / "slow.mp4", fps=2, frames=4)  # 2 s
    out = tmp_path / "out.mp4"
    transcode(str(src), str(out), PrepareSettings(short_side=32, fps=3.0), uri="slow")
    levels, keys = _levels_and_keys(out)
    assert levels == pytest.approx([0, 0, 5, 10, 10, 15], abs=4)
    assert keys == [0, 3]


def test_transcode_applies_the_rotation_to_the_pixels(tmp_path: Path) -> None:
    src = _clip(tmp_path / "rot.mp4", rotation=-90.0, frames=10)
    out = tmp_path / "out.mp4"
    transcode(src.read_bytes(), str(out), PrepareSettings(short_side=32, fps=3.0), uri="rot")
    info = probe(str(out))
    assert (info["width"], info["height"]) == (32, 42)
    assert info["rotation"] == 0
    want, _ = decode_video(str(src), max_frames=1, framerate=1.0, size=32)
    got, _ = decode_video(str(out), max_frames=1, framerate=1.0, size=32)
    assert np.abs(got.astype(int) - want).mean() < 6
    with av.open(str(out)) as container:  # the full frame: -90 turns clockwise, the red corner goes top-right
        first = next(container.decode(container.streams.video[0])).to_ndarray(format="rgb24")
    assert first.shape == (42, 32, 3)
    assert first[1, -2, 0] > 200
    assert first[1, 1, 0] < 100


def test_prepare_one_skips_finished_outputs_and_redoes_changed_settings(tmp_path: Path) -> None:
    src = str(_clip(tmp_path / "a.mp4", frames=30))
    out = str(tmp_path / "prep" / "videos" / "a.mp4")
    storage = Storage()
    first = prepare_one(src, out, PrepareSettings(short_side=32), storage)
    assert first["status"] == "transcoded"
    assert Path(out).is_file()
    meta = json.loads(Path(sidecar_uri(out)).read_text())
    assert meta["source"] == src
    assert meta["output"]["frames"] == first["frames"] == 3
    mtime = Path(out).stat().st_mtime_ns
    assert prepare_one(src, out, PrepareSettings(short_side=32), storage)["status"] == "skipped"
    assert Path(out).stat().st_mtime_ns == mtime
    again = prepare_one(src, out, PrepareSettings(short_side=48), storage)
    assert again["status"] == "transcoded"
    assert probe(out)["height"] == 48
    Path(sidecar_uri(out)).write_text("{not json")  # a torn sidecar never counts as done
    assert prepare_one(src, out, PrepareSettings(short_side=48), storage)["status"] == "transcoded"


def test_prepare_one_reports_bad_sources_without_writing(tmp_path: Path) -> None:
    good = _clip(tmp_path / "g.mp4", frames=30).read_bytes()
    cases = {"missing": tmp_path / "nope.mp4", "corrupt": tmp_path / "cut.mp4"}
    cases["corrupt"].write_bytes(good[: len(good) // 3])
    for reason, path in cases.items():
        out = tmp_path / "prep" / f"{reason}.mp4"
        result = prepare_one(str(path), str(out), PrepareSettings(short_side=32), Storage())
        assert result["status"] == "failed", result
        assert result["reason"] == reason, result
        assert not out.exists()
        assert not Path(sidecar_uri(str(out))).exists()
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DecodeError) as info:
        transcode(b"", str(tmp_path / "x.mp4"), PrepareSettings(), uri="mem://empty")
    assert info.value.reason == "corrupt"
    assert "mem://empty" in str(info.value)


def test_transcode_reads_file_objects(tmp_path: Path) -> None:
    data = _clip(tmp_path / "f.mp4", frames=30).read_bytes()
    out = tmp_path / "out.mp4"
    facts = transcode(io.BytesIO(data), str(out), PrepareSettings(short_side=32, fps=2.0), uri="f")
    assert facts["frames"] == 2
    assert probe(str(out))["num_frames"] == 2


def test_prepare_writes_square_pixels_for_non_square_sources(tmp_path: Path) -> None:
    src = tmp_path / "pal.mp4"
    with av.open(str(src), "w", format="mp4") as out:  # 176x144 stored, 16:11 pixels: shown 256x144
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(16, 11)
        for i in range(8):
            img = np.full((144, 176, 3), 40 + i * 10, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    dst = tmp_path / "out.mp4"
    facts = transcode(str(src), str(dst), PrepareSettings(short_side=64, fps=4.0))
    assert (facts["width"], facts["height"]) == (112, 64)  # 64 * 256 / 144 = 113.8, floored to even
    info = probe(str(dst))
    assert info["sample_aspect_ratio"] == "1:1"
    assert (info["coded_width"], info["coded_height"]) == (112, 64)
    assert (info["width"], info["height"]) == (112, 64)
