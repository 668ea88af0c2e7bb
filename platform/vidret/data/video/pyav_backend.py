"""The PyAV back end (bundled FFmpeg 8): ``read_pyav``, stream facts, the first frame.

Shape legend: N sampled frames, S output side; frames are ``uint8`` RGB ``(N, S, S, 3)``.

Frame ``i`` is the ``i``-th frame in presentation order: the ``i``-th smallest packet timestamp (fast path)
or the ``i``-th frame the decoder outputs (sequential path); they agree on regular files (checked in the
tests). PyAV classifies failures best (``FileNotFoundError``, ``DecoderNotFoundError``, ``InvalidDataError``),
so when both back ends fail, the PyAV error is the one reported.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from vidret.data.video.packets import PacketFrames
from vidret.data.video.transforms import (
    IDENTITY,
    DisplayTransform,
    display_transform_from_matrix,
    frame_to_square,
    transform_from_rotation,
)
from vidret.data.video.types import (
    MAX_PLAUSIBLE_FPS,
    Clip,
    DecodeError,
    Pick,
    Reason,
    Source,
    StreamInfo,
    as_rate,
    choose_fps,
    rewound,
)


# ---------------------------------------------------------------------------------------------- PyAV
def _av_reason(exc: Exception) -> Reason:
    import av

    if isinstance(exc, (av.error.FileNotFoundError, FileNotFoundError, IsADirectoryError)):
        return "missing"
    if isinstance(exc, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError)):
        return "unsupported_codec"
    if isinstance(exc, av.error.DemuxerNotFoundError):
        return "unsupported_container"
    return "corrupt"


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
    return as_rate(1.0 / (float(np.median(gaps)) * float(stream.time_base)))


def pyav_stream_info(source: Source, uri: str) -> StreamInfo:
    """Container-level facts about the first video stream; counts packets when the header has no count."""
    with rewound(source) as src, _open_av(src, uri) as container:
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
        sar = _sample_aspect_ratio(stream)
        width, height = int(cc.width), int(cc.height)
        average = as_rate(stream.average_rate)
        if stream.time_base and average == as_rate(1 / stream.time_base):
            average = 0.0  # the time base, not a frame rate (FLV, MKV)
        measured = _pts_rate(container, stream) if not 0 < average <= MAX_PLAUSIBLE_FPS else 0.0
        rates = [average, measured, as_rate(stream.guessed_rate)]
    if num_frames <= 0:
        with rewound(source) as src:
            num_frames = _count_packets(src, uri)
    fps = choose_fps(rates, num_frames, duration)
    return StreamInfo(codec, width, height, num_frames, fps, duration, sar)


def _sample_aspect_ratio(stream: Any) -> Fraction:
    """The stream's sample aspect ratio (container, else codec header); 1 when unset or nonsensical."""
    for value in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if value is not None and value > 0:
            return Fraction(value)
    return Fraction(1)


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
    source: Source, uri: str, wanted: set[int], size: int | None, threads: int, sar: Fraction = Fraction(1)
) -> tuple[dict[int, np.ndarray], int, DisplayTransform]:
    """Decode sequentially, converting only frames in ``wanted``; stop after the last wanted frame.

    Returns (frames by index, frames decoded, display transform). Bad packets are skipped; the pass fails as
    ``corrupt`` by the rule of :class:`~vidret.data.video.packets.PacketFrames`.
    """
    kept: dict[int, np.ndarray] = {}
    transform = IDENTITY
    n = 0
    last_wanted = max(wanted) if wanted else -1
    with rewound(source) as src, _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        stream.codec_context.thread_count = threads
        frames = PacketFrames(container, stream, uri)
        for frame in frames:
            if n == 0:
                transform = _frame_transform(frame)
            if n in wanted:
                kept[n] = (
                    frame_to_square(frame.to_image(), size, transform, float(sar))
                    if size
                    else frame.to_ndarray()
                )
            n += 1
            if n > last_wanted:
                break
        frames.verdict()
    return kept, n, transform


@dataclass(frozen=True)
class _SeekPlan:
    """Presentation order of the packets (demux only): pts of frame i, frame index of each pts, keyframes."""

    pts: list[int]
    index: dict[int, int]
    keyframes: list[int]  # frame indices of keyframes, increasing


class _CannotSeek(Exception):
    """Internal: the file does not support exact index-by-seeking; decode sequentially instead."""


def _seek_plan(source: Source, uri: str) -> _SeekPlan | None:
    """Map frame indices to timestamps from the packets (cheap: no decoding); None when pts are unusable."""
    import av

    with rewound(source) as src, _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        try:
            packets = [
                (p.pts, p.is_keyframe) for p in container.demux(stream) if p.size > 0 and not p.is_discard
            ]
        except av.error.FFmpegError:
            return None
    pts = sorted(p for p, _ in packets if p is not None)
    if not pts or len(pts) != len(packets) or len(set(pts)) != len(pts):
        return None
    index = {p: i for i, p in enumerate(pts)}
    return _SeekPlan(pts, index, sorted(index[p] for p, key in packets if key))


def _seek_pass(
    source: Source,
    uri: str,
    plan: _SeekPlan,
    wanted: list[int],
    size: int,
    threads: int,
    sar: Fraction = Fraction(1),
) -> dict[int, np.ndarray]:
    """Decode only the GOPs holding ``wanted`` frames: seek to the keyframe before a frame whenever that
    keyframe lies ahead of the decoder, else keep decoding forward. Frames are matched by pts; any mismatch
    (a pts not among the packets', a frame never output, a decode error) raises ``_CannotSeek``."""
    import av

    kept: dict[int, np.ndarray] = {}
    transform: DisplayTransform | None = None
    with rewound(source) as src, _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        stream.codec_context.thread_count = threads
        frames: Iterator[Any] | None = None
        pos = -1  # index of the last frame the decoder returned
        try:
            for target in sorted(set(wanted)):
                key = plan.keyframes[bisect.bisect_right(plan.keyframes, target) - 1]
                if frames is None or key > pos + 1:
                    container.seek(plan.pts[key], stream=stream, backward=True, any_frame=False)
                    frames, pos = container.decode(stream), key - 1
                for frame in frames:
                    i = plan.index.get(frame.pts, -1) if frame.pts is not None else -1
                    if i < 0 or i > target:
                        raise _CannotSeek
                    if i <= pos:
                        continue  # leading frames of an open GOP, before the keyframe we sought
                    pos = i
                    if transform is None:
                        transform = _frame_transform(frame)
                    if i == target:
                        kept[i] = frame_to_square(frame.to_image(), size, transform, float(sar))
                        break
                else:
                    raise _CannotSeek
        except (av.error.FFmpegError, IndexError):
            raise _CannotSeek from None
    return kept


def read_pyav(source: Source, pick: Pick, size: int, uri: str, *, threads: int = 1) -> Clip:
    """Decode the frames chosen by ``pick`` with PyAV: frames (N, S, S, 3).

    Fast path: when the packets' timestamps give an exact frame order (:func:`_seek_plan`), frame ``i`` is
    the ``i``-th timestamp and only the GOPs holding chosen frames are decoded (seek to the preceding
    keyframe). Otherwise, or when the fast path meets anything unexpected, decode sequentially and count
    frames. When the header over-reports the frame count (the stream ends before a chosen index), the
    rule is re-applied to the true count and, if that needs frames not yet converted, a second pass
    decodes them.
    """
    info = pyav_stream_info(source, uri)
    if info.fps <= 0:
        raise DecodeError(uri, "no_duration", "no frame rate and no duration in the container")
    if info.num_frames <= 0:
        raise DecodeError(uri, "corrupt", "the video stream has no packets")
    plan = _seek_plan(source, uri)
    if plan is not None and len(plan.keyframes) > 1 and plan.keyframes[0] == 0:
        indices = pick(len(plan.pts), info.fps)
        try:
            kept = _seek_pass(source, uri, plan, indices.tolist(), size, threads, info.sar)
            return Clip(np.stack([kept[int(i)] for i in indices]), indices, len(plan.pts), info.fps)
        except _CannotSeek:
            pass  # e.g. edit lists or decoders that drop frames: the sequential count is the truth
    indices = pick(info.num_frames, info.fps)
    kept, n, _ = _decode_pass(source, uri, set(indices.tolist()), size, threads, info.sar)
    num_frames = info.num_frames
    if n < info.num_frames and (indices >= n).any():
        num_frames = n
        indices = pick(n, info.fps)
        if not set(indices.tolist()) <= kept.keys():
            kept, _, _ = _decode_pass(source, uri, set(indices.tolist()), size, threads, info.sar)
    frames_NSS3 = np.stack([kept[int(i)] for i in indices])
    return Clip(frames_NSS3, indices, num_frames, info.fps)


def pyav_first_frame(
    source: Source, uri: str, *, with_pixels: bool = False
) -> tuple[StreamInfo, DisplayTransform, int, np.ndarray | None]:
    """Stream info, display transform, PyAV's rotation (degrees counter-clockwise) of the first frame, and
    (``with_pixels``) that frame as coded, (H, W, 3) uint8 RGB."""
    info = pyav_stream_info(source, uri)
    with rewound(source) as src, _open_av(src, uri) as container:
        stream = _video_stream(container, uri)
        frames = PacketFrames(container, stream, uri)
        frame = next(iter(frames), None)
        if frame is None:
            frames.verdict()  # no frame at all: corrupt, naming the first error
            raise DecodeError(uri, "corrupt", "no frame could be decoded")
        pixels = frame.to_ndarray(format="rgb24") if with_pixels else None
        return info, _frame_transform(frame), int(frame.rotation or 0), pixels
