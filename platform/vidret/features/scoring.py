"""Features -> similarity -> diffusion re-ranking -> metrics, single-process. Shared by training (model
selection on validation), evaluation and tuning; the Ray edges call it.

Shape legend: T texts (queries of t2v), V videos, Q queries, N gallery items, D width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vidret.config import DiffusionConfig, EvalConfig
from vidret.diffusion.rerank import Conditioning, Direction, rerank
from vidret.eval.metrics import (
    dual_softmax,
    retrieval_metrics,
    retrieval_ranks,
    t2v_multi,
    t2v_multi_ranks,
    v2t_multi,
    v2t_multi_ranks,
)
from vidret.features.types import FeatureSet
from vidret.model.retrieval import RetrievalModel

DIRECTIONS: tuple[Direction, Direction] = ("t2v", "v2t")


def similarity(model: RetrievalModel, fs: FeatureSet, block: int | None) -> Tensor:
    """Stage-1 WTI scores (T x V) of a feature set, float32, in ``block x block`` tiles (None: at once)."""
    with torch.no_grad():
        return model.similarity(fs.text.as_model(), fs.video.as_model(), block=block).float()


@torch.no_grad()
def rerank_features(
    model: RetrievalModel,
    direction: Direction,
    sim_QN: Tensor,
    fs: FeatureSet,
    cfg: DiffusionConfig | None = None,
    *,
    rows: slice | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Re-ranked rows ``rows`` (default: all) of the t2v (texts x videos) or v2t (videos x texts) matrix.

    ``sim_QN`` is the whole stage-1 matrix of ``direction`` (``sim_TV`` or its transpose); ``fs`` holds every
    caption and video. ``cfg`` defaults to the model's diffusion config (override k / alpha / temp /
    sample_steps to tune; steps and schedule must stay the model's). The start noise of a query is keyed by
    its row number, so a block of rows re-ranks the same as inside the whole matrix.
    """
    cfg = cfg or model.diffusion_cfg
    trained = model.diffusion_cfg
    if (cfg.steps, cfg.schedule) != (trained.steps, trained.schedule):
        raise ValueError(
            f"rerank: diffusion.steps/schedule ({cfg.steps}, {cfg.schedule}) differ from the "
            f"model's ({trained.steps}, {trained.schedule})"
        )
    start, stop, _ = (rows or slice(None)).indices(sim_QN.shape[0])
    rows = slice(start, stop)
    text, video, mask = fs.text.eot, fs.video.frames, fs.video.mask
    if direction == "t2v":
        text = text[rows]
    else:
        video, mask = video[rows], mask[rows]
    return rerank(
        direction,
        sim_QN[rows],
        Conditioning(text, video, mask),
        model.denoiser(direction),
        model.diffusion,
        cfg,
        query_ids_Q=torch.arange(start, stop),
        chunk=chunk,
    )


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
    ``rerank_fn`` replaces the in-process re-ranking (``rerank_features`` in both directions; the evaluation
    job spreads it over Ray workers); the start noise is keyed by caption/video row, so results do not
    depend on batching.
    """
    model.eval()
    sim_TV = similarity(model, fs, ecfg.block_size)
    sims: dict[str, tuple[Tensor, Tensor]] = {"stage1": (sim_TV, sim_TV.T.contiguous())}
    if ecfg.rerank if rerank is None else rerank:
        if rerank_fn is None:

            def rerank_fn(sim: Tensor) -> tuple[Tensor, Tensor]:
                t2v = rerank_features(model, "t2v", sim, fs, dcfg)
                return t2v, rerank_features(model, "v2t", sim.T, fs, dcfg)

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
