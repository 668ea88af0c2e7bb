"""Decoder back ends (PyAV and decord) behind one function shape, plus the one decode error type.

Shape legend: N sampled frames, S output side; frames are ``uint8`` RGB ``(N, S, S, 3)``.

Both back ends take ``pick(num_frames, fps) -> indices`` (the sampling rule, :func:`vidret.data.decode.sample_indices`
with its arguments bound) so the rule lives in one place, and return a :class:`Clip`.

Frame numbering is presentation order: frame ``i`` is the ``i``-th frame the decoder outputs (PyAV) or the
``i``-th frame in decord's pts-sorted index; both agree on regular files (checked in the tests).

Errors: every failure becomes ``DecodeError(uri, reason, detail)``; the decoders' own exception types never
escape. PyAV classifies failures best (``FileNotFoundError``, ``DecoderNotFoundError``, ``InvalidDataError``),
so when both back ends fail, the PyAV error is the one reported.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np

from vidret.data.transforms import (
    IDENTITY,
    DisplayTransform,
    apply_display_transform,
    display_transform_from_matrix,
    displayed_size,
    frame_to_square,
    is_reflection,
    transform_from_rotation,
)

Reason = Literal["missing", "no_video_stream", "unsupported_codec", "corrupt", "timeout"]
REASONS: tuple[str, ...] = ("missing", "no_video_stream", "unsupported_codec", "corrupt", "timeout")
Source = bytes | bytearray | memoryview | BinaryIO | str | os.PathLike
Pick = Callable[[int, float], np.ndarray]

MAX_PLAUSIBLE_FPS = 960.0  # container rates above this are time-base artefacts (FLV/MKV report 1000)


class DecodeError(ValueError):
    """A video that cannot be decoded. ``reason`` is one of :data:`REASONS`; the message names the URI."""

    def __init__(self, uri: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"DecodeError reason must be one of {REASONS}, got {reason!r}")
        self.uri, self.reason, self.detail = uri, reason, detail
        super().__init__(f"cannot decode {uri}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across the timeout worker's pipe
        return (DecodeError, (self.uri, self.reason, self.detail))


@dataclass(frozen=True)
class Clip:
    """Sampled frames of one video: frames (N, S, S, 3) uint8, the frame indices (N,) they came from."""

    frames_NSS3: np.ndarray
    indices_N: np.ndarray
    num_frames: int  # frames in the stream as used by the sampling rule
    fps: float


@contextmanager
def _rewound(source: Source) -> Iterator[Any]:
    """Yield something PyAV/decord can open; file objects are rewound to where they started afterwards."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        yield os.fspath(source)
    else:
        start = source.tell()
        try:
            yield source
        finally:
            source.seek(start)


def check_exists(source: Source, uri: str) -> None:
    """Raise ``DecodeError(missing)`` for a path that is not a readable file."""
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise DecodeError(uri, "missing", f"no such file: {os.fspath(source)}")
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        raise DecodeError(uri, "missing", f"is a directory: {os.fspath(source)}")


def _rate(value: Any) -> float:
    try:
        rate = float(value) if value is not None else 0.0
    except (TypeError, ZeroDivisionError):
        return 0.0
    return rate if np.isfinite(rate) else 0.0


def choose_fps(rates: list[float], num_frames: int, duration: float | None) -> float:
    """Pick the stream's frame rate: the first plausible container rate, else ``num_frames / duration``.

    ``rates`` are in order of trust (PyAV: the average rate, a rate measured from packet timestamps, the
    guessed rate). A rate is implausible when it is not finite, <= 0 or above :data:`MAX_PLAUSIBLE_FPS`
    (FLV and MKV report their 1 kHz time base as the average rate).
    """
    for r in rates:
        if 0.0 < r <= MAX_PLAUSIBLE_FPS:
            return r
    if duration and duration > 0 and num_frames > 0:
        return num_frames / duration
    return 0.0


# ---------------------------------------------------------------------------------------------- PyAV
def _av_reason(exc: Exception) -> Reason:
    import av

    if isinstance(exc, (av.error.FileNotFoundError, FileNotFoundError, IsADirectoryError)):
        return "missing"
    if isinstance(
        exc, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError, av.error.DemuxerNotFoundError)
    ):
        return "unsupported_codec"
    return "corrupt"


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about the first video stream (before any frame is decoded)."""

    codec: str
    width: int  # coded size
    height: int
    num_frames: int  # header count, or packet count when the header has none (0 only if empty)
    fps: float
    duration: float | None  # seconds


def _open_av(src: Any, uri: str) -> Any:
    import av

    try:
        return av.open(src, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise DecodeError(uri, _av_reason(exc), f"pyav open: {exc}") from None
    except OSError as exc:
        raise DecodeError(
            uri, "missing" if isinstance(exc, FileNotFoundError) else "corrupt", str(exc)
        ) from None


def _video_stream(container: Any, uri: str) -> Any:
    streams = list(container.streams.video)
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        raise DecodeError(uri, "no_video_stream", f"streams: {kinds or 'none'}")
    stream = streams[0]
    if stream.codec_context is None:
        raise DecodeError(uri, "unsupported_codec", "pyav has no decoder for this stream")
    return stream


def _count_packets(src: Any, uri: str) -> int:
    """Count video packets by demuxing only (no decoding): the frame count when the header has none."""
    import av

    with _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        try:
            return sum(1 for pkt in container.demux(stream) if pkt.size > 0)
        except av.error.FFmpegError as exc:
            raise DecodeError(uri, "corrupt", f"pyav demux: {exc}") from None


def _pts_rate(container: Any, stream: Any, packets: int = 64) -> float:
    """Frame rate from the median gap between the first ``packets`` presentation timestamps (demux only)."""
    import av

    pts: list[int] = []
    try:
        for pkt in container.demux(stream):
            if pkt.pts is not None and pkt.size > 0:
                pts.append(int(pkt.pts))
            if len(pts) >= packets:
                break
    except av.error.FFmpegError:
        pass  # the decode pass reports corrupt data; a rate from fewer packets is still usable
    gaps = np.diff(np.unique(np.array(pts, dtype=np.int64)))
    if gaps.size == 0 or not stream.time_base:
        return 0.0
    return _rate(1.0 / (float(np.median(gaps)) * float(stream.time_base)))


def pyav_stream_info(source: Source, uri: str) -> StreamInfo:
    """Container-level facts about the first video stream; counts packets when the header has no count."""
    with _rewound(source) as src, _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        cc = stream.codec_context
        num_frames = int(stream.frames or 0)
        if stream.duration and stream.time_base:
            duration: float | None = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = None
        codec = cc.codec.name if cc.codec is not None else cc.name
        width, height = int(cc.width), int(cc.height)
        average = _rate(stream.average_rate)
        if stream.time_base and average == _rate(1 / stream.time_base):
            average = 0.0  # the time base, not a frame rate (FLV, MKV)
        measured = _pts_rate(container, stream) if not 0 < average <= MAX_PLAUSIBLE_FPS else 0.0
        rates = [average, measured, _rate(stream.guessed_rate)]
    if num_frames <= 0:
        with _rewound(source) as src:
            num_frames = _count_packets(src, uri)
    return StreamInfo(codec, width, height, num_frames, choose_fps(rates, num_frames, duration), duration)


def _frame_transform(frame: Any) -> DisplayTransform:
    from av.sidedata.sidedata import Type

    try:
        side = frame.side_data.get(Type.DISPLAYMATRIX)
    except ValueError:  # PyAV 18 cannot wrap side data newer than its enum (type 29 in MV-HEVC files)
        return transform_from_rotation(int(frame.rotation or 0))
    if side is None:
        return IDENTITY
    return display_transform_from_matrix(np.frombuffer(bytes(side), dtype=np.int32)[:9])


def _decode_pass(
    source: Source, uri: str, wanted: set[int], size: int | None, threads: int
) -> tuple[dict[int, np.ndarray], int, DisplayTransform]:
    """Decode sequentially, converting only frames in ``wanted``; stop after the last wanted frame.

    Returns (frames by index, frames decoded, display transform). Bad packets are skipped; the pass fails as
    ``corrupt`` when no frame decodes or when more than a tenth of the packets (and at least 3) are bad.
    """
    import av

    kept: dict[int, np.ndarray] = {}
    transform = IDENTITY
    n = bad = packets = 0
    last_wanted = max(wanted) if wanted else -1
    first_error = ""
    with _rewound(source) as src, _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        stream.codec_context.thread_count = threads
        demux = container.demux(stream)
        while n <= last_wanted:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # a demuxer error ends the stream; keep what decoded
                first_error = first_error or f"demux: {exc}"
                break
            packets += 1
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                bad += 1
                first_error = first_error or f"decode: {exc}"
                continue
            for frame in frames:
                if n == 0:
                    transform = _frame_transform(frame)
                if n in wanted:
                    kept[n] = (
                        frame_to_square(frame.to_image(), size, transform) if size else frame.to_ndarray()
                    )
                n += 1
    if n == 0 or bad > max(2, packets // 10):
        raise DecodeError(uri, "corrupt", f"{bad} of {packets} packets failed; first error: {first_error}")
    return kept, n, transform


def read_pyav(source: Source, pick: Pick, size: int, uri: str, *, threads: int = 1) -> Clip:
    """Decode the frames chosen by ``pick`` with PyAV (sequential decode, no seeking): frames (N, S, S, 3).

    When the header over-reports the frame count (the stream ends before a chosen index), the rule is
    re-applied to the true count and, if that needs frames not yet converted, a second pass decodes them.
    """
    info = pyav_stream_info(source, uri)
    if info.fps <= 0:
        raise DecodeError(uri, "corrupt", "no frame rate and no duration in the container")
    if info.num_frames <= 0:
        raise DecodeError(uri, "corrupt", "the video stream has no packets")
    indices = pick(info.num_frames, info.fps)
    kept, n, _ = _decode_pass(source, uri, set(indices.tolist()), size, threads)
    num_frames = info.num_frames
    if n < info.num_frames and (indices >= n).any():
        num_frames = n
        indices = pick(n, info.fps)
        if not set(indices.tolist()) <= kept.keys():
            kept, _, _ = _decode_pass(source, uri, set(indices.tolist()), size, threads)
    frames_NSS3 = np.stack([kept[int(i)] for i in indices])
    return Clip(frames_NSS3, indices, num_frames, info.fps)


def pyav_first_frame(
    source: Source, uri: str, *, with_pixels: bool = False
) -> tuple[StreamInfo, DisplayTransform, int, np.ndarray | None]:
    """Stream info, display transform, PyAV's rotation (degrees counter-clockwise) of the first frame, and
    (``with_pixels``) that frame as coded, (H, W, 3) uint8 RGB."""
    info = pyav_stream_info(source, uri)
    with _rewound(source) as src, _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        frame = next(_decode_frames(container, stream, uri), None)
        if frame is None:
            raise DecodeError(uri, "corrupt", "no frame could be decoded")
        pixels = frame.to_ndarray(format="rgb24") if with_pixels else None
        return info, _frame_transform(frame), int(frame.rotation or 0), pixels


def _decode_frames(container: Any, stream: Any, uri: str) -> Iterator[Any]:
    import av

    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise DecodeError(uri, "corrupt", f"pyav decode: {exc}") from None


# --------------------------------------------------------------------------------------------- decord
def read_decord(source: Source, pick: Pick, size: int, uri: str, *, threads: int = 1) -> Clip:
    """Decode the frames chosen by ``pick`` with decord (seek + decode per frame): frames (N, S, S, 3).

    decord reads file objects and bytes wholly into memory. decord 0.6 applies the container's rotation
    but not its reflection; when the display matrix (read with PyAV from the first frame) mirrors the
    image, the mirror is applied here so both back ends return identical orientation.
    """
    import decord

    try:
        with _rewound(source) as src:
            reader = decord.VideoReader(src, num_threads=threads)
        num_frames = len(reader)
        rates = [_rate(reader.get_avg_fps())]
        duration = float(reader.get_frame_timestamp(num_frames - 1)[1]) if num_frames > 0 else None
        fps = choose_fps(rates, num_frames, duration)
        if num_frames <= 0 or fps <= 0:
            raise DecodeError(uri, "corrupt", f"decord reports {num_frames} frames at {fps} fps")
        indices = pick(num_frames, fps)
        batch_NHW3 = reader.get_batch(indices.tolist()).asnumpy()
    except decord.DECORDError as exc:
        raise DecodeError(uri, "corrupt", f"decord: {str(exc).splitlines()[0][-300:]}") from None
    except (RuntimeError, IndexError) as exc:  # decord raises bare RuntimeErrors from its C++ core
        raise DecodeError(
            uri, "corrupt", f"decord: {str(exc).splitlines()[0][-300:] if str(exc) else exc!r}"
        ) from None
    fix = _decord_fix(source, uri, batch_NHW3.shape[2], batch_NHW3.shape[1])
    frames = [frame_to_square(apply_display_transform(f_HW3, fix), size) for f_HW3 in batch_NHW3]
    return Clip(np.stack(frames), indices, num_frames, fps)


def _decord_fix(source: Source, uri: str, width: int, height: int) -> DisplayTransform:
    """The transform turning decord's output (already rotated, never mirrored) into the displayed frame."""
    try:
        info, transform, _, _ = pyav_first_frame(source, uri)
    except DecodeError:
        return IDENTITY  # PyAV cannot read the matrix: trust decord's orientation
    if transform == IDENTITY:
        return IDENTITY
    if (width, height) == (info.width, info.height) and displayed_size(width, height, transform) != (
        width,
        height,
    ):
        return transform  # decord did not rotate at all (no rotate tag): apply the full transform
    if not is_reflection(transform):
        return IDENTITY
    # decord shows R(raw) with R the rotation part; we want T(raw), so apply R^-1 then T (p @ R^T @ T).
    return _compose(_inverse(_rotation_part(transform)), transform)


def _as_matrix(t: DisplayTransform) -> np.ndarray:
    a, b, c, d = t
    return np.array([[a, b], [c, d]], dtype=np.int64)


def _as_transform(m: np.ndarray) -> DisplayTransform:
    return (int(m[0, 0]), int(m[0, 1]), int(m[1, 0]), int(m[1, 1]))


def _rotation_part(t: DisplayTransform) -> DisplayTransform:
    """The pure rotation decord applies for ``t`` (its rotation angle, without the mirror)."""
    a, b, c, d = t
    if a == 0:
        return (0, b, -b, 0)  # rotation matrices have c == -b
    return (a, 0, 0, a)


def _inverse(t: DisplayTransform) -> DisplayTransform:
    return _as_transform(_as_matrix(t).T)  # signed permutation matrices are orthogonal


def _compose(first: DisplayTransform, then: DisplayTransform) -> DisplayTransform:
    """Transform applying ``first`` then ``then`` (row-vector convention: p' = p @ M)."""
    return _as_transform(_as_matrix(first) @ _as_matrix(then))
