"""The Ray Data adapter: manifest -> decoded, tokenised batches (the only Ray Data module).

Per-batch work is done by pure functions over ``dict[str, np.ndarray]`` (``decode_rows``, ``tokenize_rows``);
this module only wraps them in ``map_batches``. Batches leaving the pipeline hold::

    video       uint8  (B, F, H, W, 3)   frames, zero-padded to data.max_frames
    video_mask  int64  (B, F)            1 on real frames
    text_ids    int64  (B, L)            CLIP BPE ids, [SOT] ... [EOT] 0 ...
    text_mask   int64  (B, L)
    video_index int64  (B,)              row of the video in the split (stable id for positives)
    ok          bool   (B,)              False when the video could not be decoded (then video is zeros)

Bad videos are counted by a small Ray actor (``BadVideoLog``) so the driver can report them and fail the job
only above ``data.max_bad_fraction``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from vidret.config import DataConfig
from vidret.data.decode import DecodeError, decode_with_config
from vidret.data.manifest import read_manifest
from vidret.data.tokenizer import ClipTokenizer
from vidret.storage import Storage, join


class TooManyBadVideosError(RuntimeError):
    """More videos failed to decode than ``data.max_bad_fraction`` allows; the message lists them."""


@dataclass(frozen=True)
class SplitRows:
    """The rows of one split, flattened for a pipeline: one row per (video, caption) pair or per video."""

    table: pa.Table  # columns: video_id, video_uri, caption, start, end, video_index, caption_index
    num_videos: int


def split_rows(manifest: pa.Table, split: str, *, pairs: bool) -> SplitRows:
    """Rows of ``split``: every caption as its own row (``pairs``) or one row per video (first caption).

    ``video_index`` numbers the split's videos 0..V-1 in manifest order; it is the stable id used to find
    positives (captions of the same video) across workers.
    """
    mask = pa.compute.equal(manifest.column("split"), split)
    sub = manifest.filter(mask)
    if sub.num_rows == 0:
        splits = sorted(set(manifest.column("split").to_pylist()))
        raise ValueError(f"manifest has no rows for split {split!r} (it has: {', '.join(splits) or 'none'})")
    cols: dict[str, list[Any]] = {k: [] for k in
                                  ("video_id", "video_uri", "caption", "start", "end", "video_index",
                                   "caption_index")}
    rows = sub.to_pylist()
    for vi, row in enumerate(rows):
        captions = row["captions"] if pairs else row["captions"][:1]
        for ci, cap in enumerate(captions):
            cols["video_id"].append(row["video_id"])
            cols["video_uri"].append(row["video_uri"])
            cols["caption"].append(cap)
            cols["start"].append(row["start"])
            cols["end"].append(row["end"])
            cols["video_index"].append(vi)
            cols["caption_index"].append(ci)
    table = pa.table({
        "video_id": pa.array(cols["video_id"], pa.string()),
        "video_uri": pa.array(cols["video_uri"], pa.string()),
        "caption": pa.array(cols["caption"], pa.string()),
        "start": pa.array(cols["start"], pa.float64()),
        "end": pa.array(cols["end"], pa.float64()),
        "video_index": pa.array(cols["video_index"], pa.int64()),
        "caption_index": pa.array(cols["caption_index"], pa.int64()),
    })
    return SplitRows(table=table, num_videos=len(rows))


def _opt_float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if np.isnan(x) else x


def decode_rows(batch: dict[str, np.ndarray], cfg: DataConfig, storage: Storage) -> dict[str, np.ndarray]:
    """Read and decode every row's video. Pure function over a batch; a bad video gives ``ok=False``.

    Returns the input columns plus ``video`` (B,F,H,W,3) uint8, ``video_mask`` (B,F), ``ok`` (B,) and
    ``error`` (B,) str (empty when ok).
    """
    n = len(batch["video_uri"])
    video = np.zeros((n, cfg.max_frames, cfg.size, cfg.size, 3), np.uint8)
    vmask = np.zeros((n, cfg.max_frames), np.int64)
    ok = np.zeros(n, bool)
    errors = np.empty(n, dtype=object)
    for i in range(n):
        uri = str(batch["video_uri"][i])
        try:
            data = storage.read_bytes(uri)
            frames, m = decode_with_config(data, cfg, uri=uri, start=_opt_float(batch["start"][i]),
                                           end=_opt_float(batch["end"][i]))
            video[i], vmask[i], ok[i], errors[i] = frames, m, True, ""
        except FileNotFoundError:
            errors[i] = f"{uri}: missing"
        except DecodeError as e:
            errors[i] = str(e)
        except OSError as e:  # storage failure after its retries: a row we could not read
            errors[i] = f"{uri}: read failed: {e}"
    out = dict(batch)
    out.update(video=video, video_mask=vmask, ok=ok, error=errors.astype(str))
    return out


def tokenize_rows(batch: dict[str, np.ndarray], tokenizer: ClipTokenizer, max_words: int) -> dict[str, np.ndarray]:
    """Add ``text_ids`` and ``text_mask`` (B, L) int64 for the ``caption`` column."""
    ids, mask = tokenizer([str(c) for c in batch["caption"]], max_words)
    out = dict(batch)
    out.update(text_ids=np.asarray(ids, np.int64), text_mask=np.asarray(mask, np.int64))
    return out


@ray.remote(num_cpus=0)
class BadVideoLog:
    """Collects (uri, reason) of videos that failed, from every decode task."""

    def __init__(self) -> None:
        self.bad: dict[str, str] = {}
        self.seen = 0

    def add(self, seen: int, bad: list[tuple[str, str]]) -> None:
        self.seen += seen
        self.bad.update(dict(bad))

    def summary(self) -> dict[str, Any]:
        return {"seen": self.seen, "bad": dict(sorted(self.bad.items()))}


class _DecodeTokenize:
    """Ray Data callable class: decode + tokenise one batch (actors keep the tokenizer and storage client)."""

    def __init__(self, cfg: DataConfig, storage: Storage, log: Any, tokenize: bool) -> None:
        self.cfg, self.storage, self.log = cfg, storage, log
        self.tokenizer = ClipTokenizer() if tokenize else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = decode_rows(batch, self.cfg, self.storage)
        bad = [(str(u), str(e)) for u, e, ok in zip(out["video_uri"], out["error"], out["ok"]) if not ok]
        self.log.add.remote(len(out["ok"]), bad)
        if self.tokenizer is not None:
            out = tokenize_rows(out, self.tokenizer, self.cfg.max_words)
        return out


def build_dataset(rows: SplitRows, cfg: DataConfig, storage: Storage, *, tokenize: bool = True,
                  drop_bad: bool = True) -> tuple[ray.data.Dataset, Any]:
    """Streaming dataset of decoded (and tokenised) rows plus the ``BadVideoLog`` actor that counts failures.

    Decoding runs in an actor pool of ``data.decode_concurrency`` actors at ``data.decode_cpus`` CPUs each
    (fractional, so read tasks are never starved: ray-notes P8). Bad rows are dropped when ``drop_bad``.
    """
    log = BadVideoLog.remote()
    ds = ray.data.from_arrow(rows.table)
    ds = ds.repartition(max(1, -(-rows.table.num_rows // cfg.rows_per_block)))
    ds = ds.map_batches(_DecodeTokenize, fn_constructor_kwargs={"cfg": cfg, "storage": storage, "log": log,
                                                                "tokenize": tokenize},
                        batch_size=cfg.rows_per_block, concurrency=cfg.decode_concurrency,
                        num_cpus=cfg.decode_cpus)
    if drop_bad:
        ds = ds.filter(lambda row: bool(row["ok"]))
    drop = ["error", "video_id", "video_uri", "caption", "start", "end"]
    ds = ds.drop_columns(drop)
    return ds, log


def check_bad_fraction(log: Any, total: int, cfg: DataConfig) -> dict[str, Any]:
    """Raise ``TooManyBadVideosError`` listing the bad videos when their fraction exceeds the budget."""
    summary = ray.get(log.summary.remote())
    bad = summary["bad"]
    frac = len(bad) / max(total, 1)
    summary.update(total=total, bad_fraction=frac)
    if frac > cfg.max_bad_fraction:
        listing = "; ".join(f"{u} ({r})" for u, r in bad.items())
        raise TooManyBadVideosError(
            f"{len(bad)} of {total} videos failed to decode ({frac:.1%} > data.max_bad_fraction="
            f"{cfg.max_bad_fraction:.1%}): {listing}")
    return summary


def iter_numpy_batches(ds: ray.data.Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Plain numpy batches of the dataset (driver side; training uses ``get_dataset_shard``)."""
    yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1)


def load_split(manifest_prefix: str, split: str, storage: Storage, *, pairs: bool) -> SplitRows:
    """Read ``<manifest_prefix>/<split>.parquet`` and flatten it (see ``split_rows``)."""
    return split_rows(read_manifest(join(manifest_prefix, f"{split}.parquet"), storage), split, pairs=pairs)
