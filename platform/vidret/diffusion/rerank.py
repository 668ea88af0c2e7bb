"""Candidate selection and score fusion, shared by training and evaluation (docs/method.md §3.2,
docs/method.md §4).

Shape legend: B batch, Q queries, N gallery items, K candidates, F frames, D width.

Everything is vectorised: selection is ``topk`` + ``gather``, fusion is ``scatter_add_``. DDIM runs over
all queries at once; ``chunk`` only bounds memory. Per chunk the denoiser's conditioning is encoded and
tabled once for the steps DDIM will visit (``CandidateDenoiser.prepare_sampling``); each of the T steps
then runs only ``CandidateDenoiser.sample_step``. The initial noise of a query depends on (seed, query id)
only, so a re-ranked matrix does not depend on chunking or worker count. Both directions run the same code:
``rerank(direction, ...)`` and ``candidate_scores(direction, ...)``.

The text-to-video conditioning never materialises the candidates' frames (Q, K, F, D) (1000 queries x 32
candidates x 12 frames x 512 = 786 MB, mostly copies of a 25 MB gallery): ``t2v_encode_candidates``
computes the text-frame logits as a sampled matmul at the candidates' frames only and the attention
pooling as a weighted ``embedding_bag`` over the gallery's frame rows, or, when the candidates are most
of the gallery (training: K = batch), with two dense matmuls (docs/method.md §10, "gather").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vidret.config import DiffusionConfig
from vidret.diffusion.denoiser import T2VDenoiser, V2TDenoiser, frame_attention_weights
from vidret.diffusion.process import GaussianDiffusion, seeded_noise

Direction = Literal["t2v", "v2t"]
"""Text-to-video (texts query videos) or video-to-text (videos query texts)."""
NegativesFill = Literal["positives", "error"]
EncodePath = Literal["auto", "sparse", "dense", "gather"]
_SPARSE_DTYPES = (torch.float32, torch.float64)  # what sampled_addmm supports on CPU


def hard_negatives(
    sim_BN: Tensor,
    positive_mask_BN: Tensor,
    num: int,
    row_offset: int = 0,
    fill: NegativesFill = "positives",
) -> Tensor:
    """Candidate lists for training: idx_BK with K = num + 1 (docs/method.md §3.2).

    Row b's own item (column ``b + row_offset``; the diagonal of a square batch) is at index 0, followed
    by the ``num`` most similar negatives, descending; a negative is any column outside
    ``positive_mask_BN`` (e.g. same video id) other than the row's own. ``row_offset`` places a shard of
    local rows inside the gathered columns. When a row has fewer than ``num`` negatives, ``fill``
    decides: ``positives`` (the default, diffusion.negatives_fill) appends the row's other positives,
    most similar first, and never repeats the row's own item; ``error`` raises ValueError. This is not
    the upstream's rule: the upstream sets every same-video score, the row's own pair included, to -1
    and takes whatever ``topk`` returns among those ties, so a short row can list its own positive as a
    "negative". Filling by similarity without the positive is the better rule and the one implemented
    here. ``num > N - 1`` always raises.
    """
    if sim_BN.ndim != 2 or positive_mask_BN.shape != sim_BN.shape:
        raise ValueError(
            f"hard_negatives: expected sim (B, N) and a positive mask of the same shape, got "
            f"{tuple(sim_BN.shape)} and {tuple(positive_mask_BN.shape)}"
        )
    if fill not in ("positives", "error"):
        raise ValueError(f"diffusion.negatives_fill: expected 'positives' or 'error', got {fill!r}")
    rows, cols = sim_BN.shape
    if not 0 <= row_offset <= cols - rows:
        raise ValueError(f"hard_negatives: row_offset {row_offset} puts rows outside the {cols} columns")
    arange_B = torch.arange(rows, device=sim_BN.device)
    own_B = arange_B + row_offset
    own_BN = torch.zeros(rows, cols, dtype=torch.bool, device=sim_BN.device)
    own_BN[arange_B, own_B] = True
    other_pos_BN = positive_mask_BN.bool() & ~own_BN
    available = cols - 1 - int(other_pos_BN.sum(dim=1).max()) if rows else cols - 1
    if not 1 <= num <= cols - 1 or (fill == "error" and num > available):
        raise ValueError(
            f"diffusion.num = {num}: expected 1 <= num <= {cols - 1} (batch size {cols} - 1)"
            + (
                f" and, with diffusion.negatives_fill=error, num <= {available} (a row has "
                f"{cols - 1 - available} other same-video positives)"
                if fill == "error"
                else ""
            )
            + "; lower diffusion.num or raise train.batch_size"
        )
    # order columns by score, then stably by tier: negatives (0), other positives (1), the own item (2)
    order_BN = sim_BN.detach().argsort(dim=1, descending=True)
    tier_BN = (other_pos_BN.long() + 2 * own_BN.long()).gather(1, order_BN)
    by_tier_BN = tier_BN.argsort(dim=1, stable=True)
    neg_BM = order_BN.gather(1, by_tier_BN[:, :num])
    return torch.cat([own_B[:, None], neg_BM], dim=1)


def topk_candidates(sim_QN: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` highest-scoring gallery items of each query, descending: (cand_QK, scores_QK)."""
    if not 1 <= k <= sim_QN.shape[1]:
        raise ValueError(f"topk_candidates: expected 1 <= k <= {sim_QN.shape[1]} (gallery size), got {k}")
    scores, cand = sim_QN.topk(k, dim=1, largest=True, sorted=True)
    return cand, scores


def fuse(sim_QN: Tensor, cand_QK: Tensor, x0_QK: Tensor, alpha: float, temp: float) -> Tensor:
    """A new matrix with sim[q, cand[q, k]] += alpha * softmax_k(temp * x0[q])_k (docs/method.md §4.5).

    The input is not modified. Candidates of a row must be distinct (``topk`` guarantees it).
    """
    if cand_QK.shape != x0_QK.shape or cand_QK.shape[0] != sim_QN.shape[0]:
        raise ValueError(
            f"fuse: expected cand and x0 of shape (Q, K) with Q = {sim_QN.shape[0]}, got "
            f"{tuple(cand_QK.shape)} and {tuple(x0_QK.shape)}"
        )
    boost_QK = alpha * (temp * x0_QK.to(sim_QN.device, sim_QN.dtype)).softmax(dim=1)
    return sim_QN.clone().scatter_add_(1, cand_QK.to(sim_QN.device), boost_QK)


def t2v_encode_candidates(
    denoiser: T2VDenoiser,
    text_QD: Tensor,
    video_NFD: Tensor,
    video_mask_NF: Tensor,
    cand_QK: Tensor,
    *,
    path: EncodePath = "auto",
) -> dict[str, Tensor]:
    """``denoiser.encode(text_QD, video_NFD[cand_QK], video_mask_NF[cand_QK])`` without the frame gather.

    Returns ``query_BXD`` (Q, 1, D) and ``cand_BKD`` (Q, K, D), the pooled candidates. ``sparse``:
    logits[q, k, f] = <text_q, video[cand[q, k], f]> / attn_temp by ``sampled_addmm`` at the Q x K x F
    candidate frames of the (Q, N*F) score matrix, then the frame attention of the denoiser and
    pooled[q, k] = sum_f a[q, k, f] video[cand[q, k], f] by ``embedding_bag`` over the (N*F, D) frame rows.
    ``dense``: all (Q, N*F) logits in one matmul and the pooling as a (N, Q, F) x (N, F, D) batched matmul,
    a (Q, N, D) intermediate; ``auto`` picks it when N <= 2K, else ``sparse``. ``gather`` (reference)
    materialises the (Q, K, F, D) frames and calls ``denoiser.encode``; it is also used for dtypes other
    than float32/float64 and for subclasses that override ``encode``. Candidates of a row must be
    distinct. All paths agree up to float summation order.
    """
    if path not in ("auto", "sparse", "dense", "gather"):
        raise ValueError(
            f"t2v_encode_candidates: expected path 'auto', 'sparse', 'dense' or 'gather', got {path!r}"
        )
    if video_NFD.ndim != 3 or cand_QK.ndim != 2 or text_QD.shape != (cand_QK.shape[0], video_NFD.shape[2]):
        raise ValueError(
            f"t2v_encode_candidates: expected text (Q, D), video (N, F, D) and cand (Q, K), got "
            f"{tuple(text_QD.shape)}, {tuple(video_NFD.shape)} and {tuple(cand_QK.shape)}"
        )
    sparse_ok = (
        type(denoiser).encode is T2VDenoiser.encode
        and text_QD.dtype in _SPARSE_DTYPES
        and video_NFD.dtype == text_QD.dtype
    )
    if path == "gather" or not sparse_ok:
        return denoiser.encode(text_QD, video_NFD[cand_QK], video_mask_NF[cand_QK])
    k, n = cand_QK.shape[1], video_NFD.shape[0]
    if path == "dense" or (path == "auto" and n <= 2 * k):
        return _t2v_encode_dense(denoiser, text_QD, video_NFD, video_mask_NF, cand_QK)
    return _t2v_encode_sparse(denoiser, text_QD, video_NFD, video_mask_NF, cand_QK)


def _t2v_encode_sparse(
    denoiser: T2VDenoiser, text_QD: Tensor, video_NFD: Tensor, video_mask_NF: Tensor, cand_QK: Tensor
) -> dict[str, Tensor]:
    """``t2v_encode_candidates`` by a sampled matmul at the candidates' frames and ``embedding_bag``."""
    (q, k), (n, f, d) = cand_QK.shape, video_NFD.shape
    frames_ND = video_NFD.reshape(n * f, d)
    frame_F = torch.arange(f, device=cand_QK.device)
    # CSR wants increasing columns within a row: score the candidates in id order, then undo the sort
    sorted_QK, perm_QK = cand_QK.sort(dim=1)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we use only these two ops
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            torch.arange(0, q * k * f + 1, k * f, device=cand_QK.device),
            (sorted_QK[..., None] * f + frame_F).reshape(-1),
            torch.zeros(q * k * f, dtype=text_QD.dtype, device=text_QD.device),  # beta=0 still reads it
            size=(q, n * f),
            check_invariants=False,
        )
        scores = torch.sparse.sampled_addmm(pattern, text_QD, frames_ND.T, beta=0.0)
    unsort_QKF = perm_QK.argsort(dim=1)[..., None].expand(q, k, f)
    logits_QKF = scores.values().view(q, k, f).gather(1, unsort_QKF) / denoiser.attn_temp
    a_QKF = frame_attention_weights(logits_QKF, video_mask_NF[cand_QK], denoiser.frame_softmax)
    pooled_PD = F.embedding_bag(
        (cand_QK[..., None] * f + frame_F).view(q * k, f),
        frames_ND,
        per_sample_weights=a_QKF.reshape(q * k, f),
        mode="sum",
    )
    return {"query_BXD": text_QD[:, None, :], "cand_BKD": pooled_PD.view(q, k, d)}


def _t2v_encode_dense(
    denoiser: T2VDenoiser, text_QD: Tensor, video_NFD: Tensor, video_mask_NF: Tensor, cand_QK: Tensor
) -> dict[str, Tensor]:
    """``t2v_encode_candidates`` through every (query, gallery item) pair: cheap when K is most of N."""
    (q, k), (n, f, d) = cand_QK.shape, video_NFD.shape
    at_QKF = cand_QK[..., None].expand(q, k, f)
    logits_QNF = (text_QD @ video_NFD.reshape(n * f, d).T).view(q, n, f)
    logits_QKF = logits_QNF.gather(1, at_QKF) / denoiser.attn_temp
    a_QKF = frame_attention_weights(logits_QKF, video_mask_NF[cand_QK], denoiser.frame_softmax)
    a_QNF = torch.zeros(q, n, f, dtype=a_QKF.dtype, device=a_QKF.device).scatter_(1, at_QKF, a_QKF)
    pooled_NQD = torch.bmm(a_QNF.transpose(0, 1), video_NFD)  # zero weights off the candidates
    rows_QK = cand_QK * q + torch.arange(q, device=cand_QK.device)[:, None]
    pooled_QKD = pooled_NQD.reshape(n * q, d).index_select(0, rows_QK.reshape(-1)).view(q, k, d)
    return {"query_BXD": text_QD[:, None, :], "cand_BKD": pooled_QKD}


def _k_for(k: int, gallery: int, key: str) -> int:
    if k > gallery:
        warnings.warn(
            f"{key} = {k} exceeds the gallery of {gallery}; re-ranking all {gallery} items", stacklevel=3
        )
        return gallery
    return k


def _fusion(cfg: DiffusionConfig, direction: Direction) -> tuple[int, float, float]:
    """``diffusion.<direction>_k``, ``_alpha`` and ``_temp``."""
    if direction == "t2v":
        return cfg.t2v_k, cfg.t2v_alpha, cfg.t2v_temp
    return cfg.v2t_k, cfg.v2t_alpha, cfg.v2t_temp


def _query_ids(query_ids_Q: Tensor | None, q: int) -> Tensor:
    if query_ids_Q is None:
        return torch.arange(q)
    if query_ids_Q.shape != (q,):
        raise ValueError(f"query_ids: expected shape ({q},), got {tuple(query_ids_Q.shape)}")
    return query_ids_Q


def _sample_chunks(
    denoiser: T2VDenoiser | V2TDenoiser,
    diffusion: GaussianDiffusion,
    cand_QK: Tensor,
    ids_Q: Tensor,
    cond_of: Callable[[slice, Tensor], dict[str, Tensor]],
    like: Tensor,
    *,
    seed: int,
    chunk: int,
    clip_denoised: bool,
    num_steps: int | None,
) -> Tensor:
    """DDIM x0 scores (Q, K) for all queries, ``chunk`` queries at a time, from per-query seeded noise."""
    if chunk < 1:
        raise ValueError(f"chunk: expected an integer >= 1, got {chunk}")
    x0 = []
    steps_S = torch.tensor(diffusion.ddim_timesteps(num_steps), device=like.device)
    for s in range(0, cand_QK.shape[0], chunk):
        rows = slice(s, s + chunk)
        c_CK = cand_QK[rows]
        noise_CK = seeded_noise(ids_Q[rows], c_CK.shape[1], seed, device=like.device).to(like.dtype)
        # the frame attention, every candidate-sized projection and every c(t) term of the steps DDIM will
        # visit are fixed per chunk: encode and table them once, then each step is per-query (C, D) work
        x0.append(
            diffusion.ddim_sample(
                denoiser.sample_step,
                c_CK.shape,
                denoiser.prepare_sampling(**cond_of(rows, c_CK), t_S=steps_S),
                noise=noise_CK,
                clip_denoised=clip_denoised,
                num_steps=num_steps,
            )
        )
    return torch.cat(x0)


@dataclass(frozen=True)
class Conditioning:
    """What the denoisers condition on: caption EOT features ``text_D`` (.., D) and video frames ``video_FD``
    (.., F, D) with their mask ``video_mask_F`` (.., F).

    Text-to-video: the texts are the Q queries and the videos the N-item gallery. Video-to-text: the videos
    are the queries and the texts the gallery.
    """

    text_D: Tensor
    video_FD: Tensor
    video_mask_F: Tensor


def _cond_fn(
    direction: Direction, feats: Conditioning, denoiser: T2VDenoiser | V2TDenoiser, encode_path: EncodePath
) -> Callable[[slice, Tensor], dict[str, Tensor]]:
    """``cond_of(query rows, cand_CK)``: the denoiser's conditioning of a chunk of queries."""
    if direction == "t2v" and isinstance(denoiser, T2VDenoiser):
        t2v = denoiser

        def t2v_cond(rows: slice, c_CK: Tensor) -> dict[str, Tensor]:
            return t2v_encode_candidates(
                t2v, feats.text_D[rows], feats.video_FD, feats.video_mask_F, c_CK, path=encode_path
            )

        return t2v_cond
    if direction == "v2t" and isinstance(denoiser, V2TDenoiser):
        v2t = denoiser

        def v2t_cond(rows: slice, c_CK: Tensor) -> dict[str, Tensor]:
            return v2t.encode(feats.text_D[c_CK], feats.video_FD[rows], feats.video_mask_F[rows])

        return v2t_cond
    raise TypeError(
        f"re-rank {direction!r}: expected direction 't2v' with a T2VDenoiser or 'v2t' with a V2TDenoiser, "
        f"got {type(denoiser).__name__}"
    )


@torch.no_grad()
def candidate_scores(
    direction: Direction,
    sim_QN: Tensor,
    feats: Conditioning,
    denoiser: T2VDenoiser | V2TDenoiser,
    diffusion: GaussianDiffusion,
    cfg: DiffusionConfig,
    *,
    query_ids_Q: Tensor | None = None,
    chunk: int = 1024,
    encode_path: EncodePath = "auto",
) -> tuple[Tensor, Tensor]:
    """The top-k gallery items per query and their DDIM x0 scores, (cand_QK, x0_QK).

    ``sim_QN`` is texts x videos for ``t2v`` and videos x texts for ``v2t``; ``feats`` holds the queries'
    and the gallery's features (see ``Conditioning``). k is ``diffusion.<direction>_k`` (at most the
    gallery), the start noise is keyed by (``diffusion.noise_seed``, ``query_ids_Q``; default 0..Q-1), and
    DDIM runs ``diffusion.sample_steps`` steps (0: all). ``encode_path`` applies to t2v (see
    ``t2v_encode_candidates``; every path gives the same scores up to float rounding).
    """
    k = _k_for(_fusion(cfg, direction)[0], sim_QN.shape[1], f"diffusion.{direction}_k")
    cand_QK, _ = topk_candidates(sim_QN, k)
    x0_QK = _sample_chunks(
        denoiser,
        diffusion,
        cand_QK,
        _query_ids(query_ids_Q, sim_QN.shape[0]),
        _cond_fn(direction, feats, denoiser, encode_path),
        feats.text_D,
        seed=cfg.noise_seed,
        chunk=chunk,
        clip_denoised=cfg.clip_denoised,
        num_steps=cfg.sample_steps or None,
    )
    return cand_QK, x0_QK


def rerank(
    direction: Direction,
    sim_QN: Tensor,
    feats: Conditioning,
    denoiser: T2VDenoiser | V2TDenoiser,
    diffusion: GaussianDiffusion,
    cfg: DiffusionConfig,
    *,
    query_ids_Q: Tensor | None = None,
    chunk: int = 1024,
    encode_path: EncodePath = "auto",
) -> Tensor:
    """The re-ranked (Q, N) matrix of ``direction``: top-k -> DDIM -> ``fuse`` with the direction's
    ``diffusion.<direction>_alpha`` / ``_temp`` (arguments as for ``candidate_scores``)."""
    cand_QK, x0_QK = candidate_scores(
        direction,
        sim_QN,
        feats,
        denoiser,
        diffusion,
        cfg,
        query_ids_Q=query_ids_Q,
        chunk=chunk,
        encode_path=encode_path,
    )
    _, alpha, temp = _fusion(cfg, direction)
    return fuse(sim_QN, cand_QK, x0_QK, alpha, temp)
