"""The ``vidret check`` and ``vidret prepare`` executors: whole-corpus jobs on Ray Data over a manifest.

``run_check`` decodes every row exactly as training would and keeps only the verdict; ``run_prepare``
transcodes every distinct source once (:mod:`vidret.data.video.prepare`) and writes new manifests. Both
reuse the input blocks of :mod:`vidret.data.pipeline` and the failure accounting of
:mod:`vidret.data.check`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from vidret.config import Config, DataConfig
from vidret.data.annotations.manifest import read_manifest, write_manifest
from vidret.data.batches import decode_rows
from vidret.data.check import enforce_budget, summarise
from vidret.data.pipeline import (
    absolute_local_uris,
    absolute_uri,
    check_pool_fits,
    failures_of,
    input_blocks,
    off_head_options,
    stream_batches,
)
from vidret.data.video.prepare import PrepareSettings, plan_outputs, prepare_one
from vidret.planning import Ask, PathUse, Phase, check_phases
from vidret.startup import check_paths
from vidret.storage import Storage, join
from vidret.watchdog import watching

__all__ = ["prepare_splits", "run_check", "run_prepare"]

Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------------ check
class _CheckStage:
    """Ray Data callable class: decode each row exactly as training would; keep only the verdict."""

    def __init__(self, cfg: DataConfig, storage: Storage) -> None:
        self.cfg, self.storage = cfg, storage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = decode_rows(batch, self.cfg, self.storage)
        return {
            "video_id": out["video_id"],
            "video_uri": out["video_uri"],
            "ok": out["ok"],
            "reason": out["reason"],
            "detail": out["detail"],
            "frames": out["video_mask"].sum(axis=1),
        }


def run_check(
    cfg: Config, manifest_uri: str, *, out_uri: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Decode every video of a manifest in parallel on Ray and summarise (``vidret check``).

    Returns the summary of :func:`vidret.data.check.summarise` plus ``manifest``, ``seconds`` and
    ``summary_uri``, and writes it as JSON (atomically) to ``out_uri`` (default
    ``<manifest_uri>.check.json``).
    Never raises for bad videos: ``within_budget`` says whether ``data.max_bad_fraction`` holds.
    """
    storage = Storage(cfg.storage)
    t0 = time.perf_counter()
    manifest = read_manifest(manifest_uri, storage)
    table = absolute_local_uris(manifest.select(["video_id", "video_uri", "start", "end"]))
    # every node's decode actors read the manifest's videos
    check_paths(cfg, table.column("video_uri").to_pylist(), [PathUse("manifest", manifest_uri)], keys=())
    failures: list[dict[str, Any]] = []
    done = 0
    check_pool_fits(cfg.data)
    ds = input_blocks(table, cfg.data.rows_per_block).map_batches(
        _CheckStage,
        fn_constructor_kwargs={"cfg": cfg.data, "storage": storage},
        batch_size=cfg.data.rows_per_block,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.data.decode_concurrency),
        num_cpus=cfg.data.decode_cpus,
        **(off_head_options() if cfg.data.decode_cpus <= 0 else {}),
    )
    with watching(cfg.run):  # decode actors the cluster cannot place end the job
        for batch in stream_batches(ds, None):
            failures += failures_of(batch)
            done += len(batch["ok"])
            if progress is not None:
                progress(done, table.num_rows)
    if done != table.num_rows:
        raise RuntimeError(f"check of {manifest_uri}: {done} results for {table.num_rows} rows")
    summary_uri = out_uri or f"{manifest_uri}.check.json"
    summary = summarise(
        failures,
        table.num_rows,
        cfg.data.max_bad_fraction,
        manifest=manifest_uri,
        summary_uri=summary_uri,
        seconds=round(time.perf_counter() - t0, 3),
    )
    storage.write_text(summary_uri, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------- prepare
def _prepare_batch(
    batch: dict[str, np.ndarray], settings: PrepareSettings, storage: Storage
) -> dict[str, np.ndarray]:
    results = [
        prepare_one(str(src), str(dst), settings, storage)
        for src, dst in zip(batch["read_uri"], batch["out_uri"], strict=True)
    ]
    return {
        "video_uri": batch["video_uri"],
        "status": np.array([r["status"] for r in results]),
        "reason": np.array([r.get("reason", "") for r in results]),
        "detail": np.array([r.get("detail", "") for r in results]),
        "frames": np.array([int(r.get("frames", 0)) for r in results], np.int64),
    }


def prepare_splits(cfg: Config, splits: Sequence[str] | None = None) -> list[str]:
    """The splits ``vidret prepare`` transcodes: ``splits``, else those of train/val/test/extra_eval_splits
    whose manifest ``<data.manifest>/<split>.parquet`` exists."""
    if not cfg.data.manifest:
        raise ValueError("data.manifest is empty: set it to the folder or s3:// prefix holding the manifests")
    if splits:
        return list(dict.fromkeys(splits))
    storage = Storage(cfg.storage)
    names = dict.fromkeys(
        (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split, *cfg.data.extra_eval_splits)
    )
    found = [s for s in names if storage.exists(join(cfg.data.manifest, f"{s}.parquet"))]
    if not found:
        raise ValueError(f"no manifest found under {cfg.data.manifest} for splits {', '.join(names)}")
    return found


def run_prepare(
    cfg: Config,
    *,
    splits: Sequence[str] | None = None,
    out: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Transcode the videos of each split's manifest into ``<out>/videos`` and write the new manifests to
    ``<out>/manifest/<split>.parquet`` (``vidret prepare``); ``out`` defaults to ``data.prepare_out``.

    Each distinct source file is transcoded once, in a Ray task of one CPU (:func:`prepare_one`: resumable,
    a finished output is skipped). The new manifests keep every column but ``video_uri``; rows whose source
    failed are dropped and listed. Writes ``<out>/prepare.json`` (the summary, also returned), then raises
    ``TooManyBadVideosError`` when more sources failed than ``data.max_bad_fraction`` allows (no manifest
    is written then).
    """
    out = out or cfg.data.prepare_out
    if not out:
        raise ValueError("data.prepare_out is empty: set it to the folder or s3:// prefix for prepared files")
    out = absolute_uri(out)
    storage = Storage(cfg.storage)
    settings = PrepareSettings.from_config(cfg.data)
    t0 = time.perf_counter()
    manifests = {
        s: read_manifest(join(cfg.data.manifest, f"{s}.parquet"), storage)
        for s in prepare_splits(cfg, splits)
    }
    sources = [u for t in manifests.values() for u in t.column("video_uri").to_pylist()]
    _check_cluster(cfg, sources, out)
    targets = plan_outputs(sources, out)
    plan = pa.table(
        {
            "video_uri": list(targets),
            "read_uri": [absolute_uri(u) for u in targets],
            "out_uri": list(targets.values()),
        }
    )
    with watching(cfg.run):
        counts, failures = _run_prepare_tasks(plan, settings, storage, progress)
    summary = {
        "out": out,
        "manifest": join(out, "manifest"),
        "settings": settings.__dict__.copy(),
        **counts,
        **summarise(failures, plan.num_rows, cfg.data.max_bad_fraction),
        "splits": {},
    }
    summary.update(seconds=round(time.perf_counter() - t0, 3))
    new_tables = _prepared_manifests(manifests, targets, {f["video_uri"] for f in failures}, summary)
    storage.write_text(join(out, "prepare.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    enforce_budget(
        {f["video_uri"]: f["reason"] for f in failures},
        plan.num_rows,
        cfg.data.max_bad_fraction,
        what="prepare",
    )
    for split, table in new_tables.items():
        write_manifest(table, join(out, "manifest", f"{split}.parquet"), storage)
    return summary


def _check_cluster(cfg: Config, sources: Sequence[str], out: str) -> None:
    """Connect to Ray; refuse local sources or ``out`` on a multi-node cluster (tasks on every node read the
    sources and write under ``out``) and a cluster on which no node fits one transcode task."""
    cluster = check_paths(cfg, sources, [PathUse("data.prepare_out", out)])
    task = Ask("transcode tasks", 1, {"CPU": 1.0}, gang=False)
    check_phases("prepare", [Phase("prepare", (task,))], cluster)


def _run_prepare_tasks(
    plan: pa.Table, settings: PrepareSettings, storage: Storage, progress: Progress | None
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Transcode every row of ``plan`` in one-CPU Ray tasks; returns the status counts and the failures."""
    ds = input_blocks(plan, 1).map_batches(
        functools.partial(_prepare_batch, settings=settings, storage=storage),
        batch_size=1,
        batch_format="numpy",
        num_cpus=1,
    )
    counts = {"transcoded": 0, "skipped": 0, "failed": 0}
    failures: list[dict[str, Any]] = []
    for batch in stream_batches(ds, None):
        for i, status in enumerate(batch["status"]):
            counts[str(status)] += 1
            if status == "failed":
                failures.append(
                    {
                        "video_id": "",
                        "video_uri": str(batch["video_uri"][i]),
                        "reason": str(batch["reason"][i]),
                        "detail": str(batch["detail"][i]),
                    }
                )
        if progress is not None:
            progress(sum(counts.values()), plan.num_rows)
    return counts, failures


def _prepared_manifests(
    manifests: dict[str, pa.Table], targets: dict[str, str], failed: set[str], summary: dict[str, Any]
) -> dict[str, pa.Table]:
    """Each split's manifest pointing at the prepared files, rows of failed sources dropped (and listed in
    ``summary["splits"]``)."""
    new_tables = {}
    for split, table in manifests.items():
        keep = pa.array([u not in failed for u in table.column("video_uri").to_pylist()])
        kept = table.filter(keep)
        new_uris = pa.array([targets[u] for u in kept.column("video_uri").to_pylist()], pa.string())
        new_tables[split] = kept.set_column(kept.schema.get_field_index("video_uri"), "video_uri", new_uris)
        summary["splits"][split] = {
            "rows": kept.num_rows,
            "dropped": table.filter(pc.invert(keep)).column("video_id").to_pylist(),
        }
    return new_tables
