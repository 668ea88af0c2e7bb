"""Frame geometry helpers: display-matrix orientation, short-side bicubic resize, centre crop.

Shape legend: H height, W width, S output side (``size``); frames are ``uint8`` RGB ``(H, W, 3)``.

The method's image pipeline is PIL ``Resize(size, bicubic)`` on the short side followed by
``CenterCrop(size)`` (CLIP's preprocessing, as the method uses it). We keep PIL's bicubic filter
(antialiased on
downscaling, as torchvision's PIL path is) so frames match what CLIP preprocessing produces; normalisation
to float happens later, on the batch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# A display transform is the sign pattern of the upper-left 2x2 block of FFmpeg's 3x3 display matrix:
# (a, b, c, d) with a pixel (x, y) of the decoded frame shown at (a*x + c*y, b*x + d*y) (plus a translation
# that keeps coordinates non-negative). Rotations by multiples of 90 degrees and reflections are the
# 8 patterns with exactly one non-zero entry per row; IDENTITY means "show as decoded".
DisplayTransform = tuple[int, int, int, int]
IDENTITY: DisplayTransform = (1, 0, 0, 1)


def display_transform_from_matrix(matrix_33: np.ndarray) -> DisplayTransform:
    """Reduce an FFmpeg display matrix (3, 3) int32 (16.16 fixed point) to a 90-degree display transform.

    Matrices that are not a multiple of 90 degrees (rare; arbitrary-angle rotations) snap to the nearest
    axis-aligned pattern, i.e. the closest rotation by a multiple of 90 degrees, keeping any reflection.
    """
    m = np.asarray(matrix_33, dtype=np.float64).reshape(3, 3)[:2, :2]
    if not np.all(np.isfinite(m)) or not np.any(m):
        return IDENTITY
    if abs(m[0, 0]) + abs(m[1, 1]) >= abs(m[0, 1]) + abs(m[1, 0]):
        a, d = int(np.sign(m[0, 0]) or 1), int(np.sign(m[1, 1]) or 1)
        return (a, 0, 0, d)
    b, c = int(np.sign(m[0, 1]) or 1), int(np.sign(m[1, 0]) or 1)
    return (0, b, c, 0)


def transform_from_rotation(degrees_ccw: int) -> DisplayTransform:
    """Display transform of a rotation by ``degrees_ccw`` (FFmpeg's sign: -90 turns the image clockwise),
    snapped to a multiple of 90 degrees."""
    quarter = round(degrees_ccw / 90.0) % 4
    return [IDENTITY, (0, -1, 1, 0), (-1, 0, 0, -1), (0, 1, -1, 0)][quarter]


def apply_display_transform(img_HW3: np.ndarray, transform: DisplayTransform) -> np.ndarray:
    """Return the frame as it is meant to be displayed: (H, W, 3) -> (H', W', 3) with H', W' swapped on
    90/270.

    ``transform`` comes from :func:`display_transform_from_matrix`. The result is a view when possible.
    """
    a, b, c, d = transform
    if b == 0 and c == 0:
        return img_HW3[:: (d or 1), :: (a or 1)]
    # (x, y) -> (c*y, b*x): the displayed row is (+/-) the decoded column, so transpose, then flip.
    return img_HW3.transpose(1, 0, 2)[::b, ::c]


def displayed_size(width: int, height: int, transform: DisplayTransform, sar: float = 1.0) -> tuple[int, int]:
    """Displayed ``(width, height)`` of a coded ``width x height`` frame with sample aspect ratio ``sar``
    (a coded pixel is shown ``sar`` times as wide as tall; FFmpeg's display width is ``width * sar``) under
    ``transform``."""
    width = max(1, round(width * sar))
    return (height, width) if transform[0] == 0 else (width, height)


def rotation_degrees(transform: DisplayTransform) -> int:
    """Counter-clockwise rotation in degrees (0, 90, 180, 270) of ``transform``, ignoring any reflection."""
    _a, b, _, d = transform
    if b == 0:
        return 0 if d > 0 else 180  # (1,0,0,1) identity / vflip; (-1,0,0,-1) is 180 degrees
    return 90 if b < 0 else 270


def is_reflection(transform: DisplayTransform) -> bool:
    """True when ``transform`` mirrors the image (its determinant is negative)."""
    a, b, c, d = transform
    return a * d - b * c < 0


def resize_short_side(img: Image.Image | np.ndarray, size: int, sar: float = 1.0) -> np.ndarray:
    """Resize so the displayed short side equals ``size`` with PIL bicubic, keeping the displayed aspect
    ratio; -> (H', W', 3).

    ``sar`` is the sample aspect ratio: the frame is shown ``W * sar`` wide, so non-square pixels become
    square in the same single resize. The long side is ``round(long * size / short)`` (at least ``size``),
    like torchvision's ``Resize(int)`` up to rounding.
    """
    if size <= 0:
        raise ValueError(f"size must be a positive integer, got {size}")
    pil = img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    w, h = pil.size
    if min(w, h) <= 0 or not sar > 0:
        raise ValueError(f"cannot resize an empty frame of size {w}x{h} (sample aspect ratio {sar})")
    shown_w = w * sar
    if shown_w <= h:
        new_w, new_h = size, max(size, round(h * size / shown_w))
    else:
        new_w, new_h = max(size, round(shown_w * size / h)), size
    if (new_w, new_h) != (w, h):
        pil = pil.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


def center_crop(img_HW3: np.ndarray, size: int) -> np.ndarray:
    """Centre crop (H, W, 3) to (size, size, 3); both sides must be >= size. Offsets round like
    torchvision."""
    h, w = img_HW3.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop a {w}x{h} frame to {size}x{size}")
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return img_HW3[top : top + size, left : left + size]


def frame_to_square(
    img: Image.Image | np.ndarray, size: int, transform: DisplayTransform = IDENTITY, sar: float = 1.0
) -> np.ndarray:
    """Decoded frame -> upright, short-side-resized, centre-cropped (size, size, 3) uint8 (C-contiguous).

    ``sar`` (sample aspect ratio, in coded orientation) is applied by the resize, before the transform.
    Resizing happens before the display transform (resizing is orientation-symmetric and this keeps the
    numpy work on the small image); the crop happens after it, so odd crop offsets land on the displayed
    image exactly as they would on a frame that had been rotated first.
    """
    small_HW3 = resize_short_side(img, size, sar)
    upright_HW3 = apply_display_transform(small_HW3, transform)
    return np.ascontiguousarray(center_crop(upright_HW3, size))
