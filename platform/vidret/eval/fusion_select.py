"""Fusion weight and temperature chosen on the validation split, never on test.

The re-ranker's DDIM scores ``x0`` of the top-k candidates do not depend on the fusion weight ``alpha`` or
temperature ``temp`` (``docs/method.md``, fusion): they only enter ``fuse``. So DDIM runs once per direction
on the validation features, and every point of the ``eval.fusion_alphas`` x ``eval.fusion_temps`` grid is
scored by fusing those cached scores: the exact matrices ``rerank_t2v`` / ``rerank_v2t`` would produce
with that point. Each direction keeps its best point by validation R@1 (ties: higher R@5, lower MnR, then
grid order), and the evaluation of the test splits runs with it. The whole grid is recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from vidret.config import Config, DiffusionConfig, EvalConfig
from vidret.diffusion.rerank import Conditioning, Direction, candidate_scores, fuse
from vidret.features.scoring import direction_metrics, similarity
from vidret.features.types import FeatureSet
from vidret.model.retrieval import RetrievalModel

CHUNK = 256


def _candidates(
    model: RetrievalModel, sim_TV: Tensor, fs: FeatureSet, dcfg: DiffusionConfig
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Per direction (sim, cand_QK, x0_QK): the stage-1 matrix, top-k candidates and their DDIM scores."""
    sims: dict[Direction, Tensor] = {"t2v": sim_TV, "v2t": sim_TV.T.contiguous()}
    feats = Conditioning(fs.text.eot, fs.video.frames, fs.video.mask)
    out: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    for direction, sim in sims.items():
        cand_QK, x0_QK = candidate_scores(
            direction,
            sim,
            feats,
            model.denoiser(direction),
            model.diffusion,
            dcfg,
            query_ids_Q=torch.arange(sim.shape[0]),
            chunk=CHUNK,
        )
        out[direction] = (sim, cand_QK, x0_QK)
    return out


def _score(m: dict[str, Any]) -> tuple[float, float, float]:
    return (m["R1"], m["R5"], -m["MnR"])


def select_fusion(
    model: RetrievalModel, fs: FeatureSet, dcfg: DiffusionConfig, ecfg: EvalConfig
) -> dict[str, Any]:
    """Best (alpha, temp) per direction on the split ``fs`` (validation), with the scored grid.

    Returns {"t2v": {"alpha", "temp", "R1", "R5", "MnR"}, "v2t": {...}, "grid": [{"direction", "alpha",
    "temp", "R1", "R5", "MnR"}, ...], "queries": {"t2v": T, "v2t": V}}.
    """
    model.eval()
    sim_TV = similarity(model, fs, ecfg.block_size).float()
    cands = _candidates(model, sim_TV, fs, dcfg)
    grid: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    for direction, (sim, cand, x0) in cands.items():
        for alpha in ecfg.fusion_alphas:
            for temp in ecfg.fusion_temps:
                fused = fuse(sim, cand, x0, float(alpha), float(temp))
                pair = (fused, cands["v2t"][0]) if direction == "t2v" else (cands["t2v"][0], fused)
                metrics = direction_metrics(pair[0], pair[1], fs, ecfg)[0][direction]
                row = {"direction": direction, "alpha": float(alpha), "temp": float(temp)}
                row.update({k: float(metrics[k]) for k in ("R1", "R5", "MnR")})
                grid.append(row)
                if direction not in best or _score(row) > _score(best[direction]):
                    best[direction] = row
    return {
        **{d: {k: v for k, v in row.items() if k != "direction"} for d, row in best.items()},
        "grid": grid,
        "queries": {"t2v": int(sim_TV.shape[0]), "v2t": int(sim_TV.shape[1])},
    }


def apply_fusion(dcfg: DiffusionConfig, choice: dict[str, Any]) -> DiffusionConfig:
    """``dcfg`` with the chosen ``t2v_alpha/t2v_temp/v2t_alpha/v2t_temp``."""
    return replace(
        dcfg,
        t2v_alpha=choice["t2v"]["alpha"],
        t2v_temp=choice["t2v"]["temp"],
        v2t_alpha=choice["v2t"]["alpha"],
        v2t_temp=choice["v2t"]["temp"],
    )


def cache_splits(cfg: Config) -> list[str]:
    """The splits the evaluation needs features of: ``eval.splits``, plus validation when it selects
    the fusion there."""
    splits = list(cfg.eval.splits)
    if cfg.eval.select_fusion and cfg.data.val_split not in splits:
        splits.append(cfg.data.val_split)
    return splits


def choose_on_validation(
    cfg: Config, model: RetrievalModel, load: Callable[[str], FeatureSet], *, enabled: bool = True
) -> tuple[Config, dict[str, Any] | None]:
    """(cfg with the fusion chosen on ``data.val_split``, the record) when ``eval.select_fusion``, else
    (cfg, None).

    ``load(split)`` returns a split's cached features. ``enabled`` False (no re-ranking, e.g. stage-1 weights)
    skips it. Refuses when validation is the test split.
    """
    if not (cfg.eval.select_fusion and enabled):
        return cfg, None
    val = cfg.data.val_split
    if cfg.data.test_split == val:
        raise ValueError(
            f"eval.select_fusion: data.val_split and data.test_split are both {val!r}; fusion must be "
            "chosen on a split that is not the test split"
        )
    record = select_fusion(model, load(val), cfg.diffusion, cfg.eval)
    record["chosen_on"] = val
    print(
        f"[eval] fusion chosen on {val}: t2v alpha {record['t2v']['alpha']} temp {record['t2v']['temp']} "
        f"(val R@1 {record['t2v']['R1']:.1f}); v2t alpha {record['v2t']['alpha']} "
        f"temp {record['v2t']['temp']} "
        f"(val R@1 {record['v2t']['R1']:.1f})",
        file=sys.stderr,
        flush=True,
    )
    return replace(cfg, diffusion=apply_fusion(cfg.diffusion, record)), record
