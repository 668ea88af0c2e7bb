"""The ``custom`` annotation format: a CSV or JSONL table of (video, caption[, start, end, split, video_id]).

* ``video``: path or URI of the file, absolute (``/x.mp4``, ``file://``, ``s3://``) or relative to ``videos``.
* ``caption``: a string (JSONL may also give a list of strings).
* ``start``/``end``: seconds, optional; empty (CSV) or null (JSONL) = whole video.
* ``split``: optional; when the column exists only rows equal to the requested split are kept.
* ``video_id``: optional; default is the video's path relative to ``videos`` with its extension
  (``a/clip.mp4``; a file outside ``videos`` keeps its full path or URI), plus ``@start-end`` when a segment
  is given, so that ``sample.mp4``/``sample.avi`` or ``a/clip.mp4``/``b/clip.mp4`` never share an id and
  segments of one file get distinct ids. Two rows with one id and different files are resolved by the
  manifest's ``on_duplicate`` policy (an error by default).

Rows are grouped per ``(video, start, end)`` into one record holding all their captions, in file order.
``anno`` is the table itself (``*.csv`` / ``*.jsonl``), a directory holding exactly one such table, or a
directory plus ``split_files={split: name}``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from vidret.data.annotations.records import (
    AnnRecord,
    Caption,
    finite_number,
    parse_csv,
    read_required_text,
    split_file_for,
)
from vidret.storage import Storage, is_remote, join

CUSTOM_SUFFIXES = (".csv", ".jsonl")
REQUIRED_COLUMNS = ("video", "caption")


def find_custom_table(storage: Storage, anno: str, split: str, split_files: Mapping[str, str] | None) -> str:
    """URI of the custom table for ``split``."""
    if anno.lower().endswith(CUSTOM_SUFFIXES):
        return anno
    if split_files is not None:
        return join(anno, split_file_for("custom", split, {}, split_files))
    tables = [u for u in storage.list(anno) if u.lower().endswith(CUSTOM_SUFFIXES)]
    if len(tables) != 1:
        raise ValueError(
            f"custom: {anno} must be a .csv/.jsonl file or a directory holding exactly one; "
            f"found {tables[:5]}" + ("" if tables else " (none)")
        )
    return tables[0]


def _seconds(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where}: expected seconds as a number or empty, got {value!r:.80}") from None
    seconds = finite_number(value, where)
    if seconds < 0:
        raise ValueError(f"{where}: expected seconds >= 0 or null, got {value!r}")
    return seconds


def _jsonl_rows(text: str, uri: str) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{uri}:row {line_no}: invalid JSON ({err.msg} at column {err.colno})") from err
        except RecursionError as err:
            raise ValueError(f"{uri}:row {line_no}: invalid JSON (nested too deeply)") from err
        except ValueError as err:  # an integer longer than sys.get_int_max_str_digits()
            raise ValueError(f"{uri}:row {line_no}: invalid JSON ({err})") from err
        if not isinstance(row, dict):
            raise ValueError(f"{uri}:row {line_no}: expected a JSON object, got {type(row).__name__}")
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{uri}:row {line_no}: missing field(s) {missing}")
        rows.append((line_no, row))
    return rows


def _captions(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{where}.caption: expected a string or a list of strings, got {value!r:.80}")


def _segment_suffix(start: float | None, end: float | None) -> str:
    if start is None and end is None:
        return ""
    return f"@{'' if start is None else f'{start:g}'}-{'' if end is None else f'{end:g}'}"


def is_absolute(path: str) -> bool:
    """True for URIs (``s3://``, ``file://``) and absolute local paths."""
    return is_remote(path) or path.startswith(("/", "file://"))


def default_video_id(video: str, videos: str) -> str:
    """The id of a ``video`` path: relative to ``videos`` with its extension (a path outside ``videos`` keeps
    its full form); ``./`` prefixes and doubled separators are normalised away."""
    if is_absolute(video):
        plain = video[len("file://") :] if video.startswith("file://") else video
        base = videos[len("file://") :] if videos.startswith("file://") else videos
        if base and not is_remote(plain) and not is_remote(base):
            rel = posixpath.relpath(posixpath.normpath(plain), posixpath.normpath(posixpath.abspath(base)))
            return video if rel.startswith("..") else rel
        if base and plain.startswith(base.rstrip("/") + "/"):
            return plain[len(base.rstrip("/")) + 1 :]
        return video
    return posixpath.normpath(video)


def read_custom(
    storage: Storage,
    anno: str,
    split: str,
    *,
    split_files: Mapping[str, str] | None = None,
    videos: str = "",
) -> list[AnnRecord]:
    """Read the custom CSV/JSONL table, keep ``split`` (if the column exists), group per (video, start, end).

    ``videos`` is the folder relative paths are relative to; ids default to :func:`default_video_id`.
    """
    uri = find_custom_table(storage, anno, split, split_files)
    text = read_required_text(storage, uri, f"custom split {split!r}")
    if uri.lower().endswith(".jsonl"):
        rows = _jsonl_rows(text, uri)
    else:
        rows = parse_csv(text, uri, REQUIRED_COLUMNS)[1]
    groups: dict[tuple[str, float | None, float | None], dict[str, Any]] = {}
    for line_no, row in rows:
        where = f"{uri}:row {line_no}"
        row_split = row.get("split")
        if row_split is not None and (not isinstance(row_split, str) or row_split.strip() != split):
            if not isinstance(row_split, str):
                raise ValueError(f"{where}.split: expected a string, got {row_split!r}")
            continue
        video = row.get("video")
        if not isinstance(video, str) or not video.strip():
            raise ValueError(f"{where}.video: expected a non-empty path or URI, got {video!r}")
        video = video.strip()
        start, end = _seconds(row.get("start"), f"{where}.start"), _seconds(row.get("end"), f"{where}.end")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{where}: expected start < end, got start={start} end={end}")
        video_id = row.get("video_id")
        if video_id is not None and not isinstance(video_id, str):
            raise ValueError(f"{where}.video_id: expected a string, got {video_id!r}")
        group = groups.setdefault((video, start, end), {"where": where, "video_id": "", "captions": []})
        if not group["video_id"] and video_id and video_id.strip():
            group["video_id"] = video_id.strip()
        group["captions"].extend(Caption(c, where) for c in _captions(row.get("caption"), where))
    records = []
    for (video, start, end), group in groups.items():
        video_id = group["video_id"] or default_video_id(video, videos) + _segment_suffix(start, end)
        records.append(AnnRecord(video_id, tuple(group["captions"]), group["where"], video, (), start, end))
    return records
