"""Decoding on synthetic H.264 clips made with PyAV: which frames are sampled, padding, orientation, errors,
sources (path / bytes / file object), the timeout worker, and the geometry helpers."""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidret.config import DataConfig
from vidret.data.video import (
    AUTO_ORDER,
    DecodeError,
    decode_video,
    decode_with_config,
    probe,
    sample_indices,
    time_decoders,
    upright_frame,
)
from vidret.data.video.transforms import (
    IDENTITY,
    apply_display_transform,
    center_crop,
    display_transform_from_matrix,
    resize_short_side,
    rotation_degrees,
    transform_from_rotation,
)
from vidret.data.video.worker import DecodeWorker

DECODERS = ["pyav", "decord"]


def _level(i: int) -> int:
    return 10 + 4 * i  # frame i is a flat grey of this level (i < 60)


def _encode(
    path: Path, frames_NHW3: np.ndarray, fps: int, *, rotation: float | None = None, matrix=None
) -> Path:
    """Write an H.264 MP4 (GOP 8 so decord seeks) with an optional display rotation / matrix."""
    h, w = frames_NHW3.shape[1:3]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": "8", "crf": "10"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if matrix is not None:
            stream.set_display_matrix(matrix)
        for img in frames_NHW3:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            ):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def grey_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 frames at 8 fps (6 s), 64x48; frame i is flat grey ``_level(i)``."""
    frames = np.stack([np.full((48, 64, 3), _level(i), np.uint8) for i in range(48)])
    return _encode(tmp_path_factory.mktemp("clips") / "grey.mp4", frames, fps=8)


def _quadrants(h: int = 64, w: int = 64) -> np.ndarray:
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


def _frame_indices(frames_FSS3: np.ndarray, mask_F: np.ndarray) -> list[int]:
    means = frames_FSS3[mask_F.astype(bool)].reshape(int(mask_F.sum()), -1).mean(axis=1)
    return [round((m - 10) / 4) for m in means]


@pytest.mark.parametrize("decoder", DECODERS)
def test_samples_the_frames_the_rule_chooses(grey_clip: Path, decoder: str) -> None:
    frames, mask = decode_video(str(grey_clip), max_frames=12, framerate=1.0, size=32, decoder=decoder)
    assert frames.shape == (12, 32, 32, 3)
    assert frames.dtype == np.uint8
    assert mask.dtype == np.int64
    assert mask.tolist() == [1] * 6 + [0] * 6
    assert _frame_indices(frames, mask) == [0, 8, 16, 24, 32, 40]
    assert not frames[6:].any(), "padding must be zeros"


@pytest.mark.parametrize("decoder", DECODERS)
def test_uniform_subsampling_segment_and_framerate(grey_clip: Path, decoder: str) -> None:
    kw = {"size": 16, "decoder": decoder}
    f, m = decode_video(str(grey_clip), max_frames=4, framerate=1.0, **kw)
    assert _frame_indices(f, m) == [0, 8, 24, 40]  # 6 candidates, linspace(0, 5, 4) -> 0 1 3 5
    f, m = decode_video(str(grey_clip), max_frames=12, framerate=2.0, start=1.0, end=3.0, **kw)
    assert _frame_indices(f, m) == [8, 12, 16, 20, 24]
    expected = sample_indices(48, 8.0, framerate=3.0, max_frames=12, start=0.5, end=5.0).tolist()
    f, m = decode_video(str(grey_clip), max_frames=12, framerate=3.0, start=0.5, end=5.0, **kw)
    assert _frame_indices(f, m) == expected


def test_decoders_agree_pixel_for_pixel(grey_clip: Path) -> None:
    a, ma = decode_video(str(grey_clip), max_frames=6, framerate=2.0, size=32, decoder="pyav")
    b, mb = decode_video(str(grey_clip), max_frames=6, framerate=2.0, size=32, decoder="decord")
    np.testing.assert_array_equal(ma, mb)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_seek_path_matches_sequential_path(grey_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vidret.data.video import pyav_backend

    kw = {"max_frames": 12, "framerate": 3.0, "size": 24, "decoder": "pyav"}
    seeking, m1 = decode_video(str(grey_clip), **kw)
    monkeypatch.setattr(pyav_backend, "_seek_plan", lambda source, uri: None)  # force sequential decoding
    sequential, m2 = decode_video(str(grey_clip), **kw)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(seeking, sequential)
    assert _frame_indices(seeking, m1) == sample_indices(48, 8.0, framerate=3.0, max_frames=12).tolist()


@pytest.mark.parametrize("kind", ["path", "bytes", "file", "pathlike"])
def test_sources_give_identical_frames(grey_clip: Path, kind: str) -> None:
    ref, _ = decode_video(str(grey_clip), max_frames=4, framerate=1.0, size=16, decoder="pyav")
    data = grey_clip.read_bytes()
    source = {"path": str(grey_clip), "bytes": data, "file": io.BytesIO(data), "pathlike": grey_clip}[kind]
    for decoder in DECODERS:
        got, _ = decode_video(source, max_frames=4, framerate=1.0, size=16, decoder=decoder)
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    if kind == "file":
        assert source.tell() == 0, "file objects are rewound after decoding"


def test_resize_short_side_then_centre_crop_keeps_the_middle(tmp_path: Path) -> None:
    img = np.zeros((48, 96, 3), np.uint8)  # wide: only the central 48x48 survives the crop
    img[:, :24] = 255  # a white band at the left, fully cropped away at size 24 (it maps to x < 12)
    img[:, 36:60] = (0, 200, 0)  # the central quarter, green
    clip = _encode(tmp_path / "wide.mp4", np.stack([img] * 4), fps=4)
    frames, _ = decode_video(str(clip), max_frames=1, framerate=1.0, size=24, decoder="pyav")
    centre = frames[0, :, 8:16].reshape(-1, 3).mean(axis=0)
    assert centre[1] > 150
    assert centre[0] < 60
    assert frames[0, :, :2].mean() < 40


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("rotation", "matrix", "expected_corners"),
    [
        (None, None, ("R", "G", "B", "W")),
        (90.0, None, ("G", "W", "R", "B")),  # counter-clockwise: the top-right corner moves to top-left
        (-90.0, None, ("B", "R", "W", "G")),
        (180.0, None, ("W", "B", "G", "R")),
        (None, [0, 65536, 0, 65536, 0, 0, 0, 0, 1 << 30], ("R", "B", "G", "W")),  # transpose (mirror)
    ],
    ids=["none", "ccw90", "cw90", "180", "transpose"],
)
def test_display_matrix_is_applied(tmp_path: Path, decoder: str, rotation, matrix, expected_corners) -> None:
    clip = _encode(tmp_path / "q.mp4", np.stack([_quadrants()] * 8), fps=8, rotation=rotation, matrix=matrix)
    frames, _mask = decode_video(str(clip), max_frames=2, framerate=1.0, size=32, decoder=decoder)
    colours = {"R": (255, 0, 0), "G": (0, 255, 0), "B": (0, 0, 255), "W": (255, 255, 255)}
    corners = [frames[0, 4, 4], frames[0, 4, -5], frames[0, -5, 4], frames[0, -5, -5]]
    for got, name in zip(corners, expected_corners, strict=True):
        assert np.abs(got.astype(int) - colours[name]).max() < 40, (corners, expected_corners)


def test_auto_falls_back_to_the_next_decoder(
    grey_clip: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from vidret.data.video import local

    calls: list[str] = []

    def broken(source, pick, size, uri, *, threads=1):
        calls.append(uri)
        raise DecodeError(uri, "unsupported_codec", "test double")

    monkeypatch.setitem(local._READERS, AUTO_ORDER[0], broken)
    frames, mask = decode_video(str(grey_clip), max_frames=12, framerate=1.0, size=32, uri="g.mp4")
    assert calls == ["g.mp4"]
    assert _frame_indices(frames, mask) == [0, 8, 16, 24, 32, 40]
    caplog.set_level("DEBUG", logger="vidret.data.video")
    with pytest.raises(DecodeError) as info:  # both fail: the primary's reason and detail only
        decode_video(b"junk" * 100, max_frames=2, framerate=1.0, size=32, uri="j.mp4")
    assert info.value.reason == "unsupported_codec"
    assert info.value.detail == "test double"
    assert "video_reader.cc" not in str(info.value)  # decord's raw C++ text: debug log only
    assert any("fallback decord also failed on j.mp4" in r.getMessage() for r in caplog.records)


def test_decord_fails_on_48x48_h264_where_auto_succeeds(tmp_path: Path) -> None:
    # decord 0.6 copies padded rows for 48-pixel-wide H.264 ("from_size == to_size (9216 vs. 6912)")
    clip = _encode(tmp_path / "q48.mp4", np.stack([_quadrants(48, 48)] * 8), fps=8)
    with pytest.raises(DecodeError) as info:
        decode_video(str(clip), max_frames=2, framerate=1.0, size=32, decoder="decord")
    assert info.value.reason == "corrupt"
    frames, mask = decode_video(str(clip), max_frames=2, framerate=1.0, size=32, decoder="auto")
    assert mask.tolist() == [1, 0]
    assert np.abs(frames[0, 4, 4].astype(int) - (255, 0, 0)).max() < 40


def test_probe_reports_the_displayed_size(tmp_path: Path) -> None:
    wide = np.zeros((32, 64, 3), np.uint8)
    clip = _encode(tmp_path / "r.mp4", np.stack([wide] * 10), fps=5, rotation=-90.0)
    info = probe(str(clip))
    assert (info["coded_width"], info["coded_height"]) == (64, 32)
    assert (info["width"], info["height"]) == (32, 64)
    assert info["rotation"] == -90
    assert info["num_frames"] == 10
    assert info["fps"] == pytest.approx(5.0)
    assert info["codec"] == "h264"
    assert info["reflected"] is False
    assert info["duration"] == pytest.approx(2.0, abs=0.25)


# ------------------------------------------------------------------------------------------------ errors
def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return path


def _encode_frames(target: object, fmt: str, codec: str, pix_fmt: str, n: int = 8, side: int = 64) -> None:
    with av.open(target, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = side, side, pix_fmt
        for i in range(n):
            img = np.zeros((side, side, 3), np.uint8)
            img[:, : (i * 8) % side + 8] = (200, 60, 20)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


class _WriteOnly:
    """A sink without ``seek``: the Matroska muxer cannot go back to write the duration."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += bytes(chunk)
        return len(chunk)


def _torture_files(tmp_path: Path, grey_clip: Path) -> dict[str, object]:
    """Real files for every reason: a valid GIF, a WebM without a duration, AV1 in MP4, audio-only, broken."""
    _encode_frames(str(tmp_path / "clip.gif"), "gif", "gif", "rgb8")
    sink = _WriteOnly()
    _encode_frames(sink, "webm", "libvpx-vp9", "yuv420p")
    (tmp_path / "live.webm").write_bytes(bytes(sink.data))
    _encode_frames(str(tmp_path / "av1.mp4"), "mp4", "libsvtav1", "yuv420p")
    data = grey_clip.read_bytes()
    return {
        "missing": str(tmp_path / "nope.mp4"),
        "gif": str(tmp_path / "clip.gif"),
        "no_duration_webm": str(tmp_path / "live.webm"),
        "av1": str(tmp_path / "av1.mp4"),
        "audio_only": str(_audio_only(tmp_path / "a.m4a")),
        "empty": b"",
        "text": b"this is not a video at all" * 50,
        "truncated": data[: len(data) // 3],
        "zeros": bytes(4096),
    }


# What each back end says about each file ("ok": it decodes). `auto` reports PyAV's reason (the primary).
_EXPECTED = {
    "pyav": {
        "missing": "missing",
        "gif": "ok",
        "no_duration_webm": "ok",
        "av1": "ok",
        "audio_only": "no_video_stream",
        "empty": "corrupt",
        "text": "corrupt",
        "truncated": "corrupt",
        "zeros": "corrupt",
    },
    "decord": {
        "missing": "missing",
        "gif": "unsupported_container",
        "no_duration_webm": "no_duration",
        "av1": "unsupported_codec",
        "audio_only": "no_video_stream",
        "empty": "corrupt",
        "text": "corrupt",
        "truncated": "corrupt",
        "zeros": "corrupt",
    },
}
_EXPECTED["auto"] = _EXPECTED["pyav"]


@pytest.mark.parametrize("decoder", ["auto", *DECODERS])
def test_errors_have_the_right_reason(tmp_path: Path, grey_clip: Path, decoder: str) -> None:
    for name, source in _torture_files(tmp_path, grey_clip).items():
        expected = _EXPECTED[decoder][name]
        kw = {"max_frames": 4, "framerate": 4.0, "size": 16, "decoder": decoder, "uri": "s3://b/k.mp4"}
        if expected == "ok":
            _, mask = decode_video(source, **kw)
            assert mask[0] == 1, name
            continue
        with pytest.raises(DecodeError) as info:
            decode_video(source, **kw)
        assert info.value.reason == expected, (name, info.value)
        assert isinstance(info.value, ValueError)
        assert "s3://b/k.mp4" in str(info.value)
        assert "\n" not in str(info.value)
        assert "video_reader.cc" not in str(info.value), name  # decord's C++ text stays in debug logs


def test_decode_error_pickles_and_validates_reason() -> None:
    err = pickle.loads(pickle.dumps(DecodeError("u.mp4", "timeout", "after 1 s")))
    assert (err.uri, err.reason, err.detail) == ("u.mp4", "timeout", "after 1 s")
    with pytest.raises(ValueError, match="reason"):
        DecodeError("u.mp4", "bad-reason")


def test_bad_arguments_are_value_errors(grey_clip: Path) -> None:
    with pytest.raises(ValueError, match="decoder"):
        decode_video(str(grey_clip), max_frames=4, framerate=1.0, size=16, decoder="opencv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        decode_video(str(grey_clip), max_frames=4, framerate=1.0, size=16, timeout_s=0)


# ---------------------------------------------------------------------------------------- timeout worker
def test_worker_decodes_times_out_on_a_hang_and_recovers(tmp_path: Path, grey_clip: Path) -> None:
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)  # opening a FIFO with no writer blocks inside FFmpeg's open(): a real hang in C
    kw = {
        "max_frames": 4,
        "framerate": 1.0,
        "size": 16,
        "decoder": "pyav",
        "int_fps": False,
        "start": None,
        "end": None,
    }
    with DecodeWorker() as worker:
        ref, ref_mask = worker.decode(grey_clip.read_bytes(), timeout_s=30, uri="ok.mp4", **kw)
        first_pid = worker.pid
        with pytest.raises(DecodeError) as info:
            worker.decode(str(fifo), timeout_s=1.0, uri="hang.mp4", **kw)
        assert info.value.reason == "timeout"
        assert "hang.mp4" in str(info.value)
        assert worker.pid is None  # the hung child was killed
        again, mask = worker.decode(io.BytesIO(grey_clip.read_bytes()), timeout_s=30, uri="ok.mp4", **kw)
        assert worker.pid not in (None, first_pid)
        assert worker.restarts == 1
        np.testing.assert_array_equal(again, ref)
        np.testing.assert_array_equal(mask, ref_mask)
        with pytest.raises(DecodeError) as info:
            worker.decode(str(tmp_path / "missing.mp4"), timeout_s=30, uri="m.mp4", **kw)
        assert info.value.reason == "missing"


def test_worker_reports_a_crashed_child_and_restarts(tmp_path: Path, grey_clip: Path) -> None:
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    kw = {
        "max_frames": 2,
        "framerate": 1.0,
        "size": 16,
        "decoder": "pyav",
        "int_fps": False,
        "start": None,
        "end": None,
    }
    with DecodeWorker() as worker:
        worker.decode(grey_clip.read_bytes(), timeout_s=30, uri="ok.mp4", **kw)
        killer = threading.Timer(0.5, os.kill, (worker.pid, signal.SIGKILL))  # our own child: a "segfault"
        killer.start()
        with pytest.raises(DecodeError) as info:
            worker.decode(str(fifo), timeout_s=30, uri="crash.mp4", **kw)
        killer.join()
        assert info.value.reason == "corrupt"
        assert "died" in str(info.value)
        assert "crash.mp4" in str(info.value)
        _, mask = worker.decode(grey_clip.read_bytes(), timeout_s=30, uri="ok.mp4", **kw)
        assert mask.tolist() == [1, 1]
        assert worker.restarts == 1


def test_decode_with_config_uses_the_data_section(grey_clip: Path) -> None:
    cfg = DataConfig(max_frames=5, framerate=2.0, size=24, decoder="pyav", decode_timeout_s=60.0)
    frames, mask = decode_with_config(grey_clip.read_bytes(), cfg, uri="g.mp4", start=1.0, end=2.0)
    assert frames.shape == (5, 24, 24, 3)
    assert mask.tolist() == [1, 1, 1, 0, 0]
    assert _frame_indices(frames, mask) == [8, 12, 16]


def test_time_decoders_reports_seconds_or_reason(grey_clip: Path, tmp_path: Path) -> None:
    times = time_decoders(str(grey_clip), max_frames=2, size=16, repeats=1)
    assert set(times) == {"pyav", "decord"}
    assert all(isinstance(v, float) and v > 0 for v in times.values())
    assert set(AUTO_ORDER) == {"pyav", "decord"}
    bad = time_decoders(b"garbage" * 10, repeats=1)
    assert bad == {"pyav": "corrupt", "decord": "corrupt"}


# -------------------------------------------------------------------------------------- geometry helpers
@pytest.mark.parametrize(("degrees", "k"), [(0, 0), (90, 1), (180, 2), (-90, 3), (270, 3)])
def test_rotation_transforms_match_numpy_rot90(degrees: int, k: int) -> None:
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = transform_from_rotation(degrees)
    np.testing.assert_array_equal(apply_display_transform(img, t), np.rot90(img, k))
    assert rotation_degrees(t) == (degrees % 360)


def test_display_matrix_parsing() -> None:
    one = 65536
    assert display_transform_from_matrix(np.array([one, 0, 0, 0, one, 0, 0, 0, 1 << 30])) == IDENTITY
    assert display_transform_from_matrix(np.array([0, -one, 0, one, 0, 0, 0, 0, 1 << 30])) == (0, -1, 1, 0)
    assert display_transform_from_matrix(np.zeros(9)) == IDENTITY
    img = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    np.testing.assert_array_equal(apply_display_transform(img, (0, 1, 1, 0)), img.transpose(1, 0, 2))
    np.testing.assert_array_equal(apply_display_transform(img, (-1, 0, 0, 1)), img[:, ::-1])


def test_resize_and_crop_shapes() -> None:
    img = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    assert resize_short_side(img, 12).shape == (12, 20, 3)
    assert resize_short_side(img.transpose(1, 0, 2), 12).shape == (20, 12, 3)
    assert center_crop(np.zeros((5, 9, 3)), 5).shape == (5, 5, 3)
    with pytest.raises(ValueError, match="crop"):
        center_crop(np.zeros((4, 9, 3)), 5)


# ------------------------------------------------------------------------------------------- from S3
@pytest.mark.s3
def test_decode_streamed_from_s3_matches_local(s3_bucket, grey_clip: Path) -> None:
    from vidret.storage import Storage

    cfg, bucket = s3_bucket
    storage = Storage(cfg)
    uri = f"{bucket}/videos/grey.mp4"
    storage.write_bytes(uri, grey_clip.read_bytes())
    ref, ref_mask = decode_video(str(grey_clip), max_frames=6, framerate=1.0, size=32, decoder="pyav")
    for decoder in DECODERS:
        with storage.open_read(uri) as fh:  # PyAV seeks and reads the object in ranges; decord reads it all
            frames, mask = decode_video(fh, max_frames=6, framerate=1.0, size=32, decoder=decoder, uri=uri)
        assert np.abs(frames.astype(int) - ref.astype(int)).max() <= 1
        np.testing.assert_array_equal(mask, ref_mask)
    frames, _ = decode_video(
        storage.read_bytes(uri), max_frames=6, framerate=1.0, size=32, uri=uri, timeout_s=60
    )
    assert _frame_indices(frames, ref_mask) == [0, 8, 16, 24, 32, 40]
    with pytest.raises(DecodeError) as info:
        decode_video(storage.read_bytes(uri)[:500], max_frames=6, framerate=1.0, size=32, uri=uri)
    assert info.value.reason == "corrupt"
    assert uri in str(info.value)


# ---------------------------------------------------------------------------------- display geometry (SAR)
def _sar_clip(path: Path, width: int, height: int, sar: Fraction) -> np.ndarray:
    """An H.264 clip stored ``width x height`` with ``sar`` pixels; returns its (stored) first frame."""
    rng = np.random.default_rng(width)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    img_HW3 = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.sample_aspect_ratio = sar
        stream.options = {"crf": "10"}
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img_HW3, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.mark.parametrize(
    ("width", "height", "sar", "shown_width"),
    [(176, 144, Fraction(16, 11), 256), (160, 120, Fraction(64, 51), 201)],  # PAL 16:9-style, 64:51
)
@pytest.mark.parametrize("decoder", DECODERS)
def test_non_square_pixels_decode_to_the_displayed_geometry(
    tmp_path: Path, width: int, height: int, sar: Fraction, shown_width: int, decoder: str
) -> None:
    path = tmp_path / "sar.mp4"
    stored_HW3 = _sar_clip(path, width, height, sar)
    info = probe(str(path))
    assert (info["coded_width"], info["coded_height"]) == (width, height)
    assert info["sample_aspect_ratio"] == f"{sar.numerator}:{sar.denominator}"
    assert (info["width"], info["height"]) == (shown_width, height)
    # reference: stretch to the displayed size first, then the method's short-side resize and centre crop
    shown_HW3 = np.asarray(
        Image.fromarray(stored_HW3).resize((shown_width, height), Image.Resampling.BICUBIC)
    )
    ref = center_crop(resize_short_side(shown_HW3, 64), 64).astype(int)
    squeezed = center_crop(resize_short_side(stored_HW3, 64), 64).astype(int)
    frames, _ = decode_video(str(path), max_frames=1, framerate=1.0, size=64, decoder=decoder)
    assert np.abs(frames[0].astype(int) - ref).mean() < 2.0
    assert np.abs(squeezed - ref).mean() > 20.0  # ignoring the ratio would be caught
    assert upright_frame(str(path)).shape == (height, shown_width, 3)


# ------------------------------------------------------------------------------- no main guard needed
def test_decode_from_a_script_without_main_guard(tmp_path: Path, grey_clip: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(
        "from vidret.config import DataConfig\n"
        "from vidret.data.video import decode_with_config\n"
        "from vidret.data.video.worker import default_worker\n"
        f"frames, mask = decode_with_config({str(grey_clip)!r}, DataConfig(size=16, max_frames=4))\n"
        "print('decoded', int(mask.sum()), 'worker', default_worker().pid, flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("decoded")]
    assert len(lines) == 1, proc.stdout  # the script ran once: the child never re-ran it
    assert lines[0].startswith("decoded 4 worker ")
    assert "bootstrapping" not in proc.stderr
    assert "Traceback" not in proc.stderr
    child = int(lines[0].split()[-1])
    for _ in range(100):  # the child exits with its parent (bounded wait, not a timing assertion)
        if not Path(f"/proc/{child}").exists() or "Z" in _proc_state(child):
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in _proc_state(child), "decode worker left behind"


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "gone"
