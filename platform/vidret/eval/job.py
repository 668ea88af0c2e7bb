"""The evaluation job: feature cache -> blocked WTI -> distributed diffusion re-ranking -> metrics, intervals,
report.

The re-ranking is spread over Ray tasks by ``vidret.eval.retrieval.rerank_distributed`` (bit-identical
across worker counts); everything else is ``vidret.features.scoring.evaluate_features``. The fusion weight
and temperature are chosen on the validation split when ``eval.select_fusion`` (never on test), every split
gets bootstrap intervals and a paired re-ranking test (``eval/uncertainty.py``), and the report covers
every split (``eval/run_report.py``).
"""

from __future__ import annotations

import functools
import sys
import time
from collections import Counter
from typing import Any

from torch import Tensor

from vidret.config import Config, dump_yaml, to_dict, with_absolute_paths
from vidret.eval.fusion_select import cache_splits, choose_on_validation
from vidret.eval.results import sentences, split_table, write_results
from vidret.eval.retrieval import rerank_distributed
from vidret.eval.run_report import write_run_report
from vidret.eval.threads import pinned_threads
from vidret.eval.uncertainty import split_intervals
from vidret.features.build import build_feature_cache
from vidret.features.scoring import EvalResult, evaluate_features
from vidret.features.store import load_split, read_index
from vidret.features.types import FeatureSet
from vidret.layout import check_placeholders
from vidret.model.build import model_from_state
from vidret.model.checkpoint import load_state
from vidret.model.retrieval import RetrievalModel
from vidret.startup import manifest_video_uris, planned, start_job
from vidret.storage import Storage, join
from vidret.tracking import log_once

LABELS = {
    "stage1": "stage 1",
    "rerank": "stage 1 + diffusion re-rank",
    "dual_softmax": "dual softmax (test-time trick)",
}


def run_evaluation(cfg: Config, checkpoint_uri: str) -> dict[str, Any]:
    """Evaluate the exported weights at ``checkpoint_uri`` on ``eval.splits``; write metrics.json, ranks.json,
    timings.json, config.yaml and the report under ``<run.out>/eval/<stage>``; return the summary."""
    with pinned_threads(cfg.eval.threads):  # fixed driver threads: identical sums on every machine
        return _run_evaluation(cfg, checkpoint_uri)


def _run_evaluation(cfg: Config, checkpoint_uri: str) -> dict[str, Any]:
    cfg = with_absolute_paths(cfg)
    check_placeholders(cfg)
    storage = Storage(cfg.storage)
    plan, _ = start_job("evaluation", cfg, manifest_video_uris(cfg, cache_splits(cfg)))
    cfg = planned(cfg, plan)
    t0 = time.perf_counter()
    exported = load_state(checkpoint_uri, storage)
    cache = build_feature_cache(cfg, storage, checkpoint_uri, exported["key"], splits=cache_splits(cfg))
    model = model_from_state(cfg, storage, exported["selected"])
    rerank = cfg.eval.rerank and exported.get("stage") == "generation"
    if cfg.eval.rerank and not rerank:
        print(
            "[eval] warning: eval.rerank ignored: the checkpoint is from stage 1 "
            "(its denoisers are untrained)",
            file=sys.stderr,
        )
    # the fusion weight/temperature are chosen on validation, never on test (eval/fusion_select.py)
    cfg, fusion = choose_on_validation(cfg, model, lambda s: load_split(storage, cache[s]), enabled=rerank)
    inputs = _evaluate_splits(cfg, storage, model, exported["selected"], cache, rerank)
    out_dir = join(cfg.run.out, "eval", exported.get("stage", "model"))
    intervals = {split: split_intervals(res, fs, cfg.eval) for split, (fs, res) in inputs.items()}
    summary: dict[str, Any] = {
        "checkpoint": checkpoint_uri,
        "stage": exported.get("stage"),
        "splits": {split: res.metrics for split, (_, res) in inputs.items()},
        "bad_videos": {split: _bad_videos(storage, cache[split]) for split in cfg.eval.splits},
        "intervals": intervals,
        "fusion": fusion,
        "wall_s": round(time.perf_counter() - t0, 1),
        "out": out_dir,
    }
    notes = sentences(intervals)
    if cfg.eval.report:
        summary["report"] = write_run_report(
            cfg, storage, out_dir, inputs, intervals, LABELS, fusion=fusion, notes=notes
        )
    write_results(storage, out_dir, summary, cfg.run.out, inputs, cfg.eval.multi_caption_grouping)
    storage.write_text(join(out_dir, "config.yaml"), dump_yaml(cfg))
    summary["tensorboard"] = log_once(
        cfg.run.out,
        "eval",
        storage,
        {split: res.metrics for split, (_, res) in inputs.items()},
        mlflow_uri=cfg.tracking.mlflow_uri,
        params=to_dict(cfg),
        artifacts=[summary.get("report"), join(out_dir, "metrics.json")],
    )
    summary["table"] = "\n".join(
        split_table(split, res.metrics, intervals[split], LABELS) for split, (_, res) in inputs.items()
    )
    summary["sentences"] = notes  # one line per split, printed last
    return summary


def _evaluate_splits(
    cfg: Config,
    storage: Storage,
    model: RetrievalModel,
    state: dict[str, Any],
    cache: dict[str, str],
    rerank: bool,
) -> dict[str, tuple[FeatureSet, EvalResult]]:
    """``{split: (features, result)}`` of every split in ``eval.splits``."""
    out = {}
    for split in cfg.eval.splits:
        fs = load_split(storage, cache[split])
        res = evaluate_features(
            model,
            fs,
            cfg.eval,
            rerank=rerank,
            rerank_fn=functools.partial(_rerank, model, state, cfg, fs),
        )
        out[split] = (fs, res)
    return out


def _rerank(
    model: RetrievalModel, state: dict[str, Any], cfg: Config, fs: FeatureSet, sim_TV: Tensor
) -> tuple[Tensor, Tensor]:
    """Both directions re-ranked, query blocks spread over ``eval.num_workers`` Ray tasks."""
    return rerank_distributed(model, state, cfg, sim_TV, fs, cfg.eval.num_workers)


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
