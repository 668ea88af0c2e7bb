"""Stage-1 contrastive loss over (possibly sharded) batches; collectives arrive as an injected ``gather``.

Shape legend: B local batch (this worker's rows), G gathered batch (all workers' rows, G = W * B),
L tokens, F frames, D width.

Sharding. Each worker holds B local pairs at rows ``row_offset .. row_offset + B - 1`` of the gathered
batch. The loss takes the local rows against the gathered columns: text-to-video rows are local texts
against all G videos, video-to-text rows are local videos against all G texts; a local row's own pair is
column ``b + row_offset``. With an exact gather (gradient summed back to the owner, e.g.
``torch.distributed.nn.all_gather``) and DDP's gradient averaging over W workers, the gradient equals the
full G x G loss of the method (mean over all G rows), while each worker does B x G work instead of G x G.
On one worker (identity gather, ``row_offset`` 0) it is exactly method's (docs/method.md §2.4):

    L = 1/2 [CE(scale * S) + CE(scale * S^T)],   CE(M) = mean_i -log softmax(M_i)_i.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

Gather = Callable[[Tensor], Tensor]
"""``gather(x_B...) -> x_G...``: concatenation over workers along dim 0, in rank order."""

SimilarityFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]
"""``similarity(text_side, video_side) -> sim_XY``: texts of the first mapping x videos of the second."""


def identity_gather(x: Tensor) -> Tensor:
    """The single-worker gather."""
    return x


def positive_mask(row_ids_B: Tensor, col_ids_G: Tensor) -> Tensor:
    """``mask_BG[b, g] = row_ids[b] == col_ids[g]`` (same video id)."""
    return row_ids_B[:, None] == col_ids_G[None, :]


def soft_target_cross_entropy(logits_BG: Tensor, targets_BG: Tensor) -> Tensor:
    """mean_b -sum_g p[b, g] log softmax(logits_b)_g, with p = targets / targets.sum(row).

    With one-hot targets this is the ordinary cross-entropy; with several positives per row the target
    mass is spread evenly over them (the method's unused ``sim_targets``, docs/method.md §2.4).
    """
    targets = targets_BG.to(logits_BG.dtype)
    counts = targets.sum(dim=1, keepdim=True)
    if (counts == 0).any():
        raise ValueError("soft_target_cross_entropy: every row needs at least one positive")
    return -(targets / counts * logits_BG.log_softmax(dim=1)).sum(dim=1).mean()


def symmetric_infonce(
    features: Mapping[str, Tensor],
    similarity: SimilarityFn,
    *,
    logit_scale: float | Tensor = 100.0,
    gather: Gather = identity_gather,
    row_offset: int = 0,
    same_video_positives: bool = False,
    video_id_key: str = "video_index",
) -> Tensor:
    """The symmetric InfoNCE of stage 1 (docs/method.md §2.4) for the local rows of a possibly sharded batch.

    ``features`` holds this worker's B rows (every tensor has B first); each is passed through ``gather``
    to build the G columns (0-d tensors are passed through as they are). Pass only what ``similarity``
    needs, plus the video ids when ``same_video_positives``. ``similarity`` must be parameter-free given
    the features (the model computes every learnt quantity inside ``forward``, so DDP sees all parameter
    use there).
    Labels: faithful ``same_video_positives=False`` uses the own pair only (other captions of the same video
    are negatives); ``True`` uses soft targets over every column with the same ``features[video_id_key]``.
    Returns a scalar.
    """
    batched = [k for k, v in features.items() if v.ndim >= 1]
    if not batched:
        raise ValueError("symmetric_infonce: expected at least one batched feature tensor")
    gathered = {k: gather(v) if v.ndim >= 1 else v for k, v in features.items()}
    rows, cols = features[batched[0]].shape[0], gathered[batched[0]].shape[0]
    if not 0 <= row_offset <= cols - rows:
        raise ValueError(
            f"symmetric_infonce: row_offset {row_offset} puts {rows} local rows outside the "
            f"{cols} gathered columns"
        )
    if rows == cols:  # one worker: one similarity matrix and its transpose
        t2v_BG = similarity(features, gathered)
        v2t_BG = t2v_BG.T
    else:
        t2v_BG = similarity(features, gathered)
        v2t_BG = similarity(gathered, features).T
    if same_video_positives:
        if video_id_key not in features:
            raise ValueError(f"train.same_video_positives needs features[{video_id_key!r}] (the video ids)")
        targets_BG = positive_mask(features[video_id_key], gathered[video_id_key])
    else:
        own_B = torch.arange(rows, device=t2v_BG.device) + row_offset
        targets_BG = torch.zeros(rows, cols, dtype=torch.bool, device=t2v_BG.device)
        targets_BG[torch.arange(rows, device=t2v_BG.device), own_B] = True
    return (
        soft_target_cross_entropy(logit_scale * t2v_BG, targets_BG)
        + soft_target_cross_entropy(logit_scale * v2t_BG, targets_BG)
    ) / 2
