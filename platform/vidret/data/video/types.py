"""What every video back end shares: the decode error and its reasons, the clip, the source and stream facts.

Shape legend: N sampled frames, S output side; frames are ``uint8`` RGB ``(N, S, S, 3)``.

Back ends (:mod:`~vidret.data.video.pyav_backend`, :mod:`~vidret.data.video.decord_backend`) take
``pick(num_frames, fps) -> indices`` (the sampling rule with its arguments bound, so the rule lives in one
place) and return a :class:`Clip`. Every failure becomes ``DecodeError(uri, reason, detail)``; the decoders'
own exception types never escape.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO, Literal, get_args

import numpy as np

Reason = Literal[
    "missing",
    "no_video_stream",
    "unsupported_codec",
    "unsupported_container",
    "no_duration",
    "corrupt",
    "timeout",
]
# The closed set of reasons a video cannot be decoded, each with one meaning:
#   missing                no such file (or a directory, or storage says not found)
#   no_video_stream        the container opens but holds no video stream (audio-only, subtitles only)
#   unsupported_codec      a video stream exists but the back end has no decoder for its codec
#   unsupported_container  the back end cannot read this container format (the file itself may be fine)
#   no_duration            the container gives neither a frame rate nor a duration/frame count to sample by
#   corrupt                the file is damaged: unreadable header, no frame decodes, too many bad packets
#   timeout                decoding did not finish within ``data.decode_timeout_s`` (the child was killed)
REASONS: tuple[str, ...] = get_args(Reason)
Source = bytes | bytearray | memoryview | BinaryIO | str | os.PathLike[str]
Pick = Callable[[int, float], np.ndarray]

MAX_PLAUSIBLE_FPS = 960.0  # container rates above this are time-base artefacts (FLV/MKV report 1000)


class DecodeError(ValueError):
    """A video that cannot be decoded. ``reason`` is one of :data:`REASONS`; the message names the URI."""

    def __init__(self, uri: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"DecodeError reason must be one of {REASONS}, got {reason!r}")
        detail = " ".join(detail.split())  # one line, whatever a back end put in it
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


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about the first video stream (before any frame is decoded)."""

    codec: str
    width: int  # coded size
    height: int
    num_frames: int  # header count, or packet count when the header has none (0 only if empty)
    fps: float
    duration: float | None  # seconds
    sar: Fraction = Fraction(
        1
    )  # sample (pixel) aspect ratio: a coded pixel is shown sar times as wide as tall


@contextmanager
def rewound(source: Source) -> Iterator[Any]:
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


def as_rate(value: Any) -> float:
    """``value`` as a finite frame rate, 0.0 when it is missing, not a number or infinite."""
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
