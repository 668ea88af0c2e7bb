"""Video decoding, numpy in / numpy out (no Ray here): the public API.

Shape legend: F frames (``max_frames``), S output side (``size``).

``decode_video`` returns ``frames (F, S, S, 3) uint8`` RGB, upright (the container's display matrix is
applied), short side resized to S with PIL bicubic then centre-cropped, zero-padded after the real frames,
and ``mask (F,) int64`` (1 real frame, 0 padding). Every failure is one :class:`DecodeError` whose
``reason`` is one of :data:`REASONS`.

Sampling rule: :func:`sample_indices`. Back ends: :mod:`.pyav_backend` and :mod:`.decord_backend`; ``auto``
tries :data:`AUTO_ORDER` in turn (:mod:`.local`). PyAV maps frame indices to packet timestamps with a
demux-only pass and decodes only the GOPs that hold chosen frames, falling back to a sequential decode that
counts frames when timestamps are unusable (edit lists, missing pts); both paths give bit-identical frames
on regular files. Decoder threads: 1.

Pixels: each chosen frame is converted to RGB at full size, resized with PIL bicubic (short side to S),
turned upright, then centre-cropped. Decoding at reduced size with swscale would be cheaper on 4K/8K
sources but is not the method's filter; the full-size conversion is paid only for the F chosen frames.

Timeouts: with ``timeout_s`` set, decoding runs in a persistent child process (:mod:`.worker`); a decode
that overruns kills that child (a fresh one starts for the next file) and raises
``DecodeError(reason="timeout")``. Without it, decoding runs in the calling process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vidret.config import DataConfig
from vidret.data.video.local import AUTO_ORDER, DecodeOptions, DecoderName, decode_local, time_decoders
from vidret.data.video.pyav_backend import pyav_first_frame
from vidret.data.video.sampling import sample_indices
from vidret.data.video.transforms import IDENTITY, apply_display_transform, displayed_size, is_reflection
from vidret.data.video.types import REASONS, DecodeError, Source, check_exists
from vidret.data.video.worker import default_worker

__all__ = [
    "AUTO_ORDER",
    "REASONS",
    "DecodeError",
    "decode_video",
    "decode_with_config",
    "probe",
    "sample_indices",
    "time_decoders",
    "upright_frame",
]


def probe(source: Source, *, uri: str = "<bytes>") -> dict[str, Any]:
    """Describe the first video stream (PyAV): stored size, sample aspect ratio, displayed size, rotation,
    fps,
    frame count, codec.

    Returns ``dict(width, height, coded_width, coded_height, sample_aspect_ratio, rotation, reflected, fps,
    num_frames, duration, codec)``. ``coded_width``/``coded_height`` are the stored size;
    ``sample_aspect_ratio`` is ``"num:den"`` (``"1:1"`` for square pixels); ``width``/``height`` are as
    displayed: the stored width times the sample aspect ratio, then swapped for 90/270 degree rotations.
    ``rotation`` is counter-clockwise degrees as FFmpeg reports it (``-90`` = turn clockwise);
    ``num_frames`` is the header count (or the packet count when the header has none) and may over-report.
    Decodes one frame (the display matrix travels on frames in FFmpeg 8).
    """
    check_exists(source, uri)
    info, transform, rotation, _ = pyav_first_frame(source, uri)
    width, height = displayed_size(info.width, info.height, transform, float(info.sar))
    return {
        "width": width,
        "height": height,
        "coded_width": info.width,
        "coded_height": info.height,
        "sample_aspect_ratio": f"{info.sar.numerator}:{info.sar.denominator}",
        "rotation": rotation,
        "reflected": is_reflection(transform),
        "fps": info.fps,
        "num_frames": info.num_frames,
        "duration": info.duration,
        "codec": info.codec,
    }


def upright_frame(source: Source, *, uri: str = "<bytes>") -> np.ndarray:
    """First frame as displayed (sample aspect ratio and display matrix applied), full resolution:
    (H, W, 3) uint8; for debugging."""
    check_exists(source, uri)
    info, transform, _, frame_HW3 = pyav_first_frame(source, uri, with_pixels=True)
    assert frame_HW3 is not None
    if info.sar != 1:
        shown_w, _ = displayed_size(info.width, info.height, IDENTITY, float(info.sar))
        frame_HW3 = np.asarray(
            Image.fromarray(frame_HW3).resize((shown_w, info.height), Image.Resampling.BICUBIC)
        )
    return np.ascontiguousarray(apply_display_transform(frame_HW3, transform))


def decode_video(
    source: Source,
    *,
    max_frames: int,
    framerate: float,
    size: int,
    start: float | None = None,
    end: float | None = None,
    decoder: DecoderName = "auto",
    uri: str = "<bytes>",
    timeout_s: float | None = None,
    int_fps: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one video into ``frames (F, S, S, 3) uint8`` and ``mask (F,) int64`` (F = max_frames, S = size).

    ``source``: bytes, a seekable binary file object (e.g. ``Storage.open_read``; PyAV streams it, decord
    reads it whole) or a local path. ``start``/``end`` select a segment in seconds. ``uri`` names the video
    in errors. With ``timeout_s`` the decode runs in this process's persistent decode worker (file objects
    are read into memory first) and overruns raise ``DecodeError(reason="timeout")``.
    """
    kwargs = DecodeOptions(
        max_frames=max_frames,
        framerate=framerate,
        size=size,
        start=start,
        end=end,
        decoder=decoder,
        uri=uri,
        int_fps=int_fps,
    )
    if timeout_s is None:
        return decode_local(source, **kwargs)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    return default_worker().decode(source, timeout_s=timeout_s, **kwargs)


def decode_with_config(
    source: Source,
    cfg: DataConfig,
    uri: str = "<bytes>",
    start: float | None = None,
    end: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decode_video` with ``max_frames``, ``framerate``, ``size``, ``decoder`` and the timeout
    (``decode_timeout_s``) from ``cfg``."""
    return decode_video(
        source,
        max_frames=cfg.max_frames,
        framerate=cfg.framerate,
        size=cfg.size,
        start=start,
        end=end,
        decoder=cfg.decoder,
        uri=uri,
        timeout_s=cfg.decode_timeout_s,
    )
