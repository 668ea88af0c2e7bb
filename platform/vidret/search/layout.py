"""The on-storage format of a search index (local folder or ``s3://`` prefix).

Shape legend: n videos of a part, N of the whole index, F frames, D width.

::

    index.json                 format, encoder key, checkpoint, shapes, parts, bad videos, ANN -- written LAST
    config.yaml                the resolved config of the last `vidret index` run (secrets redacted)
    parts/part-00000.npz       video (n, F, D) float16, video_mask (n, F) uint8, video_weight (n, F) float32,
                               thumb_offsets (n + 1,) int64, thumbs (bytes,) uint8: one JPEG per video
    parts/part-00000.pooled.npy  (n, D) float32 unit vectors (the ANN's input)
    parts/part-00000.json      {"video_id": [...], "video_uri": [...]}
    ann-<rows>.faiss           the faiss index over every part's pooled vectors, row i = video i

Every file is written atomically and ``index.json`` only after the files it names, each listed with its size
and sha256, so a crashed run leaves the previous valid index (plus unreferenced files a re-run overwrites).
Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidret.storage import Storage, StorageError, join

FORMAT = 1
INDEX_FILE = "index.json"
CONFIG_FILE = "config.yaml"
PART_ARRAYS = ("video", "video_mask", "video_weight", "thumb_offsets", "thumbs")


class SearchIndexError(ValueError):
    """A search index is missing, incomplete, corrupt or does not match the weights; names its URI."""


@dataclass
class PartData:
    """The contents of one part (rows in the order of its ``video_id`` list)."""

    arrays: dict[str, np.ndarray]  # PART_ARRAYS
    pooled: np.ndarray  # (n, D) float32
    video_ids: list[str]
    video_uris: list[str]

    @property
    def rows(self) -> int:
        return len(self.video_ids)


def part_name(number: int) -> str:
    return f"part-{number:05d}"


def _digest(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def thumbs_to_arrays(thumbs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Pack JPEG byte strings into ``(thumb_offsets (n + 1,), thumbs (total,) uint8)``."""
    offsets = np.zeros(len(thumbs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(t) for t in thumbs])
    blob = np.frombuffer(b"".join(thumbs), np.uint8) if thumbs else np.zeros(0, np.uint8)
    return offsets, blob


def write_part(storage: Storage, root: str, number: int, part: PartData) -> dict[str, Any]:
    """Write the three files of part ``number``; returns its ``index.json`` entry (sizes and digests)."""
    n = part.rows
    for key, arr in (*part.arrays.items(), ("pooled", part.pooled)):
        want = n + 1 if key == "thumb_offsets" else n
        if key != "thumbs" and len(arr) != want:
            raise ValueError(f"search index part {number}: {key} has {len(arr)} rows, expected {want}")
    name = part_name(number)
    files = {
        ".npz": _npz({k: part.arrays[k] for k in PART_ARRAYS}),
        ".pooled.npy": _npy(np.ascontiguousarray(part.pooled, np.float32)),
        ".json": json.dumps({"video_id": part.video_ids, "video_uri": part.video_uris}).encode("utf-8"),
    }
    entry: dict[str, Any] = {"name": name, "rows": n, "files": {}}
    for suffix, data in files.items():
        storage.write_bytes(join(root, "parts", name + suffix), data)
        entry["files"][suffix] = _digest(data)
    return entry


def _read_verified(storage: Storage, root: str, rel: str, digest: Mapping[str, Any]) -> bytes:
    uri = join(root, rel)
    try:
        data = storage.read_bytes(uri)
    except (StorageError, OSError) as err:
        raise SearchIndexError(f"{uri}: cannot read a file the index names ({err})") from None
    if len(data) != digest["bytes"] or hashlib.sha256(data).hexdigest() != digest["sha256"]:
        raise SearchIndexError(
            f"{uri}: corrupt ({len(data)} bytes, index.json says {digest['bytes']} with another sha256); "
            "re-run `vidret index` into a new --out"
        )
    return data


def read_part(
    storage: Storage, root: str, entry: Mapping[str, Any], *, pooled_only: bool = False
) -> PartData:
    """Read and verify one part; ``pooled_only`` skips the frame features and thumbnails."""
    name, files = entry["name"], entry["files"]
    where = join(root, "parts", name)
    ids = json.loads(_read_verified(storage, root, f"parts/{name}.json", files[".json"]))
    pooled_bytes = _read_verified(storage, root, f"parts/{name}.pooled.npy", files[".pooled.npy"])
    try:
        pooled_nd = np.load(io.BytesIO(pooled_bytes), allow_pickle=False)
        arrays: dict[str, np.ndarray] = {}
        if not pooled_only:
            data = _read_verified(storage, root, f"parts/{name}.npz", files[".npz"])
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in PART_ARRAYS}
    except (ValueError, OSError, KeyError) as err:
        raise SearchIndexError(f"{where}: unreadable part ({err})") from None
    return PartData(arrays=arrays, pooled=pooled_nd, video_ids=ids["video_id"], video_uris=ids["video_uri"])


def read_index(storage: Storage, root: str) -> dict[str, Any] | None:
    """The parsed ``index.json`` under ``root``, or None when there is none; ``SearchIndexError`` when it is
    not a search index of this format."""
    uri = join(root, INDEX_FILE)
    try:
        if not storage.exists(uri):
            return None
        text = storage.read_text(uri)
    except (StorageError, OSError) as err:
        raise SearchIndexError(f"{uri}: cannot read the search index ({err})") from None
    try:
        index = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SearchIndexError(f"{uri}: corrupt search index (not JSON: {err})") from None
    if not isinstance(index, dict) or index.get("kind") != "vidret-search-index":
        raise SearchIndexError(f"{uri}: not a vidret search index (no kind 'vidret-search-index')")
    if index.get("format") != FORMAT:
        raise SearchIndexError(
            f"{uri}: search index format {index.get('format')!r}, this vidret reads {FORMAT}"
        )
    return index


def require_index(storage: Storage, root: str) -> dict[str, Any]:
    """``read_index`` that insists on a complete index (with its ANN built)."""
    index = read_index(storage, root)
    if index is None:
        raise SearchIndexError(
            f"{join(root, INDEX_FILE)}: no search index here; build one with `vidret index`"
        )
    if not index.get("ann"):
        raise SearchIndexError(
            f"{join(root, INDEX_FILE)}: the index is incomplete (its ANN was never built); "
            "re-run `vidret index`"
        )
    return index


def write_index(storage: Storage, root: str, index: Mapping[str, Any]) -> None:
    """Write ``index.json`` (after every file it names): what makes the parts and the ANN visible."""
    storage.write_text(join(root, INDEX_FILE), json.dumps({**index, "kind": "vidret-search-index"}, indent=1))


def write_blob(storage: Storage, root: str, name: str, data: bytes) -> dict[str, Any]:
    """Write a top-level file of the index; returns ``{"file", "bytes", "sha256"}`` for ``index.json``."""
    storage.write_bytes(join(root, name), data)
    return {"file": name, **_digest(data)}


def read_blob(storage: Storage, root: str, entry: Mapping[str, Any]) -> bytes:
    """Read and verify a top-level file recorded by ``write_blob``."""
    return _read_verified(storage, root, entry["file"], entry)


def verify_index(storage: Storage, root: str, index: Mapping[str, Any]) -> None:
    """Read every file ``index.json`` names and check its size and sha256 (``SearchIndexError`` naming it)."""
    for entry in index["parts"]:
        for suffix, digest in entry["files"].items():
            _read_verified(storage, root, f"parts/{entry['name']}{suffix}", digest)
    read_blob(storage, root, index["ann"])
