"""Golden numbers of the noise schedules (docs/method.md §3.5): a silent change here changes every sample."""

import numpy as np
import pytest

from vidret.diffusion.process import GaussianDiffusion
from vidret.diffusion.schedule import betas


def test_cosine_t50_golden() -> None:
    b = betas("cosine", 50)
    assert b.dtype == np.float64
    assert b.shape == (50,)
    assert b[0] == pytest.approx(1.7475e-3, rel=1e-4)
    assert b[49] == 0.999  # clipped
    d = GaussianDiffusion(b)
    assert d.alphas_cumprod[0] == pytest.approx(0.99825, abs=1e-5)
    assert d.alphas_cumprod[25] == pytest.approx(0.4627, abs=1e-4)
    assert d.alphas_cumprod[49] == pytest.approx(9.7e-7, rel=2e-2)
    expected = [0.999, 0.966, 0.887, 0.766, 0.609, 0.423, 0.217, 0.001]
    np.testing.assert_allclose(d.sqrt_alphas_cumprod[0::7], expected, atol=6e-4)


def test_linear_t50_golden() -> None:
    b = betas("linear", 50)
    assert b[0] == pytest.approx(0.002)
    assert b[-1] == pytest.approx(0.4)
    np.testing.assert_allclose(np.diff(b), (0.4 - 0.002) / 49)


def test_linear_scales_with_steps() -> None:
    b = betas("linear", 1000)
    assert b[0] == pytest.approx(1e-4)
    assert b[-1] == pytest.approx(0.02)


def test_unknown_schedule_and_bad_steps() -> None:
    with pytest.raises(ValueError, match=r"diffusion\.schedule"):
        betas("quadratic", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"diffusion\.steps"):
        betas("cosine", 0)
