"""The evaluation job: feature cache -> blocked WTI -> distributed diffusion re-ranking -> metrics + report.

The re-ranking is spread over Ray tasks by ``vidret.eval.retrieval.rerank_distributed`` (bit-identical
across worker counts); everything else is ``vidret.features.scoring.evaluate_features``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from vidret.config import Config, dump_yaml, with_absolute_paths
from vidret.runtime import ensure_ray
from vidret.eval.metrics import metrics_table
from vidret.eval.report import write_report
from vidret.eval.retrieval import rerank_distributed, top_k
from vidret.eval.thumbnails import thumbnails_for
from vidret.features.build import build_feature_cache
from vidret.features.scoring import EvalResult, evaluate_features
from vidret.features.store import load_split, read_index
from vidret.features.types import FeatureSet
from vidret.layout import check_placeholders
from vidret.model.build import model_from_state
from vidret.model.checkpoint import load_state
from vidret.storage import Storage, join

LABELS = {
    "stage1": "stage 1",
    "rerank": "stage 1 + diffusion re-rank",
    "dual_softmax": "dual softmax (test-time trick)",
}


def run_evaluation(cfg: Config, checkpoint_uri: str) -> dict[str, Any]:
    """Evaluate the exported weights at ``checkpoint_uri`` on ``eval.splits``; write metrics.json + report."""
    cfg = with_absolute_paths(cfg)
    check_placeholders(cfg)
    storage = Storage(cfg.storage)
    ensure_ray(cfg.run)
    t0 = time.perf_counter()
    exported = load_state(checkpoint_uri, storage)
    cache = build_feature_cache(cfg, storage, checkpoint_uri, exported["key"], splits=list(cfg.eval.splits))
    model = model_from_state(cfg, storage, exported["selected"])
    rerank = cfg.eval.rerank and exported.get("stage") == "generation"
    if cfg.eval.rerank and not rerank:
        print(
            "[eval] warning: eval.rerank ignored: the checkpoint is from stage 1 "
            "(its denoisers are untrained)",
            file=sys.stderr,
        )
    out_dir = join(cfg.run.out, "eval", exported.get("stage", "model"))
    results: dict[str, Any] = {}
    tables = []
    report_inputs = {}
    bad_videos = {split: _bad_videos(storage, cache[split]) for split in cfg.eval.splits}
    for split in cfg.eval.splits:
        fs = load_split(storage, cache[split])
        res = evaluate_features(
            model,
            fs,
            cfg.eval,
            rerank=rerank,
            rerank_fn=lambda sim, fs=fs: rerank_distributed(
                model, exported["selected"], cfg, sim, fs, cfg.eval.num_workers
            ),
        )
        results[split] = res.metrics
        tables.append(f"{split}:\n" + metrics_table({LABELS[k]: v for k, v in res.metrics.items()}))
        report_inputs[split] = (fs, res)
    summary = {
        "checkpoint": checkpoint_uri,
        "stage": exported.get("stage"),
        "splits": results,
        "bad_videos": bad_videos,
        "wall_s": round(time.perf_counter() - t0, 1),
        "out": out_dir,
    }
    if cfg.eval.report:  # the report writes its own metrics.json first; the full summary replaces it below
        summary["report"] = _write_report(cfg, storage, out_dir, report_inputs)
    storage.write_text(join(out_dir, "metrics.json"), json.dumps(summary, indent=1, sort_keys=True))
    storage.write_text(join(out_dir, "config.yaml"), dump_yaml(cfg))
    summary["table"] = "\n".join(tables)
    return summary


def _bad_videos(storage: Storage, split_uri: str) -> dict[str, Any]:
    """The videos of a cached split that could not be decoded (masked rows with ``ok`` False in the features):
    ``{"total", "bad", "bad_fraction", "by_reason", "videos": {uri: reason}}``. Always within
    ``data.max_bad_fraction``: above it the cache build fails with ``TooManyBadVideosError`` instead."""
    index = read_index(storage, split_uri)
    if index is None:
        raise ValueError(
            f"{split_uri}: no complete feature cache here (index.json missing or shards incomplete)"
        )
    bad = dict(index.get("bad_videos", {}))
    total = len(index.get("video_ids", []))
    return {
        "total": total,
        "bad": len(bad),
        "bad_fraction": len(bad) / total if total else 0.0,
        "by_reason": dict(Counter(bad.values())),
        "videos": bad,
    }


def _write_report(
    cfg: Config, storage: Storage, out_dir: str, inputs: dict[str, tuple[FeatureSet, EvalResult]]
) -> str:
    """HTML report of the first split: table, plots and sample queries with thumbnails."""
    split, (fs, res) = next(iter(inputs.items()))
    after = "rerank" if "rerank" in res.sims else "stage1"
    rng = np.random.default_rng(cfg.run.seed)
    t = fs.text_to_video_T.shape[0]
    queries = sorted(rng.choice(t, size=min(cfg.eval.report_queries, t), replace=False).tolist())
    before_top = top_k(res.sims["stage1"][0][queries], 5)
    after_top = top_k(res.sims[after][0][queries], 5)
    samples = []
    for qi, q in enumerate(queries):
        samples.append(
            {
                "caption": fs.captions[q] if fs.captions else f"caption {q}",
                "gt_video_id": fs.video_ids[int(fs.text_to_video_T[q])],
                "before": [fs.video_ids[j] for j in before_top[qi]],
                "after": [fs.video_ids[j] for j in after_top[qi]],
            }
        )
    needed = sorted({v for s in samples for v in (s["gt_video_id"], *s["before"], *s["after"])})
    thumbs = thumbnails_for(cfg, storage, split, needed)
    ranks = {f"{LABELS[v]} {d}": r for v, dirs in res.ranks.items() for d, r in dirs.items()}
    return write_report(
        out_dir,
        storage,
        metrics={LABELS[k]: v for k, v in res.metrics.items()},
        ranks=ranks,
        samples=samples,
        thumbnails=thumbs,
        title=f"vidret evaluation: {split}",
        config_yaml=dump_yaml(cfg),
    )
