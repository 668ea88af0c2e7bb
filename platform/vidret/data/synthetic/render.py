"""Pixels for a ``VideoPlan``: numpy frames and a deterministic H.264 mp4 encoder (PyAV/libx264).

Frames are ``uint8`` arrays ``(F, size, size, 3)`` RGB. The encoder runs x264 single-threaded with fixed
options, so the same frames give the same bytes on every run and in every process.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

from vidret.data.synthetic.plan import Background, ObjectPlan, VideoPlan

RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (40, 80, 235),
    "yellow": (240, 220, 40),
    "purple": (155, 55, 210),
    "white": (245, 245, 245),
}
# Fixed x264 settings: one thread (multi-threaded x264 output depends on scheduling), no B-frames or
# look-ahead (tune=zerolatency) so every frame is decodable in order by decord and PyAV alike.
ENCODER_OPTIONS: dict[str, str] = {"preset": "veryfast", "tune": "zerolatency", "crf": "20", "threads": "1"}


def render_background(bg: Background, size: int) -> np.ndarray:
    """Static distractor background ``(size, size, 3)`` uint8."""
    base = np.empty((size, size, 3), np.float32)
    base[:] = bg.rgb
    if bg.kind == "noise":
        rng = np.random.default_rng(bg.seed)
        base += rng.normal(0.0, bg.amplitude, size=(size, size, 1)).astype(np.float32)
    elif bg.kind == "stripes":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        phase = (xx * np.cos(bg.angle) + yy * np.sin(bg.angle)) / bg.period
        base[np.sin(2 * np.pi * phase) > 0] = bg.rgb2
    elif bg.kind != "plain":
        raise ValueError(f"background kind: expected one of plain, noise, stripes, got {bg.kind!r}")
    return np.clip(base, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, x: float, y: float, s: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean ``(size, size)`` mask; ``x, y, s`` in pixels (centre and bounding-box side)."""
    h = s / 2
    if shape == "square":
        return (np.abs(xx - x) <= h) & (np.abs(yy - y) <= h)
    if shape == "circle":
        return (xx - x) ** 2 + (yy - y) ** 2 <= h * h
    if shape == "triangle":  # apex up: half-width grows from 0 at the top to h at the base
        top = y - h
        return (yy >= top) & (yy <= y + h) & (np.abs(xx - x) <= (yy - top) / 2)
    raise ValueError(f"shape: expected square, circle or triangle, got {shape!r}")


def render_frames(plan: VideoPlan, size: int, frames: int) -> np.ndarray:
    """Draw ``plan`` as ``(frames, size, size, 3)`` uint8 RGB; later objects are drawn on top."""
    if frames < 2:
        raise ValueError(f"frames: expected >= 2, got {frames}")
    background = render_background(plan.background, size)
    out_FHW3 = np.broadcast_to(background, (frames, size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    for k in range(frames):
        t = k / (frames - 1)
        for obj in plan.objects:
            _draw(out_FHW3[k], obj, t, size, yy, xx)
    return out_FHW3


def _draw(frame: np.ndarray, obj: ObjectPlan, t: float, size: int, yy: np.ndarray, xx: np.ndarray) -> None:
    state = obj.state_at(t)
    if state is not None:
        x, y, s = (v * size for v in state)
        frame[_shape_mask(obj.shape, x, y, s, yy, xx)] = RGB[obj.colour]


def encode_mp4(frames_FHW3: np.ndarray, fps: int) -> bytes:
    """H.264 (yuv420p) mp4 bytes of ``(F, H, W, 3)`` uint8 RGB frames; H and W must be even."""
    if frames_FHW3.ndim != 4 or frames_FHW3.shape[-1] != 3 or frames_FHW3.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 (F, H, W, 3), got {frames_FHW3.dtype} {frames_FHW3.shape}")
    _, height, width, _ = frames_FHW3.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = dict(ENCODER_OPTIONS)
        for k, rgb in enumerate(frames_FHW3):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def render_chunk(plans: list[VideoPlan], size: int, frames: int, fps: int) -> list[bytes]:
    """Encoded mp4 bytes for each plan, in order. Module-level so worker processes can run it."""
    return [encode_mp4(render_frames(p, size, frames), fps) for p in plans]
