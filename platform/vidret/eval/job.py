"""The evaluation job: feature cache -> blocked WTI -> distributed diffusion re-ranking -> metrics + report.

Determinism: the DDIM start noise of each query is keyed by (``diffusion.noise_seed``, query row), and query
blocks are cut at multiples of ``RERANK_CHUNK`` rows whatever the number of workers, so every chunk runs the
same arithmetic on one worker or many: metrics are bit-identical across runs and worker counts.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import ray
import torch

from vidret.config import Config, DiffusionConfig, dump_yaml, with_absolute_paths
from vidret.diffusion.rerank import rerank_t2v, rerank_v2t
from vidret.eval.metrics import metrics_table
from vidret.eval.retrieval import EvalResult, FeatureSet, evaluate_features, top_k
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage, join

RERANK_CHUNK = 256


def _rerank_rows(
    model: RetrievalModel,
    sim_QN: torch.Tensor,
    fs: FeatureSet,
    cfg: DiffusionConfig,
    direction: str,
    rows: slice,
) -> torch.Tensor:
    """Re-ranked rows ``rows`` of the t2v (texts x videos) or v2t (videos x texts) matrix."""
    ids = torch.arange(rows.start, rows.stop)
    with torch.no_grad():
        if direction == "t2v":
            return rerank_t2v(
                sim_QN[rows],
                fs.text["text_eot"][rows],
                fs.video["video"],
                fs.video["video_mask"],
                model.t2v_denoiser,
                model.diffusion,
                cfg,
                query_ids_Q=ids,
                chunk=RERANK_CHUNK,
            )
        return rerank_v2t(
            sim_QN[rows],
            fs.video["video"][rows],
            fs.video["video_mask"][rows],
            fs.text["text_eot"],
            model.v2t_denoiser,
            model.diffusion,
            cfg,
            query_ids_Q=ids,
            chunk=RERANK_CHUNK,
        )


@ray.remote
def _rerank_task(
    state_ref: Any, cfg: Config, sim_ref: Any, fs_ref: Any, direction: str, start: int, stop: int
) -> np.ndarray:
    from vidret.train.loop import build_model

    torch.set_num_threads(1)
    model = build_model(cfg, Storage(cfg.storage), None)
    model.load_state_dict(state_ref)
    model.eval()
    return _rerank_rows(model, sim_ref, fs_ref, cfg.diffusion, direction, slice(start, stop)).numpy()


def _blocks(rows: int, workers: int) -> list[tuple[int, int]]:
    per = math.ceil(math.ceil(rows / workers) / RERANK_CHUNK) * RERANK_CHUNK
    return [(s, min(s + per, rows)) for s in range(0, rows, per)]


def rerank_distributed(
    model: RetrievalModel,
    state: dict[str, torch.Tensor],
    cfg: Config,
    sim_TV: torch.Tensor,
    fs: FeatureSet,
    workers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2v, v2t) re-ranked matrices; query blocks spread over ``workers`` Ray tasks (in-process when 1)."""
    sims = {"t2v": sim_TV, "v2t": sim_TV.T.contiguous()}
    if workers <= 1:
        return tuple(
            _rerank_rows(model, s, fs, cfg.diffusion, d, slice(0, s.shape[0]))  # type: ignore[return-value]
            for d, s in sims.items()
        )
    state_ref, fs_ref = ray.put(state), ray.put(fs)
    # both directions' blocks are in flight together, spread over the cluster's nodes
    task = _rerank_task.options(scheduling_strategy="SPREAD")
    pending = [
        [
            task.remote(state_ref, cfg, sim_ref, fs_ref, direction, a, b)
            for a, b in _blocks(sim.shape[0], workers)
        ]
        for direction, sim, sim_ref in ((d, s, ray.put(s)) for d, s in sims.items())
    ]
    out = [torch.from_numpy(np.concatenate(ray.get(refs))) for refs in pending]
    return out[0], out[1]


LABELS = {
    "stage1": "stage 1",
    "rerank": "stage 1 + diffusion re-rank",
    "dual_softmax": "dual softmax (test-time trick)",
}


def run_evaluation(cfg: Config, checkpoint_uri: str) -> dict[str, Any]:
    """Evaluate the exported weights at ``checkpoint_uri`` on ``eval.splits``; write metrics.json + report."""
    from vidret.train.artifacts import load_state
    from vidret.train.loop import build_model
    from vidret.train.trainer import build_feature_cache, check_placeholders, ensure_ray

    cfg = with_absolute_paths(cfg)
    check_placeholders(cfg)
    storage = Storage(cfg.storage)
    ensure_ray(cfg)
    t0 = time.perf_counter()
    exported = load_state(checkpoint_uri, storage)
    cache = build_feature_cache(cfg, storage, checkpoint_uri, exported["key"], splits=list(cfg.eval.splits))
    model = build_model(cfg, storage, None)
    model.load_state_dict(exported["selected"])
    rerank = cfg.eval.rerank and exported.get("stage") == "generation"
    if cfg.eval.rerank and not rerank:
        print(
            "[eval] warning: eval.rerank ignored: the checkpoint is from stage 1 (its denoisers are untrained)",
            file=sys.stderr,
        )
    out_dir = join(cfg.run.out, "eval", exported.get("stage", "model"))
    results: dict[str, Any] = {}
    tables = []
    report_inputs = {}
    from vidret.train.cache import load_split

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
    from vidret.train.cache import read_index

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
    from vidret.eval.report import write_report
    from vidret.eval.thumbnails import thumbnails_for

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
