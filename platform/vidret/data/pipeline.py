"""The Ray Data adapter (the only Ray Data module): manifest -> decoded, tokenised batches; check; prepare.

Shape legend: B rows, F frames, S frame side, L tokens. Batches leaving :func:`build_dataset` hold the
columns of :data:`vidret.data.batches.MODEL_COLUMNS`::

    video uint8 (B, F, S, S, 3)   video_mask int64 (B, F)   text_ids / text_mask int64 (B, L)   video_index int64 (B,)

The per-batch work is the pure functions of :mod:`vidret.data.batches`; here they run inside one
``map_batches`` stage of ``data.decode_concurrency`` actors at ``data.decode_cpus`` CPUs each. The CPUs are
fractional on purpose (ray-notes P8: actors holding every CPU starve the other tasks and hang silently);
each actor's decoding runs in its own decode child process (:mod:`vidret.data.decode_worker`, for the
timeout), so one actor keeps one core busy. Input rows are split into blocks of ``data.rows_per_block``
(ray-notes P6: one Parquet file is one block, decoded by one task otherwise).

Bad videos are dropped from the batches and recorded by a :class:`BadVideoLog` actor; the decode stage
raises :class:`~vidret.data.check.TooManyBadVideosError` (listing them) as soon as more distinct videos
failed than ``data.max_bad_fraction`` of the split allows, so a broken corpus fails the job early instead
of training on a shrinking dataset. Memory stays bounded by Ray Data's streaming backpressure.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from vidret.config import Config, DataConfig, RunConfig
from vidret.data.batches import (
    SplitRows,
    augment_rows,
    decode_rows,
    keep_rows,
    model_columns,
    split_rows,
    tokenize_rows,
)
from vidret.data.check import TooManyBadVideosError, bad_budget, classify, enforce_budget, summarise
from vidret.data.decode import DecodeError
from vidret.data.manifest import read_manifest, write_manifest
from vidret.data.prepare import PrepareSettings, plan_outputs, prepare_one
from vidret.data.tokenizer import ClipTokenizer
from vidret.storage import Storage, StorageError, is_remote, join, parse_uri

Progress = Callable[[int, int], None]
_INPUT_CHUNK_ROWS = 1024  # rows per object put into the store; re-split to data.rows_per_block by Ray Data


def ensure_ray(run: RunConfig) -> None:
    """Connect to (``run.ray_address``, or ``RAY_ADDRESS`` inside ``ray job submit``) or start a local Ray.

    A local instance uses ``address="local"`` so a stale cluster file is never picked up (ray-notes P15).
    Does nothing when Ray is already initialised.
    """
    if ray.is_initialized():
        return
    if run.ray_address:
        ray.init(address=run.ray_address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", num_cpus=run.num_cpus, include_dashboard=False)


def _absolute_local(table: pa.Table) -> pa.Table:
    """Relative local paths made absolute on the driver: Ray workers need not share its working directory."""
    uris = [u if is_remote(u) or os.path.isabs(parse_uri(u).path) else os.path.abspath(u)
            for u in table.column("video_uri").to_pylist()]
    return table.set_column(table.schema.get_field_index("video_uri"), "video_uri", pa.array(uris, pa.string()))


def _dataset(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    chunks = [table.slice(i, _INPUT_CHUNK_ROWS) for i in range(0, max(table.num_rows, 1), _INPUT_CHUNK_ROWS)]
    return ray.data.from_arrow(chunks).repartition(target_num_rows_per_block=rows_per_block)


# ------------------------------------------------------------------------------------------ bad videos
@ray.remote(num_cpus=0)
class BadVideoLog:
    """Collects the failures reported by every decode task of one dataset (distinct by URI)."""

    def __init__(self) -> None:
        self._failures: dict[str, dict[str, Any]] = {}
        self._rows_seen = 0

    def add(self, rows: int, failures: list[dict[str, Any]]) -> int:
        """Record a batch; returns the number of distinct failed URIs so far."""
        self._rows_seen += rows
        for f in failures:
            self._failures.setdefault(str(f["video_uri"]), f)
        return len(self._failures)

    def failures(self) -> list[dict[str, Any]]:
        return list(self._failures.values())

    def rows_seen(self) -> int:
        return self._rows_seen


def _failures_of(out: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [
        {"video_id": str(out["video_id"][i]), "video_uri": str(out["video_uri"][i]),
         "reason": str(out["reason"][i]), "detail": str(out["detail"][i])}
        for i in np.flatnonzero(~out["ok"])
    ]


class _DecodeStage:
    """Ray Data callable class: decode, count failures, drop bad rows, tokenise, augment, select columns."""

    def __init__(self, cfg: DataConfig, storage: Storage, log: Any, num_videos: int, tokenize: bool,
                 augment_seed: int | None) -> None:
        self.cfg, self.storage, self.log, self.num_videos = cfg, storage, log, num_videos
        self.budget = bad_budget(num_videos, cfg.max_bad_fraction)
        self.tokenizer = ClipTokenizer(cfg.max_words) if tokenize else None
        self.augment_seed = augment_seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = decode_rows(batch, self.cfg, self.storage)
        failures = _failures_of(out)
        if failures:
            bad = ray.get(self.log.add.remote(len(out["ok"]), failures))
            if bad > self.budget:
                listed = ray.get(self.log.failures.remote())
                raise TooManyBadVideosError({f["video_uri"]: f["reason"] for f in listed}, self.num_videos,
                                            self.cfg.max_bad_fraction)
        else:
            self.log.add.remote(len(out["ok"]), [])
        out = keep_rows(out, out["ok"])
        if self.tokenizer is None:
            return {k: out[k] for k in ("video", "video_mask", "video_index")}
        out = tokenize_rows(out, self.tokenizer, self.cfg.max_words)
        if self.augment_seed is not None:
            out = augment_rows(out, self.augment_seed)
        return model_columns(out)


@dataclass
class DecodedSplit:
    """A streaming dataset of model batches plus what is needed to report its bad videos."""

    dataset: ray.data.Dataset
    log: Any  # BadVideoLog actor handle
    num_videos: int
    num_rows: int
    max_bad_fraction: float

    def bad_videos(self) -> dict[str, Any]:
        """Failures so far: ``{"rows_seen", "failures": [...], "bad_videos"}``; raises
        ``TooManyBadVideosError`` when over budget (call after a full pass for the final verdict)."""
        failures = ray.get(self.log.failures.remote())
        enforce_budget({f["video_uri"]: f["reason"] for f in failures}, self.num_videos, self.max_bad_fraction)
        return {"rows_seen": ray.get(self.log.rows_seen.remote()), "failures": failures,
                "bad_videos": len(failures)}


def build_dataset(rows: SplitRows, cfg: DataConfig, storage: Storage, *, tokenize: bool = True,
                  augment_seed: int | None = None, shuffle_seed: int | None = None) -> DecodedSplit:
    """The streaming pipeline over ``rows``: blocks of ``rows_per_block`` rows -> decode + tokenise actors.

    ``augment_seed`` turns on the training augmentation (:func:`vidret.data.batches.augment_rows`) when
    ``cfg.augment`` is set (ignored otherwise). ``shuffle_seed`` permutes the rows once, up front (cheap;
    use ``iter_torch_batches(local_shuffle_buffer_size=...)`` for a different order every epoch). Without
    ``tokenize`` the batches hold only ``video``, ``video_mask`` and ``video_index`` (video features).
    Pass ``.dataset`` to Ray Train (``datasets={"train": ...}``) or iterate it with :func:`iter_batches`.
    """
    table = _absolute_local(rows.table)
    if shuffle_seed is not None:
        table = table.take(pa.array(np.random.default_rng(shuffle_seed).permutation(table.num_rows)))
    log = BadVideoLog.remote()
    stage_kwargs = {"cfg": cfg, "storage": storage, "log": log, "num_videos": rows.num_videos,
                    "tokenize": tokenize, "augment_seed": augment_seed if cfg.augment else None}
    ds = _dataset(table, cfg.rows_per_block).map_batches(
        _DecodeStage, fn_constructor_kwargs=stage_kwargs, batch_size=cfg.rows_per_block, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.decode_concurrency), num_cpus=cfg.decode_cpus)
    return DecodedSplit(ds, log, rows.num_videos, table.num_rows, cfg.max_bad_fraction)


def load_split(cfg: Config, split: str, storage: Storage, *, pairs: bool) -> SplitRows:
    """Rows of ``<data.manifest>/<split>.parquet`` (see :func:`vidret.data.batches.split_rows`)."""
    if not cfg.data.manifest:
        raise ValueError("data.manifest is empty: set it to the folder or s3:// prefix holding the manifests")
    return split_rows(read_manifest(join(cfg.data.manifest, f"{split}.parquet"), storage), split, pairs=pairs)


def iter_batches(split: DecodedSplit, batch_size: int, *, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches on the driver (batch inference, tests); the final bad-video verdict after the last one.

    Ray Data wraps exceptions raised in the decode stage (the original type is lost on the way); when the
    pipeline fails with the bad-video budget exceeded, the typed ``TooManyBadVideosError`` is raised here
    from the log's records instead.
    """
    try:
        yield from split.dataset.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
                                              prefetch_batches=1)
    except ray.exceptions.RayError:
        split.bad_videos()  # raises TooManyBadVideosError when that is why the pipeline failed
        raise
    split.bad_videos()
