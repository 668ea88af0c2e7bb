"""The decord 0.6 back end (bundled FFmpeg 4.1): ``read_decord`` with the same shape as ``read_pyav``.

Shape legend: N sampled frames, S output side; frames are ``uint8`` RGB ``(N, S, S, 3)``.

decord seeks to the keyframe before each requested frame. It reads file objects and bytes wholly into
memory, applies the container's rotation but not its reflection, and fails on AV1, VVC, GIF, short MPEG-TS
and streams without a duration; ``auto`` falls back to PyAV then.
"""

from __future__ import annotations

import numpy as np

from vidret.data.video.pyav_backend import pyav_first_frame
from vidret.data.video.transforms import (
    IDENTITY,
    DisplayTransform,
    apply_display_transform,
    displayed_size,
    frame_to_square,
    is_reflection,
)
from vidret.data.video.types import Clip, DecodeError, Pick, Source, as_rate, choose_fps, rewound


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
    a, b, _c, _d = t
    if a == 0:
        return (0, b, -b, 0)  # rotation matrices have c == -b
    return (a, 0, 0, a)


def _inverse(t: DisplayTransform) -> DisplayTransform:
    return _as_transform(_as_matrix(t).T)  # signed permutation matrices are orthogonal


def _compose(first: DisplayTransform, then: DisplayTransform) -> DisplayTransform:
    """Transform applying ``first`` then ``then`` (row-vector convention: p' = p @ M)."""
    return _as_transform(_as_matrix(first) @ _as_matrix(then))
