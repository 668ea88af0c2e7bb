"""Features -> similarity -> diffusion re-ranking -> metrics. Single-process; the Ray edges call it.

Shape legend: T texts (queries of t2v), V videos, L tokens, F frames, D width.

A ``FeatureSet`` holds the features of one split: every caption (``text``) and every video (``video``) once,
with ``text_to_video_T`` mapping each caption to its video's row. Single-caption splits (MSR-VTT 1k-A) have
T == V and the identity map; multi-caption splits (MSVD) are ranked with the grouped metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vidret.config import DiffusionConfig, EvalConfig
from vidret.eval.metrics import (
    dual_softmax,
    retrieval_metrics,
    retrieval_ranks,
    t2v_multi,
    t2v_multi_ranks,
    v2t_multi,
    v2t_multi_ranks,
)
from vidret.model.retrieval import RetrievalModel

TEXT_KEYS = ("text", "text_mask", "text_weight", "text_eot")
VIDEO_KEYS = ("video", "video_mask", "video_weight")


@dataclass
class FeatureSet:
    """Features of one split: captions (T rows) and videos (V rows), and which video each caption describes."""

    text: dict[str, Tensor]  # TEXT_KEYS, first dim T
    video: dict[str, Tensor]  # VIDEO_KEYS, first dim V
    text_to_video_T: Tensor  # int64 (T,)
    video_ids: list[str] = field(default_factory=list)  # (V,) dataset ids, for reports
    captions: list[str] = field(default_factory=list)  # (T,)
    video_ok: np.ndarray | None = None  # (V,) bool: False where the video could not be decoded

    @property
    def single_caption(self) -> bool:
        t, v = self.text_to_video_T.shape[0], self.video["video"].shape[0]
        return t == v and bool(torch.equal(self.text_to_video_T, torch.arange(v)))

    def __post_init__(self) -> None:
        t = self.text["text"].shape[0]
        if self.text_to_video_T.shape != (t,):
            raise ValueError(
                f"FeatureSet: text_to_video_T has shape {tuple(self.text_to_video_T.shape)}, expected ({t},)"
            )


@torch.no_grad()
def encode_batches(
    model: RetrievalModel, batches: Iterable[Mapping[str, Any]], *, texts: bool = True, videos: bool = True
) -> dict[str, Tensor]:
    """Encode numpy/torch batches (pipeline layout) into concatenated feature tensors (eval mode, no grad).

    Returns the TEXT_KEYS and/or VIDEO_KEYS tensors plus ``video_index`` (and ``caption_index`` when present)
    in the order the batches arrived.
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    for batch in batches:
        feats: dict[str, Tensor] = {}
        if texts:
            feats.update(model.encode_text(_t(batch["text_ids"]), _t(batch["text_mask"])))
        if videos:
            feats.update(model.encode_video(_t(batch["video"]), _t(batch["video_mask"])))
        for key in ("video_index", "caption_index", "ok"):
            if key in batch:
                feats[key] = _t(batch[key])
        for k, v in feats.items():
            parts.setdefault(k, []).append(v.float() if v.is_floating_point() else v)
    model.train(was_training)
    if not parts:
        raise ValueError("encode_batches: no batches (is the split empty, or did every video fail?)")
    return {k: torch.cat(v) for k, v in parts.items()}


def _t(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    arr = np.asarray(x)
    # Ray Data hands batch inference read-only views of the object store, which torch would warn about
    # (and a tensor over them could write into shared memory): copy those, wrap the others
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def direction_metrics(
    sim_TV: Tensor, sim_VT: Tensor, fs: FeatureSet, ecfg: EvalConfig
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """t2v metrics from ``sim_TV`` and v2t metrics from ``sim_VT`` (separately re-ranked, not a transpose)."""
    t2v_np, v2t_np = sim_TV.double().cpu().numpy(), sim_VT.double().cpu().numpy()
    if fs.single_caption:
        metrics = {"t2v": retrieval_metrics(t2v_np), "v2t": retrieval_metrics(v2t_np)}
        ranks = {
            "t2v": retrieval_ranks(t2v_np, ties="optimistic"),
            "v2t": retrieval_ranks(v2t_np, ties="optimistic"),
        }
    else:
        tv = fs.text_to_video_T.numpy()
        g = ecfg.multi_caption_grouping
        metrics = {"t2v": t2v_multi(t2v_np, tv, grouping=g), "v2t": v2t_multi(v2t_np.T, tv, grouping=g)}
        ranks = {
            "t2v": t2v_multi_ranks(t2v_np, tv, grouping=g),
            "v2t": v2t_multi_ranks(v2t_np.T, tv, grouping=g),
        }
    return metrics, ranks


@dataclass
class EvalResult:
    """Metrics per variant and direction, and the matrices and ranks the report needs."""

    metrics: dict[str, dict[str, dict[str, float]]]  # variant -> direction -> metric
    ranks: dict[str, dict[str, np.ndarray]]  # variant -> direction -> (Q,) 0-based ranks
    sims: dict[str, tuple[Tensor, Tensor]]  # variant -> (t2v T x V, v2t V x T)


RerankFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``rerank(sim_TV) -> (t2v T x V, v2t V x T)`` re-ranked matrices."""


def evaluate_features(
    model: RetrievalModel,
    fs: FeatureSet,
    ecfg: EvalConfig,
    dcfg: DiffusionConfig | None = None,
    *,
    rerank: bool | None = None,
    rerank_fn: RerankFn | None = None,
) -> EvalResult:
    """Stage-1 WTI retrieval, optionally diffusion re-ranked and dual-softmax normalised, with metrics.

    Variants: ``stage1``; ``rerank`` (stage 1 + diffusion re-ranking, when ``rerank`` or ``eval.rerank``);
    ``dual_softmax`` (a test-time score normalisation, only when ``eval.dual_softmax``; labelled as such).
    ``rerank_fn`` replaces the in-process re-ranking (the evaluation job spreads it over Ray workers); the
    initial noise is keyed by caption/video row, so results do not depend on batching.
    """
    model.eval()
    with torch.no_grad():
        sim_TV = model.similarity(fs.text, fs.video, block=ecfg.block_size).float()
    sims: dict[str, tuple[Tensor, Tensor]] = {"stage1": (sim_TV, sim_TV.T.contiguous())}
    if ecfg.rerank if rerank is None else rerank:
        if rerank_fn is None:
            t, v = fs.text_to_video_T.shape[0], fs.video["video"].shape[0]

            def rerank_fn(sim: Tensor) -> tuple[Tensor, Tensor]:
                return model.rerank(
                    sim, fs.text, fs.video, dcfg, text_ids=torch.arange(t), video_ids=torch.arange(v)
                )

        t2v, v2t = rerank_fn(sim_TV)
        sims["rerank"] = (t2v.float(), v2t.float())
    if ecfg.dual_softmax:
        base_t2v, base_v2t = sims.get("rerank", sims["stage1"])
        sims["dual_softmax"] = (
            torch.from_numpy(dual_softmax(base_t2v.double().cpu().numpy())).float(),
            torch.from_numpy(dual_softmax(base_v2t.double().cpu().numpy())).float(),
        )
    metrics, ranks = {}, {}
    for name, (t2v, v2t) in sims.items():
        metrics[name], ranks[name] = direction_metrics(t2v, v2t, fs, ecfg)
    return EvalResult(metrics=metrics, ranks=ranks, sims=sims)


def top_k(sim_QN: Tensor, k: int) -> np.ndarray:
    """(Q, k) column indices of the k best scores per row (ties by lower index)."""
    k = min(k, sim_QN.shape[1])
    order = np.argsort(-sim_QN.double().cpu().numpy(), axis=1, kind="stable")
    return order[:, :k]
