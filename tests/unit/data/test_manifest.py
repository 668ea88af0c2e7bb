"""Annotation readers -> Parquet manifest: every format, the report, malformed input, Parquet and S3 round
trips."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidret.config import StorageConfig
from vidret.data.annotations.formats import lsmdc_movie, read_msrvtt_split_ids
from vidret.data.annotations.manifest import MANIFEST_SCHEMA, build_manifest, read_manifest, write_manifest
from vidret.data.annotations.records import safe_unpickle
from vidret.storage import Storage

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "annotations"


@pytest.fixture
def storage() -> Storage:
    return Storage(StorageConfig())


def _anns(tmp_path: Path, name: str) -> Path:
    """Copy a fixture annotation directory into tmp_path (tests never touch the repo's fixtures)."""
    dst = tmp_path / "anns"
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _videos(tmp_path: Path, names: list[str]) -> Path:
    root = tmp_path / "videos"
    root.mkdir(exist_ok=True)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def _rows(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in table.to_pylist()}


# --- MSR-VTT (real split files) and the synthetic layout ---------------------------------------------------


def test_msrvtt_real_1ka_test_split(shared_dir: Path, tmp_path: Path, storage: Storage) -> None:
    src = shared_dir / "data" / "msrvtt" / "MSRVTT_JSFUSION_test.csv"
    anns = tmp_path / "anns"
    anns.mkdir()
    shutil.copy(src, anns)
    with open(src, newline="") as f:
        expected = {r["video_id"]: r["sentence"].strip() for r in csv.DictReader(f)}
    videos = _videos(tmp_path, [f"{v}.mp4" for v in expected])
    for split in ("test", "val"):
        result = build_manifest("msrvtt", str(anns), str(videos), split, storage)
        table = result.table
        assert table.num_rows == 1000
        assert len(set(table.column("video_id").to_pylist())) == 1000
        rows = _rows(table)
        assert {v: r["captions"] for v, r in rows.items()} == {v: [s] for v, s in expected.items()}
        assert rows["video9770"]["video_uri"] == str(videos / "video9770.mp4")
        assert set(table.column("split").to_pylist()) == {split}
        assert result.report.counts()["missing_videos"] == 0
        assert result.report.videos_listed == 1000


def test_msrvtt_real_train_ids_and_missing_json(shared_dir: Path, tmp_path: Path, storage: Storage) -> None:
    src = shared_dir / "data" / "msrvtt" / "MSRVTT_train.9k.csv"
    ids = read_msrvtt_split_ids(str(src), storage)
    assert len(ids) == 9000
    assert len(set(ids)) == 9000
    assert ids[0] == "video0"
    anns = tmp_path / "anns"
    anns.mkdir()
    shutil.copy(src, anns)
    with pytest.raises(ValueError, match=r"MSRVTT_data\.json.*does not exist"):
        build_manifest("msrvtt", str(anns), str(tmp_path / "videos"), "train", storage, check_videos=False)
    with pytest.raises(ValueError, match=r"MSRVTT_train\.7k\.csv"):
        build_manifest("msrvtt", str(anns), str(tmp_path / "videos"), "train7k", storage, check_videos=False)


def test_msrvtt_train_gets_all_json_captions(shared_dir: Path, tmp_path: Path, storage: Storage) -> None:
    anns = tmp_path / "anns"
    anns.mkdir()
    shutil.copy(shared_dir / "data" / "msrvtt" / "MSRVTT_train.9k.csv", anns)
    ids = read_msrvtt_split_ids(str(anns / "MSRVTT_train.9k.csv"), storage)
    # Captions for every train id (3 for even ids, 2 for odd) plus a test video that must not appear.
    sentences = [
        {"video_id": v, "caption": f"clip {v} caption {k}", "sen_id": n}
        for n, (v, k) in enumerate((v, k) for v in ids for k in range(3 - int(v[5:]) % 2))
    ]
    sentences.append({"video_id": "video9770", "caption": "a test video", "sen_id": -1})
    (anns / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    result = build_manifest(
        "msrvtt", str(anns), str(tmp_path / "videos"), "train", storage, check_videos=False
    )
    rows = _rows(result.table)
    assert result.table.num_rows == 9000
    assert "video9770" not in rows
    assert rows["video0"]["captions"] == [f"clip video0 caption {k}" for k in range(3)]
    assert rows["video1"]["captions"] == [f"clip video1 caption {k}" for k in range(2)]
    assert result.report.captions == len(sentences) - 1
    assert rows["video5"]["video_uri"] == str(tmp_path / "videos" / "video5.mp4")


def test_synthetic_layout_reads_through_msrvtt_reader(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "synthetic")
    videos = _videos(tmp_path, ["syn00000.mp4", "syn00002.mp4", "syn00003.mp4"])  # syn00001 missing
    train = build_manifest("synthetic", str(anns), str(videos), "train", storage)
    assert train.table.column("video_id").to_pylist() == ["syn00000"]
    assert train.table.column("captions").to_pylist() == [
        ["a red circle moves left", "a red disc slides to the left"]
    ]
    assert [m["video_id"] for m in train.report.missing_videos] == ["syn00001"]
    assert train.report.missing_videos[0]["expected"] == str(videos / "syn00001.mp4")
    for split, vid, cap in (
        ("test", "syn00002", "a green triangle spins"),
        ("ood", "syn00003", "a yellow star fades"),
    ):
        table = build_manifest("synthetic", str(anns), str(videos), split, storage).table
        assert table.to_pylist() == [
            {
                "video_id": vid,
                "video_uri": str(videos / f"{vid}.mp4"),
                "captions": [cap],
                "start": None,
                "end": None,
                "split": split,
                "dataset": "synthetic",
            }
        ]
    assert build_manifest("synthetic", str(anns), str(videos), "val", storage).table.num_rows == 0
    # The split -> file mapping can be overridden: read the ood pairs under the split name "heldout".
    other = build_manifest(
        "synthetic", str(anns), str(videos), "heldout", storage, split_files={"heldout": "ood.csv"}
    )
    assert other.table.column("video_id").to_pylist() == ["syn00003"]


def test_relative_and_file_uri_locations(
    tmp_path: Path, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    anns = _anns(tmp_path, "synthetic")
    videos = _videos(tmp_path, ["syn00002.mp4"])
    monkeypatch.chdir(tmp_path)
    # A relative videos directory is stored absolute: Ray workers read the manifest from other directories.
    rel = build_manifest("synthetic", "anns", "videos", "test", storage)
    assert rel.table.column("video_uri").to_pylist() == [str(videos / "syn00002.mp4")]
    uri = build_manifest("synthetic", f"file://{anns}", f"file://{videos}", "test", storage)
    assert uri.table.column("video_uri").to_pylist() == [f"file://{videos}/syn00002.mp4"]
    assert uri.report.missing_videos == []


# --- MSVD and the restricted unpickler --------------------------------------------------------------------


def test_msvd_pickle_captions_and_video_stems(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "msvd")
    raw = {
        "-4wsuPCjDBc_5_15": [["a", "man", "plays", "guitar"], ["someone", "is", "playing"], []],
        "-8y1Q0rA3n8_95_102": [["a", "cat", "jumps"]],
        "0lh_UWF9ZP4_62_69": [["a", "woman", "slices", "onion"], ["cooking"]],
        "unused_1_2": [["not", "listed"]],
    }
    (anns / "raw-captions.pkl").write_bytes(pickle.dumps(raw))
    videos = _videos(tmp_path, ["-4wsuPCjDBc_5_15.avi", "-7KMZQEsJW4_205_208.avi", "0lh_UWF9ZP4_62_69.mp4"])
    train = build_manifest("msvd", str(anns), str(videos), "train", storage)
    rows = _rows(train.table)
    # -7KMZQEsJW4_205_208 is listed but has no captions: reported and dropped.
    assert list(rows) == ["-4wsuPCjDBc_5_15"]
    assert rows["-4wsuPCjDBc_5_15"]["captions"] == ["a man plays guitar", "someone is playing"]
    assert rows["-4wsuPCjDBc_5_15"]["video_uri"].endswith("-4wsuPCjDBc_5_15.avi")
    assert [e["video_id"] for e in train.report.empty_captions] == ["-4wsuPCjDBc_5_15"]
    assert "[2]" in train.report.empty_captions[0]["where"]
    assert [e["video_id"] for e in train.report.no_captions] == ["-7KMZQEsJW4_205_208"]
    test = build_manifest("msvd", str(anns), str(videos), "test", storage)
    assert test.table.column("video_id").to_pylist() == ["0lh_UWF9ZP4_62_69"]  # found as .mp4 by stem
    assert test.table.column("video_uri").to_pylist() == [str(videos / "0lh_UWF9ZP4_62_69.mp4")]
    assert [m["video_id"] for m in test.report.missing_videos] == ["-8y1Q0rA3n8_95_102"]


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.target,))


def test_restricted_unpickler_refuses_classes(tmp_path: Path, storage: Storage) -> None:
    target = tmp_path / "should_not_exist"
    with pytest.raises(ValueError, match=r"evil\.pkl.*refusing to unpickle global (posix|os)\.mkdir"):
        safe_unpickle(pickle.dumps({"x": _Payload(str(target))}), "evil.pkl")
    assert not target.exists()
    with pytest.raises(ValueError, match=r"collections\.OrderedDict"):
        safe_unpickle(pickle.dumps(OrderedDict(a=[["b"]])), "od.pkl")
    with pytest.raises(ValueError, match=r"trunc\.pkl"):
        safe_unpickle(pickle.dumps({"a": [["b"]]})[:-3], "trunc.pkl")
    assert safe_unpickle(pickle.dumps({"a": [("b", "c")]}, protocol=2), "ok.pkl") == {"a": [("b", "c")]}
    anns = _anns(tmp_path, "msvd")
    (anns / "raw-captions.pkl").write_bytes(pickle.dumps({"-4wsuPCjDBc_5_15": [_Payload(str(target))]}))
    with pytest.raises(ValueError, match=r"raw-captions\.pkl"):
        build_manifest("msvd", str(anns), str(tmp_path), "train", storage, check_videos=False)
    assert not target.exists()


# --- ActivityNet, DiDeMo, LSMDC ----------------------------------------------------------------------------


def test_activitynet_paragraphs_and_prefix_matching(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "activitynet")
    videos = _videos(tmp_path, ["QOlSCBRmfWY.mp4", "v_ehGHCYKzyZ8.mkv", "uqiMw7tQ1Cc.webm"])
    train = build_manifest("activitynet", str(anns), str(videos), "train", storage)
    rows = _rows(train.table)
    raw = json.loads((anns / "train.json").read_text())
    for key, entry in raw.items():
        assert rows[key]["captions"] == [" ".join(s.strip() for s in entry["sentences"])]
        assert (rows[key]["start"], rows[key]["end"]) == (0.0, float(math.ceil(entry["duration"])))
    assert rows["v_QOlSCBRmfWY"]["video_uri"] == str(videos / "QOlSCBRmfWY.mp4")
    assert rows["v_ehGHCYKzyZ8"]["video_uri"] == str(videos / "v_ehGHCYKzyZ8.mkv")
    for split in ("val", "test"):  # test = val_1, as upstream
        val = build_manifest("activitynet", str(anns), str(videos), split, storage)
        assert val.table.column("video_id").to_pylist() == ["v_uqiMw7tQ1Cc"]
        assert [e["video_id"] for e in val.report.empty_captions] == ["v_bXdq2zI1Ms0"]


def test_didemo_paragraph_per_video(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "didemo")
    videos = _videos(
        tmp_path, ["10015567@N08_3655084291_d8b8f1fbfa.mp4", "12090392@N02_13482799053_87ef417396.avi"]
    )
    result = build_manifest("didemo", str(anns), str(videos), "test", storage)
    rows = _rows(result.table)
    assert list(rows) == ["10015567@N08_3655084291_d8b8f1fbfa", "12090392@N02_13482799053_87ef417396"]
    first = rows["10015567@N08_3655084291_d8b8f1fbfa"]
    assert first["captions"] == ["the man in the red shirt starts to dance the dancer bows"]
    assert (first["start"], first["end"]) == (0.0, 31.0)
    assert first["video_uri"] == str(videos / "10015567@N08_3655084291_d8b8f1fbfa.mp4")  # .mov converted
    assert rows["12090392@N02_13482799053_87ef417396"]["captions"] == ["camera pans to the crowd"]
    with pytest.raises(ValueError, match=r"didemo: unknown split 'valid'"):
        build_manifest("didemo", str(anns), str(videos), "valid", storage)


def test_lsmdc_clips(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "lsmdc")
    clip = "0001_American_Beauty_00.00.51.926-00.00.54.129"
    assert lsmdc_movie(clip) == "0001_American_Beauty"
    assert lsmdc_movie("no_timestamps") is None
    videos = _videos(
        tmp_path,
        [
            f"0001_American_Beauty/{clip}.avi",
            "0001_American_Beauty_00.00.56.001-00.00.58.312.mp4",
            "1027_Les_Miserables/1027_Les_Miserables_00.10.02.311-00.10.05.012.avi",
        ],
    )
    train = build_manifest("lsmdc", str(anns), str(videos), "train", storage)
    rows = _rows(train.table)
    assert rows[clip] == {
        "video_id": clip,
        "video_uri": str(videos / "0001_American_Beauty" / f"{clip}.avi"),
        "captions": ["SOMEONE is looking at a white plastic bag."],
        "start": None,
        "end": None,
        "split": "train",
        "dataset": "lsmdc",
    }
    assert rows["0001_American_Beauty_00.00.56.001-00.00.58.312"]["video_uri"].endswith("58.312.mp4")
    assert [m["video_id"] for m in train.report.missing_videos] == ["1004_Juno_00.02.01.100-00.02.04.000"]
    assert build_manifest("lsmdc", str(anns), str(videos), "val", storage).table.num_rows == 1
    test = build_manifest("lsmdc", str(anns), str(videos), "test", storage, check_videos=False)
    assert test.table.column("video_uri").to_pylist()[1] == str(
        videos / "3001_21_JUMP_STREET" / "3001_21_JUMP_STREET_00.01.02.000-00.01.04.500.avi"
    )


# --- custom CSV / JSONL ------------------------------------------------------------------------------------


def test_custom_csv_groups_rows_and_filters_split(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "custom")
    videos = _videos(tmp_path, ["cooking/pasta.mp4", "sports/goal.mp4"])
    train = build_manifest("custom", str(anns / "anns.csv"), str(videos), "train", storage)
    assert train.table.select(["video_id", "captions", "start", "end"]).to_pylist() == [
        {
            "video_id": "cooking/pasta.mp4",  # the path relative to the videos folder, extension included
            "captions": ["a person boils pasta", "someone drains noodles in a sink"],
            "start": None,
            "end": None,
        },
        {
            "video_id": "cooking/pasta.mp4@10-20.5",
            "captions": ["pasta is served"],
            "start": 10.0,
            "end": 20.5,
        },
    ]
    assert set(train.table.column("video_uri").to_pylist()) == {str(videos / "cooking" / "pasta.mp4")}
    # The train row of goal.mp4 has an empty caption: reported with its row, and the video has none left.
    assert train.report.empty_captions == [
        {"video_id": "sports/goal.mp4", "where": f"{anns / 'anns.csv'}:row 6"}
    ]
    assert [e["video_id"] for e in train.report.no_captions] == ["sports/goal.mp4"]
    test = build_manifest("custom", str(anns / "anns.csv"), str(videos), "test", storage)
    assert test.table.column("captions").to_pylist() == [["a player scores a goal"]]


def test_custom_jsonl_ids_and_absolute_paths(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "custom")
    (anns / "anns.csv").unlink()  # the directory now holds exactly one table: the jsonl
    videos = _videos(tmp_path, ["cooking/pasta.mp4"])
    train = build_manifest("custom", str(anns), str(videos), "train", storage)
    rows = _rows(train.table)
    assert rows["pasta"]["captions"] == ["a person boils pasta", "someone drains noodles in a sink"]
    assert rows["cooking/pasta.mp4@10-20.5"]["start"] == 10.0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.mp4").write_bytes(b"")
    lines = [
        {"video": str(elsewhere / "x.mp4"), "caption": "found"},
        {"video": str(elsewhere / "y.mp4"), "caption": "lost"},
    ]
    (anns / "anns.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    result = build_manifest("custom", str(anns), "", "any", storage)
    assert result.table.column("video_uri").to_pylist() == [str(elsewhere / "x.mp4")]
    assert result.report.missing_videos == [
        {"video_id": str(elsewhere / "y.mp4"), "expected": str(elsewhere / "y.mp4")}
    ]


# --- report: listing once, missing, duplicates, empty captions ---------------------------------------------


class _CountingStorage:
    """Wraps Storage, counting list/exists calls (the manifest must list the videos directory once)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ("list", "exists"):
            return attr

        def counted(uri: str, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, uri))
            return attr(uri, *args, **kwargs)

        return counted


def test_missing_videos_listed_once_keep_or_drop(tmp_path: Path, storage: Storage) -> None:
    anns = tmp_path / "anns"
    anns.mkdir()
    ids = [f"video{i}" for i in range(50)]
    (anns / "test.csv").write_text(
        "key,vid_key,video_id,sentence\n"
        + "".join(f"ret{i},msr{i},{v},caption {i}\n" for i, v in enumerate(ids))
    )
    videos = _videos(tmp_path, [f"{v}.mp4" for v in ids[::2]])
    counting = _CountingStorage(storage)
    result = build_manifest("synthetic", str(anns), str(videos), "test", counting)  # type: ignore[arg-type]
    video_calls = [c for c in counting.calls if str(videos) in c[1]]
    assert video_calls == [("list", str(videos))]
    assert result.table.column("video_id").to_pylist() == ids[::2]
    assert [m["video_id"] for m in result.report.missing_videos] == ids[1::2]
    kept = build_manifest("synthetic", str(anns), str(videos), "test", storage, on_missing="keep")
    assert kept.table.num_rows == 50
    assert len(kept.report.missing_videos) == 25
    assert kept.table.column("video_uri").to_pylist()[1] == str(videos / "video1.mp4")
    report = json.loads(json.dumps(result.report.to_dict()))
    assert report["counts"]["missing_videos"] == 25
    assert report["counts"]["rows"] == 25
    assert "missing_videos: video_id=video1" in result.report.format_text(limit=3)
    assert "... 22 more" in result.report.format_text(limit=3)


def test_duplicate_ids_and_empty_captions_reported(tmp_path: Path, storage: Storage) -> None:
    anns = tmp_path / "anns"
    anns.mkdir()
    (anns / "test.csv").write_text(
        "key,vid_key,video_id,sentence\n"
        "ret0,msr1,video1,a dog runs\n"
        "ret1,msr2,video2,  \n"
        "ret2,msr1,video1,a dog is running\n"
        "ret3,msr1,video1,a dog runs\n"
    )
    result = build_manifest("synthetic", str(anns), str(tmp_path / "v"), "test", storage, check_videos=False)
    assert result.table.column("captions").to_pylist() == [["a dog runs", "a dog is running"]]
    csv_uri = str(anns / "test.csv")
    assert result.report.empty_captions == [{"video_id": "video2", "where": f"{csv_uri}:row 3"}]
    assert [(d["where"], d["action"]) for d in result.report.duplicate_ids] == [
        (f"{csv_uri}:row 4", "merged"),
        (f"{csv_uri}:row 5", "merged"),
    ]
    # Same id naming a different file: an error naming both rows, unless keep-first is asked for.
    dup = anns / "dup.jsonl"
    dup.write_text(
        json.dumps({"video": "a.mp4", "caption": "first", "video_id": "x"})
        + "\n"
        + json.dumps({"video": "b.mp4", "caption": "second", "video_id": "x"})
        + "\n"
    )
    with pytest.raises(ValueError, match="video_id 'x' names two different videos") as info:
        build_manifest("custom", str(dup), str(tmp_path / "v"), "s", storage, check_videos=False)
    assert f"{dup}:row 1 (a.mp4)" in str(info.value)
    assert f"{dup}:row 2 (b.mp4)" in str(info.value)
    custom = build_manifest(
        "custom", str(dup), str(tmp_path / "v"), "s", storage, check_videos=False, on_duplicate="keep-first"
    )
    assert custom.table.column("video_uri").to_pylist() == [str(tmp_path / "v" / "a.mp4")]
    assert custom.report.duplicate_ids[0]["action"] == "dropped"
    assert custom.report.counts()["dropped_rows"] == 1
    assert "0 duplicate rows merged, 1 dropped" in custom.report.format_text()


def _colliding_stems(tmp_path: Path) -> tuple[Path, Path]:
    """A custom CSV whose videos share a stem across extensions and folders."""
    names = ["sample.mp4", "sample.avi", "sample.flv", "a/clip.mp4", "b/clip.mp4"]
    videos = _videos(tmp_path, names)
    table = tmp_path / "anns.csv"
    table.write_text("video,caption\n" + "".join(f"{n},caption of {n}\n" for n in names))
    return table, videos


def test_colliding_stems_get_distinct_path_ids(tmp_path: Path, storage: Storage) -> None:
    table, videos = _colliding_stems(tmp_path)
    result = build_manifest("custom", str(table), str(videos), "any", storage)
    assert result.table.column("video_id").to_pylist() == [
        "sample.mp4",
        "sample.avi",
        "sample.flv",
        "a/clip.mp4",
        "b/clip.mp4",
    ]
    assert result.report.duplicate_ids == []
    # absolute paths under the videos folder get the same relative ids
    (tmp_path / "abs.csv").write_text(f"video,caption\n{videos / 'a' / 'clip.mp4'},x\n")
    absolute = build_manifest("custom", str(tmp_path / "abs.csv"), str(videos), "any", storage)
    assert absolute.table.column("video_id").to_pylist() == ["a/clip.mp4"]


def test_stem_ids_colliding_across_extensions_fail_by_default(tmp_path: Path, storage: Storage) -> None:
    # DiDeMo ids are file names without extension: two files with one stem must not collapse silently
    anns = tmp_path / "didemo"
    anns.mkdir()
    items = [{"video": v, "description": f"d {v}", "times": [[0, 1]]} for v in ("x.mp4", "x.avi", "y.mp4")]
    (anns / "train_data.json").write_text(json.dumps(items))
    videos = _videos(tmp_path, ["x.mp4", "x.avi", "y.mp4"])
    with pytest.raises(ValueError, match="video_id 'x' names two different videos"):
        build_manifest("didemo", str(anns), str(videos), "train", storage)
    kept = build_manifest("didemo", str(anns), str(videos), "train", storage, on_duplicate="keep-first")
    assert kept.table.column("video_id").to_pylist() == ["x", "y"]
    assert [(d["video"], d["first_video"], d["action"]) for d in kept.report.duplicate_ids] == [
        ("x.avi", "x.mp4", "dropped")
    ]


# --- malformed input -> ValueError naming file and row/field ------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "split", "name", "content", "pattern"),
    [
        (
            "activitynet",
            "train",
            "train.json",
            '{"v_a": {"duration": 3, "sentences": ["x"]',
            r"train\.json: invalid JSON",
        ),
        (
            "activitynet",
            "train",
            "train.json",
            '{"v_a": {"duration": "3", "sentences": ["x"]}}',
            r"train\.json\['v_a'\]\.duration: expected a finite number",
        ),
        (
            "didemo",
            "test",
            "test_data.json",
            '[{"description": "ok", "video": "a.mp4"}, {"description": 5, "video": "b"}]',
            r"test_data\.json\[1\]\.description: expected a string",
        ),
        (
            "synthetic",
            "test",
            "test.csv",
            "key,vid_key,sentence\nr,m,s\n",
            r"test\.csv: missing column\(s\) \['video_id'\]",
        ),
        (
            "synthetic",
            "test",
            "test.csv",
            "key,vid_key,video_id,sentence\nr,m,v,s,extra\n",
            r"test\.csv:row 2: 5 fields",
        ),
        ("synthetic", "train", "train.csv", 'video_id\nvideo0\n\n""\n', r"train\.csv:row 4: empty video_id"),
        (
            "lsmdc",
            "val",
            "LSMDC16_annos_val.csv",
            "clip_a\t1\t2\t3\t4\tok\nclip_b\t1\t2\tno sentence\n",
            r"LSMDC16_annos_val\.csv:row 2: expected 6 tab-separated fields",
        ),
        (
            "custom",
            "train",
            "t.csv",
            "video,caption,start\na.mp4,hi,abc\n",
            r"t\.csv:row 2\.start: expected seconds",
        ),
        (
            "custom",
            "train",
            "t.csv",
            "video,caption,start,end\na.mp4,hi,5,2\n",
            r"t\.csv:row 2: expected start < end",
        ),
        (
            "custom",
            "train",
            "t.jsonl",
            '{"video": "a.mp4", "caption": "ok"}\n{"video": "b.mp4"}\n',
            r"t\.jsonl:row 2: missing field\(s\) \['caption'\]",
        ),
        (
            "custom",
            "train",
            "t.jsonl",
            '{"video": "a.mp4", "caption": 3}\n',
            r"t\.jsonl:row 1\.caption: expected a string",
        ),
    ],
)
def test_malformed_annotations_raise_value_error(
    tmp_path: Path, storage: Storage, dataset: str, split: str, name: str, content: str, pattern: str
) -> None:
    anns = tmp_path / "anns"
    anns.mkdir()
    (anns / name).write_text(content)
    (anns / "MSRVTT_data.json").write_text('{"sentences": []}')
    anno = str(anns / name) if dataset == "custom" else str(anns)
    with pytest.raises(ValueError, match=pattern):
        build_manifest(dataset, anno, str(tmp_path / "v"), split, storage, check_videos=False)


def test_bad_arguments_and_pickles(tmp_path: Path, storage: Storage) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'kinetics'"):
        build_manifest("kinetics", str(tmp_path), str(tmp_path), "test", storage)
    with pytest.raises(ValueError, match=r"msrvtt: unknown split 'dev'"):
        build_manifest("msrvtt", str(tmp_path), str(tmp_path), "dev", storage)
    anns = _anns(tmp_path, "msvd")
    (anns / "raw-captions.pkl").write_bytes(pickle.dumps([["a", "b"]]))
    with pytest.raises(ValueError, match=r"raw-captions\.pkl: expected a dict"):
        build_manifest("msvd", str(anns), str(tmp_path), "train", storage, check_videos=False)
    (anns / "raw-captions.pkl").write_bytes(pickle.dumps({"-4wsuPCjDBc_5_15": [["a", 3]]}))
    with pytest.raises(
        ValueError, match=r"raw-captions\.pkl\['-4wsuPCjDBc_5_15'\]\[0\]: expected a list of string"
    ):
        build_manifest("msvd", str(anns), str(tmp_path), "train", storage, check_videos=False)


# --- Parquet -----------------------------------------------------------------------------------------------


def test_parquet_round_trip_exact_schema(tmp_path: Path, storage: Storage) -> None:
    anns = _anns(tmp_path, "custom")
    result = build_manifest(
        "custom", str(anns / "anns.csv"), str(tmp_path / "v"), "train", storage, check_videos=False
    )
    out = tmp_path / "out" / "manifest.parquet"
    write_manifest(result, str(out), storage)
    assert pq.read_schema(out).equals(MANIFEST_SCHEMA)
    table = read_manifest(str(out), storage)
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.equals(result.table)
    assert table.column("start").to_pylist() == [None, 10.0]
    bad = result.table.drop_columns(["captions"])
    with pytest.raises(ValueError, match=r"manifest column 'captions' is missing"):
        write_manifest(bad, str(tmp_path / "bad.parquet"), storage)
    wrong = result.table.set_column(3, "start", pa.array(["0", "1"]))
    with pytest.raises(ValueError, match=r"column 'start' has type string, expected double"):
        write_manifest(wrong, str(tmp_path / "bad.parquet"), storage)
    assert not (tmp_path / "bad.parquet").exists()
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a readable Parquet manifest"):
        read_manifest(str(tmp_path / "junk.parquet"), storage)


@pytest.mark.s3
def test_s3_round_trip(s3_bucket: tuple[StorageConfig, str]) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    for path in sorted((FIXTURES / "lsmdc").iterdir()):
        st.write_bytes(f"{bucket}/anns/{path.name}", path.read_bytes())
    clip = "0001_American_Beauty_00.00.51.926-00.00.54.129"
    st.write_bytes(f"{bucket}/videos/0001_American_Beauty/{clip}.avi", b"")
    result = build_manifest("lsmdc", f"{bucket}/anns", f"{bucket}/videos", "train", st)
    assert result.table.column("video_uri").to_pylist() == [
        f"{bucket}/videos/0001_American_Beauty/{clip}.avi"
    ]
    assert result.report.counts()["missing_videos"] == 2
    write_manifest(result, f"{bucket}/manifests/train.parquet", st)
    table = read_manifest(f"{bucket}/manifests/train.parquet", st)
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.equals(result.table)
