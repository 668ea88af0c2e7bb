"""The feature cache: frozen-encoder features of every split, as sharded files keyed by checkpoint.

Stage 2 trains on these and evaluation ranks them, so no video is decoded twice once stage 1 is done.
Layout under ``<run.out>/features/<checkpoint key>/<split>/``::

    texts-00000.npz   text (n, L, D) text_mask (n, L) text_weight (n, L) text_eot (n, D)
                      video_index (n,) caption_index (n,) caption_row (n,)
    videos-00000.npz  video (n, F, D) video_mask (n, F) video_weight (n, F) video_index (n,) ok (n,)
    index.json        shard names, row counts, video ids, captions, bad videos -- written LAST

A split is valid only when ``index.json`` exists and every shard it names has the recorded size; shards are
written atomically, so a crashed build leaves no index and is rebuilt. ``.npz`` files hold plain arrays and
are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures
from vidret.storage import Storage, join

INDEX = "index.json"
FORMAT = 1


def split_uri(root: str, split: str) -> str:
    """The folder of ``split`` under a cache root (``vidret.layout.cache_root``)."""
    return join(root, split)


class ShardWriter:
    """Accumulates feature rows and writes ``<prefix>-NNNNN.npz`` shards of ``rows_per_shard`` rows."""

    def __init__(self, storage: Storage, uri: str, prefix: str, rows_per_shard: int = 4096) -> None:
        self.storage, self.uri, self.prefix, self.rows_per_shard = storage, uri, prefix, rows_per_shard
        self.pending: dict[str, list[np.ndarray]] = {}
        self.pending_rows = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(arrays.values())))
        for k, v in arrays.items():
            if len(v) != n:
                raise ValueError(f"feature cache: column {k!r} has {len(v)} rows, expected {n}")
            self.pending.setdefault(k, []).append(np.asarray(v))
        self.pending_rows += n
        while self.pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, rows: int) -> None:
        merged = {k: np.concatenate(v) for k, v in self.pending.items()}
        head = {k: v[:rows] for k, v in merged.items()}
        self.pending = {k: [v[rows:]] for k, v in merged.items()}
        self.pending_rows -= rows
        name = f"{self.prefix}-{len(self.shards):05d}.npz"
        buf = io.BytesIO()
        np.savez(buf, **head)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
        data = buf.getvalue()
        self.storage.write_bytes(join(self.uri, name), data)
        self.shards.append({"name": name, "rows": rows, "bytes": len(data)})

    def close(self) -> list[dict[str, Any]]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        return self.shards


def write_index(
    storage: Storage,
    uri: str,
    info: Mapping[str, Any],
    texts: list[dict[str, Any]],
    videos: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write the split's ``index.json`` (after all its shards): this is what makes the split valid."""
    index = {"format": FORMAT, **info, "texts": texts, "videos": videos}
    storage.write_text(join(uri, INDEX), json.dumps(index, indent=1, sort_keys=True))
    return dict(index)


def write_split(
    storage: Storage,
    uri: str,
    texts: Iterable[Mapping[str, np.ndarray]],
    videos: Iterable[Mapping[str, np.ndarray]],
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Write text and video feature batches as shards, then ``index.json`` (last). Returns the index."""
    tw, vw = ShardWriter(storage, uri, "texts"), ShardWriter(storage, uri, "videos")
    for batch in texts:
        tw.add(batch)
    for batch in videos:
        vw.add(batch)
    return write_index(storage, uri, info, tw.close(), vw.close())


def read_index(storage: Storage, uri: str) -> dict[str, Any] | None:
    """The split's index when the split is complete (every shard present with its size), else None."""
    index_uri = join(uri, INDEX)
    if not storage.exists(index_uri):
        return None
    index = json.loads(storage.read_text(index_uri))
    if index.get("format") != FORMAT:
        return None
    listed = set(storage.list(uri))
    for shard in [*index["texts"], *index["videos"]]:
        if join(uri, shard["name"]) not in listed:
            return None
    return dict(index)


def require_index(storage: Storage, uri: str) -> dict[str, Any]:
    """``read_index`` of a split that must be complete; ``ValueError`` naming ``uri`` when it is not."""
    index = read_index(storage, uri)
    if index is None:
        raise ValueError(f"{uri}: no complete feature cache here (index.json missing or shards incomplete)")
    return index


def _load_shards(storage: Storage, uri: str, shards: list[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
    for shard in shards:
        data = storage.read_bytes(join(uri, shard["name"]))
        if len(data) != shard["bytes"]:
            raise ValueError(f"{join(uri, shard['name'])}: {len(data)} bytes, index says {shard['bytes']}")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            yield {k: z[k] for k in z.files}


def _concat(parts: list[dict[str, np.ndarray]], uri: str) -> dict[str, np.ndarray]:
    if not parts:
        raise ValueError(f"{uri}: feature cache split has no rows")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_split(storage: Storage, uri: str) -> FeatureSet:
    """Load a complete split into a ``FeatureSet`` (texts in caption-row order, videos in video order)."""
    index = require_index(storage, uri)
    t = _concat(list(_load_shards(storage, uri, index["texts"])), uri)
    v = _concat(list(_load_shards(storage, uri, index["videos"])), uri)
    t_order = np.argsort(t["caption_row"], kind="stable")
    v_order = np.argsort(v["video_index"], kind="stable")
    if not np.array_equal(v["video_index"][v_order], np.arange(len(v_order))):
        raise ValueError(f"{uri}: video rows are not 0..V-1 (cache incomplete or duplicated)")
    text = {k: torch.from_numpy(np.ascontiguousarray(v[t_order])) for k, v in t.items()}
    video = {k: torch.from_numpy(np.ascontiguousarray(x[v_order])) for k, x in v.items()}
    return FeatureSet(
        text=TextFeatures.from_model(text),
        video=VideoFeatures.from_model(video),
        text_to_video_T=text["video_index"].to(torch.int64),
        video_ids=list(index.get("video_ids", [])),
        captions=list(index.get("captions", [])),
        video_ok=v["ok"][v_order].astype(bool),
    )
