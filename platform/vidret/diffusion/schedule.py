"""Noise schedules (float64, numpy) for the Gaussian diffusion re-ranker (docs/method.md §3.5).

Shape legend: T steps.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

ScheduleName = Literal["cosine", "linear"]

_COSINE_OFFSET = 0.008  # the "s" of Nichol & Dhariwal's cosine schedule
_MAX_BETA = 0.999  # cosine betas are clipped here to avoid a singular last step


def _cosine_alpha_bar(s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """abar(s) = cos^2(((s + 0.008) / 1.008) * pi / 2) for s in [0, 1]."""
    return np.cos((s + _COSINE_OFFSET) / (1.0 + _COSINE_OFFSET) * math.pi / 2) ** 2


def betas(name: ScheduleName, steps: int) -> npt.NDArray[np.float64]:
    """Return the float64 betas_T of the named schedule.

    ``cosine``: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999) for i = 0..T-1.
    ``linear``: evenly spaced from 1e-4 * 1000/T to 0.02 * 1000/T (scaled so any T matches T=1000).
    """
    if steps < 1:
        raise ValueError(f"diffusion.steps: expected an integer >= 1, got {steps!r}")
    if name == "cosine":
        i = np.arange(steps, dtype=np.float64)
        ratio = _cosine_alpha_bar((i + 1) / steps) / _cosine_alpha_bar(i / steps)
        return np.minimum(1.0 - ratio, _MAX_BETA)
    if name == "linear":
        if steps <= 20:
            raise ValueError(
                f"diffusion.steps: the linear schedule needs more than 20 steps (its last beta is "
                f"0.02 * 1000 / T), got {steps}"
            )
        scale = 1000.0 / steps
        return np.linspace(1e-4 * scale, 0.02 * scale, steps, dtype=np.float64)
    raise ValueError(f"diffusion.schedule: expected 'cosine' or 'linear', got {name!r}")
