"""Token-wise weighted interaction (WTI, method 2.3): text tokens x video frames -> one score per pair.

Shape legend: B/Q texts (queries), N videos (gallery), L tokens, F frames, D joint embedding width.

For text a and video b, with L2-normalised features and masks m_t (tokens) and m_v (frames):

    S[a,b,l,f] = <t_hat[a,l], v_hat[b,f]>                 on real pairs
    t2v[a,b]   = sum_l w_t[a,l] * max_f S[a,b,l,f]
    v2t[a,b]   = sum_f w_v[b,f] * max_l S[a,b,l,f]
    sim[a,b]   = (t2v + v2t) / 2

``w_t``/``w_v`` are the masked softmaxes of ``WTIHead``'s two MLPs on the unnormalised features.
Padding ``"zero"`` (faithful): padded pairs score 0 and take part in the maxima, so a row whose real scores
are all negative gets max 0. ``"neg_inf"``: padded pairs are excluded from the maxima (padded rows, whose
weights are 0, contribute 0).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

WtiPadding = Literal["zero", "neg_inf"]

# The method fills padded logits with -9e15 before the softmax; any value that underflows exp() works.
_MASKED_LOGIT = -9e15
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's default


def masked_softmax(logits_BX: torch.Tensor, mask_BX: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with padded entries (mask 0) given weight exactly 0."""
    return logits_BX.masked_fill(mask_BX == 0, _MASKED_LOGIT).softmax(dim=-1)


def _mlp(width: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, mult * width), nn.ReLU(inplace=True), nn.Linear(mult * width, 1))


class WTIHead(nn.Module):
    """The two weight MLPs of WTI, ``D -> mult*D -> 1`` with ReLU, on unnormalised features.

    Initialised like the method: Linear weights N(0, 0.02^2), biases 0.
    """

    def __init__(self, embed_dim: int, hidden_mult: int = 2):
        super().__init__()
        self.text_weight_fc = _mlp(embed_dim, hidden_mult)
        self.video_weight_fc = _mlp(embed_dim, hidden_mult)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                nn.init.zeros_(m.bias)

    def text_weights(self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor) -> torch.Tensor:
        """Softmaxed token weights ``(B, L)``; padded tokens get 0."""
        return masked_softmax(self.text_weight_fc(text_BLD).squeeze(-1), text_mask_BL)

    def video_weights(self, video_NFD: torch.Tensor, video_mask_NF: torch.Tensor) -> torch.Tensor:
        """Softmaxed frame weights ``(N, F)``; padded frames get 0."""
        return masked_softmax(self.video_weight_fc(video_NFD).squeeze(-1), video_mask_NF)

    def forward(
        self,
        text_BLD: torch.Tensor,
        text_mask_BL: torch.Tensor,
        video_NFD: torch.Tensor,
        video_mask_NF: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(text_w_BL, video_w_NF)``."""
        return self.text_weights(text_BLD, text_mask_BL), self.video_weights(video_NFD, video_mask_NF)


def _prepare(feat_BXD: torch.Tensor, mask_BX: torch.Tensor) -> torch.Tensor:
    """L2-normalise along D and zero padded rows (so that padded pairs score exactly 0).

    One pass over the features: they are multiplied by a (B, X, 1) factor ``mask / max(||x||, eps)`` (the eps
    of ``torch.nn.functional.normalize``) instead of normalising and then masking the (B, X, D) result.
    """
    norm_BX1: torch.Tensor = torch.linalg.vector_norm(feat_BXD, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    return feat_BXD * ((mask_BX != 0).to(feat_BXD.dtype)[..., None] / norm_BX1)


def _wti_core(
    text_hat_QLD: torch.Tensor,
    text_mask_QL: torch.Tensor,
    video_hat_NFD: torch.Tensor,
    video_mask_NF: torch.Tensor,
    text_w_QL: torch.Tensor,
    video_w_NF: torch.Tensor,
    padding: WtiPadding,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """WTI on already normalised, padding-zeroed features. Materialises Q x N x L x F, in ``buffer`` (a 1-d
    tensor of at least that many elements, reused from tile to tile; not under autograd) when given."""
    Q, L, D = text_hat_QLD.shape
    N, F, _ = video_hat_NFD.shape
    text_QL_D, video_NF_D = text_hat_QLD.reshape(Q * L, D), video_hat_NFD.reshape(N * F, D)
    if buffer is None:
        s_QLNF = (text_QL_D @ video_NF_D.T).view(Q, L, N, F)
    else:
        out = buffer[: Q * L * N * F].view(Q * L, N * F)
        s_QLNF = torch.mm(text_QL_D, video_NF_D.T, out=out).view(Q, L, N, F)
    if padding == "neg_inf":
        real_t_QL = text_mask_QL != 0
        real_v_NF = video_mask_NF != 0
        # In place with broadcast masks: no second Q x L x N x F tensor (matmul's backward does not need s).
        s_QLNF.masked_fill_(~real_t_QL[:, :, None, None], float("-inf"))
        s_QLNF.masked_fill_(~real_v_NF[None, None], float("-inf"))
        # Padded rows are all -inf; their weight is 0, so zero them to avoid 0 * -inf = nan.
        max_f_QLN = s_QLNF.amax(dim=3).masked_fill(~real_t_QL[:, :, None], 0.0)
        max_l_QNF = s_QLNF.amax(dim=1).masked_fill(~real_v_NF[None], 0.0)
        # A video with no real frame (or a text with no real token) would leave -inf on real rows.
        max_f_QLN = max_f_QLN.masked_fill(max_f_QLN == float("-inf"), 0.0)
        max_l_QNF = max_l_QNF.masked_fill(max_l_QNF == float("-inf"), 0.0)
    elif padding == "zero":
        max_f_QLN = s_QLNF.amax(dim=3)
        max_l_QNF = s_QLNF.amax(dim=1)
    else:
        raise ValueError(f"model.wti_padding: expected zero or neg_inf, got {padding!r}")
    t2v_QN = torch.einsum("ql,qln->qn", text_w_QL.to(max_f_QLN.dtype), max_f_QLN)
    v2t_QN = torch.einsum("nf,qnf->qn", video_w_NF.to(max_l_QNF.dtype), max_l_QNF)
    return (t2v_QN + v2t_QN) / 2


def _check_shapes(
    text_BLD: torch.Tensor,
    text_mask_BL: torch.Tensor,
    video_NFD: torch.Tensor,
    video_mask_NF: torch.Tensor,
    text_w_BL: torch.Tensor,
    video_w_NF: torch.Tensor,
) -> None:
    if text_BLD.ndim != 3 or video_NFD.ndim != 3 or text_BLD.shape[-1] != video_NFD.shape[-1]:
        raise ValueError(
            f"WTI: expected text (B, L, D) and video (N, F, D) with equal D, got {tuple(text_BLD.shape)} "
            f"and {tuple(video_NFD.shape)}"
        )
    for name, t, want in (
        ("text_mask", text_mask_BL, text_BLD.shape[:2]),
        ("text_w", text_w_BL, text_BLD.shape[:2]),
        ("video_mask", video_mask_NF, video_NFD.shape[:2]),
        ("video_w", video_w_NF, video_NFD.shape[:2]),
    ):
        if tuple(t.shape) != tuple(want):
            raise ValueError(f"WTI: expected {name} of shape {tuple(want)}, got {tuple(t.shape)}")


def wti_similarity(
    text_BLD: torch.Tensor,
    text_mask_BL: torch.Tensor,
    video_NFD: torch.Tensor,
    video_mask_NF: torch.Tensor,
    text_w_BL: torch.Tensor,
    video_w_NF: torch.Tensor,
    padding: WtiPadding = "zero",
) -> torch.Tensor:
    """WTI scores ``sim_BN`` (method 2.3; module docstring) for every text x video pair.

    Features are unnormalised (normalised here); weights are the softmaxed ``WTIHead`` outputs. Builds a
    ``B x N x L x F`` tensor: use for training batches; ``wti_blocked`` for a whole gallery. The method's
    ``v2t`` logits are ``sim_BN.T``.
    """
    _check_shapes(text_BLD, text_mask_BL, video_NFD, video_mask_NF, text_w_BL, video_w_NF)
    return _wti_core(
        _prepare(text_BLD, text_mask_BL),
        text_mask_BL,
        _prepare(video_NFD, video_mask_NF),
        video_mask_NF,
        text_w_BL,
        video_w_NF,
        padding,
    )


# Elements of one S tile (queries x tokens x videos x frames, fp32: 4 MiB) in ``wti_blocked`` on CPU: small
# enough for the two max-reductions to read it from cache right after the matmul wrote it, large enough for
# an efficient matmul (e.g. 16 queries x 64 tokens against 16 videos x 64 frames). On a GPU the block size
# alone bounds the tile: there, kernel launches per tile cost more than the memory traffic.
_TILE_ELEMS = 1 << 20


def _tile(block_q: int, block_n: int, pair_elems: int, cpu: bool) -> tuple[int, int]:
    """Tile ``(q, n)`` within ``block_q x block_n`` holding at most ``_TILE_ELEMS`` elements of S on CPU."""
    if not cpu:
        return block_q, block_n
    pairs = max(1, _TILE_ELEMS // max(1, pair_elems))
    n = min(block_n, max(1, math.isqrt(pairs)))
    return min(block_q, max(1, pairs // n)), n


def wti_blocked(
    text_QLD: torch.Tensor,
    text_mask_QL: torch.Tensor,
    video_NFD: torch.Tensor,
    video_mask_NF: torch.Tensor,
    text_w_QL: torch.Tensor,
    video_w_NF: torch.Tensor,
    *,
    padding: WtiPadding = "zero",
    block_q: int = 256,
    block_n: int = 256,
) -> torch.Tensor:
    """``wti_similarity`` for a whole query set x gallery, ``sim_QN``, tile by tile.

    Tiles are at most ``block_q x block_n`` pairs and, on CPU, at most ``_TILE_ELEMS`` elements of the
    ``q x L x n x F`` score tensor, so peak extra memory is one such tile (CPU: 4 MiB) plus the normalised
    copies of the inputs and the ``Q x N`` result; ``Q x N x L x F`` is never built. Small CPU tiles also
    keep the two max-reductions in cache, and without autograd every tile's matmul writes into the same
    buffer (no allocation and first-touch page faults per tile), so the similarity runs near the speed of
    its matmul. Runs on the device of the inputs. Call under ``torch.no_grad()`` for evaluation.
    """
    if block_q < 1 or block_n < 1:
        raise ValueError(f"wti_blocked: expected block sizes >= 1, got block_q={block_q}, block_n={block_n}")
    _check_shapes(text_QLD, text_mask_QL, video_NFD, video_mask_NF, text_w_QL, video_w_NF)
    text_hat_QLD = _prepare(text_QLD, text_mask_QL)
    video_hat_NFD = _prepare(video_NFD, video_mask_NF)
    Q, N = text_QLD.shape[0], video_NFD.shape[0]
    cpu = text_QLD.device.type == "cpu"
    step_q, step_n = _tile(block_q, block_n, text_QLD.shape[1] * video_NFD.shape[1], cpu)
    sim_QN = text_hat_QLD.new_zeros(Q, N)
    tracked = torch.is_grad_enabled() and (text_hat_QLD.requires_grad or video_hat_NFD.requires_grad)
    tile_elems = min(step_q, Q) * text_QLD.shape[1] * min(step_n, N) * video_NFD.shape[1]
    buffer = None if tracked else text_hat_QLD.new_empty(tile_elems)
    for q0 in range(0, Q, step_q):
        q1 = min(q0 + step_q, Q)
        for n0 in range(0, N, step_n):
            n1 = min(n0 + step_n, N)
            sim_QN[q0:q1, n0:n1] = _wti_core(
                text_hat_QLD[q0:q1],
                text_mask_QL[q0:q1],
                video_hat_NFD[n0:n1],
                video_mask_NF[n0:n1],
                text_w_QL[q0:q1],
                video_w_NF[n0:n1],
                padding,
                buffer,
            )
    return sim_QN
