"""Intervals for one evaluated split: every variant and direction, and re-ranked minus stage 1, paired.

Glue between :mod:`vidret.eval.retrieval` (ranks per variant and direction) and :mod:`vidret.eval.intervals`
(the bootstrap). The block written to ``metrics.json`` under ``intervals.<split>``::

    {"method": "percentile", "resamples": 1000, "seed": 0, "level": 0.95,
     "unit": {"t2v": "video", "v2t": "video"}, "n": {"t2v": 400, "v2t": 400},
     "gallery": {"t2v": 400, "v2t": 400}, "chance": {"t2v": {"R1": 0.25, ...}, "v2t": {...}},
     "variants": {"stage1": {"t2v": {"R1": {"estimate", "lo", "hi"}, ...}, "v2t": {...}}, ...},
     "paired": {"rerank - stage1": {"t2v": {"R1": {"diff", "lo", "hi", "p"}, ...}, "v2t": {...}}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vidret.config import EvalConfig
from vidret.eval.intervals import BootstrapSpec, Median, bootstrap_intervals, chance_levels, paired_difference
from vidret.eval.metrics import caption_groups
from vidret.features.scoring import EvalResult
from vidret.features.types import FeatureSet

DIRECTIONS = ("t2v", "v2t")
BASE = "stage1"
PAIRED_VARIANTS = ("rerank", "dual_softmax")  # each compared with stage 1 when present


def spec_of(ecfg: EvalConfig) -> BootstrapSpec:
    """The bootstrap settings of ``eval.bootstrap_*``."""
    return BootstrapSpec(
        resamples=ecfg.bootstrap_resamples, seed=ecfg.bootstrap_seed, level=ecfg.bootstrap_level
    )


def query_layout(fs: FeatureSet, grouping: str) -> dict[str, dict[str, Any]]:
    """Per direction: the unit name, each ranked query's unit id, its row in the split and the gallery size.

    Rows: t2v queries are caption rows, v2t queries video rows (in the order ``EvalResult.ranks`` holds them).
    """
    num_videos = len(fs.video)
    if fs.single_caption:
        rows = np.arange(num_videos)
        return {d: {"unit": "query", "units": rows, "rows": rows, "gallery": num_videos} for d in DIRECTIONS}
    labels_T = caption_groups(fs.text_to_video_T.numpy(), num_videos, grouping)  # type: ignore[arg-type]
    keep_T = np.flatnonzero(labels_T >= 0)
    videos = np.unique(labels_T[keep_T])
    return {
        "t2v": {"unit": "video", "units": labels_T[keep_T], "rows": keep_T, "gallery": num_videos},
        "v2t": {"unit": "video", "units": videos, "rows": videos, "gallery": num_videos},
    }


def _median(fs: FeatureSet, direction: str) -> Median:
    # the multi-caption t2v metrics use the lower median (as the upstream); keep the estimate identical
    return "lower" if direction == "t2v" and not fs.single_caption else "midpoint"


def split_intervals(res: EvalResult, fs: FeatureSet, ecfg: EvalConfig) -> dict[str, Any]:
    """The ``intervals.<split>`` block of metrics.json (see the module docstring)."""
    spec = spec_of(ecfg)
    layout = query_layout(fs, ecfg.multi_caption_grouping)
    out: dict[str, Any] = {
        **spec.describe(),
        "unit": {d: layout[d]["unit"] for d in DIRECTIONS},
        "n": {d: len(layout[d]["units"]) for d in DIRECTIONS},
        "gallery": {d: layout[d]["gallery"] for d in DIRECTIONS},
        "chance": {d: chance_levels(layout[d]["gallery"]) for d in DIRECTIONS},
        "variants": {},
        "paired": {},
    }
    for variant, by_dir in res.ranks.items():
        out["variants"][variant] = {
            d: bootstrap_intervals(by_dir[d], layout[d]["units"], spec, median=_median(fs, d))
            for d in DIRECTIONS
        }
    for variant in PAIRED_VARIANTS:
        if variant in res.ranks and BASE in res.ranks:
            out["paired"][f"{variant} - {BASE}"] = {
                d: paired_difference(
                    res.ranks[BASE][d], res.ranks[variant][d], layout[d]["units"], spec, median=_median(fs, d)
                )
                for d in DIRECTIONS
            }
    return out


def labelled_intervals(block: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """``variants`` of an intervals block keyed by display label (what :func:`metrics_table` takes)."""
    return {labels.get(v, v): by_dir for v, by_dir in block["variants"].items()}


def _fmt(x: float) -> str:
    return f"{x:+.1f}" if abs(x) >= 0.05 else "+0.0"


def rerank_sentence(split: str, block: Mapping[str, Any], direction: str = "t2v", metric: str = "R1") -> str:
    """One plain sentence on re-ranking's effect on ``split``, from the paired interval."""
    key = f"rerank - {BASE}"
    if key not in block.get("paired", {}):
        return f"{split}: re-ranking was not evaluated (stage-1 weights or eval.rerank=false)."
    d = block["paired"][key][direction][metric]
    level = round(100 * float(block["level"]))
    name = {"R1": "R@1", "R5": "R@5", "R10": "R@10"}.get(metric, metric)
    p = d["p"]
    p_text = f"{p:.3f}" if p >= 0.001 else "< 0.001"
    return (
        f"{split}: re-ranking changed {direction} {name} by {_fmt(d['diff'])} "
        f"({level}% CI [{d['lo']:+.1f}, {d['hi']:+.1f}], p = {p_text}; paired bootstrap over "
        f"{block['n'][direction]} {block['unit'][direction]}-level units, {block['resamples']} resamples)."
    )
