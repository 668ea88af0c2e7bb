"""The method's frame sampling rule (DiffusionRet/CLIP4Clip: ``framerate`` frames per second, at most
``max_frames``, uniform subsampling beyond), with the real frame rate.

Shape legend: N sampled frames.
"""

from __future__ import annotations

import math

import numpy as np

from vidret.data.video.types import Pick

_EPS = 1e-6  # guards floor() against t * fps landing a hair below an integer (e.g. 0.7 * 30)


def sample_indices(
    num_frames: int,
    fps: float,
    *,
    framerate: float,
    max_frames: int,
    start: float | None = None,
    end: float | None = None,
    int_fps: bool = False,
) -> np.ndarray:
    """Frame indices (N,) int64, N <= max_frames, increasing, chosen by the method's sampling rule.

    Clean rule (default): sample times ``t_k = t0 + k / framerate`` for ``k = 0, 1, ...`` while
    ``t_k <= t1``, where ``[t0, t1]`` is ``[start, end]`` clipped to the video (whole video
    ``[0, num_frames / fps]`` when None). The frame shown at time ``t`` is ``floor(t * fps)``: the frame whose
    display interval ``[i / fps, (i + 1) / fps)`` contains ``t``. Indices past the last frame are dropped and
    duplicates (framerate > fps) merged. If the segment starts after the last frame, the last frame is used
    (at least one frame always). When more than ``max_frames`` remain, keep
    ``idx[np.linspace(0, n - 1, max_frames, dtype=int)]`` (uniform), as upstream does.

    ``int_fps=True`` reproduces the released code exactly (upstream bug #13): ``fps`` truncated with
    ``int()``, whole seconds ``s`` from ``start`` to ``end`` inclusive (``end`` clipped to
    ``ceil(num_frames / int(fps))``), frames ``int(s * fps) + j * (fps // framerate)`` for
    ``j < framerate``, stopping at the first index past the end. With integer fps and a framerate dividing
    it both rules agree; at 29.97 fps upstream's second ``s`` lands on frame ``29 s`` (drifting ~1 s every
    30 s) where the clean rule gives ``floor(29.97 s)``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    if not (math.isfinite(framerate) and framerate > 0):
        raise ValueError(f"framerate must be a finite number > 0, got {framerate}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if start is not None and end is not None and end < start:
        raise ValueError(f"end ({end}) must be >= start ({start})")
    idx = (
        _faithful(num_frames, fps, framerate, start, end)
        if int_fps
        else _clean(num_frames, fps, framerate, start, end)
    )
    if idx.size > max_frames:
        idx = idx[np.linspace(0, idx.size - 1, max_frames, dtype=int)]
    return idx.astype(np.int64)


def _clean(
    num_frames: int, fps: float, framerate: float, start: float | None, end: float | None
) -> np.ndarray:
    duration = num_frames / fps
    t0 = 0.0 if start is None else float(start)
    t1 = duration if end is None else min(float(end), duration)
    count = math.floor((t1 - t0) * framerate + _EPS) + 1 if t1 >= t0 else 0
    times = t0 + np.arange(max(count, 0), dtype=np.float64) / framerate
    idx = np.floor(times * fps + _EPS).astype(np.int64)
    idx = np.unique(idx[idx < num_frames])
    if idx.size == 0:  # the segment starts after the last frame
        idx = np.array([min(math.floor(t0 * fps + _EPS), num_frames - 1)], dtype=np.int64)
    return idx


def _faithful(
    num_frames: int, fps: float, framerate: float, start: float | None, end: float | None
) -> np.ndarray:
    fps_i = int(fps)
    if fps_i == 0:
        raise ValueError(f"int_fps=True needs fps >= 1 (upstream divides by int(fps)), got {fps}")
    if framerate != int(framerate):
        raise ValueError(f"int_fps=True needs an integer framerate (upstream's is an int), got {framerate}")
    rate = int(framerate)
    if rate > fps_i:
        raise ValueError(
            f"int_fps=True needs framerate <= int(fps) (upstream asserts it), got {rate} > {fps_i}"
        )
    total = (num_frames + fps_i - 1) // fps_i
    start_s: float = 0 if start is None else start
    end_s: float = total if (start is None or end is None) else (end if end <= total else total)
    offsets = np.arange(0, fps_i, max(fps_i // rate, 1))[:rate]
    out: list[int] = []
    for sec in np.arange(start_s, end_s + 1):
        base = int(sec * fps_i)
        for off in offsets:
            if base + int(off) >= num_frames:  # upstream's read fails here and both loops stop
                return np.array(out, dtype=np.int64)
            out.append(base + int(off))
    return np.array(out, dtype=np.int64)


def make_pick(
    framerate: float, max_frames: int, start: float | None, end: float | None, int_fps: bool
) -> Pick:
    """:func:`sample_indices` with everything but the stream's frame count and rate bound."""

    def pick(num_frames: int, fps: float) -> np.ndarray:
        return sample_indices(
            num_frames, fps, framerate=framerate, max_frames=max_frames, start=start, end=end, int_fps=int_fps
        )

    return pick
