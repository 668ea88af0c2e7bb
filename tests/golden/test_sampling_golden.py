"""Golden frame indices of the sampling rule (``vidret.data.video.sample_indices``).

Each case is worked out by hand from the rule in docs/method.md §5.1: one frame per 1/framerate
seconds from the segment start, the frame shown at time t is floor(t * fps), then uniform subsampling with
``np.linspace(0, n - 1, max_frames, dtype=int)`` when more than max_frames remain.
"""

from __future__ import annotations

import numpy as np
import pytest

from vidret.data.video import sample_indices

NTSC = 30000 / 1001  # 29.97 fps

# (id, num_frames, fps, framerate, max_frames, start, end, expected clean indices)
CLEAN_CASES = [
    ("30fps_10s", 300, 30.0, 1.0, 12, None, None, [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]),
    # 20 one-per-second frames, linspace(0, 19, 12).astype(int) = 0 1 3 5 6 8 10 12 13 15 17 19 (times 25)
    (
        "25fps_20s_to_12",
        500,
        25.0,
        1.0,
        12,
        None,
        None,
        [0, 25, 75, 125, 150, 200, 250, 300, 325, 375, 425, 475],
    ),
    ("segment_2_to_5", 300, 30.0, 1.0, 12, 2.0, 5.0, [60, 90, 120, 150]),
    ("segment_fractional", 300, 30.0, 1.0, 12, 2.5, 4.0, [75, 105]),
    ("segment_end_past_video", 300, 30.0, 1.0, 12, 8.0, 100.0, [240, 270]),
    ("segment_after_video_end", 300, 30.0, 1.0, 12, 20.0, 25.0, [299]),
    ("framerate_2", 90, 30.0, 2.0, 12, None, None, [0, 15, 30, 45, 60, 75]),
    ("framerate_4_non_divisor", 30, 30.0, 4.0, 12, None, None, [0, 7, 15, 22]),
    ("shorter_than_1s", 10, 30.0, 1.0, 12, None, None, [0]),
    ("single_frame", 1, 24.0, 1.0, 12, None, None, [0]),
    ("framerate_above_fps_dedup", 5, 2.0, 4.0, 12, None, None, [0, 1, 2, 3, 4]),
    ("ntsc_29_97", 300, NTSC, 1.0, 12, None, None, [0, 29, 59, 89, 119, 149, 179, 209, 239, 269, 299]),
    ("max_frames_1", 300, 30.0, 1.0, 1, None, None, [0]),
    ("max_frames_4", 300, 30.0, 1.0, 4, None, None, [0, 90, 180, 270]),
    ("3fps_compressed", 30, 3.0, 1.0, 12, None, None, [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]),
]

# Upstream (int(fps)) indices; see the docstring of sample_indices for the rule.
FAITHFUL_CASES = [
    ("30fps_10s", 300, 30.0, 1.0, 12, None, None, [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]),
    ("ntsc_29_97", 300, NTSC, 1.0, 12, None, None, [0, 29, 58, 87, 116, 145, 174, 203, 232, 261, 290]),
    ("framerate_4_non_divisor", 30, 30.0, 4.0, 12, None, None, [0, 7, 14, 21]),
    ("framerate_2_25fps", 50, 25.0, 2.0, 12, None, None, [0, 12, 25, 37]),
    ("segment_2_to_5", 300, 30.0, 1.0, 12, 2, 5, [60, 90, 120, 150]),
    (
        "25fps_20s_to_12",
        500,
        25.0,
        1.0,
        12,
        None,
        None,
        [0, 25, 75, 125, 150, 200, 250, 300, 325, 375, 425, 475],
    ),
]


@pytest.mark.parametrize(
    ("num_frames", "fps", "framerate", "max_frames", "start", "end", "expected"),
    [c[1:] for c in CLEAN_CASES],
    ids=[c[0] for c in CLEAN_CASES],
)
def test_clean_rule_golden(num_frames, fps, framerate, max_frames, start, end, expected) -> None:
    got = sample_indices(num_frames, fps, framerate=framerate, max_frames=max_frames, start=start, end=end)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.array(expected))


@pytest.mark.parametrize(
    ("num_frames", "fps", "framerate", "max_frames", "start", "end", "expected"),
    [c[1:] for c in FAITHFUL_CASES],
    ids=[c[0] for c in FAITHFUL_CASES],
)
def test_int_fps_rule_reproduces_upstream(
    num_frames, fps, framerate, max_frames, start, end, expected
) -> None:
    got = sample_indices(
        num_frames, fps, framerate=framerate, max_frames=max_frames, start=start, end=end, int_fps=True
    )
    np.testing.assert_array_equal(got, np.array(expected))


def test_rules_agree_on_integer_fps_and_drift_apart_at_29_97() -> None:
    for n, fps in [(300, 30.0), (500, 25.0), (241, 24.0)]:
        clean = sample_indices(n, fps, framerate=1.0, max_frames=64)
        faithful = sample_indices(n, fps, framerate=1.0, max_frames=64, int_fps=True)
        np.testing.assert_array_equal(clean, faithful)
    # a 10-minute 29.97 fps video: upstream's "second 599" is frame 599 * 29 = 17371, i.e. 579.6 s
    clean = sample_indices(17982, NTSC, framerate=1.0, max_frames=1000)
    faithful = sample_indices(17982, NTSC, framerate=1.0, max_frames=1000, int_fps=True)
    assert clean[599] == 17952
    assert faithful[599] == 17371
    assert abs(clean[599] / NTSC - 599.0) < 1.0 / NTSC


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 0, "fps": 30.0}, "num_frames"),
        ({"num_frames": 10, "fps": 0.0}, "fps"),
        ({"num_frames": 10, "fps": float("nan")}, "fps"),
        ({"num_frames": 10, "fps": 30.0, "framerate": 0.0}, "framerate"),
        ({"num_frames": 10, "fps": 30.0, "max_frames": 0}, "max_frames"),
        ({"num_frames": 10, "fps": 30.0, "start": -1.0}, "start"),
        ({"num_frames": 10, "fps": 30.0, "start": 3.0, "end": 2.0}, "end"),
        ({"num_frames": 10, "fps": 0.5, "int_fps": True}, "int_fps"),
        ({"num_frames": 10, "fps": 30.0, "framerate": 1.5, "int_fps": True}, "integer framerate"),
        ({"num_frames": 10, "fps": 2.0, "framerate": 3.0, "int_fps": True}, "framerate <= int"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match) -> None:
    args = {"framerate": 1.0, "max_frames": 12} | kwargs
    with pytest.raises(ValueError, match=match):
        sample_indices(args.pop("num_frames"), args.pop("fps"), **args)
