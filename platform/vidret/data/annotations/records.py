"""Annotation records and the parsing helpers every dataset reader shares (no dataset knowledge here).

Malformed input raises ``ValueError`` naming the file, the row or field, and what was expected.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from vidret.storage import Storage

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".3gp", ".mpg", ".mpeg", ".ts", ".wmv"}
)

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class Caption(NamedTuple):
    text: str
    where: str  # "file:row N" or "file[key]": where the caption came from, for the report


@dataclass(frozen=True)
class AnnRecord:
    """One video (or segment) and its raw captions, before video matching.

    ``video_rel`` is the default location: a path relative to the videos directory, or an absolute
    path/URI (custom only). ``stems`` are file-name stems accepted when matching a videos listing.
    """

    video_id: str
    captions: tuple[Caption, ...]
    where: str
    video_rel: str
    stems: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None


def split_file_for(
    dataset: str, split: str, defaults: Mapping[str, str] | None, split_files: Mapping[str, str] | None
) -> str:
    """File name for ``split``: ``split_files`` overrides the dataset defaults; ``defaults=None`` means
    ``<split>.csv`` (the synthetic corpus layout)."""
    table = split_files if split_files is not None else defaults
    if table is None:
        if not _SPLIT_NAME.match(split):
            raise ValueError(f"{dataset}: split {split!r} is not a plain name ([A-Za-z0-9_.-]+)")
        return f"{split}.csv"
    if split not in table:
        raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {sorted(table)}")
    return table[split]


def read_required_text(storage: Storage, uri: str, needed_for: str) -> str:
    """Read an annotation file, raising ``ValueError`` that says which dataset/split needs it if absent."""
    if not storage.exists(uri):
        raise ValueError(f"annotation file {uri} does not exist (needed for {needed_for})")
    return storage.read_text(uri)  # ValueError naming the URI if not UTF-8


def load_json(storage: Storage, uri: str, needed_for: str) -> Any:
    """Parse an annotation JSON file; ``ValueError`` naming the file and the position on bad JSON."""
    text = read_required_text(storage, uri, needed_for)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except RecursionError as err:
        raise ValueError(f"{uri}: invalid JSON (nested too deeply)") from err
    except ValueError as err:  # an integer longer than sys.get_int_max_str_digits()
        raise ValueError(f"{uri}: invalid JSON ({err})") from err


def parse_csv(
    text: str, uri: str, required: tuple[str, ...]
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Parse a comma CSV with a header; returns (header, [(line number, row dict)])."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{uri}: missing column(s) {missing}; header is {header}")
        for row in reader:
            if None in row:  # more fields than the header
                n = len(header) + len(row[None])
                raise ValueError(f"{uri}:row {reader.line_num}: {n} fields, header has {len(header)}")
            rows.append((reader.line_num, row))
    except csv.Error as err:
        raise ValueError(f"{uri}:row {reader.line_num}: malformed CSV ({err})") from err
    return header, rows


def field_str(row: Mapping[str, str], field: str, where: str) -> str:
    """``row[field]`` stripped; ``ValueError`` naming ``where`` when the row has too few fields."""
    value = row.get(field)
    if value is None:
        raise ValueError(f"{where}: field {field!r} is missing (row has too few fields)")
    return value.strip()


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters for an error message; never raises itself."""
    try:
        text = repr(value)
    # A pickled int longer than sys.get_int_max_str_digits(), or a pathologically deep container.
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__} that cannot be shown>"
    return text[:limit]


class _RefusedGlobal(ValueError):
    """The pickle names a global other than the allowed containers (raised as is, it names the file)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only build plain containers: any other global (a class, a function) is refused."""

    _ALLOWED = frozenset({"dict", "list", "str", "tuple"})

    def __init__(self, data: bytes, uri: str) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._uri = uri

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in self._ALLOWED:
            return getattr(builtins, name)
        raise _RefusedGlobal(
            f"{self._uri}: refusing to unpickle global {module}.{name}; "
            "only plain dict/list/str/tuple are allowed"
        )


def safe_unpickle(data: bytes, uri: str) -> Any:
    """Unpickle ``data`` allowing only builtins dict/list/str/tuple; ``ValueError`` naming ``uri``
    otherwise."""
    try:
        return _RestrictedUnpickler(data, uri).load()
    except _RefusedGlobal:
        raise
    # MemoryError/OverflowError: a corrupt length field asks for an impossible allocation; ValueError: an
    # unknown protocol, undecodable text, an over-long int literal, or dict() given a malformed sequence.
    except (
        pickle.UnpicklingError,
        ValueError,
        RecursionError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        MemoryError,
    ) as err:
        raise ValueError(
            f"{uri}: not a readable pickle of plain containers ({type(err).__name__}: {err})"
        ) from err


def finite_number(value: Any, where: str) -> float:
    """``value`` as a finite float; bools, strings and huge or non-finite numbers raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a finite number, got {brief(value)}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ValueError(f"{where}: expected a finite number, got {brief(value)}")
    return out


def strip_video_ext(name: str) -> str:
    """``"a/b.mp4" -> "b"``; a suffix that is not a known video extension is kept (ids may contain dots)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return stem if dot and f".{ext.lower()}" in VIDEO_EXTENSIONS else base
