"""The two candidate denoisers of the generative re-ranker (docs/method.md §3.4).

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
* ``prepare_sampling`` once, then ``sample_step`` per DDIM step (inference): sampling visits a known set
  of steps, so the c(t) terms of the attention logits are tabled per step and the value path is folded
  into the decoder's first layer; a step is one (B, D) x (D, 2D) matmul plus the decoder's hidden layer.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidret.config import DiffusionConfig

FrameSoftmax = Literal["mask_after", "renormalise"]
_HIDDEN_BLOCK_ELEMS = 1 << 18  # 1 MiB of float32 decoder hidden per block of sample_step (L2-sized)


def init_linear_normal(module: nn.Module, std: float = 0.02) -> None:
    """Upstream init: every Linear / Embedding weight ~ N(0, std^2), biases 0 (docs/method.md §2.2)."""
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

    pe: Tensor  # the registered buffer (declared so that attribute access is typed as a tensor)

    def __init__(self, dim: int, max_steps: int = 5000) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_steps, dim), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t_B: Tensor) -> Tensor:
        cond_BD: Tensor = self.mlp(self.pe[t_B])
        return cond_BD


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


_D = TypeVar("_D", bound="CandidateDenoiser")


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
    def from_config(cls: type[_D], dim: int, cfg: DiffusionConfig) -> _D:
        """A denoiser of width ``dim`` with the config's attention temperature and frame softmax."""
        return cls(dim, attn_temp=cfg.attn_temp, frame_softmax=cfg.frame_softmax)

    def _decoder_linears(self) -> tuple[nn.Linear, nn.Linear]:
        """The decoder's first (2D -> 2D) and last (2D -> 1) Linear layers, typed."""
        first, last = self.decoder[0], self.decoder[2]
        assert isinstance(first, nn.Linear), self.decoder
        assert isinstance(last, nn.Linear), self.decoder
        return first, last

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
        alpha_BK: Tensor = ((q * k).sum(-1) + x_BK).softmax(
            dim=-1
        )  # x_t enters the attention logits; no 1/sqrt(D)
        h_BD = self.proj(torch.einsum("bk,bkd->bd", alpha_BK, v))
        h_BKD = h_BD[:, None, :].expand_as(cand_BKD)
        dec_BK1: Tensor = self.decoder(torch.cat([h_BKD, cand_BKD], dim=-1))
        return dec_BK1.squeeze(-1) + alpha_BK

    def prepare(self, query_BXD: Tensor, cand_BKD: Tensor) -> dict[str, Tensor]:
        """The step-invariant projections of encoded features (``encode``), the arguments of ``step``.

        With Q = W_q query, Kc = W_k cand, V = W_v cand: ``q_BXD`` = Q, ``k_BKD`` = Kc, ``v_BKD`` = V,
        ``qk_BK`` = <Q, Kc> (X broadcast over K) and ``dec_BKE`` = W_c cand + b, the candidate half of the
        decoder's first layer with its bias. Differentiable: gradients reach the parameters through
        ``step`` exactly as through ``denoise``.
        """
        _check_query_cand(query_BXD, cand_BKD)
        first, _ = self._decoder_linears()
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
        decoder layer 1 = dec_k + W_h h (docs/method.md §3.4).
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
        alpha_BK: Tensor = (logits_BK + x_BK).softmax(dim=-1)  # x_t enters the attention logits; no 1/sqrt(D)
        pooled_BD = torch.einsum("bk,bkd->bd", alpha_BK, v_BKD) + alpha_BK.sum(-1, keepdim=True) * cv_BD
        h_BD = self.proj(pooled_BD)
        first, last = self._decoder_linears()
        # the one (B, K, E) tensor per step: ReLU in place (autograd-safe after an add) saves a pass over it
        hidden_BKE = (dec_BKE + F.linear(h_BD, first.weight[:, : self.dim])[:, None, :]).relu_()
        out_BK1: Tensor = last(hidden_BKE)
        return out_BK1.squeeze(-1) + alpha_BK

    @torch.no_grad()
    def prepare_sampling(self, query_BXD: Tensor, cand_BKD: Tensor, t_S: Tensor) -> dict[str, Tensor]:
        """Tables for ``sample_step`` at the known steps ``t_S`` (DDIM inference; no autograd).

        Sampling visits a fixed set of S steps, so every term of the attention logits that involves c(t)
        is tabled once per chunk: with Q = W_q query, Kc = W_k cand, cq_s = W_q c(t_s), ck_s = W_k c(t_s),
        ``logit_SBK``[s, b, k] = <Q, Kc_k> + <Q, ck_s> + <cq_s, Kc_k> + <cq_s, ck_s>, the bilinear forms
        computed as cand (W_k^T q) etc. so W_k cand and W_v cand are never formed. The value path folds
        into the decoder's first layer: W_h (W_p (sum_k alpha_k W_v (cand_k + c)) + b_p) =
        ``mv_ED`` (sum_k alpha_k cand_k) + (sum_k alpha_k) ``cvh_SE``[s] + W_h b_p with ``mv_ED`` = W_h W_p
        W_v; W_h b_p goes into ``dec_BKE`` = W_c cand + b + W_h b_p. Same maths as ``step`` up to float
        summation order; ``t_S`` is sorted and deduplicated.
        """
        _check_query_cand(query_BXD, cand_BKD)
        if t_S.ndim != 1 or t_S.numel() == 0 or t_S.is_floating_point():
            raise ValueError(f"prepare_sampling: expected a 1-D integer tensor of steps, got {t_S!r}")
        t_S = torch.unique(t_S.long())
        d, (first, _) = self.dim, self._decoder_linears()
        w_q, w_k, w_h = self.q_proj.weight, self.k_proj.weight, first.weight[:, : self.dim]
        cond_SD = self.time_embed(t_S)
        cq_SD, ck_SD, cv_SD = self.q_proj(cond_SD), self.k_proj(cond_SD), self.v_proj(cond_SD)
        if query_BXD.shape[1] == 1:  # T2V: one query row; <Q, Kc_k> = <cand_k, W_k^T Q>
            q_BD = self.q_proj(query_BXD[:, 0])
            qk_BK = torch.bmm(cand_BKD, (q_BD @ w_k)[:, :, None]).squeeze(-1)
            qck_BXS = (q_BD @ ck_SD.T)[:, None, :]
        else:  # V2T: a query row per candidate; <W_q p, W_k c> = <p, W_q^T W_k c>
            qk_BK = (query_BXD * (cand_BKD @ (w_q.T @ w_k).T)).sum(-1)
            qck_BXS = query_BXD @ (ck_SD @ w_q).T
        kcq_BKS = cand_BKD @ (cq_SD @ w_k).T
        logit_BKS = qk_BK[..., None] + qck_BXS + kcq_BKS + (cq_SD * ck_SD).sum(-1)
        return {
            "t_S": t_S,
            "logit_SBK": logit_BKS.permute(2, 0, 1).contiguous(),  # one contiguous (B, K) slab per step
            "cand_BKD": cand_BKD,
            "mv_ED": w_h @ self.proj.weight @ self.v_proj.weight,
            "cvh_SE": F.linear(cv_SD, self.proj.weight) @ w_h.T,
            "dec_BKE": F.linear(cand_BKD, first.weight[:, d:], first.bias + w_h @ self.proj.bias),
        }

    @torch.no_grad()
    def sample_step(
        self,
        x_BK: Tensor,
        t_B: Tensor,
        t_S: Tensor,
        logit_SBK: Tensor,
        cand_BKD: Tensor,
        mv_ED: Tensor,
        cvh_SE: Tensor,
        dec_BKE: Tensor,
    ) -> Tensor:
        """``denoise`` from ``prepare_sampling`` tables, for steps in its ``t_S`` (ValueError otherwise).

        Per call: one (B, D) x (D, E) matmul, one alpha-weighted sum of the candidates and the decoder's
        (B, K, E) hidden layer, on CPU in row blocks that stay in the L2 cache (that layer is read and
        written three times; from main memory it took about half the step).
        """
        _check_step_shapes(x_BK, t_B, cand_BKD)
        s_B = torch.searchsorted(t_S, t_B).clamp_max(t_S.numel() - 1)
        if bool((t_S[s_B] != t_B).any()):
            raise ValueError(
                f"sample_step: steps {sorted(set(t_B.tolist()) - set(t_S.tolist()))} were not prepared "
                f"(prepare_sampling got {t_S.tolist()})"
            )
        rows = x_BK.shape[0]
        alpha_BK = (logit_SBK[s_B, torch.arange(rows, device=x_BK.device)] + x_BK).softmax(dim=-1)
        pooled_BD = torch.bmm(alpha_BK[:, None, :], cand_BKD).squeeze(1)  # sum_k alpha_k cand_k
        u_BE = torch.addcmul(F.linear(pooled_BD, mv_ED), alpha_BK.sum(-1, keepdim=True), cvh_SE[s_B])
        (_, last), e = self._decoder_linears(), dec_BKE.shape[-1]
        out_BK = torch.empty_like(x_BK)
        # CPU: L2-sized row blocks; an accelerator streams the whole layer in one launch per op
        block = max(1, _HIDDEN_BLOCK_ELEMS // (dec_BKE.shape[1] * e)) if x_BK.device.type == "cpu" else rows
        for s in range(0, rows, block):
            hidden_bKE = (dec_BKE[s : s + block] + u_BE[s : s + block, None, :]).relu_()
            torch.mv(hidden_bKE.view(-1, e), last.weight[0], out=out_BK[s : s + block].view(-1))
        return out_BK + last.bias + alpha_BK


def _check_query_cand(query_BXD: Tensor, cand_BKD: Tensor) -> None:
    if cand_BKD.ndim != 3 or query_BXD.ndim != 3 or query_BXD.shape[1] not in (1, cand_BKD.shape[1]):
        raise ValueError(
            f"denoiser.prepare: expected query (B, 1 or K, D) and candidates (B, K, D), got "
            f"{tuple(query_BXD.shape)} and {tuple(cand_BKD.shape)}"
        )


def _check_step_shapes(x_BK: Tensor, t_B: Tensor, cand_BKD: Tensor) -> None:
    if x_BK.ndim != 2 or t_B.shape != x_BK.shape[:1] or cand_BKD.shape[:2] != x_BK.shape:
        raise ValueError(
            f"denoiser: expected x (B, K), t (B,) and candidates (B, K, D), got {tuple(x_BK.shape)}, "
            f"{tuple(t_B.shape)} and {tuple(cand_BKD.shape)}"
        )


class T2VDenoiser(CandidateDenoiser):
    """Text query (B, D) against K candidate videos (B, K, F, D)."""

    def encode(self, text_BD: Tensor, video_BKFD: Tensor, video_mask_BKF: Tensor) -> dict[str, Tensor]:
        """The step-independent part: each candidate seen through the query text (docs/method.md §3.4 step 1).

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
        """x0_hat_BK for noisy scores x_BK at steps t_B (docs/method.md §3.4, ``Diffusion``)."""
        return self.denoise(x_BK, t_B, **self.encode(text_BD, video_BKFD, video_mask_BKF))


class V2TDenoiser(CandidateDenoiser):
    """Video query (B, F, D) against K candidate texts (B, K, D)."""

    def encode(self, text_BKD: Tensor, video_BFD: Tensor, video_mask_BF: Tensor) -> dict[str, Tensor]:
        """The step-independent part: the query video seen through each candidate text (docs/method.md §3.4).

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
        """x0_hat_BK for noisy scores x_BK at steps t_B (docs/method.md §3.4, ``Diffusion_v``)."""
        return self.denoise(x_BK, t_B, **self.encode(text_BKD, video_BFD, video_mask_BF))


__all__ = [
    "CandidateDenoiser",
    "T2VDenoiser",
    "TimestepEmbedder",
    "V2TDenoiser",
    "frame_attention_weights",
    "init_linear_normal",
    "sinusoidal_table",
]
