"""The two candidate denoisers of the generative re-ranker (method §3.4).

Shape legend: B batch (queries), K candidates, F frames, D width, E = 2D decoder width, U distinct steps,
X = 1 (one query per row) or K (one query per candidate).

Both predict x0_hat_BK from the noisy candidate scores x_BK, the step t_B and the stage-1 features:

* ``T2VDenoiser``: one query text (its EOT feature) against K candidate videos (frame features).
* ``V2TDenoiser``: one query video (frame features) against K candidate texts (EOT features).

They share every building block (``CandidateDenoiser``); a direction only decides which side attends
over frames and which side plays "query" in the query-candidate attention. Both are permutation
equivariant over candidates: there is no candidate position code.

Two evaluation paths give the same numbers up to float summation order:

* ``forward`` = ``encode`` + ``denoise``: the method's formula, read as written (the reference).
* ``encode`` + ``prepare`` once, then ``step`` per call: every map applied to (feature + cond(t)) is a
  bias-free Linear and the decoder's first layer acts on [h ; cand] = W_h h + W_c cand + b, so all
  candidate-sized projections are step-invariant. ``prepare`` computes them once (DDIM: once per chunk
  of queries for all steps); ``step`` only adds the per-row (B, D) terms of cond(t) and h. Per step that
  is O(B (D^2 + K D)) instead of O(B K D^2). Training uses it too (``RetrievalModel.generation_loss``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidret.config import DiffusionConfig

FrameSoftmax = Literal["mask_after", "renormalise"]


def init_linear_normal(module: nn.Module, std: float = 0.02) -> None:
    """Upstream init: every Linear / Embedding weight ~ N(0, std^2), biases 0 (method §2.2)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """pe[p, 2i] = sin(p / 10000^(2i/D)), pe[p, 2i+1] = cos(p / 10000^(2i/D)); shape (length, D)."""
    if dim % 2:
        raise ValueError(f"timestep embedding width: expected an even integer, got {dim}")
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class TimestepEmbedder(nn.Module):
    """cond_BD = Linear-SiLU-Linear(pe[t]) over a fixed sinusoidal table; t is the integer step."""

    def __init__(self, dim: int, max_steps: int = 5000) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_steps, dim), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t_B: Tensor) -> Tensor:
        return self.mlp(self.pe[t_B])


def frame_attention_weights(logits_BKF: Tensor, mask: Tensor, mode: FrameSoftmax) -> Tensor:
    """Softmax over frames of text-frame logits, with the padding mask (broadcastable to BKF).

    ``mask_after`` (faithful): softmax over all frames, then multiply by the mask, so padded frames stay in
    the denominator. ``renormalise``: padded frames are excluded from the softmax.
    """
    mask = mask.to(logits_BKF.dtype)
    if mode == "renormalise":
        logits_BKF = logits_BKF.masked_fill(mask == 0, torch.finfo(logits_BKF.dtype).min)
    elif mode != "mask_after":
        raise ValueError(f"diffusion.frame_softmax: expected 'mask_after' or 'renormalise', got {mode!r}")
    return logits_BKF.softmax(dim=-1) * mask


class CandidateDenoiser(nn.Module):
    """Shared body: timestep embedding, query-candidate attention with x_t in the logits, decoder.

    Given a query side ``query_BXD`` (X = 1 or K), a candidate side ``cand_BKD`` and c = cond(t):
    q = W_q(query + c), k = W_k(cand + c), v = W_v(cand + c) (no biases);
    alpha = softmax_K(<q, k> + x_t) (no 1/sqrt(D)); h = proj(sum_k alpha_k v_k);
    x0_hat_k = decoder([h ; cand_k]) + alpha_k with decoder Linear(2D, 2D)-ReLU-Linear(2D, 1).
    """

    def __init__(
        self,
        dim: int = 512,
        attn_temp: float = 1.0,
        frame_softmax: FrameSoftmax = "mask_after",
        max_steps: int = 5000,
    ) -> None:
        super().__init__()
        if attn_temp <= 0:
            raise ValueError(f"diffusion.attn_temp: expected a number > 0, got {attn_temp}")
        if frame_softmax not in ("mask_after", "renormalise"):
            raise ValueError(
                f"diffusion.frame_softmax: expected 'mask_after' or 'renormalise', got {frame_softmax!r}"
            )
        self.dim, self.attn_temp, self.frame_softmax = dim, attn_temp, frame_softmax
        self.time_embed = TimestepEmbedder(dim, max_steps)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.decoder = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, 1))
        init_linear_normal(self)

    @classmethod
    def from_config(cls, dim: int, cfg: DiffusionConfig) -> CandidateDenoiser:
        """A denoiser of width ``dim`` with the config's attention temperature and frame softmax."""
        return cls(dim, attn_temp=cfg.attn_temp, frame_softmax=cfg.frame_softmax)

    def denoise(self, x_BK: Tensor, t_B: Tensor, query_BXD: Tensor, cand_BKD: Tensor) -> Tensor:
        """x0_hat_BK from encoded features (``encode``); ``query_BXD`` has X = 1 (T2V) or X = K (V2T).

        The reference path, the class docstring's formula as written: every projection runs on
        (feature + cond) at every call. Repeated calls on the same features should use ``prepare`` once
        and ``step`` per call, which give the same numbers.
        """
        _check_step_shapes(x_BK, t_B, cand_BKD)
        cond_B1D = self.time_embed(t_B)[:, None, :]
        q = self.q_proj(query_BXD + cond_B1D)
        k = self.k_proj(cand_BKD + cond_B1D)
        v = self.v_proj(cand_BKD + cond_B1D)
        alpha_BK = ((q * k).sum(-1) + x_BK).softmax(dim=-1)  # x_t enters the attention logits; no 1/sqrt(D)
        h_BD = self.proj(torch.einsum("bk,bkd->bd", alpha_BK, v))
        h_BKD = h_BD[:, None, :].expand_as(cand_BKD)
        return self.decoder(torch.cat([h_BKD, cand_BKD], dim=-1)).squeeze(-1) + alpha_BK

    def prepare(self, query_BXD: Tensor, cand_BKD: Tensor) -> dict[str, Tensor]:
        """The step-invariant projections of encoded features (``encode``), the arguments of ``step``.

        With Q = W_q query, Kc = W_k cand, V = W_v cand: ``q_BXD`` = Q, ``k_BKD`` = Kc, ``v_BKD`` = V,
        ``qk_BK`` = <Q, Kc> (X broadcast over K) and ``dec_BKE`` = W_c cand + b, the candidate half of the
        decoder's first layer with its bias. Differentiable: gradients reach the parameters through
        ``step`` exactly as through ``denoise``.
        """
        if cand_BKD.ndim != 3 or query_BXD.ndim != 3 or query_BXD.shape[1] not in (1, cand_BKD.shape[1]):
            raise ValueError(
                f"denoiser.prepare: expected query (B, 1 or K, D) and candidates (B, K, D), got "
                f"{tuple(query_BXD.shape)} and {tuple(cand_BKD.shape)}"
            )
        first = self.decoder[0]
        q_BXD = self.q_proj(query_BXD)
        k_BKD = self.k_proj(cand_BKD)
        return {
            "q_BXD": q_BXD,
            "k_BKD": k_BKD,
            "v_BKD": self.v_proj(cand_BKD),
            "qk_BK": (q_BXD * k_BKD).sum(-1),
            "dec_BKE": F.linear(cand_BKD, first.weight[:, self.dim :], first.bias),
        }

    def step(
        self,
        x_BK: Tensor,
        t_B: Tensor,
        q_BXD: Tensor,
        k_BKD: Tensor,
        v_BKD: Tensor,
        qk_BK: Tensor,
        dec_BKE: Tensor,
    ) -> Tensor:
        """``denoise`` from ``prepare``d projections; same maths, only per-row (B, D) matmuls per call.

        With c = cond(t), cq = W_q c, ck = W_k c, cv = W_v c (computed once per distinct step):
        <Q + cq, Kc_k + ck> = <Q, Kc_k> + <Q, ck> + <cq, Kc_k> + <cq, ck>;
        sum_k alpha_k (V_k + cv) = alpha V + (sum_k alpha_k) cv;
        decoder layer 1 = dec_k + W_h h (method §3.4).
        """
        _check_step_shapes(x_BK, t_B, k_BKD)
        t_U, row_B = torch.unique(t_B, return_inverse=True)  # DDIM: one step for the whole chunk
        cond_UD = self.time_embed(t_U)
        cq_BD = self.q_proj(cond_UD)[row_B]
        ck_BD = self.k_proj(cond_UD)[row_B]
        cv_BD = self.v_proj(cond_UD)[row_B]
        logits_BK = (
            qk_BK
            + torch.einsum("bxd,bd->bx", q_BXD, ck_BD)
            + torch.einsum("bkd,bd->bk", k_BKD, cq_BD)
            + (cq_BD * ck_BD).sum(-1, keepdim=True)
        )
        alpha_BK = (logits_BK + x_BK).softmax(dim=-1)  # x_t enters the attention logits; no 1/sqrt(D)
        pooled_BD = torch.einsum("bk,bkd->bd", alpha_BK, v_BKD) + alpha_BK.sum(-1, keepdim=True) * cv_BD
        h_BD = self.proj(pooled_BD)
        first, _, last = self.decoder
        # the one (B, K, E) tensor per step: ReLU in place (autograd-safe after an add) saves a pass over it
        hidden_BKE = (dec_BKE + F.linear(h_BD, first.weight[:, : self.dim])[:, None, :]).relu_()
        return last(hidden_BKE).squeeze(-1) + alpha_BK


def _check_step_shapes(x_BK: Tensor, t_B: Tensor, cand_BKD: Tensor) -> None:
    if x_BK.ndim != 2 or t_B.shape != x_BK.shape[:1] or cand_BKD.shape[:2] != x_BK.shape:
        raise ValueError(
            f"denoiser: expected x (B, K), t (B,) and candidates (B, K, D), got {tuple(x_BK.shape)}, "
            f"{tuple(t_B.shape)} and {tuple(cand_BKD.shape)}"
        )


class T2VDenoiser(CandidateDenoiser):
    """Text query (B, D) against K candidate videos (B, K, F, D)."""

    def encode(self, text_BD: Tensor, video_BKFD: Tensor, video_mask_BKF: Tensor) -> dict[str, Tensor]:
        """The step-independent part: each candidate seen through the query text (method §3.4 step 1).

        Returns ``query_BXD`` = the text (B, 1, D) and ``cand_BKD`` = the attention-pooled candidates.
        Parameter-free.
        """
        logits_BKF = torch.einsum("bd,bkfd->bkf", text_BD, video_BKFD) / self.attn_temp
        a_BKF = frame_attention_weights(logits_BKF, video_mask_BKF, self.frame_softmax)
        pooled_BKD = torch.einsum("bkf,bkfd->bkd", a_BKF, video_BKFD)
        return {"query_BXD": text_BD[:, None, :], "cand_BKD": pooled_BKD}

    def forward(
        self, x_BK: Tensor, t_B: Tensor, text_BD: Tensor, video_BKFD: Tensor, video_mask_BKF: Tensor
    ) -> Tensor:
        """x0_hat_BK for noisy scores x_BK at steps t_B (method §3.4, ``Diffusion``)."""
        return self.denoise(x_BK, t_B, **self.encode(text_BD, video_BKFD, video_mask_BKF))


class V2TDenoiser(CandidateDenoiser):
    """Video query (B, F, D) against K candidate texts (B, K, D)."""

    def encode(self, text_BKD: Tensor, video_BFD: Tensor, video_mask_BF: Tensor) -> dict[str, Tensor]:
        """The step-independent part: the query video seen through each candidate text (method §3.4).

        Returns ``query_BXD`` = the pooled video per candidate (B, K, D) and ``cand_BKD`` = the texts.
        Parameter-free.
        """
        logits_BKF = torch.einsum("bkd,bfd->bkf", text_BKD, video_BFD) / self.attn_temp
        a_BKF = frame_attention_weights(logits_BKF, video_mask_BF[:, None, :], self.frame_softmax)
        pooled_BKD = torch.einsum("bkf,bfd->bkd", a_BKF, video_BFD)
        return {"query_BXD": pooled_BKD, "cand_BKD": text_BKD}

    def forward(
        self, x_BK: Tensor, t_B: Tensor, text_BKD: Tensor, video_BFD: Tensor, video_mask_BF: Tensor
    ) -> Tensor:
        """x0_hat_BK for noisy scores x_BK at steps t_B (method §3.4, ``Diffusion_v``)."""
        return self.denoise(x_BK, t_B, **self.encode(text_BKD, video_BFD, video_mask_BF))


__all__ = [
    "CandidateDenoiser",
    "T2VDenoiser",
    "V2TDenoiser",
    "TimestepEmbedder",
    "frame_attention_weights",
    "init_linear_normal",
    "sinusoidal_table",
]
