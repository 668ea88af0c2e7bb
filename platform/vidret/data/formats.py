"""Per-dataset annotation readers: annotation files -> ``AnnRecord`` lists (one record per video or segment).

Readers only parse and validate; they never look at the videos. ``vidret.data.manifest`` turns records into
the Parquet manifest (video matching, empty-caption and duplicate handling, the report).

Every reader reads through ``Storage`` so ``s3://`` annotation directories work like local ones. Malformed
input raises ``ValueError`` naming the file, the row or field, and what was expected; a missing annotation
file raises ``ValueError`` naming the file and the dataset/split that needs it.

Layouts (``anno`` is the directory holding the files; method reference section 5.2):

* msrvtt / synthetic: a split file, either an id list (single column ``video_id``; every caption of the video
  comes from ``MSRVTT_data.json``'s ``sentences``) or a pair list (``key,vid_key,video_id,sentence``; one
  caption per row, the json is not read). The kind is detected from the header.
* msvd: ``raw-captions.pkl`` (id -> list of token lists, joined with spaces) + ``{split}_list.txt``.
* activitynet: ``train.json`` / ``val_1.json``: ``{v_id: {duration, timestamps, sentences}}``; the paragraph
  is the stripped sentences joined with spaces; segment ``[0, ceil(duration)]`` as upstream.
* didemo: ``{split}_data.json``: list of ``{description, times, video}``; all descriptions of a video joined
  into one paragraph; segment ``[0, 31]`` s as upstream (videos were annotated up to 30 s). The json
  defines the split, so ``{split}_list.txt`` is not read. ``video_id`` is the file name minus its extension.
* lsmdc: tab-separated, 6 columns ``clip_id, start_aligned, end_aligned, start_extracted, end_extracted,
  sentence``; clips are pre-cut files, so start/end are null (whole clip). Default file
  ``<movie>/<clip_id>.avi``, movie = the clip id minus its trailing ``_HH.MM.SS.mmm-HH.MM.SS.mmm``. Upstream's
  six hard-coded bad clip ids are not skipped here: unreadable clips surface in the manifest/decode reports.
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

from vidret.storage import Storage, join

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".3gp", ".mpg", ".mpeg", ".ts", ".wmv"}
)

MSRVTT_CAPTIONS_FILE = "MSRVTT_data.json"
MSRVTT_SPLIT_FILES: dict[str, str] = {
    "train": "MSRVTT_train.9k.csv",
    "train9k": "MSRVTT_train.9k.csv",
    "train7k": "MSRVTT_train.7k.csv",
    "val": "MSRVTT_JSFUSION_test.csv",  # upstream evaluates val on the 1k-A test split too
    "test": "MSRVTT_JSFUSION_test.csv",
}
MSVD_CAPTIONS_FILE = "raw-captions.pkl"
MSVD_SPLIT_FILES: dict[str, str] = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
ACTIVITYNET_SPLIT_FILES: dict[str, str] = {
    "train": "train.json",
    "val": "val_1.json",  # upstream registers val only, so test = val_1
    "test": "val_1.json",
    "val2": "val_2.json",
}
DIDEMO_SPLIT_FILES: dict[str, str] = {s: f"{s}_data.json" for s in ("train", "val", "test")}
DIDEMO_SEGMENT_S = (0.0, 31.0)
LSMDC_SPLIT_FILES: dict[str, str] = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# LSMDC clip ids end in "_HH.MM.SS.mmm-HH.MM.SS.mmm"; what precedes it is the movie directory name.
_LSMDC_CLIP = re.compile(r"^(?P<movie>.+)_\d{2}\.\d{2}\.\d{2}\.\d+-\d{2}\.\d{2}\.\d{2}\.\d+$")


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


def _load_json(storage: Storage, uri: str, needed_for: str) -> Any:
    text = read_required_text(storage, uri, needed_for)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except RecursionError as err:
        raise ValueError(f"{uri}: invalid JSON (nested too deeply)") from err
    except ValueError as err:  # an integer longer than sys.get_int_max_str_digits()
        raise ValueError(f"{uri}: invalid JSON ({err})") from err


def parse_csv(text: str, uri: str, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Parse a comma CSV with a header; returns (header, [(line number, row dict)])."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
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


def _field_str(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if value is None:
        raise ValueError(f"{where}: field {field!r} is missing (row has too few fields)")
    return value.strip()


def read_msrvtt_split_ids(uri: str, storage: Storage) -> list[str]:
    """Video ids of an MSR-VTT id-list split file (``MSRVTT_train.9k.csv``: header ``video_id``), in order."""
    return _parse_split_ids(read_required_text(storage, uri, "an MSR-VTT split id list"), uri)


def _parse_split_ids(text: str, uri: str) -> list[str]:
    _, rows = parse_csv(text, uri, ("video_id",))
    ids = []
    for line, row in rows:
        vid = _field_str(row, "video_id", f"{uri}:row {line}")
        if not vid:
            raise ValueError(f"{uri}:row {line}: empty video_id")
        ids.append(vid)
    return ids


def _msrvtt_captions(storage: Storage, uri: str, needed_for: str) -> dict[str, list[Caption]]:
    data = _load_json(storage, uri, needed_for)
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise ValueError(f"{uri}: expected a JSON object with a 'sentences' list")
    by_video: dict[str, list[Caption]] = {}
    for i, sent in enumerate(data["sentences"]):
        where = f"{uri}[sentences][{i}]"
        if not isinstance(sent, dict):
            raise ValueError(
                f"{where}: expected an object with video_id and caption, got {type(sent).__name__}"
            )
        vid, cap = sent.get("video_id"), sent.get("caption")
        if not isinstance(vid, str) or not vid:
            raise ValueError(f"{where}.video_id: expected a non-empty string, got {vid!r}")
        if not isinstance(cap, str):
            raise ValueError(f"{where}.caption: expected a string, got {type(cap).__name__}")
        by_video.setdefault(vid, []).append(Caption(cap, where))
    return by_video


def read_msrvtt(
    storage: Storage,
    anno: str,
    split: str,
    *,
    dataset: str = "msrvtt",
    split_files: Mapping[str, str] | None = None,
) -> list[AnnRecord]:
    """MSR-VTT (and the synthetic corpus, ``dataset="synthetic"``: ``<split>.csv`` files)."""
    defaults = None if dataset == "synthetic" else MSRVTT_SPLIT_FILES
    uri = join(anno, split_file_for(dataset, split, defaults, split_files))
    text = read_required_text(storage, uri, f"{dataset} split {split!r}")
    header, rows = parse_csv(text, uri, ("video_id",))
    if "sentence" in header:  # pair list: one caption per row, caption from the csv
        records = []
        for line, row in rows:
            where = f"{uri}:row {line}"
            vid = _field_str(row, "video_id", where)
            if not vid:
                raise ValueError(f"{where}: empty video_id")
            cap = _field_str(row, "sentence", where)
            records.append(AnnRecord(vid, (Caption(cap, where),), where, f"{vid}.mp4", (vid,)))
        return records
    ids = _parse_split_ids(text, uri)
    captions = _msrvtt_captions(
        storage, join(anno, MSRVTT_CAPTIONS_FILE), f"{dataset} split {split!r} ({uri})"
    )
    return [
        AnnRecord(vid, tuple(captions.get(vid, ())), f"{uri}:row {i + 2}", f"{vid}.mp4", (vid,))
        for i, vid in enumerate(ids)
    ]


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
            f"{self._uri}: refusing to unpickle global {module}.{name}; only plain dict/list/str/tuple are allowed"
        )


def safe_unpickle(data: bytes, uri: str) -> Any:
    """Unpickle ``data`` allowing only builtins dict/list/str/tuple; ``ValueError`` naming ``uri`` otherwise."""
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


def _read_id_list(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_msvd(
    storage: Storage, anno: str, split: str, *, split_files: Mapping[str, str] | None = None
) -> list[AnnRecord]:
    """MSVD (CLIP4Clip layout): every caption of every listed video; token lists joined with spaces."""
    list_uri = join(anno, split_file_for("msvd", split, MSVD_SPLIT_FILES, split_files))
    ids = _read_id_list(read_required_text(storage, list_uri, f"msvd split {split!r}"))
    pkl_uri = join(anno, MSVD_CAPTIONS_FILE)
    if not storage.exists(pkl_uri):
        raise ValueError(f"annotation file {pkl_uri} does not exist (needed for msvd split {split!r})")
    raw = safe_unpickle(storage.read_bytes(pkl_uri), pkl_uri)
    if not isinstance(raw, dict):
        raise ValueError(
            f"{pkl_uri}: expected a dict video id -> list of token lists, got {type(raw).__name__}"
        )
    records = []
    for i, vid in enumerate(ids):
        caps = []
        entries = raw.get(vid, [])
        if not isinstance(entries, (list, tuple)):
            raise ValueError(
                f"{pkl_uri}[{vid!r}]: expected a list of token lists, got {type(entries).__name__}"
            )
        for j, tokens in enumerate(entries):
            where = f"{pkl_uri}[{vid!r}][{j}]"
            if isinstance(tokens, str):
                caps.append(Caption(tokens, where))
            elif isinstance(tokens, (list, tuple)) and all(isinstance(t, str) for t in tokens):
                caps.append(Caption(" ".join(tokens), where))
            else:
                raise ValueError(f"{where}: expected a list of string tokens, got {brief(tokens)}")
        records.append(AnnRecord(vid, tuple(caps), f"{list_uri}:line {i + 1}", f"{vid}.avi", (vid,)))
    return records


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


def read_activitynet(
    storage: Storage, anno: str, split: str, *, split_files: Mapping[str, str] | None = None
) -> list[AnnRecord]:
    """ActivityNet Captions paragraph retrieval: one record per video, segment [0, ceil(duration)]."""
    uri = join(anno, split_file_for("activitynet", split, ACTIVITYNET_SPLIT_FILES, split_files))
    data = _load_json(storage, uri, f"activitynet split {split!r}")
    if not isinstance(data, dict):
        raise ValueError(f"{uri}: expected a JSON object {{video id: {{duration, timestamps, sentences}}}}")
    records = []
    for key, entry in data.items():
        where = f"{uri}[{key!r}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with duration and sentences")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{where}.sentences: expected a list of strings")
        duration = finite_number(entry.get("duration"), f"{where}.duration")
        paragraph = " ".join(s.strip() for s in sentences if s.strip())
        stem = key[2:] if key.startswith("v_") else f"v_{key}"
        records.append(
            AnnRecord(
                key,
                (Caption(paragraph, where),),
                where,
                f"{key}.mp4",
                (key, stem),
                0.0,
                float(math.ceil(duration)),
            )
        )
    return records


def strip_video_ext(name: str) -> str:
    """``"a/b.mp4" -> "b"``; a suffix that is not a known video extension is kept (ids may contain dots)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return stem if dot and f".{ext.lower()}" in VIDEO_EXTENSIONS else base


def read_didemo(
    storage: Storage, anno: str, split: str, *, split_files: Mapping[str, str] | None = None
) -> list[AnnRecord]:
    """DiDeMo paragraph retrieval: all descriptions of a video, in file order, joined into one caption."""
    uri = join(anno, split_file_for("didemo", split, DIDEMO_SPLIT_FILES, split_files))
    data = _load_json(storage, uri, f"didemo split {split!r}")
    if not isinstance(data, list):
        raise ValueError(f"{uri}: expected a JSON list of {{description, times, video}}")
    texts: dict[str, list[str]] = {}
    first: dict[str, tuple[int, str]] = {}
    for i, item in enumerate(data):
        where = f"{uri}[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object with description and video")
        video, desc = item.get("video"), item.get("description")
        if not isinstance(video, str) or not video.strip():
            raise ValueError(f"{where}.video: expected a non-empty string, got {video!r}")
        if not isinstance(desc, str):
            raise ValueError(f"{where}.description: expected a string, got {type(desc).__name__}")
        video = video.strip()
        first.setdefault(video, (i, where))
        if desc.strip():
            texts.setdefault(video, []).append(desc.strip())
    start, end = DIDEMO_SEGMENT_S
    records = []
    for video, (_, where) in first.items():
        stem = strip_video_ext(video)
        caption = Caption(" ".join(texts.get(video, [])), f"{where}.description")
        records.append(AnnRecord(stem, (caption,), where, video, (stem,), start, end))
    return records


def lsmdc_movie(clip_id: str) -> str | None:
    """Movie directory of an LSMDC clip id (the id minus its trailing ``_start-end`` timestamps)."""
    match = _LSMDC_CLIP.match(clip_id)
    return match.group("movie") if match else None


def read_lsmdc(
    storage: Storage, anno: str, split: str, *, split_files: Mapping[str, str] | None = None
) -> list[AnnRecord]:
    """LSMDC: one caption per pre-cut clip; default file ``<movie>/<clip_id>.avi``."""
    uri = join(anno, split_file_for("lsmdc", split, LSMDC_SPLIT_FILES, split_files))
    text = read_required_text(storage, uri, f"lsmdc split {split!r}")
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{uri}:row {line_no}"
        fields = line.split("\t", 5)
        if len(fields) != 6:
            raise ValueError(
                f"{where}: expected 6 tab-separated fields (clip_id, start_aligned, end_aligned, "
                f"start_extracted, end_extracted, sentence), got {len(fields)}"
            )
        clip_id = fields[0].strip()
        if not clip_id:
            raise ValueError(f"{where}: empty clip_id")
        movie = lsmdc_movie(clip_id)
        rel = f"{movie}/{clip_id}.avi" if movie else f"{clip_id}.avi"
        records.append(AnnRecord(clip_id, (Caption(fields[5].strip(), where),), where, rel, (clip_id,)))
    return records
