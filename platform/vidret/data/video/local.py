"""Decoding in the calling process, with no timeout: the ``auto`` back-end order and its fallback.

Shape legend: F frames (``max_frames``), S output side (``size``).

Decoders: PyAV (bundled FFmpeg 8) and decord 0.6 (bundled FFmpeg 4.1). ``auto`` tries :data:`AUTO_ORDER`
in turn and falls back to the next back end when the first cannot decode the file; :func:`time_decoders`
is the measurement behind the order.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Literal, TypedDict

import numpy as np

from vidret.data.video.decord_backend import read_decord
from vidret.data.video.pyav_backend import read_pyav
from vidret.data.video.sampling import make_pick
from vidret.data.video.types import Clip, DecodeError, Source, check_exists

log = logging.getLogger(__name__)
DecoderName = Literal["auto", "decord", "pyav"]
BackendName = Literal["decord", "pyav"]  # a DecoderName other than "auto"
_READERS: dict[BackendName, Callable[..., Clip]] = {"pyav": read_pyav, "decord": read_decord}
# PyAV first: time_decoders on a 30 s 320x240 H.264 clip (GOP 60, MSR-VTT-like), one core, best of 3,
# 12 frames at 224: PyAV 0.07 s (GOP-wise seeking), decord 0.11 s; 4 frames at 64: 0.03 s vs 0.07 s.
# PyAV was also faster on all 22 real clips both decode (12 frames at 224), applies mirrors, and decodes
# what decord 0.6 cannot (AV1, VVC, short MPEG-TS); decord is the fallback.
AUTO_ORDER: tuple[BackendName, ...] = ("pyav", "decord")


class DecodeOptions(TypedDict):
    """The keyword arguments of :func:`decode_local` that ``decode_video`` forwards (typed for ``**``)."""

    max_frames: int
    framerate: float
    size: int
    start: float | None
    end: float | None
    decoder: DecoderName
    uri: str
    int_fps: bool


def decode_local(
    source: Source,
    *,
    max_frames: int,
    framerate: float,
    size: int,
    start: float | None = None,
    end: float | None = None,
    decoder: DecoderName = "auto",
    uri: str = "<bytes>",
    int_fps: bool = False,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`vidret.data.video.decode_video` in the calling process, with no timeout (what the timeout
    worker runs)."""
    if decoder not in ("auto", *_READERS):
        raise ValueError(f"decoder must be 'auto', 'pyav' or 'decord', got {decoder!r}")
    if size < 1 or max_frames < 1:
        raise ValueError(f"size and max_frames must be >= 1, got size={size}, max_frames={max_frames}")
    check_exists(source, uri)
    pick = make_pick(framerate, max_frames, start, end, int_fps)
    order: tuple[BackendName, ...] = AUTO_ORDER if decoder == "auto" else (decoder,)
    errors: dict[BackendName, DecodeError] = {}
    for name in order:
        try:
            clip = _READERS[name](source, pick, size, uri, threads=threads)
            break
        except DecodeError as exc:
            errors[name] = exc
            if exc.reason == "missing":
                raise
    else:
        primary = errors[order[0]]  # the primary back end's reason; a fallback's text is for debugging only
        for name, err in errors.items():
            if err is not primary:
                log.debug("fallback %s also failed on %s: %s", name, uri, err)
        raise DecodeError(uri, primary.reason, primary.detail) from None
    frames_FSS3 = np.zeros((max_frames, size, size, 3), dtype=np.uint8)
    mask_F = np.zeros((max_frames,), dtype=np.int64)
    n = clip.frames_NSS3.shape[0]
    frames_FSS3[:n] = clip.frames_NSS3
    mask_F[:n] = 1
    return frames_FSS3, mask_F


def time_decoders(
    source: Source | str,
    *,
    max_frames: int = 12,
    framerate: float = 1.0,
    size: int = 224,
    repeats: int = 3,
) -> dict[str, float | str]:
    """Best-of-``repeats`` wall seconds per back end for one file (in-process); a failing back end maps to
    its DecodeError reason. The measurement behind :data:`AUTO_ORDER`; ``benchmarks/`` calls it at scale."""
    out: dict[str, float | str] = {}
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            source = fh.read()
    for name in _READERS:
        best = math.inf
        try:
            for _ in range(repeats):
                t = time.perf_counter()
                decode_local(source, max_frames=max_frames, framerate=framerate, size=size, decoder=name)
                best = min(best, time.perf_counter() - t)
            out[name] = best
        except DecodeError as exc:
            out[name] = exc.reason
    return out
