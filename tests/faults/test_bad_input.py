"""Malformed annotation files, manifests and config files: only the documented errors, naming file and
row/field.

Property-based (hypothesis), bounded and derandomised so CI sees the same examples on every run. The
contracts:

* annotation readers (``build_manifest`` over every dataset layout) and ``read_manifest`` raise ``ValueError``
  naming the file and, for a bad row or field, where it is (``file:row N``, ``file[key].field``);
* ``load_config`` raises ``ValueError`` naming the file (or the override) and the dotted key.

Anything else escaping (KeyError, TypeError, IndexError, UnicodeDecodeError, RecursionError, OverflowError
...)
is a bug, and so is a ``ValueError`` that does not say which file it is about.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import pickle
import re
import string
import types
import typing
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vidret.config import Config, StorageConfig, load_config, yaml_load
from vidret.data.annotations.manifest import MANIFEST_SCHEMA, build_manifest, read_manifest
from vidret.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
BOUNDED = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is deterministic
    database=None,  # and nothing is written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
STORAGE = Storage(StorageConfig())
WORDS = st.text(string.ascii_lowercase, min_size=1, max_size=8)


def _outcome(fn: Callable[[], Any]) -> ValueError | None:
    """Run ``fn``; return the ValueError it raised (None when it succeeded). Anything else propagates and
    fails."""
    try:
        fn()
    except ValueError as err:
        return err
    return None


def _names(err: ValueError | None, *parts: str) -> None:
    assert err is not None, f"expected a ValueError naming {parts}, but the input was accepted"
    msg = str(err)
    for part in parts:
        assert part in msg, f"error does not name {part!r}: {msg}"


# ----------------------------------------------------------------------------------- annotation layouts
# Each layout: dataset, split, {file name: valid bytes}. Three videos, two captions each where the format
# allows.
def _pkl(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=4)


def _tsv(rows: list[list[str]]) -> bytes:
    return "".join("\t".join(r) + "\n" for r in rows).encode()


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


LSMDC_IDS = [f"1001_Movie_{i:02d}.00.00.000-00.00.0{i}.000" for i in range(1, 4)]
LAYOUTS: dict[str, tuple[str, str, dict[str, bytes]]] = {
    "msrvtt_pairs": (
        "msrvtt",
        "test",
        {
            "MSRVTT_JSFUSION_test.csv": _csv(
                [["key", "vid_key", "video_id", "sentence"]]
                + [[f"ret{i}", f"msr{i}", f"video{i}", f"a dog runs {i}"] for i in range(3)]
            )
        },
    ),
    "msrvtt_ids": (
        "msrvtt",
        "train",
        {
            "MSRVTT_train.9k.csv": _csv([["video_id"]] + [[f"video{i}"] for i in range(3)]),
            "MSRVTT_data.json": json.dumps(
                {
                    "sentences": [
                        {"video_id": f"video{i}", "caption": f"cap {i} {j}", "sen_id": 2 * i + j}
                        for i in range(3)
                        for j in range(2)
                    ]
                }
            ).encode(),
        },
    ),
    "msvd": (
        "msvd",
        "test",
        {
            "test_list.txt": b"vid0\nvid1\nvid2\n",
            "raw-captions.pkl": _pkl({f"vid{i}": [["a", "cat", str(j)] for j in range(2)] for i in range(3)}),
        },
    ),
    "activitynet": (
        "activitynet",
        "test",
        {
            "val_1.json": json.dumps(
                {
                    f"v_{i}": {
                        "duration": 12.5,
                        "timestamps": [[0, 5], [5, 12]],
                        "sentences": ["A man.", " He sits."],
                    }
                    for i in range(3)
                }
            ).encode()
        },
    ),
    "didemo": (
        "didemo",
        "test",
        {
            "test_data.json": json.dumps(
                [
                    {"description": f"a dog {j}", "times": [[0, 1]], "video": f"{i}_video.mp4"}
                    for i in range(3)
                    for j in range(2)
                ]
            ).encode()
        },
    ),
    "lsmdc": (
        "lsmdc",
        "test",
        {
            "LSMDC16_challenge_1000_publictect.csv": _tsv(
                [[c, "0", "1", "0", "1", f"Someone walks {i}."] for i, c in enumerate(LSMDC_IDS)]
            )
        },
    ),
    "custom_csv": (
        "custom",
        "train",
        {
            "table.csv": _csv(
                [["video", "caption", "start", "end", "split"]]
                + [[f"v{i}.mp4", f"cap {i}", "", "", "train"] for i in range(3)]
            )
        },
    ),
    "custom_jsonl": (
        "custom",
        "train",
        {
            "table.jsonl": "".join(
                json.dumps(
                    {"video": f"v{i}.mp4", "caption": [f"cap {i}", "more"], "start": i, "end": i + 2.5}
                )
                + "\n"
                for i in range(3)
            ).encode()
        },
    ),
}


def _anno_dir(root: Path, layout: str, files: dict[str, bytes]) -> Path:
    anno = root / layout
    if anno.exists():
        for old in anno.iterdir():
            old.unlink()
    anno.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (anno / name).write_bytes(data)
    return anno


def _build(root: Path, layout: str, files: dict[str, bytes]) -> ValueError | None:
    dataset, split, _ = LAYOUTS[layout]
    anno = _anno_dir(root, layout, files)
    anno_arg = str(anno / "table.jsonl") if layout == "custom_jsonl" else str(anno)
    return _outcome(
        lambda: build_manifest(dataset, anno_arg, str(root / "videos"), split, STORAGE, check_videos=False)
    )


def test_valid_layouts_build(tmp_path: Path) -> None:
    """The baselines the mutations start from are themselves valid."""
    for layout, (_, _, files) in LAYOUTS.items():
        assert _build(tmp_path, layout, files) is None, layout


# Inserted whole: an integer over Python's 4300-digit str limit, deep nesting, a lone surrogate escape, a BOM,
# odd line breaks, JSON's non-finite literals, a quote that never closes.
NASTY = [
    b"1" * 5000,
    b"[" * 5000,
    b'"\\ud800"',
    b"\xef\xbb\xbf",
    b"\r",
    b"\x0b\x1c\xe2\x80\xa8",
    b"NaN",
    b"-Infinity",
    b'"',
    b"\t",
    b"{}",
    b"null",
]


@st.composite
def _garbled(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` truncated, emptied, spliced with random, non-UTF-8 or nasty bytes, a byte flipped, or
    replaced."""
    kind = draw(
        st.sampled_from(["truncate", "empty", "non_utf8", "splice", "nasty", "flip", "replace", "nul"])
    )
    cut = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "nasty":
        return data[:cut] + draw(st.sampled_from(NASTY)) + data[cut + draw(st.integers(0, 3)) :]
    if kind == "truncate":
        return data[:cut]
    if kind == "empty":
        return b""
    if kind == "non_utf8":
        return (
            data[:cut]
            + draw(st.binary(min_size=1, max_size=4).map(lambda b: bytes(x | 0x80 for x in b)))
            + data[cut:]
        )
    if kind == "splice":
        return data[:cut] + draw(st.binary(min_size=1, max_size=24)) + data[cut + draw(st.integers(0, 8)) :]
    if kind == "flip":
        return data[:cut] + bytes([data[cut] ^ draw(st.integers(1, 255))]) + data[cut + 1 :] if data else data
    if kind == "nul":
        return data[:cut] + b"\x00" + data[cut:]
    return draw(st.binary(max_size=64))


def test_garbled_annotation_files_raise_only_value_errors_naming_the_file(tmp_path: Path, faults) -> None:
    faults.inject(
        "bad_input", "annotation files (every dataset) truncated, emptied, non-UTF-8, spliced, replaced"
    )
    for layout, (
        _,
        _,
        valid,
    ) in LAYOUTS.items():  # every nasty snippet in every file, at 3 places: exhaustive
        for name, data in valid.items():
            for snippet in NASTY:
                for cut in (0, len(data) // 2, len(data) - 2):
                    err = _build(tmp_path, layout, {**valid, name: data[:cut] + snippet + data[cut:]})
                    if err is not None:
                        _names(err, str(tmp_path / layout / name))

    @BOUNDED
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        layout = data.draw(st.sampled_from(sorted(LAYOUTS)), label="layout")
        files = dict(LAYOUTS[layout][2])
        name = data.draw(st.sampled_from(sorted(files)), label="file")
        files[name] = data.draw(_garbled(files[name]), label="bytes")
        err = _build(tmp_path, layout, files)
        if err is not None:
            _names(err, str(tmp_path / layout / name))

    run()


# -- wrong types and missing keys in JSON/pickle annotations, with the exact location the error must name ---
def _not(*kinds: str) -> st.SearchStrategy[Any]:
    """JSON-able values of every kind except ``kinds`` (str, list, dict, number, bool, null)."""
    pool = {
        "str": WORDS,
        "list": st.lists(st.integers(), max_size=2),
        "dict": st.just({"x": 1}),
        "number": st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False),
        "bool": st.booleans(),
        "null": st.none(),
    }
    return st.one_of(*(s for k, s in pool.items() if k not in kinds))


MISSING = object()  # delete the key instead of setting it
# Lone surrogates: valid JSON (as \\ud800 escapes) and valid pickles, but not storable as UTF-8 in Parquet.
SURROGATES = st.sampled_from(["\ud800", "a \udfff b", "x\udbff"])


def _bad_field(*valid: str) -> st.SearchStrategy[Any]:
    return st.just(MISSING) | _not(*valid)


@st.composite
def _bad_json_case(draw: st.DrawFn) -> tuple[str, dict[str, bytes], str, str]:
    """(layout, files, file name, location the error must name) with one entry of one file made invalid."""
    layout = draw(st.sampled_from(["activitynet", "didemo", "msrvtt_ids", "custom_jsonl"]))
    i = draw(st.integers(0, 2))
    files = dict(LAYOUTS[layout][2])

    def setfield(entry: dict, key: str, value: Any) -> None:
        if value is MISSING:
            entry.pop(key, None)
        else:
            entry[key] = value

    if layout == "activitynet":
        name, doc = "val_1.json", json.loads(files["val_1.json"])
        key = f"v_{i}"
        field = draw(st.sampled_from(["<entry>", "duration", "sentences", "sentence_item", "surrogate"]))
        if field == "surrogate":
            doc[key]["sentences"][1], loc = draw(SURROGATES), f"[{key!r}]: caption is not valid Unicode"
        elif field == "<entry>":
            doc[key], loc = draw(_not("dict")), f"[{key!r}]"
        elif field == "duration":
            bad = draw(_bad_field("number") | st.sampled_from([float("nan"), float("inf"), -float("inf")]))
            setfield(doc[key], "duration", bad)
            loc = f"[{key!r}].duration"
        elif field == "sentences":
            setfield(doc[key], "sentences", draw(_bad_field("list")))
            loc = f"[{key!r}].sentences"
        else:
            doc[key]["sentences"].insert(draw(st.integers(0, 2)), draw(_not("str")))
            loc = f"[{key!r}].sentences"
    elif layout == "didemo":
        name, doc = "test_data.json", json.loads(files["test_data.json"])
        i = draw(st.integers(0, len(doc) - 1))
        field = draw(st.sampled_from(["<entry>", "video", "description", "surrogate"]))
        if field == "surrogate":
            # a video's descriptions form one paragraph, located at the video's first entry
            doc[i]["description"] = draw(SURROGATES)
            loc = f"[{i - i % 2}].description: caption is not valid Unicode"
        elif field == "<entry>":
            doc[i], loc = draw(_not("dict")), f"[{i}]"
        else:
            bad = draw(_bad_field("str") | (st.just("  ") if field == "video" else st.nothing()))
            setfield(doc[i], field, bad)
            loc = f"[{i}].{field}"
    elif layout == "msrvtt_ids":
        name, doc = "MSRVTT_data.json", json.loads(files["MSRVTT_data.json"])
        i = draw(st.integers(0, len(doc["sentences"]) - 1))
        field = draw(st.sampled_from(["<top>", "<entry>", "video_id", "caption", "surrogate"]))
        if field == "surrogate":
            doc["sentences"][i]["caption"] = draw(SURROGATES)
            loc = f"[sentences][{i}]: caption is not valid Unicode"
        elif field == "<top>":
            setfield(doc, "sentences", draw(_bad_field("list")))
            loc = "'sentences'"
        elif field == "<entry>":
            doc["sentences"][i], loc = draw(_not("dict")), f"[sentences][{i}]"
        else:
            bad = draw(_bad_field("str") | (st.just("") if field == "video_id" else st.nothing()))
            setfield(doc["sentences"][i], field, bad)
            loc = f"[sentences][{i}].{field}"
    else:
        name = "table.jsonl"
        rows = [json.loads(line) for line in files[name].decode().splitlines()]
        field = draw(
            st.sampled_from(
                ["<row>", "video", "caption", "start", "end", "start>=end", "video_id", "split", "surrogate"]
            )
        )
        row = rows[i]
        if field == "surrogate":
            what = draw(st.sampled_from(["video", "caption"]))
            row[what] = draw(SURROGATES) + ".mp4"
            # the id is the file stem
            loc = f":row {i + 1}: {'video id' if what == 'video' else 'caption'} is not valid Unicode"
        elif field == "<row>":
            rows[i], loc = draw(_not("dict")), f":row {i + 1}"
        elif field in ("video", "caption") and draw(st.booleans()):
            del row[field]
            loc = f":row {i + 1}: missing field(s) ['{field}']"
        elif field in ("video", "video_id", "split"):
            valid = ("str", "null") if field != "video" else ("str",)
            setfield(row, field, draw(_not(*valid) | (st.just(" ") if field == "video" else st.nothing())))
            loc = f":row {i + 1}.{field}"
        elif field == "caption":
            row["caption"] = draw(_not("str", "list") | st.lists(_not("str"), min_size=1, max_size=2))
            loc = f":row {i + 1}.caption"
        elif field in ("start", "end"):
            not_seconds = WORDS.filter(lambda s: s not in ("inf", "nan", "infinity"))
            row[field] = draw(
                _not("number", "null", "str")
                | not_seconds
                | st.floats(max_value=-0.001)
                | st.sampled_from(["NaN", "-inf"])
            )
            loc = f":row {i + 1}.{field}"
        else:
            row["start"] = row["end"] + draw(st.sampled_from([0, 0.5, 3]))
            loc = f":row {i + 1}: expected start < end"
        files[name] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        return layout, files, name, loc
    files[name] = json.dumps(doc).encode()
    return layout, files, name, loc


def test_wrong_types_and_missing_keys_in_json_annotations_name_file_and_field(tmp_path: Path, faults) -> None:
    faults.inject(
        "bad_input", "JSON/JSONL annotations with wrong-typed fields, missing keys, non-finite numbers"
    )

    @BOUNDED
    @given(case=_bad_json_case())
    def run(case: tuple[str, dict[str, bytes], str, str]) -> None:
        layout, files, name, loc = case
        _names(
            _build(tmp_path, layout, files),
            str(tmp_path / layout / name) + ("" if loc[0] in "'" else loc),
            loc,
        )

    run()


@st.composite
def _bad_msvd_case(draw: st.DrawFn) -> tuple[bytes, str]:
    """raw-captions.pkl with one entry of a listed video made invalid (or a non-container global pickled)."""
    raw = pickle.loads(LAYOUTS["msvd"][2]["raw-captions.pkl"])
    vid, j = f"vid{draw(st.integers(0, 2))}", draw(st.integers(0, 1))
    kind = draw(st.sampled_from(["top", "entries", "tokens", "global", "huge_int", "surrogate"]))
    non_container = (
        st.integers()
        | st.none()
        | st.booleans()
        | st.binary(max_size=4)
        | st.floats()
        | st.sets(st.integers(), max_size=2)
        | st.dictionaries(WORDS, st.integers(), max_size=2)
    )
    if kind == "top":
        return _pkl(
            draw(st.lists(st.integers(), max_size=2) | st.text(max_size=4) | st.none())
        ), "expected a dict"
    if kind == "entries":
        raw[vid] = draw(non_container)
        return _pkl(raw), f"[{vid!r}]"
    if kind == "tokens":
        raw[vid][j] = draw(
            non_container.filter(lambda v: not isinstance(v, str))
            | st.lists(st.integers() | st.none(), min_size=1, max_size=2)
        )
        return _pkl(raw), f"[{vid!r}][{j}]"
    if kind == "surrogate":
        raw[vid][j] = ["a", draw(SURROGATES)]
        return _pkl(raw), f"[{vid!r}][{j}]: caption is not valid Unicode"
    if kind == "huge_int":  # pickled ints have no digit limit; repr()ing one in a message must not crash
        raw[vid][j] = [10**5000]
        return _pkl(raw), f"[{vid!r}][{j}]"
    raw[vid][j] = draw(
        st.sampled_from([datetime.date(2020, 1, 1), Fraction(1, 3), frozenset({"a"}).__class__])
    )
    return _pkl(raw), "refusing to unpickle global"


def test_wrong_types_in_msvd_pickle_name_file_and_entry(tmp_path: Path, faults) -> None:
    faults.inject("bad_input", "MSVD raw-captions.pkl with wrong-typed entries, globals, huge integers")

    @BOUNDED
    @given(case=_bad_msvd_case())
    def run(case: tuple[bytes, str]) -> None:
        data, loc = case
        files = {**LAYOUTS["msvd"][2], "raw-captions.pkl": data}
        _names(_build(tmp_path, "msvd", files), str(tmp_path / "msvd" / "raw-captions.pkl"), loc)

    run()


@st.composite
def _bad_columns_case(draw: st.DrawFn) -> tuple[str, dict[str, bytes], str, str, bool]:
    """(layout, files, name, row location, must_fail): one row of a CSV/TSV given too many or too few
    fields."""
    layout = draw(st.sampled_from(["msrvtt_pairs", "msrvtt_ids", "custom_csv", "lsmdc"]))
    files = dict(LAYOUTS[layout][2])
    name = next(n for n in files if n.endswith(".csv"))
    sep = "\t" if layout == "lsmdc" else ","
    lines = files[name].decode().splitlines()
    first = 0 if layout == "lsmdc" else 1  # the CSVs have a header line
    i = draw(st.integers(first, len(lines) - 1))
    fields = lines[i].split(sep)
    extra = len(fields) == 1 or draw(st.booleans())
    if extra:
        fields += draw(st.lists(WORDS, min_size=1, max_size=3))
    else:
        fields = fields[: draw(st.integers(1, len(fields) - 1))]
    lines[i] = sep.join(fields)
    files[name] = ("\n".join(lines) + "\n").encode()
    # too many fields: always an error, except LSMDC, whose 6th field (the sentence) may hold tabs;
    # too few: an error where a required field goes missing (custom rows may leave start/end/split out)
    if extra:
        must_fail = layout != "lsmdc"
    else:
        must_fail = layout in ("lsmdc", "msrvtt_pairs") or (layout == "custom_csv" and len(fields) < 2)
    return layout, files, name, f":row {i + 1}", must_fail


def test_csv_and_tsv_rows_with_wrong_column_counts_name_file_and_row(tmp_path: Path, faults) -> None:
    faults.inject("bad_input", "CSV/TSV annotation rows with too many or too few columns")

    @BOUNDED
    @given(case=_bad_columns_case())
    def run(case: tuple[str, dict[str, bytes], str, str, bool]) -> None:
        layout, files, name, loc, must_fail = case
        err = _build(tmp_path, layout, files)
        if must_fail or err is not None:
            _names(err, str(tmp_path / layout / name) + loc)

    run()


# ----------------------------------------------------------------------------------- Parquet manifests
def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


VALID_MANIFEST = pa.table(
    {
        "video_id": ["a", "b"],
        "video_uri": ["/v/a.mp4", "/v/b.mp4"],
        "captions": [["x", "y"], ["z"]],
        "start": [None, 1.0],
        "end": [None, 2.0],
        "split": ["test", "test"],
        "dataset": ["custom", "custom"],
    },
    schema=MANIFEST_SCHEMA,
)


@st.composite
def _bad_manifest(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "drop_column", "retype", "null_id", "duplicate_id"]))
    if kind == "bytes":
        return draw(_garbled(_parquet(VALID_MANIFEST)))
    table = VALID_MANIFEST
    col = draw(st.sampled_from(MANIFEST_SCHEMA.names))
    if kind == "drop_column":
        table = table.drop_columns([col])
    elif kind == "retype":
        new = draw(
            st.sampled_from([pa.int64(), pa.float32(), pa.binary(), pa.list_(pa.int32()), pa.string()])
        )
        if new.equals(MANIFEST_SCHEMA.field(col).type):
            new = pa.null()
        table = table.set_column(table.column_names.index(col), col, pa.nulls(2, new))
    elif kind == "null_id":
        table = table.set_column(0, "video_id", pa.array([None, "b"], pa.string()))
    else:
        table = table.set_column(0, "video_id", pa.array(["a", "a"], pa.string()))
    return _parquet(table)


def test_corrupt_or_mistyped_manifests_raise_value_errors_naming_the_file(tmp_path: Path, faults) -> None:
    faults.inject(
        "bad_input", "Parquet manifests corrupted, truncated, missing columns, wrong types, bad ids"
    )
    path = tmp_path / "manifest.parquet"
    path.write_bytes(_parquet(VALID_MANIFEST))
    assert read_manifest(str(path), STORAGE).equals(VALID_MANIFEST)

    @BOUNDED
    @given(data=_bad_manifest())
    def run(data: bytes) -> None:
        path.write_bytes(data)
        err = _outcome(lambda: read_manifest(str(path), STORAGE))
        if err is not None:
            _names(err, str(path))

    run()


# ----------------------------------------------------------------------------------- config files
def _fields() -> list[tuple[str, str, Any]]:
    """(section, field, type) of every config field."""
    out = []
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        hints = typing.get_type_hints(cls)
        out += [(section.name, f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    return out


FIELDS = _fields()
LETTERS = st.text(string.ascii_letters, min_size=1, max_size=8)  # never a YAML number, so a str stays a str
KINDS: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(),
    "int": st.integers(-100, 100),
    "str": LETTERS,
    "float": st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)),
    "list": st.lists(st.integers(0, 3), min_size=1, max_size=2),
    "dict": st.dictionaries(LETTERS, st.integers(), min_size=1, max_size=2),
}


def _wrong_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values the loader must reject for a field of type ``tp`` (none of them is a lossless conversion)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _wrong_for(inner)
    if origin is Literal:
        return st.one_of(
            *(KINDS[k] for k in ("bool", "int", "float", "list", "dict")),
            LETTERS.filter(lambda s: s not in args),
        )
    if origin is tuple:
        item_wrong = {str: ("int", "bool", "dict"), int: ("str", "bool", "float"), float: ("str", "bool")}[
            args[0]
        ]
        return st.one_of(
            *(KINDS[k] for k in ("bool", "int", "str", "dict")),
            st.lists(st.one_of(*(KINDS[k] for k in item_wrong)), min_size=1, max_size=2),
        )
    accepted = {bool: {"bool"}, int: {"int"}, float: {"int", "float"}, str: {"str"}}[tp]
    return st.one_of(*(s for k, s in KINDS.items() if k not in accepted))


@st.composite
def _wrong_type_config(draw: st.DrawFn) -> tuple[str, str]:
    section, name, tp = draw(st.sampled_from(FIELDS))
    value = draw(_wrong_for(tp))
    text = yaml.safe_dump({section: {name: value}})
    assume(yaml_load(text) == {section: {name: value}})  # the YAML round trip keeps the intended value
    return text, f"{section}.{name}"


def test_config_values_of_the_wrong_type_name_file_and_dotted_key(tmp_path: Path, faults) -> None:
    faults.inject("bad_input", "YAML configs with a wrong-typed value in every field")
    path = tmp_path / "c.yaml"

    @BOUNDED
    @given(case=_wrong_type_config())
    def run(case: tuple[str, str]) -> None:
        text, key = case
        path.write_text(text)
        _names(_outcome(lambda: load_config(path)), f"{path}: {key}", "expected")

    run()


@st.composite
def _unknown_key_config(draw: st.DrawFn) -> tuple[str, str]:
    sections = {s for s, _, _ in FIELDS}
    key = draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=12))
    if draw(st.booleans()) or key in sections:
        section = draw(st.sampled_from(sorted(sections)))
        names = {n for s, n, _ in FIELDS if s == section}
        assume(key not in names)
        return yaml.safe_dump({section: {key: 1}}), f"{section}.{key}"
    return yaml.safe_dump({key: {"a": 1}}), key


def test_unknown_config_keys_name_file_and_dotted_key(tmp_path: Path, faults) -> None:
    faults.inject("bad_input", "YAML configs with unknown sections and unknown keys")
    path = tmp_path / "c.yaml"

    @BOUNDED
    @given(case=_unknown_key_config())
    def run(case: tuple[str, str]) -> None:
        text, key = case
        path.write_text(text)
        _names(_outcome(lambda: load_config(path)), f"{path}: {key}: expected a known key")

    run()


SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
YAML_GARBAGE = st.sampled_from(
    [
        "train: {lr: 2001-13-01}",
        "train: {lr: !!int abc}",
        "train: {lr: !!float x}",
        "[" * 3000,
        f"train: {{lr: {10**400}}}",
        "a: &x [*x, *y]",
        "train: !!python/object:os.system {}",
        "train:\n\tlr: 1",
        "train: {lr: 1e-4, lr: 2}",
        "? [a]\n: 1",
        "train: {epochs: 0x1G}",
        "train: {lr: .nan}",
    ]
)


@st.composite
def _garbled_config(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["shipped", "garbage", "text"]))
    if kind == "garbage":
        return draw(YAML_GARBAGE).encode()
    if kind == "text":
        return draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
    return draw(_garbled(draw(st.sampled_from(SHIPPED)).read_bytes()))


def test_garbled_config_files_raise_value_errors_naming_the_file(tmp_path: Path, faults) -> None:
    faults.inject(
        "bad_input", "config files truncated, non-UTF-8, invalid YAML, bad tags, huge numbers, deep nesting"
    )
    path = tmp_path / "c.yaml"

    @BOUNDED
    @given(data=_garbled_config())
    def run(data: bytes) -> None:
        path.write_bytes(data)
        err = _outcome(lambda: load_config(path))
        if err is not None:
            _names(err, str(path))

    run()


SEGMENTS = (
    st.sampled_from(sorted({s for s, _, _ in FIELDS} | {n for _, n, _ in FIELDS}))
    | WORDS
    | st.sampled_from(["", " ", "train ", "[0]", "x.y"])
)
OVERRIDE_VALUES = st.sampled_from(
    [
        "1",
        "1e-4",
        "abc",
        "true",
        "null",
        "[1, 2]",
        "{lr: abc}",
        "{nope: 1}",
        "[",
        "2001-13-01",
        "!!int x",
        "\x07",
        "[" * 2000,
        "'unterminated",
        str(10**400),
        "{a: {b: {c: 1}}}",
        "- 1",
        "a: b: c",
    ]
) | st.text(max_size=12)


@st.composite
def _override(draw: st.DrawFn) -> str:
    key = ".".join(draw(st.lists(SEGMENTS, min_size=1, max_size=4)))
    value = draw(OVERRIDE_VALUES)
    return key if draw(st.integers(0, 9)) == 0 else f"{key}={value}"


def test_bad_dotted_overrides_raise_value_errors_naming_the_override(tmp_path: Path, faults) -> None:
    faults.inject(
        "bad_input", "dotted overrides with unknown keys, keys below scalars, wrong types, invalid YAML"
    )
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  epochs: 2\n")

    @BOUNDED
    @given(override=_override())
    def run(override: str) -> None:
        err = _outcome(lambda: load_config(path, [override]))
        if err is not None:
            msg = str(err)
            key = override.split("=", 1)[0].strip()
            assert "override" in msg, f"{override!r}: {msg}"
            first = key.split(".")[0]  # odd keys ('', ' x') are quoted in messages
            shown = first if first and first.strip() == first else repr(first)
            masked = f"{key}=***"  # the value of an override that sets a credential is never repeated
            assert repr(override) in msg or shown in msg or masked in msg, f"{override!r}: {msg}"

    run()


@pytest.mark.parametrize("override", ["train={lr: abc}", "eval.splits=[test, 3]", "train.nope.deeper=1"])
def test_an_override_error_says_it_came_from_the_override(override: str) -> None:
    """The dotted key in error may be below or above the override's key; either way it is blamed, not the
    file."""
    with pytest.raises(ValueError, match=r"\(override") as e:
        load_config(None, [override])
    assert re.search(r"train\.lr|eval\.splits\[1\]|train\.nope", str(e.value))
