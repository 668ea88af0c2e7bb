"""The videos to index: a Parquet manifest (any dataset, every split or one) or a custom CSV/JSONL table.

A custom table needs only a ``video`` column (path or URI, absolute or relative to the table's folder);
``video_id``, ``start`` and ``end`` are optional, captions are not needed. Ids default to the file stem,
plus ``@start-end`` for a segment, as in the ``custom`` annotation format.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

from vidret.data.annotations.manifest import read_manifest
from vidret.data.annotations.records import parse_csv, strip_video_ext
from vidret.data.batches import ROW_SCHEMA, SplitRows
from vidret.storage import Storage, is_remote, join, parse_uri

TABLE_SUFFIXES = (".csv", ".jsonl")


def _seconds(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected seconds as a number or empty, got {value!r:.80}") from None
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{where}: expected seconds >= 0, got {value!r:.80}")
    return out


def _rows_of_table(uri: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    if uri.lower().endswith(".csv"):
        return parse_csv(text, uri, ("video",))[1]
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{uri}:line {i}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{uri}:line {i}: expected a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


def _resolve(video: str, base: str) -> str:
    if is_remote(video) or video.startswith(("/", "file://")):
        return video
    return join(base, video)


def _segment(start: float | None, end: float | None) -> str:
    if start is None and end is None:
        return ""
    return f"@{'' if start is None else f'{start:g}'}-{'' if end is None else f'{end:g}'}"


def read_table(uri: str, storage: Storage) -> list[dict[str, Any]]:
    """The rows ``{video_id, video_uri, start, end}`` of a custom CSV/JSONL table, one per distinct id."""
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{uri}: expected UTF-8 text, byte {err.start} is invalid") from None
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    out: dict[str, dict[str, Any]] = {}
    for line, row in _rows_of_table(uri, text):
        where = f"{uri}:row {line}"
        video = row.get("video")
        if not isinstance(video, str) or not video.strip():
            raise ValueError(f"{where}.video: expected a non-empty path or URI, got {video!r:.80}")
        start, end = _seconds(row.get("start"), f"{where}.start"), _seconds(row.get("end"), f"{where}.end")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{where}: expected start < end, got start={start} end={end}")
        vid = row.get("video_id")
        if vid is not None and (not isinstance(vid, str) or not vid.strip()):
            raise ValueError(f"{where}.video_id: expected a non-empty string, got {vid!r:.80}")
        vid = vid.strip() if vid else strip_video_ext(video.strip()) + _segment(start, end)
        out.setdefault(
            vid, {"video_id": vid, "video_uri": _resolve(video.strip(), base), "start": start, "end": end}
        )
    if not out:
        raise ValueError(f"{uri}: no video rows")
    return list(out.values())


def read_parquet(uri: str, storage: Storage, split: str | None) -> list[dict[str, Any]]:
    """The videos of a Parquet manifest (``split`` only, when given), one per distinct id."""
    table = read_manifest(uri, storage)
    rows = table.select(["video_id", "video_uri", "start", "end", "split"]).to_pylist()
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise ValueError(f"{uri}: no rows of split {split!r}")
    return [{k: r[k] for k in ("video_id", "video_uri", "start", "end")} for r in rows]


def read_videos(uri: str, storage: Storage, split: str | None = None) -> list[dict[str, Any]]:
    """The videos listed at ``uri``: a Parquet manifest (``.parquet``) or a custom ``.csv``/``.jsonl``
    table."""
    path = parse_uri(uri).path.lower()
    if path.endswith(".parquet"):
        return read_parquet(uri, storage, split)
    if path.endswith(TABLE_SUFFIXES):
        if split is not None:
            raise ValueError(f"{uri}: --split applies to Parquet manifests only")
        return read_table(uri, storage)
    raise ValueError(f"{uri}: expected a Parquet manifest (.parquet) or a custom table (.csv or .jsonl)")


def split_rows_of(videos: list[dict[str, Any]]) -> SplitRows:
    """The pipeline's row table for ``videos`` (no captions); ``video_index`` is the position in the list."""
    n = len(videos)
    table = pa.table(
        {
            "video_id": [v["video_id"] for v in videos],
            "video_uri": [v["video_uri"] for v in videos],
            "caption": [""] * n,
            "start": [v["start"] for v in videos],
            "end": [v["end"] for v in videos],
            "video_index": list(range(n)),
            "caption_index": [0] * n,
        },
        schema=ROW_SCHEMA,
    )
    return SplitRows(table=table, num_videos=n)
