"""GaussianDiffusion: forward process, posterior, training loss and DDIM against hand computations."""

import math

import numpy as np
import pytest
import torch

from vidret.config import DiffusionConfig
from vidret.diffusion.process import GaussianDiffusion, seeded_noise
from vidret.diffusion.schedule import betas

torch.set_num_threads(1)


def _abar(i: int, steps: int = 50) -> float:
    """Cosine abar_i computed independently: prod_{j<=i} (1 - min(1 - f(j+1)/f(j), 0.999))."""
    f = lambda s: math.cos((s / steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    out = 1.0
    for j in range(i + 1):
        out *= 1.0 - min(1.0 - f(j + 1) / f(j), 0.999)
    return out


@pytest.fixture
def diff() -> GaussianDiffusion:
    return GaussianDiffusion.from_config(DiffusionConfig())


def test_q_sample_statistics(diff: GaussianDiffusion) -> None:
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 2), 1.0)
    x0[:, 1] = -0.5
    t = torch.full((n,), 10, dtype=torch.long)
    xt = diff.q_sample(x0, t, torch.randn(n, 2, generator=g, dtype=torch.float64).float())
    abar = _abar(10)
    np.testing.assert_allclose(xt.mean(0).numpy(), [math.sqrt(abar), -0.5 * math.sqrt(abar)], atol=6e-3)
    np.testing.assert_allclose(xt.var(0).numpy(), [1 - abar, 1 - abar], rtol=2e-2)


def test_q_sample_uses_given_noise_per_row(diff: GaussianDiffusion) -> None:
    x0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    noise = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    xt = diff.q_sample(x0, torch.tensor([0, 25]), noise)
    for row, t in enumerate([0, 25]):
        a = _abar(t)
        expect = [
            math.sqrt(a) + math.sqrt(1 - a) * noise[row, 0].item(),
            math.sqrt(1 - a) * noise[row, 1].item(),
        ]
        np.testing.assert_allclose(xt[row].numpy(), expect, rtol=1e-5)


def test_posterior_matches_gaussian_conjugacy(diff: GaussianDiffusion) -> None:
    # independent form: precision = 1/(1 - abar_prev) + alpha_t / beta_t
    x0, xt = torch.tensor([[0.7]]), torch.tensor([[-0.4]])
    for t in [1, 10, 30]:
        beta = float(diff.betas[t])
        abar_prev = _abar(t - 1)
        var = 1.0 / (1.0 / (1.0 - abar_prev) + (1.0 - beta) / beta)
        mean = var * (math.sqrt(abar_prev) * 0.7 / (1 - abar_prev) + math.sqrt(1 - beta) * -0.4 / beta)
        m, v, lv = diff.q_posterior_mean_variance(x0, xt, torch.tensor([t]))
        assert m.item() == pytest.approx(mean, rel=1e-5)
        assert v.item() == pytest.approx(var, rel=1e-5)
        assert lv.item() == pytest.approx(math.log(var), rel=1e-5)
    _, v0, lv0 = diff.q_posterior_mean_variance(x0, xt, torch.tensor([0]))
    assert v0.item() == 0.0
    assert lv0.item() == pytest.approx(math.log(diff.posterior_variance[1]), rel=1e-6)


def test_training_loss_hand_computed(diff: GaussianDiffusion) -> None:
    out = torch.tensor([[0.10, 0.05, -0.02], [-0.01, 0.03, 0.00]])
    seen = {}

    def denoiser(x_BK: torch.Tensor, t_B: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        seen["x"], seen["t"], seen["feat"] = x_BK, t_B, feat
        return out

    x0 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    noise = torch.tensor([[0.5, -0.5, 0.2], [0.0, 1.0, -1.0]])
    t = torch.tensor([3, 40])
    loss = diff.training_loss(denoiser, x0, t, {"feat": torch.ones(1)}, d_temp=100.0, noise=noise)
    # row 0: logits 10, 5, -2 ; row 1: -1, 3, 0 ; target index 0
    r0 = -(10 - math.log(math.exp(10) + math.exp(5) + math.exp(-2)))
    r1 = -(-1 - math.log(math.exp(-1) + math.exp(3) + math.exp(0)))
    assert loss.item() == pytest.approx((r0 + r1) / 2, rel=1e-5)
    torch.testing.assert_close(seen["x"], diff.q_sample(x0, t, noise))
    assert seen["t"].tolist() == [3, 40]


def test_one_ddim_step_hand_computed(diff: GaussianDiffusion) -> None:
    xt = torch.tensor([[0.5, -1.0, 0.2]])
    pred = torch.tensor([[2.0, 0.3, -3.0]])  # clamped to [1.0, 0.3, -1.0]
    x_prev, x0_hat = diff.ddim_step(lambda x, t: pred, xt, 25, 24, {}, clip_denoised=True)
    a_t, a_p = _abar(25), _abar(24)
    assert a_t == pytest.approx(0.4627, abs=1e-4)
    expect = []
    for x, p in zip([0.5, -1.0, 0.2], [1.0, 0.3, -1.0], strict=True):
        eps = (x / math.sqrt(a_t) - p) / math.sqrt(1 / a_t - 1)
        expect.append(math.sqrt(a_p) * p + math.sqrt(1 - a_p) * eps)
    np.testing.assert_allclose(x0_hat.numpy(), [[1.0, 0.3, -1.0]])
    np.testing.assert_allclose(x_prev.numpy(), [expect], rtol=1e-5)
    # without clamping the raw prediction is used
    _, raw = diff.ddim_step(lambda x, t: pred, xt, 25, 24, {}, clip_denoised=False)
    np.testing.assert_allclose(raw.numpy(), pred.numpy())


def test_ddim_sample_returns_last_clamped_x0_and_visits_all_steps(diff: GaussianDiffusion) -> None:
    visited: list[int] = []

    def denoiser(x_BK: torch.Tensor, t_B: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        visited.append(int(t_B[0]))
        return scale * x_BK + 0.1 * t_B[:, None].double()

    noise = torch.tensor([[0.3, -2.0], [1.5, 0.0]], dtype=torch.float64)  # float64 end to end
    out = diff.ddim_sample(denoiser, (2, 2), {"scale": torch.tensor(2.0)}, noise=noise)
    assert visited == list(range(49, -1, -1))
    # replay by hand: the result is the clamped prediction at t = 0 from the x after step t = 1
    x = noise.clone()
    for t in range(49, -1, -1):
        p = (2.0 * x + 0.1 * t).clamp(-1, 1)
        a_t = _abar(t)
        a_p = _abar(t - 1) if t > 0 else 1.0
        eps = (x / math.sqrt(a_t) - p) / math.sqrt(1 / a_t - 1)
        x = math.sqrt(a_p) * p + math.sqrt(1 - a_p) * eps
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x, rtol=1e-9, atol=1e-10)
    assert out.abs().max() <= 1.0


def test_ddim_respaced_steps(diff: GaussianDiffusion) -> None:
    assert diff.ddim_timesteps(None) == list(range(50))
    steps = diff.ddim_timesteps(10)
    assert len(steps) == 10
    assert steps[0] == 0
    assert steps[-1] == 49
    assert steps == sorted(set(steps))
    visited: list[int] = []
    diff.ddim_sample(
        lambda x, t: (visited.append(int(t[0])), x)[1], (1, 3), {}, noise=torch.zeros(1, 3), num_steps=10
    )
    assert visited == steps[::-1]
    with pytest.raises(ValueError, match="sample_steps"):
        diff.ddim_timesteps(51)


def test_bad_timesteps_rejected(diff: GaussianDiffusion) -> None:
    with pytest.raises(ValueError, match=r"\[0, 49\]"):
        diff.q_sample(torch.zeros(1, 2), torch.tensor([50]))
    with pytest.raises(TypeError, match="integer"):
        diff.q_sample(torch.zeros(1, 2), torch.tensor([1.0]))


def test_seeded_noise_independent_of_batching() -> None:
    full = seeded_noise(torch.arange(100), 16, seed=42)
    part = seeded_noise(torch.tensor([57, 3, 99]), 16, seed=42)
    torch.testing.assert_close(part, full[[57, 3, 99]], rtol=0, atol=0)
    assert not torch.equal(seeded_noise(torch.arange(100), 16, seed=43), full)
    assert not torch.equal(full[0], full[1])
    # prefix-stable in K: a row's first k values do not depend on K
    torch.testing.assert_close(seeded_noise(torch.arange(100), 8, seed=42), full[:, :8], rtol=0, atol=0)


def test_seeded_noise_is_standard_normal() -> None:
    z = seeded_noise(torch.arange(4000), 50, seed=7).double()
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1) < 0.01
    # no correlation between neighbouring queries or candidates
    assert abs(torch.corrcoef(torch.stack([z[:-1, 0], z[1:, 0]]))[0, 1].item()) < 0.05
    assert abs(torch.corrcoef(torch.stack([z[:, 0], z[:, 1]]))[0, 1].item()) < 0.05


def test_float64_buffers() -> None:
    d = GaussianDiffusion(betas("linear", 40))
    assert d.alphas_cumprod.dtype == np.float64
    assert d.num_steps == 40
    for bad in ([0.1, 1.5], [0.1, 1.0], [0.0, 0.1]):
        with pytest.raises(ValueError, match="betas"):
            GaussianDiffusion(np.array(bad))
    with pytest.raises(ValueError, match="more than 20"):
        betas("linear", 20)


def test_predict_eps_inverts_q_sample(diff: GaussianDiffusion) -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 6, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 12, 30, 48])
    torch.testing.assert_close(diff.predict_eps(diff.q_sample(x0, t, eps), t, x0), eps)
    with pytest.raises(ValueError, match="t_prev < t"):
        diff.ddim_step(lambda x, t: x, torch.zeros(1, 2), 5, 5, {})
