"""Transcode source videos into retrieval-ready files, numpy/PyAV only (no Ray here).

A prepared file is H.264 (``yuv420p``) in MP4 with ``+faststart``, no audio, upright and with square pixels
(the source's display matrix and sample aspect ratio are applied to the pixels and not written out), short
side ``short_side`` (default 224; the long
side keeps the aspect ratio and is floored to an even number, like the upstream's ffmpeg
``scale='if(gt(a,1),trunc(oh*a/2)*2,224)':...``), constant frame rate ``fps`` (default 3; the frame shown at
``k / fps`` is the source frame displayed at that instant, so frames are dropped or repeated like
``ffmpeg -r``) and a keyframe every second (GOP = ``round(fps)``, no scene-cut keyframes).

Why: sampling 1 frame/s from a 30 fps 320x240 clip decodes every frame up to the last one sampled; from a
3 fps 224-short-side file it decodes a tenth of the frames, each smaller (``benchmarks/decode.py``).

Resumability: next to each output ``<name>.mp4`` a sidecar ``<name>.mp4.json`` (written after the video, both
atomically) records the source URI and the settings; :func:`prepare_one` skips a video whose sidecar
matches. Source failures raise :class:`~vidret.data.video.DecodeError` with the decoder's reasons.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from vidret.config import DataConfig
from vidret.data.video.packets import PacketFrames
from vidret.data.video.pyav_backend import pyav_first_frame
from vidret.data.video.transforms import IDENTITY, DisplayTransform, apply_display_transform, displayed_size
from vidret.data.video.types import DecodeError, Source
from vidret.storage import Storage, StorageError, join
from vidret.storage.scratch import scratch_dir

SIDECAR_VERSION = 1
_EPS = 1e-6  # seconds; guards the frame-time comparisons against float rounding (k / 3 vs 0.3333)


@dataclass(frozen=True)
class PrepareSettings:
    """What a prepared file looks like; part of the sidecar, so changing any field re-transcodes."""

    short_side: int = 224
    fps: float = 3.0
    crf: int = 23  # x264 quality (lower is better); 23 is x264's default
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.short_side < 2 or self.short_side % 2:
            raise ValueError(f"prepare short_side must be an even integer >= 2, got {self.short_side}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"prepare fps must be a finite number > 0, got {self.fps}")

    @property
    def gop(self) -> int:
        """Frames between keyframes: one second."""
        return max(1, round(self.fps))

    @classmethod
    def from_config(cls, cfg: DataConfig) -> PrepareSettings:
        """Settings from ``data.prepare_short_side`` and ``data.prepare_fps``."""
        return cls(short_side=cfg.prepare_short_side, fps=cfg.prepare_fps)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Displayed ``(width, height)`` of the prepared file: short side = ``short_side``, long side floored to
    an even number keeping the aspect ratio (never below ``short_side``)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot resize a {width}x{height} video")
    if width > height:
        return max(short_side, int(short_side * width / height / 2) * 2), short_side
    return short_side, max(short_side, int(short_side * height / width / 2) * 2)


def output_names(uris: Sequence[str]) -> dict[str, str]:
    """File name (``<stem>.mp4``) for each distinct source URI, stable for the same set of URIs.

    The stem is the source's file stem with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``; stems
    that were changed or that two sources share get ``-<sha1(uri)[:10]>`` appended, so names never collide.
    """
    stems: dict[str, str] = {}
    for uri in dict.fromkeys(uris):
        base = posixpath.basename(uri.rstrip("/"))
        stem = posixpath.splitext(base)[0] or "video"
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
        stems[uri] = safe if safe == stem else safe + "-" + _digest(uri)
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {
        uri: (stem if counts[stem] == 1 else f"{stem}-{_digest(uri)}") + ".mp4" for uri, stem in stems.items()
    }


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _source_frames(container: Any, stream: Any, uri: str, fps: float) -> Iterator[tuple[Any, float]]:
    """Decoded frames of ``stream`` with their presentation time in seconds (first frame at 0).

    A packet that fails to decode is skipped; the stream is ``corrupt`` by the same rule as decoding
    (:class:`~vidret.data.video.packets.PacketFrames`).
    """
    frames = PacketFrames(container, stream, uri)
    t0: float | None = None
    for n, frame in enumerate(frames):
        t = float(frame.time) if frame.time is not None else n / fps
        t0 = t if t0 is None else t0
        yield frame, t - t0
    frames.verdict()


def transcode(
    source: Source, out_path: str, settings: PrepareSettings, *, uri: str = "<bytes>"
) -> dict[str, Any]:
    """Transcode one video to ``out_path`` (a local file) as described in the module docstring.

    ``source``: bytes, a seekable binary file object or a local path. Returns ``dict(width, height, frames,
    fps, gop, source_fps, source_frames, rotation)`` of the output. Raises ``DecodeError`` (``missing``,
    ``no_video_stream``, ``unsupported_codec``, ``corrupt``) naming ``uri`` when the source cannot be read.
    """
    import av

    try:
        return _transcode(source, out_path, settings, uri)
    except av.error.FFmpegError as exc:  # encoder or muxer; the decode side raises DecodeError itself
        raise DecodeError(uri, "corrupt", f"transcode: {exc}") from None


def _transcode(source: Source, out_path: str, settings: PrepareSettings, uri: str) -> dict[str, Any]:
    import av
    from av.video.frame import PictureType

    info, transform, rotation, _ = pyav_first_frame(source, uri)  # classifies unreadable sources
    if info.fps <= 0:
        raise DecodeError(uri, "no_duration", "no frame rate and no duration in the container")
    shown_w, shown_h = displayed_size(info.width, info.height, transform, float(info.sar))
    out_w, out_h = output_size(shown_w, shown_h, settings.short_side)
    coded_w, coded_h = displayed_size(out_w, out_h, transform)  # size to scale to before the transform
    rate = Fraction(settings.fps).limit_denominator(1001)
    src = source if not isinstance(source, (bytes, bytearray, memoryview)) else _BytesSource(source)
    if hasattr(src, "seek"):
        src.seek(0)
    emitted = last_t = 0.0
    k = 0
    with (
        av.open(src, "r", metadata_errors="ignore") as container,
        av.open(out_path, "w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        enc = _add_encoder(out, settings, out_w, out_h, rate)
        current: Any = None
        converted: Any = None

        def emit() -> None:
            nonlocal converted, k
            if converted is None:
                converted = _convert(current, coded_w, coded_h, transform)
            frame = (
                converted
                if isinstance(converted, av.VideoFrame)
                else av.VideoFrame.from_ndarray(converted, format="rgb24")
            )
            frame.pts, frame.time_base = k, 1 / rate
            frame.pict_type = PictureType.NONE  # a decoded I frame would force a keyframe; the GOP decides
            for packet in enc.encode(frame):
                out.mux(packet)
            k += 1

        for frame, t in _source_frames(container, stream, uri, info.fps):
            while current is not None and k / settings.fps < t - _EPS:
                emit()
            current, converted, last_t = frame, None, t
        emitted = last_t + 1.0 / info.fps  # the last source frame stays on screen for one source frame
        while current is not None and k / settings.fps < emitted - _EPS:
            emit()
        for packet in enc.encode():
            out.mux(packet)
    return {
        "width": out_w,
        "height": out_h,
        "frames": k,
        "fps": float(rate),
        "gop": settings.gop,
        "source_fps": info.fps,
        "source_frames": info.num_frames,
        "rotation": rotation,
    }


def _add_encoder(out: Any, settings: PrepareSettings, width: int, height: int, rate: Fraction) -> Any:
    """The H.264 output stream: square pixels (the source's ratio is in the size), a keyframe every GOP."""
    enc = out.add_stream("libx264", rate=rate)
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.codec_context.sample_aspect_ratio = Fraction(1)
    gop = str(settings.gop)
    enc.options = {
        "g": gop,
        "keyint_min": gop,
        "sc_threshold": "0",
        "crf": str(settings.crf),
        "preset": settings.preset,
        "threads": "1",
    }
    return enc


def _convert(frame: Any, width: int, height: int, transform: DisplayTransform) -> Any:
    """Scale to the coded ``width x height`` (bicubic); with a display transform, return upright RGB
    pixels."""
    if transform == IDENTITY:
        return frame.reformat(width=width, height=height, format="yuv420p", interpolation="BICUBIC")
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
    return np.ascontiguousarray(apply_display_transform(rgb, transform))


class _BytesSource:
    """A read-only seekable view over bytes for PyAV, without copying (``io.BytesIO`` copies bytes)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view, self._pos = memoryview(data).cast("B"), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        chunk = bytes(self._view[self._pos : end])
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


# ------------------------------------------------------------------------------------ one file, resumable
def sidecar_uri(out_uri: str) -> str:
    """Where the sidecar of a prepared file lives."""
    return out_uri + ".json"


def sidecar_matches(text: str, source_uri: str, settings: PrepareSettings) -> bool:
    """True when a sidecar's JSON records this source and these settings (a complete, current output)."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(meta, dict)
        and meta.get("version") == SIDECAR_VERSION
        and meta.get("source") == source_uri
        and meta.get("settings") == asdict(settings)
    )


def prepare_one(source_uri: str, out_uri: str, settings: PrepareSettings, storage: Storage) -> dict[str, Any]:
    """Transcode ``source_uri`` to ``out_uri`` unless a matching sidecar says it is already done.

    Returns ``{"status": "skipped" | "transcoded", ...output facts}``, or for a source that cannot be used
    ``{"status": "failed", "reason", "detail"}`` (``reason``: a decoder reason, or ``read_error`` when
    storage failed after its retries). Writing the output raises ``StorageError``: that is the job's failure,
    not the video's.
    """
    side = sidecar_uri(out_uri)
    if storage.exists(side) and storage.exists(out_uri):
        text = storage.read_text(side)
        if sidecar_matches(text, source_uri, settings):
            return {"status": "skipped", **json.loads(text)["output"]}
    try:
        data = storage.read_bytes(source_uri)
        with scratch_dir("prepare") as tmp:
            local = os.path.join(tmp, "out.mp4")
            facts = transcode(data, local, settings, uri=source_uri)
            with open(local, "rb") as fh:
                blob = fh.read()
    except DecodeError as exc:
        return {"status": "failed", "reason": exc.reason, "detail": exc.detail or str(exc)}
    except FileNotFoundError as exc:  # StorageNotFoundError
        return {"status": "failed", "reason": "missing", "detail": str(exc)}
    except StorageError as exc:
        return {"status": "failed", "reason": "read_error", "detail": str(exc)}
    facts["bytes"] = len(blob)
    storage.write_bytes(out_uri, blob)
    meta = {"version": SIDECAR_VERSION, "source": source_uri, "settings": asdict(settings), "output": facts}
    storage.write_text(side, json.dumps(meta, sort_keys=True) + "\n")
    return {"status": "transcoded", **facts}


def plan_outputs(source_uris: Sequence[str], out_prefix: str) -> dict[str, str]:
    """Output URI (``<out_prefix>/videos/<name>.mp4``) of each distinct source URI."""
    return {uri: join(out_prefix, "videos", name) for uri, name in output_names(source_uris).items()}
