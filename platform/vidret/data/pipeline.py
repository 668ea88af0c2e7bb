"""The Ray Data adapter: manifest -> decoded, tokenised batches (the check and prepare executors reuse its
input blocks, in :mod:`vidret.data.executors`).

Shape legend: B rows, F frames, S frame side, L tokens. Batches leaving :func:`build_dataset` hold the
columns of :data:`vidret.data.batches.MODEL_COLUMNS`::

    video uint8 (B, F, S, S, 3)   video_mask int64 (B, F)
    text_ids / text_mask int64 (B, L)   video_index int64 (B,)

The per-batch work is the pure functions of :mod:`vidret.data.batches`; here they run inside one
``map_batches`` stage of ``data.decode_concurrency`` actors at ``data.decode_cpus`` CPUs each. The CPUs are
fractional on purpose (actors holding every CPU starve the other tasks and the pipeline hangs silently);
each actor's decoding runs in its own decode child process (:mod:`vidret.data.video.worker`, for the
timeout), so one actor keeps one core busy. An actor pool, not tasks: tasks would reuse Ray's pooled worker
processes, but Ray Data 2.60 starves them beside Ray Train on small clusters (docs/stack-notes.md P22).
Input rows are split into blocks of ``data.rows_per_block`` (one Parquet file is one block, decoded by one
task otherwise).

Bad videos are dropped from the batches (or kept as zeros with ``ok=False``: ``drop_bad=False``) and
recorded by a :class:`BadVideoLog` actor; the decode stage raises
:class:`~vidret.data.check.TooManyBadVideosError` (listing them) as soon as more distinct videos failed
than ``data.max_bad_fraction`` of the split allows, so a broken corpus fails the job early instead of
training on a shrinking dataset. Memory stays bounded by Ray Data's streaming backpressure.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from vidret.config import DataConfig
from vidret.data.annotations.manifest import read_manifest
from vidret.data.batches import (
    SplitRows,
    augment_rows,
    decode_rows,
    keep_rows,
    model_columns,
    split_rows,
    tokenize_rows,
)
from vidret.data.check import TooManyBadVideosError, bad_budget, enforce_budget
from vidret.planning import NODE_ID_LABEL
from vidret.runtime import head_node_id
from vidret.storage import Storage, is_remote, join, parse_uri

__all__ = [
    "BadVideoLog",
    "SplitRows",
    "TooManyBadVideosError",
    "build_dataset",
    "check_bad_fraction",
    "check_bad_fractions",
    "decode_rows",
    "iter_numpy_batches",
    "load_split",
    "split_rows",
    "tokenize_rows",
]

_MAX_INPUT_BLOCK_ROWS = 1024  # rows per input block at most (one object in the store each)
_BLOCKS_PER_ACTOR = 8  # input blocks per decode actor at least, so every actor has work
# Decode output blocks hold at least this much: per-block overhead costs throughput with small frames (12
# frames at 224 px: 0.78-0.81 vs 0.94-0.95 of bare decoding per core with one-batch blocks) while
# one-batch blocks keep long clips' memory flat (docs/stack-notes.md P20).
MIN_DECODED_BLOCK_BYTES = 32 << 20


def absolute_uri(uri: str) -> str:
    """A relative local path made absolute on the driver: Ray workers need not share its working directory."""
    return uri if is_remote(uri) or os.path.isabs(parse_uri(uri).path) else os.path.abspath(uri)


def absolute_local_uris(table: pa.Table) -> pa.Table:
    """``table`` with its local ``video_uri`` values made absolute (:func:`absolute_uri`)."""
    uris = [absolute_uri(u) for u in table.column("video_uri").to_pylist()]
    return table.set_column(
        table.schema.get_field_index("video_uri"), "video_uri", pa.array(uris, pa.string())
    )


def input_block_rows(num_rows: int, rows_per_block: int, concurrency: int) -> int:
    """Rows per input block: enough blocks for every decode actor, never fewer rows than a decode batch."""
    return max(rows_per_block, min(_MAX_INPUT_BLOCK_ROWS, num_rows // (_BLOCKS_PER_ACTOR * concurrency)))


def decoded_block_bytes(cfg: DataConfig) -> int:
    """The output block size of the decode actors: one batch of frames, ``rows_per_block`` x (F, S, S, 3)
    uint8 (a batch with its other columns is just over it, so it leaves the actor as its own block), but at
    least :data:`MIN_DECODED_BLOCK_BYTES`, below which small batches are worth coalescing."""
    return max(cfg.rows_per_block * cfg.max_frames * cfg.size * cfg.size * 3, MIN_DECODED_BLOCK_BYTES)


def input_blocks(table: pa.Table, block_rows: int) -> ray.data.Dataset:
    """The input blocks, cut on the driver. No ``repartition``: its CPU task would wait forever for a CPU when
    the decode actors and a Ray Train worker already hold the whole budget."""
    chunks = [table.slice(i, block_rows) for i in range(0, max(table.num_rows, 1), block_rows)]
    return ray.data.from_arrow(chunks)


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


def failures_of(out: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The failed rows of a decoded batch as failure dicts (``video_id``, ``video_uri``, ``reason``,
    ``detail``)."""
    return [
        {
            "video_id": str(out["video_id"][i]),
            "video_uri": str(out["video_uri"][i]),
            "reason": str(out["reason"][i]),
            "detail": str(out["detail"][i]),
        }
        for i in np.flatnonzero(~out["ok"])
    ]


class _DecodeStage:
    """Ray Data callable class: decode, count failures, (drop bad rows), augment, select the model's columns.

    Captions arrive tokenised (``build_dataset`` does it on the driver), so decode workers never import the
    tokenizer's torch/open_clip (~7 s and ~1 GB per process on our machines).
    """

    def __init__(
        self,
        cfg: DataConfig,
        storage: Storage,
        log: Any,
        num_videos: int,
        tokenized: bool,
        drop_bad: bool,
        augment_seed: int | None,
    ) -> None:
        self.cfg, self.storage, self.log, self.num_videos = cfg, storage, log, num_videos
        self.budget = bad_budget(num_videos, cfg.max_bad_fraction)
        self.tokenized, self.drop_bad, self.augment_seed = tokenized, drop_bad, augment_seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = decode_rows(batch, self.cfg, self.storage)
        failures = failures_of(out)
        # awaited even without failures: a call still in flight when the driver reads the log (or lost with
        # this actor) left "seen" short under load (11 of 15 rows, with three test workers on 2 cores)
        bad = ray.get(self.log.add.remote(len(out["ok"]), failures))
        if failures and bad > self.budget:  # fail fast: the final fraction can only be higher
            listed = ray.get(self.log.failures.remote())
            raise TooManyBadVideosError(
                {f["video_uri"]: f["reason"] for f in listed}, self.num_videos, self.cfg.max_bad_fraction
            )
        if self.drop_bad:
            out = keep_rows(out, out["ok"])
        if self.augment_seed is not None:
            out = augment_rows(out, self.augment_seed)
        keep = ("video", "video_mask", "video_index") + (() if self.drop_bad else ("ok",))
        if not self.tokenized:
            return {k: out[k] for k in keep}
        for name in ("text_ids", "text_mask"):  # stored narrow in the input blocks
            out[name] = _matrix(out[name], self.cfg.max_words).astype(np.int64)
        return {**model_columns(out), **{k: out[k] for k in keep}}


def _matrix(column: np.ndarray, width: int) -> np.ndarray:
    """A fixed-size-list column as (B, width): Ray hands it over as a 2-D array or as an object array of
    rows."""
    if column.dtype != object:
        return column
    return np.stack(list(column)) if len(column) else np.zeros((0, width), np.int64)


def _with_tokens(table: pa.Table, max_words: int) -> pa.Table:
    """Add ``text_ids`` (uint16: CLIP ids < 49408) and ``text_mask`` (uint8) columns of width ``max_words``.

    Done once on the driver for each distinct caption (~90 us per caption here: ~16 s for MSR-VTT's 180k
    training pairs, however often a row plan repeats them) and stored narrow, since the input blocks stay in
    the object store for the whole pass.
    """
    from vidret.data.tokenizer import ClipTokenizer  # torch + open_clip: driver only (see _DecodeStage)

    encoded = pc.dictionary_encode(table.column("caption")).combine_chunks()
    distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    tokens = tokenize_rows({"caption": distinct}, ClipTokenizer(max_words), max_words)
    rows = encoded.indices.to_numpy(zero_copy_only=False)
    for name, dtype in (("text_ids", np.uint16), ("text_mask", np.uint8)):
        flat = pa.array(tokens[name][rows].astype(dtype).ravel())
        table = table.append_column(name, pa.FixedSizeListArray.from_arrays(flat, max_words))
    return table


def build_dataset(
    rows: SplitRows,
    cfg: DataConfig,
    storage: Storage,
    *,
    tokenize: bool = True,
    drop_bad: bool = True,
    augment_seed: int | None = None,
    shuffle_seed: int | None = None,
) -> tuple[ray.data.Dataset, Any]:
    """The streaming pipeline over ``rows`` and the :class:`BadVideoLog` actor recording its failures.

    Captions are tokenised on the driver, then blocks of ``data.rows_per_block`` rows go through the decode
    actors. Batches hold :data:`~vidret.data.batches.MODEL_COLUMNS` (only ``video``, ``video_mask`` and
    ``video_index`` without ``tokenize``). ``drop_bad=True`` leaves bad rows out; ``drop_bad=False`` keeps
    every row (zeros, ``video_mask`` 0) and adds ``ok`` (B,) bool, for callers whose row plan is fixed.
    Either way the pipeline fails with ``TooManyBadVideosError`` once the budget is exceeded.

    ``augment_seed`` turns on :func:`~vidret.data.batches.augment_rows` when ``cfg.augment`` is set (it is
    ignored otherwise). ``shuffle_seed`` permutes the rows once, up front. Pass the dataset to Ray Train
    (``datasets={"train": ds}``) or read it with :func:`iter_numpy_batches`; after a full pass call
    :func:`check_bad_fraction` for the final verdict and the list.
    """
    table = absolute_local_uris(rows.table)
    if tokenize:
        table = _with_tokens(table, cfg.max_words)
    if shuffle_seed is not None:
        table = table.take(pa.array(np.random.default_rng(shuffle_seed).permutation(table.num_rows)))
    check_pool_fits(cfg)
    off_head = off_head_options()
    # off the head, a node that goes away takes the log along: it restarts elsewhere, and the rows decoded
    # again after Ray Train resumes record their failures again (distinct by URI)
    # the typing of ray.remote does not expose .options on the decorated class
    log = BadVideoLog.options(  # type: ignore[attr-defined]
        max_restarts=-1, max_task_retries=-1, **off_head
    ).remote()
    stage_kwargs = {
        "cfg": cfg,
        "storage": storage,
        "log": log,
        "num_videos": rows.num_videos,
        "tokenized": tokenize,
        "drop_bad": drop_bad,
        "augment_seed": augment_seed if cfg.augment else None,
    }
    blocks = input_blocks(table, input_block_rows(table.num_rows, cfg.rows_per_block, cfg.decode_concurrency))
    # this dataset's own context (from_arrow copied it): without a cap, Ray Data coalesces a decode actor's
    # batches into output blocks of up to 128 MiB that the actor holds, and memory grows with the frame size
    blocks.context.target_max_block_size = decoded_block_bytes(cfg)
    ds = blocks.map_batches(
        _DecodeStage,
        fn_constructor_kwargs=stage_kwargs,
        batch_size=cfg.rows_per_block,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.decode_concurrency),
        num_cpus=cfg.decode_cpus,
        **(off_head if cfg.decode_cpus <= 0 else {}),  # a zero-CPU pool would fit on the head
    )
    return ds, log


def off_head_options() -> dict[str, Any]:
    """``.options()`` / ``map_batches`` arguments that keep an actor asking for no resource off the head
    node (a label selector excluding it), on a cluster of more than one node; ``{}`` on one node. A head
    started with ``--num-cpus=0`` is reserved for scheduling, yet Ray places zero-CPU actors there."""
    head = head_node_id()
    return {"label_selector": {NODE_ID_LABEL: f"!{head}"}} if head else {}


def check_bad_fraction(log: Any, total: int, cfg: DataConfig) -> dict[str, Any]:
    """What ``log`` recorded: ``{"seen", "bad": {uri: reason}, "failures": [...], "total", "bad_fraction"}``;
    raises ``TooManyBadVideosError`` listing them when more than ``cfg.max_bad_fraction`` of ``total``
    failed."""
    return check_bad_fractions([log], total, cfg)


def check_bad_fractions(logs: Sequence[Any], total: int, cfg: DataConfig) -> dict[str, Any]:
    """:func:`check_bad_fraction` over several pipelines reading shards of one split (one per training
    worker).

    A video whose rows landed on two shards counts once (first failure kept), ``seen`` adds up the shards'
    rows, and the budget is ``cfg.max_bad_fraction`` of ``total``, the split's distinct videos, as in the
    decode stage's fail-fast check.
    """
    failures: dict[str, dict[str, Any]] = {}
    for per_log in ray.get([log.failures.remote() for log in logs]):
        for f in per_log:
            failures.setdefault(f["video_uri"], f)
    bad = {uri: f["reason"] for uri, f in failures.items()}
    enforce_budget(bad, total, cfg.max_bad_fraction)
    seen = sum(ray.get([log.rows_seen.remote() for log in logs]))
    return {
        "seen": seen,
        "bad": bad,
        "failures": list(failures.values()),
        "total": total,
        "bad_fraction": len(bad) / total if total else 0.0,
    }


def load_split(manifest_prefix: str, split: str, storage: Storage, *, pairs: bool) -> SplitRows:
    """Rows of ``<manifest_prefix>/<split>.parquet`` (see :func:`vidret.data.batches.split_rows`)."""
    if not manifest_prefix:
        raise ValueError("data.manifest is empty: set it to the folder or s3:// prefix holding the manifests")
    return split_rows(read_manifest(join(manifest_prefix, f"{split}.parquet"), storage), split, pairs=pairs)


def iter_numpy_batches(
    ds: ray.data.Dataset,
    batch_size: int,
    *,
    log: Any = None,
    total: int = 0,
    cfg: DataConfig | None = None,
    drop_last: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches on the driver (batch inference, tests; training uses ``get_dataset_shard``).

    With ``log``, ``total`` and ``cfg`` the bad-video verdict is given after the last batch, and when the
    pipeline fails because the budget is exceeded the typed ``TooManyBadVideosError`` is raised here (Ray
    Data wraps exceptions from the decode stage and loses their type on the way).
    """
    batches = stream_batches(ds, batch_size=batch_size, drop_last=drop_last)
    try:
        yield from batches
    except ray.exceptions.RayError:
        if log is not None and cfg is not None:
            check_bad_fraction(log, total, cfg)
        raise
    if log is not None and cfg is not None:
        check_bad_fraction(log, total, cfg)


def stream_batches(ds: ray.data.Dataset, batch_size: int | None, *, drop_last: bool = False) -> Iterator[Any]:
    """``ds.iter_batches`` (numpy, one batch prefetched) run on a private copy of ``ds``; a failure is
    re-raised without the executor's frames.

    Why (docs/stack-notes.md P21): after a *failed* pass, Ray Data 2.60's shut-down executor still holds the
    decode tasks it was waiting on, their callbacks hold the map actors' handles, and the dataset that ran
    the pass holds the executor. Any kept reference to that dataset (the caller's frame in a kept exception's
    traceback, a log, ``pytest.raises``, a retry loop) then keeps every decode actor alive, holding its CPUs,
    and a few failed passes on a small cluster leave the next pipeline's actors pending forever. So the pass
    runs on a copy (same plan and context) that is dropped here, and the re-raised error (type, message and
    cause chain kept) carries no frame that could reach it.
    """
    run = copy.copy(ds)  # a Dataset copies through its pickling state: same plan, no executor
    failure: BaseException | None = None
    try:
        yield from run.iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=drop_last, prefetch_batches=1
        )
    except ray.exceptions.RayError as exc:
        failure = _without_tracebacks(exc)
    del run  # the raise below puts this frame in the error's traceback
    if failure is not None:
        raise failure


def _without_tracebacks(exc: BaseException) -> BaseException:
    """``exc`` with the tracebacks of it and every exception in its cause/context chains dropped (they pin
    executor frames)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        link = todo.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        link.__traceback__ = None
        todo.extend(e for e in (link.__cause__, link.__context__) if e is not None)
    return exc


def check_pool_fits(cfg: DataConfig) -> None:
    """Raise ``ValueError`` when the decode actors alone need more CPUs than the cluster has.

    Ray Data starts a fixed pool of ``data.decode_concurrency`` actors at ``data.decode_cpus`` each; a pool
    that cannot be placed leaves its actors pending and the pipeline waits forever without an error.
    """
    cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]  # Ray: untyped
    need = cfg.decode_concurrency * cfg.decode_cpus
    if need > cpus:
        raise ValueError(
            f"data.decode_concurrency={cfg.decode_concurrency} x data.decode_cpus={cfg.decode_cpus:g} = "
            f"{need:g} CPUs, but the Ray cluster has {cpus:g}: lower one of them "
            "(the actors would wait forever)"
        )
