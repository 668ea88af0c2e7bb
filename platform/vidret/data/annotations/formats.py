"""Per-dataset annotation readers: annotation files -> ``AnnRecord`` lists (one record per video or segment).

Readers only parse and validate; they never look at the videos. ``vidret.data.annotations.manifest`` turns
records into
the Parquet manifest (video matching, empty-caption and duplicate handling, the report).

Every reader reads through ``Storage`` so ``s3://`` annotation directories work like local ones. Malformed
input raises ``ValueError`` naming the file, the row or field, and what was expected; a missing annotation
file raises ``ValueError`` naming the file and the dataset/split that needs it.

Layouts (``anno`` is the directory holding the files; docs/method.md §5.2):

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

import math
import re
from collections.abc import Mapping

from vidret.data.annotations.records import (
    AnnRecord,
    Caption,
    brief,
    field_str,
    finite_number,
    load_json,
    parse_csv,
    read_required_text,
    safe_unpickle,
    split_file_for,
    strip_video_ext,
)
from vidret.storage import Storage, join

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
# LSMDC clip ids end in "_HH.MM.SS.mmm-HH.MM.SS.mmm"; what precedes it is the movie directory name.
_LSMDC_CLIP = re.compile(r"^(?P<movie>.+)_\d{2}\.\d{2}\.\d{2}\.\d+-\d{2}\.\d{2}\.\d{2}\.\d+$")


def read_msrvtt_split_ids(uri: str, storage: Storage) -> list[str]:
    """Video ids of an MSR-VTT id-list split file (``MSRVTT_train.9k.csv``: header ``video_id``), in order."""
    return _parse_split_ids(read_required_text(storage, uri, "an MSR-VTT split id list"), uri)


def _parse_split_ids(text: str, uri: str) -> list[str]:
    _, rows = parse_csv(text, uri, ("video_id",))
    ids = []
    for line, row in rows:
        vid = field_str(row, "video_id", f"{uri}:row {line}")
        if not vid:
            raise ValueError(f"{uri}:row {line}: empty video_id")
        ids.append(vid)
    return ids


def _msrvtt_captions(storage: Storage, uri: str, needed_for: str) -> dict[str, list[Caption]]:
    data = load_json(storage, uri, needed_for)
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
            vid = field_str(row, "video_id", where)
            if not vid:
                raise ValueError(f"{where}: empty video_id")
            cap = field_str(row, "sentence", where)
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


def read_activitynet(
    storage: Storage, anno: str, split: str, *, split_files: Mapping[str, str] | None = None
) -> list[AnnRecord]:
    """ActivityNet Captions paragraph retrieval: one record per video, segment [0, ceil(duration)]."""
    uri = join(anno, split_file_for("activitynet", split, ACTIVITYNET_SPLIT_FILES, split_files))
    data = load_json(storage, uri, f"activitynet split {split!r}")
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


def read_didemo(
    storage: Storage, anno: str, split: str, *, split_files: Mapping[str, str] | None = None
) -> list[AnnRecord]:
    """DiDeMo paragraph retrieval: all descriptions of a video, in file order, joined into one caption."""
    uri = join(anno, split_file_for("didemo", split, DIDEMO_SPLIT_FILES, split_files))
    data = load_json(storage, uri, f"didemo split {split!r}")
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
