"""Gaussian diffusion over candidate-score vectors, apart from the denoiser (docs/method.md §3.5,
docs/method.md §4).

Shape legend: B batch (queries in training), Q queries, K candidates, T steps.

The state x_BK is one score per candidate; the clean target is [1, neg, ..., neg] with the positive at
index 0. The denoiser predicts x0 directly (START_X). Only three pieces of the DDPM machinery are used by
the method: the forward process ``q_sample``, the cross-entropy "KL" training loss, and deterministic DDIM
(eta = 0). The posterior is kept for completeness and tests. Buffers are float64 numpy arrays, cast to the
state's dtype on extraction, as in improved-diffusion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from vidret.config import DiffusionConfig
from vidret.diffusion.schedule import betas as make_betas

Denoiser = Callable[..., Tensor]
"""``denoiser(x_BK, t_B, **cond) -> x0_hat_BK``."""


class GaussianDiffusion:
    """The forward process, the training loss and DDIM sampling for a fixed beta schedule."""

    def __init__(self, betas_T: np.ndarray) -> None:
        betas_T = np.asarray(betas_T, dtype=np.float64)
        if betas_T.ndim != 1 or betas_T.size == 0:
            raise ValueError(f"betas: expected a non-empty 1-D array, got shape {betas_T.shape}")
        if not ((betas_T > 0).all() and (betas_T < 1).all()):
            raise ValueError("betas: expected every beta in (0, 1) (beta = 1 makes abar_t = 0)")
        self.num_steps = int(betas_T.size)
        self.betas = betas_T
        alphas = 1.0 - betas_T
        self.alphas_cumprod = np.cumprod(alphas)  # abar_t
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])  # abar_{t-1}, abar_{-1} = 1
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_t (1 - abar_{t-1}) / (1 - abar_t))
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas_T * (1.0 - self.alphas_cumprod_prev) / one_minus
        # the variance is 0 at t = 0: clip the log by repeating index 1 (improved-diffusion)
        clip_from = self.posterior_variance[1] if self.num_steps > 1 else self.posterior_variance[0]
        self.posterior_log_variance_clipped = np.log(np.append(clip_from, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas_T * np.sqrt(self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / one_minus

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        """The process of ``cfg.schedule`` with ``cfg.steps`` steps."""
        return cls(make_betas(cfg.schedule, cfg.steps))

    # -- helpers -------------------------------------------------------------------------------------
    def _extract(self, arr_T: np.ndarray, t_B: Tensor, like: Tensor) -> Tensor:
        """arr[t] as a (B, 1, ...) tensor broadcastable to ``like``, in ``like``'s dtype and device."""
        if t_B.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"t: expected an integer tensor of step indices, got {t_B.dtype}")
        t_np = t_B.detach().cpu().numpy()
        if t_np.size and (t_np.min() < 0 or t_np.max() >= self.num_steps):
            raise ValueError(
                f"t: expected step indices in [0, {self.num_steps - 1}], got {t_np.min()}..{t_np.max()}"
            )
        out = torch.from_numpy(arr_T[t_np]).to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """t_B drawn uniformly from {0, ..., T-1} (the upstream UniformSampler)."""
        t = torch.randint(0, self.num_steps, (batch,), generator=generator)
        return t.to(device) if device is not None else t

    # -- forward process -----------------------------------------------------------------------------
    def q_sample(self, x0_BK: Tensor, t_B: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I) (DDPM eq. 4)."""
        if noise is None:
            noise = torch.randn_like(x0_BK)
        if noise.shape != x0_BK.shape:
            raise ValueError(f"noise: expected shape {tuple(x0_BK.shape)}, got {tuple(noise.shape)}")
        return (
            self._extract(self.sqrt_alphas_cumprod, t_B, x0_BK) * x0_BK
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t_B, x0_BK) * noise
        )

    def q_posterior_mean_variance(
        self, x0_BK: Tensor, xt_BK: Tensor, t_B: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."""
        mean = (
            self._extract(self.posterior_mean_coef1, t_B, xt_BK) * x0_BK
            + self._extract(self.posterior_mean_coef2, t_B, xt_BK) * xt_BK
        )
        var = self._extract(self.posterior_variance, t_B, xt_BK).expand_as(xt_BK)
        log_var = self._extract(self.posterior_log_variance_clipped, t_B, xt_BK).expand_as(xt_BK)
        return mean, var, log_var

    # -- training ------------------------------------------------------------------------------------
    def training_loss(
        self,
        denoiser: Denoiser,
        x0_BK: Tensor,
        t_B: Tensor,
        cond: Mapping[str, Tensor],
        d_temp: float,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The method's "KL" loss: mean_b -log softmax(d_temp * x0_hat_b)_0 (docs/method.md §3.5).

        ``x_t = q_sample(x0, t, noise)`` with fresh noise unless given; the denoiser predicts x0 and the
        target class is the positive at index 0 whatever ``x0`` holds (``neg`` only changes what is noised).
        Returns a scalar averaged over the batch.
        """
        xt_BK = self.q_sample(x0_BK, t_B, noise)
        x0_hat_BK = denoiser(xt_BK, t_B, **cond)
        if x0_hat_BK.shape != x0_BK.shape:
            raise ValueError(
                f"denoiser: expected output shape {tuple(x0_BK.shape)}, got {tuple(x0_hat_BK.shape)}"
            )
        target_B = torch.zeros(x0_BK.shape[0], dtype=torch.long, device=x0_BK.device)
        return F.cross_entropy(d_temp * x0_hat_BK.float(), target_B)

    # -- DDIM ----------------------------------------------------------------------------------------
    def ddim_timesteps(self, num_steps: int | None = None) -> list[int]:
        """The increasing steps visited by DDIM: all T, or ``num_steps`` evenly spaced ones.

        Matches improved-diffusion ``space_timesteps(T, [S])``: round(i (T-1)/(S-1)) for i < S.
        """
        if num_steps is None or num_steps == self.num_steps:
            return list(range(self.num_steps))
        if not 1 <= num_steps <= self.num_steps:
            raise ValueError(
                f"diffusion.sample_steps: expected an integer in [1, {self.num_steps}], got {num_steps}"
            )
        if num_steps == 1:
            return [0]
        stride = (self.num_steps - 1) / (num_steps - 1)
        return [round(i * stride) for i in range(num_steps)]

    def predict_eps(self, xt_BK: Tensor, t_B: Tensor, x0_BK: Tensor) -> Tensor:
        """eps_hat = (x_t / sqrt(abar_t) - x0_hat) / sqrt(1 / abar_t - 1) (DDIM eq. 12 solved for eps)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t_B, xt_BK) * xt_BK - x0_BK) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t_B, xt_BK
        )

    def ddim_step(
        self,
        denoiser: Denoiser,
        xt_BK: Tensor,
        t: int,
        t_prev: int | None,
        cond: Mapping[str, Tensor],
        clip_denoised: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """One eta = 0 DDIM step from step ``t`` to ``t_prev`` (None: the end, abar_prev = 1).

        x0_hat = clamp(denoiser(x_t, t), -1, 1); x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat
        (DDIM eq. 12 with sigma = 0). Returns (x_prev, x0_hat).
        """
        if not 0 <= t < self.num_steps or (t_prev is not None and not 0 <= t_prev < t):
            raise ValueError(
                f"ddim_step: expected 0 <= t_prev < t < {self.num_steps}, got t={t}, t_prev={t_prev}"
            )
        t_B = torch.full((xt_BK.shape[0],), t, dtype=torch.long, device=xt_BK.device)
        x0_hat = denoiser(xt_BK, t_B, **cond)
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        # predict_eps with the step's scalars (no device round trip for t)
        eps_hat = (float(self.sqrt_recip_alphas_cumprod[t]) * xt_BK - x0_hat) / float(
            self.sqrt_recipm1_alphas_cumprod[t]
        )
        abar_prev = 1.0 if t_prev is None else float(self.alphas_cumprod[t_prev])
        x_prev = abar_prev**0.5 * x0_hat + (1.0 - abar_prev) ** 0.5 * eps_hat
        return x_prev, x0_hat

    @torch.no_grad()
    def ddim_sample(
        self,
        denoiser: Denoiser,
        shape: Sequence[int],
        cond: Mapping[str, Tensor],
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
        num_steps: int | None = None,
    ) -> Tensor:
        """Deterministic DDIM (eta = 0) from x_T = ``noise`` (or N(0, I) from ``generator``) to x_0.

        Visits ``ddim_timesteps(num_steps)`` downwards; the last step has abar_prev = 1, so the result is
        the (clamped, if ``clip_denoised``) x0_hat of the final step (docs/method.md §4.4). Returns shape
        ``shape``.
        """
        shape = tuple(int(s) for s in shape)
        device = next((v.device for v in cond.values()), torch.device("cpu"))
        if noise is None:
            x = torch.randn(shape, generator=generator, device=generator.device if generator else device)
            x = x.to(device)
        else:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise: expected shape {shape}, got {tuple(noise.shape)}")
            x = noise.to(device)
        steps = self.ddim_timesteps(num_steps)
        for i in range(len(steps) - 1, -1, -1):
            x, _ = self.ddim_step(denoiser, x, steps[i], steps[i - 1] if i > 0 else None, cond, clip_denoised)
        return x


# -- seeded initial noise ------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic is exact in numpy)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def seeded_noise(
    query_ids_Q: Tensor, num_candidates: int, seed: int, device: torch.device | str | None = None
) -> Tensor:
    """Initial DDIM noise (Q, K) ~ N(0, I) whose row q depends only on (seed, query_ids[q]).

    A counter-based generator (splitmix64 hash of (seed, query id, index) + Box-Muller), so results do not
    depend on batching, chunking, worker count or device. Returned as float32 on ``device``.
    """
    if query_ids_Q.ndim != 1:
        raise ValueError(f"query_ids: expected a 1-D tensor, got shape {tuple(query_ids_Q.shape)}")
    ids = query_ids_Q.detach().cpu().numpy().astype(np.int64).astype(np.uint64)
    key = _splitmix64(np.array([seed], dtype=np.int64).astype(np.uint64))
    row = _splitmix64(key + ids)[:, None]  # (Q, 1)
    counters = np.arange(2 * num_candidates, dtype=np.uint64)[None, :]  # two uniforms per normal
    bits = _splitmix64(_splitmix64(row + counters * _GOLDEN))
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
    u1, u2 = u[:, 0::2], u[:, 1::2]
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy(z.astype(np.float32)).to(device if device is not None else "cpu")
