"""The decord 0.6 back end (bundled FFmpeg 4.1): ``read_decord`` with the same shape as ``read_pyav``.

Shape legend: N sampled frames, S output side; frames are ``uint8`` RGB ``(N, S, S, 3)``.

decord seeks to the keyframe before each requested frame. It reads file objects and bytes wholly into
memory, applies the container's rotation but not its reflection, and fails on AV1, VVC, GIF, short MPEG-TS
and streams without a duration; ``auto`` falls back to PyAV then.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from vidret.data.video.pyav_backend import pyav_first_frame
from vidret.data.video.transforms import (
    IDENTITY,
    DisplayTransform,
    displayed_size,
    frame_to_square,
    is_reflection,
)
from vidret.data.video.types import Clip, DecodeError, Pick, Source, as_rate, choose_fps, rewound

log = logging.getLogger(__name__)
# decord reports FFmpeg's av_find_best_stream error as a number: AVERROR_STREAM_NOT_FOUND ("no video stream")
# or AVERROR_DECODER_NOT_FOUND (a video stream whose codec its FFmpeg 4.1 does not know: AV1, VVC).
_STREAM_NOT_FOUND, _DECODER_NOT_FOUND = -1381258232, -1128613112
_CHECK = re.compile(r"\((-?\d+) vs\. 0\)")


def read_decord(source: Source, pick: Pick, size: int, uri: str, *, threads: int = 1) -> Clip:
    """Decode the frames chosen by ``pick`` with decord (seek + decode per frame): frames (N, S, S, 3).

    decord reads file objects and bytes wholly into memory. decord 0.6 applies the container's rotation
    but not its reflection; when the display matrix (read with PyAV from the first frame) mirrors the
    image, the mirror is applied here so both back ends return identical orientation.
    """
    import decord

    try:
        with rewound(source) as src:
            reader = decord.VideoReader(src, num_threads=threads)
        num_frames = len(reader)
        rates = [as_rate(reader.get_avg_fps())]
        duration = float(reader.get_frame_timestamp(num_frames - 1)[1]) if num_frames > 0 else None
        fps = choose_fps(rates, num_frames, duration)
        if num_frames <= 0 or fps <= 0:
            raise DecodeError(uri, "no_duration", f"decord reports {num_frames} frames at {fps} fps")
        indices = pick(num_frames, fps)
        batch_NHW3 = reader.get_batch(indices.tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError, IndexError) as exc:  # bare RuntimeErrors from its C++ core
        reason, detail = decord_reason(str(exc), source)
        log.debug("decord failed on %s: %s", uri, exc)
        raise DecodeError(uri, reason, f"decord: {detail}") from None
    fix, sar = _decord_geometry(source, uri, batch_NHW3.shape[2], batch_NHW3.shape[1])
    frames = [frame_to_square(f_HW3, size, fix, sar) for f_HW3 in batch_NHW3]
    return Clip(np.stack(frames), indices, num_frames, fps)


def _decord_geometry(source: Source, uri: str, width: int, height: int) -> tuple[DisplayTransform, float]:
    """What turns decord's ``width x height`` output into the displayed frame: the display transform left to
    apply and the sample aspect ratio in decord's output orientation (decord ignores the sample aspect ratio;
    after a quarter turn the stretch is vertical, i.e. ``1 / sar`` horizontally)."""
    try:
        info, transform, _, _ = pyav_first_frame(source, uri)
    except DecodeError:
        return IDENTITY, 1.0  # PyAV cannot read the stream: trust decord's geometry
    turned = (width, height) != (info.width, info.height)
    sar = float(1 / info.sar) if turned else float(info.sar)
    return _decord_fix(info.width, info.height, transform, width, height), sar


def _decord_fix(
    coded_w: int, coded_h: int, transform: DisplayTransform, width: int, height: int
) -> DisplayTransform:
    """The transform turning decord's output (already rotated, never mirrored) into the displayed frame."""
    if transform == IDENTITY:
        return IDENTITY
    if (width, height) == (coded_w, coded_h) and displayed_size(width, height, transform) != (
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
    a, b, _c, _d = t
    if a == 0:
        return (0, b, -b, 0)  # rotation matrices have c == -b
    return (a, 0, 0, a)


def _inverse(t: DisplayTransform) -> DisplayTransform:
    return _as_transform(_as_matrix(t).T)  # signed permutation matrices are orthogonal


def _compose(first: DisplayTransform, then: DisplayTransform) -> DisplayTransform:
    """Transform applying ``first`` then ``then`` (row-vector convention: p' = p @ M)."""
    return _as_transform(_as_matrix(first) @ _as_matrix(then))


def decord_reason(message: str, source: Source) -> tuple[str, str]:
    """``(reason, one-line detail)`` for a decord failure message (its raw text goes to the debug log only).

    decord cannot find a stream: no video stream, or a codec it does not know (told apart by FFmpeg's error
    number); cannot measure duration/frame count: a GIF (a container it cannot index) or a stream without
    a duration (live WebM); anything else (unreadable header, decoder errors) is ``corrupt``.
    """
    code = _CHECK.search(message)
    if "cannot find video stream" in message:
        if code and int(code.group(1)) == _DECODER_NOT_FOUND:
            return "unsupported_codec", "no decoder for the video codec in decord's FFmpeg 4.1"
        return "no_video_stream", "no video stream"
    if "duration/frame-count" in message:
        if _is_gif(source):
            return "unsupported_container", "decord cannot index GIF files"
        return "no_duration", "the container gives no duration or frame count"
    return "corrupt", "decord could not read or decode the file"


def _is_gif(source: Source) -> bool:
    """True when the source starts with a GIF signature (decord reads GIFs but cannot count their frames)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:6])
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            head = fh.read(6)
    else:
        with rewound(source) as src:
            head = src.read(6)
    return head in (b"GIF87a", b"GIF89a")
