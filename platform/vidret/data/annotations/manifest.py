"""Annotation files of any supported dataset -> one Parquet manifest (one row per video or segment).

Schema (``MANIFEST_SCHEMA``): ``video_id`` string, ``video_uri`` string, ``captions`` list<string>,
``start``/``end`` float64 seconds (null = from the beginning / to the end of the file), ``split`` string,
``dataset`` string. ``video_id`` is unique within a manifest.

``build_manifest`` reads the annotations (:mod:`vidret.data.annotations.formats`), then, in this order:

1. Captions are stripped; empty ones are dropped and listed in ``report.empty_captions`` with where they came
   from. A record left without any caption is dropped (``report.no_captions``).
2. Duplicate ``video_id``: a later record with the same file and segment has its new captions (those not
   already present) appended to the first: ``action="merged"``. A later record pointing at a different file
   or segment is a collision: with ``on_duplicate="error"`` (the default) ``ValueError`` names both rows and
   both files; with ``on_duplicate="keep-first"`` it is dropped: ``action="dropped"``. Every merged or
   dropped row is listed in ``report.duplicate_ids``. Ids that come from file names (custom: the path
   relative to ``videos`` with its extension; DiDeMo: the file name without extension) go through the
   same rule, so no two files ever collapse into one id silently.
3. With ``check_videos`` the videos directory is listed once (``Storage.list``; never one ``exists`` per
video).
   A record matches its default file (e.g. ``<videos>/<id>.mp4``) or, failing that, any listed video file
   whose
   stem is one of the record's stems (so ``.avi``/``.mp4`` and ``v_``-prefixed ActivityNet names are found).
   Unmatched records are listed in ``report.missing_videos`` and dropped (``on_missing="drop"``) or kept with
   their default URI (``on_missing="keep"``, the decoder then reports them as ``missing``). Custom tables may
   name files outside ``videos``: each such parent directory is listed once.

Errors: malformed annotations (including text that cannot be stored as UTF-8, e.g. a JSON ``\\ud800``
escape) raise ``ValueError`` naming file and row/field; I/O failures raise
``StorageError`` from ``vidret.storage``. Nothing else is raised on bad input.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidret.data.annotations.custom import is_absolute, read_custom
from vidret.data.annotations.formats import (
    read_activitynet,
    read_didemo,
    read_lsmdc,
    read_msrvtt,
    read_msvd,
)
from vidret.data.annotations.records import VIDEO_EXTENSIONS, AnnRecord
from vidret.storage import Storage, is_remote, join

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
    ]
)
DATASETS = ("msrvtt", "msvd", "activitynet", "didemo", "lsmdc", "custom", "synthetic")


@dataclass
class ManifestReport:
    """What ``build_manifest`` found; every list entry names the video id and where it came from."""

    dataset: str
    split: str
    anno: str
    videos: str
    check_videos: bool
    records_read: int = 0
    videos_listed: int | None = None  # files found under ``videos`` (None when not checked)
    rows: int = 0
    captions: int = 0
    empty_captions: list[dict[str, str]] = field(default_factory=list)
    no_captions: list[dict[str, str]] = field(default_factory=list)
    duplicate_ids: list[dict[str, str]] = field(default_factory=list)
    missing_videos: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int | None]:
        """Sizes: records read, files listed, rows and captions kept, and the length of each issue list."""
        return {
            "records_read": self.records_read,
            "videos_listed": self.videos_listed,
            "rows": self.rows,
            "captions": self.captions,
            "empty_captions": len(self.empty_captions),
            "no_captions": len(self.no_captions),
            "duplicate_ids": len(self.duplicate_ids),
            "merged_rows": sum(d["action"] == "merged" for d in self.duplicate_ids),
            "dropped_rows": sum(d["action"] == "dropped" for d in self.duplicate_ids),
            "missing_videos": len(self.missing_videos),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: the inputs, ``counts`` and the full issue lists."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "anno": self.anno,
            "videos": self.videos,
            "check_videos": self.check_videos,
            "counts": self.counts(),
            "empty_captions": list(self.empty_captions),
            "no_captions": list(self.no_captions),
            "duplicate_ids": list(self.duplicate_ids),
            "missing_videos": list(self.missing_videos),
        }

    def format_text(self, limit: int = 10) -> str:
        """Human-readable summary for the CLI: a summary line with the merged/dropped counts, the counts, then
        every merged or dropped row and at most ``limit`` entries of each other issue list."""
        counts = self.counts()
        lines = [
            f"manifest {self.dataset}/{self.split}: {self.rows} rows, {self.captions} captions; "
            f"{counts['merged_rows']} duplicate rows merged, {counts['dropped_rows']} dropped, "
            f"{counts['missing_videos']} videos missing"
        ]
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        for name in ("duplicate_ids", "missing_videos", "empty_captions", "no_captions"):
            items: list[dict[str, str]] = getattr(self, name)
            shown = items if name == "duplicate_ids" else items[:limit]
            lines.extend(f"  {name}: " + " ".join(f"{k}={v}" for k, v in item.items()) for item in shown)
            if len(items) > len(shown):
                lines.append(f"  {name}: ... {len(items) - len(shown)} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class ManifestResult:
    table: pa.Table  # MANIFEST_SCHEMA
    report: ManifestReport


def _read_records(
    dataset: str,
    anno: str,
    split: str,
    storage: Storage,
    split_files: Mapping[str, str] | None,
    videos: str,
) -> list[AnnRecord]:
    readers: dict[str, Callable[..., list[AnnRecord]]] = {
        "msvd": read_msvd,
        "activitynet": read_activitynet,
        "didemo": read_didemo,
        "lsmdc": read_lsmdc,
    }
    if dataset == "custom":
        return read_custom(storage, anno, split, split_files=split_files, videos=videos)
    if dataset in ("msrvtt", "synthetic"):
        return read_msrvtt(storage, anno, split, dataset=dataset, split_files=split_files)
    if dataset not in readers:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    return readers[dataset](storage, anno, split, split_files=split_files)


@dataclass
class _Row:
    record: AnnRecord
    captions: list[str]


def _unicode(text: str, where: str, what: str) -> str:
    """``text`` if it can be stored as UTF-8; a JSON ``\\ud800`` escape or a pickled str can hold a lone
    surrogate, which Parquet cannot store: ``ValueError`` naming where it came from."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{where}: {what} is not valid Unicode (unpaired surrogate {text[err.start]!r} at character "
            f"{err.start}); expected text that can be stored as UTF-8"
        ) from None
    return text


OnDuplicate = Literal["error", "keep-first"]


def _collision(rec: AnnRecord, first: AnnRecord) -> ValueError:
    def shown(r: AnnRecord) -> str:
        segment = "" if r.start is None and r.end is None else f" [{r.start}, {r.end}]"
        return f"{r.where} ({r.video_rel}{segment})"

    return ValueError(
        f"video_id {rec.video_id!r} names two different videos: {shown(first)} and {shown(rec)}; give them "
        "distinct ids (custom: a video_id column) or pass --on-duplicate keep-first to keep the first"
    )


def _clean(records: list[AnnRecord], report: ManifestReport, on_duplicate: OnDuplicate) -> list[_Row]:
    """Strip captions, drop empty ones, drop captionless records, resolve duplicate ids (module docstring)."""
    rows: dict[str, _Row] = {}
    for rec in records:
        _unicode(rec.video_id, rec.where, "video id")
        _unicode(rec.video_rel, rec.where, "video path")
        captions = []
        for cap in rec.captions:
            text = _unicode(cap.text, cap.where, "caption").strip()
            if text:
                captions.append(text)
            else:
                report.empty_captions.append({"video_id": rec.video_id, "where": cap.where})
        if not captions:
            report.no_captions.append({"video_id": rec.video_id, "where": rec.where})
            continue
        first = rows.get(rec.video_id)
        if first is None:
            rows[rec.video_id] = _Row(rec, captions)
            continue
        same = (first.record.video_rel, first.record.start, first.record.end) == (
            rec.video_rel,
            rec.start,
            rec.end,
        )
        if same:
            seen = set(first.captions)
            first.captions.extend(c for c in captions if c not in seen)
        elif on_duplicate == "error":
            raise _collision(rec, first.record)
        report.duplicate_ids.append(
            {
                "video_id": rec.video_id,
                "where": rec.where,
                "first": first.record.where,
                "video": rec.video_rel,
                "first_video": first.record.video_rel,
                "action": "merged" if same else "dropped",
            }
        )
    return list(rows.values())


def _norm(uri: str) -> str:
    """Comparable form of a file location: local paths absolute and normalised, ``file://`` stripped."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.normpath(os.path.abspath(uri))


def _stem_key(uri: str) -> str | None:
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return stem if dot and f".{ext.lower()}" in VIDEO_EXTENSIONS else None


class _Listing:
    """Files under a directory, listed once, indexed by normalised location and by video stem."""

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.uris = storage.list(prefix)
        self.by_norm = {_norm(u): u for u in self.uris}
        by_stem: dict[str, list[str]] = {}
        for u in self.uris:
            stem = _stem_key(u)
            if stem is not None:
                by_stem.setdefault(stem, []).append(u)
        # Prefer .mp4, then the first in sorted order, so the choice is deterministic.
        self.by_stem = {
            s: sorted(us, key=lambda u: (not u.lower().endswith(".mp4"), u)) for s, us in by_stem.items()
        }

    def find(self, default_uri: str, stems: tuple[str, ...]) -> str | None:
        hit = self.by_norm.get(_norm(default_uri))
        if hit is not None:
            return hit
        for stem in stems:
            if stem in self.by_stem:
                return self.by_stem[stem][0]
        return None


def _resolve_videos(
    rows: list[_Row],
    videos: str,
    storage: Storage,
    check: bool,
    on_missing: Literal["drop", "keep"],
    report: ManifestReport,
) -> list[tuple[_Row, str]]:
    def default_uri(rec: AnnRecord) -> str:
        return rec.video_rel if is_absolute(rec.video_rel) else join(videos, rec.video_rel)

    if not check:
        return [(row, default_uri(row.record)) for row in rows]
    main = _Listing(storage, videos) if videos else None
    report.videos_listed = len(main.uris) if main else 0
    others: dict[str, _Listing] = {}  # parent directories of files outside ``videos``
    videos_norm = _norm(videos) + "/" if videos else None
    resolved = []
    for row in rows:
        uri = default_uri(row.record)
        listing = main
        if videos_norm is None or not _norm(uri).startswith(videos_norm):
            parent = posixpath.dirname(uri) if is_remote(uri) else os.path.dirname(_norm(uri))
            if parent not in others:
                others[parent] = _Listing(storage, parent)
                report.videos_listed += len(others[parent].uris)
            listing = others[parent]
        assert listing is not None
        found = listing.find(uri, row.record.stems)
        if found is None:
            report.missing_videos.append({"video_id": row.record.video_id, "expected": uri})
            if on_missing == "drop":
                continue
            found = uri
        resolved.append((row, found))
    return resolved


def build_manifest(
    dataset: str,
    anno: str,
    videos: str,
    split: str,
    storage: Storage,
    *,
    check_videos: bool = True,
    split_files: Mapping[str, str] | None = None,
    on_missing: Literal["drop", "keep"] = "drop",
    on_duplicate: OnDuplicate = "error",
) -> ManifestResult:
    """Read ``dataset``'s annotations under ``anno`` for ``split`` and match them to files under ``videos``.

    ``split_files`` ({split: file name in ``anno``}) overrides the dataset's default split files.
    ``on_duplicate`` resolves one id naming two videos (module docstring). Returns the table
    (``MANIFEST_SCHEMA``, rows in annotation order) and the report (module docstring).
    """
    if on_missing not in ("drop", "keep"):
        raise ValueError(f"on_missing: expected 'drop' or 'keep', got {on_missing!r}")
    if on_duplicate not in ("error", "keep-first"):
        raise ValueError(f"on_duplicate: expected 'error' or 'keep-first', got {on_duplicate!r}")
    if not anno:
        raise ValueError("anno: expected the annotation directory (or file for custom), got ''")
    if not videos and dataset != "custom":
        raise ValueError(f"videos: expected the videos directory for dataset {dataset!r}, got ''")
    if videos and not is_remote(videos) and not videos.startswith("file://"):
        videos = os.path.abspath(videos)  # manifests are read from other working directories (Ray workers)
    report = ManifestReport(dataset, split, anno, videos, check_videos)
    records = _read_records(dataset, anno, split, storage, split_files, videos)
    report.records_read = len(records)
    rows = _clean(records, report, on_duplicate)
    resolved = _resolve_videos(rows, videos, storage, check_videos, on_missing, report)
    table = pa.table(
        {
            "video_id": [r.record.video_id for r, _ in resolved],
            "video_uri": [uri for _, uri in resolved],
            "captions": [r.captions for r, _ in resolved],
            "start": [r.record.start for r, _ in resolved],
            "end": [r.record.end for r, _ in resolved],
            "split": [split] * len(resolved),
            "dataset": [dataset] * len(resolved),
        },
        schema=MANIFEST_SCHEMA,
    )
    report.rows = table.num_rows
    report.captions = sum(len(r.captions) for r, _ in resolved)
    return ManifestResult(table, report)


def validate_manifest(table: pa.Table, where: str) -> pa.Table:
    """Check ``table`` against ``MANIFEST_SCHEMA`` (extra columns are dropped); ``ValueError`` naming
    ``where``."""
    for f in MANIFEST_SCHEMA:
        if f.name not in table.column_names:
            raise ValueError(
                f"{where}: manifest column {f.name!r} is missing; expected schema {MANIFEST_SCHEMA}"
            )
        col = table.column(f.name)
        if not col.type.equals(f.type):
            raise ValueError(f"{where}: manifest column {f.name!r} has type {col.type}, expected {f.type}")
        if not f.nullable and col.null_count:
            raise ValueError(f"{where}: manifest column {f.name!r} has {col.null_count} null value(s)")
    ids = table.column("video_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise ValueError(f"{where}: manifest video_id values are not unique")
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def write_manifest(result_or_table: ManifestResult | pa.Table, out_uri: str, storage: Storage) -> None:
    """Write the manifest as one Parquet file at ``out_uri`` (atomically, through ``storage``)."""
    table = result_or_table.table if isinstance(result_or_table, ManifestResult) else result_or_table
    if not isinstance(table, pa.Table):
        raise TypeError(
            f"write_manifest: expected a ManifestResult or pyarrow.Table, got {type(table).__name__}"
        )
    table = validate_manifest(table, out_uri)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(out_uri, buf.getvalue())


def read_manifest(uri: str, storage: Storage) -> pa.Table:
    """Read and validate a manifest written by ``write_manifest``; returns a table with
    ``MANIFEST_SCHEMA``."""
    data = storage.read_bytes(uri)
    try:  # corrupt bytes surface as Arrow errors, OSError or (undecodable names) UnicodeDecodeError
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError, NotImplementedError) as err:
        raise ValueError(f"{uri}: not a readable Parquet manifest ({err})") from err
    try:
        return validate_manifest(table, uri)
    except UnicodeDecodeError as err:
        raise ValueError(f"{uri}: not a readable Parquet manifest ({err})") from err
