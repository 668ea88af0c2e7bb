"""What `vidret index` reads: custom tables with only a video column, Parquet manifests, bad rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from vidret.data.annotations.manifest import write_manifest
from vidret.search.inputs import read_videos, split_rows_of
from vidret.storage import Storage


def test_csv_with_only_a_video_column(tmp_path: Path) -> None:
    table = tmp_path / "lib" / "videos.csv"
    table.parent.mkdir()
    table.write_text("video\nclips/a.mp4\n/abs/b.mkv\ns3://bucket/c.webm\nclips/a.mp4\n")
    rows = read_videos(str(table), Storage())
    assert [(r["video_id"], r["video_uri"]) for r in rows] == [
        ("a", f"{tmp_path}/lib/clips/a.mp4"),
        ("b", "/abs/b.mkv"),
        ("c", "s3://bucket/c.webm"),
    ]
    split = split_rows_of(rows)
    assert split.num_videos == 3
    assert split.table.column("caption").to_pylist() == ["", "", ""]
    assert split.table.column("video_index").to_pylist() == [0, 1, 2]


def test_jsonl_with_ids_and_segments(tmp_path: Path) -> None:
    table = tmp_path / "v.jsonl"
    table.write_text(
        '{"video": "x.mp4", "start": 1, "end": 2.5}\n\n{"video": "x.mp4", "video_id": "whole"}\n'
    )
    rows = read_videos(str(table), Storage())
    assert [(r["video_id"], r["start"], r["end"]) for r in rows] == [
        ("x@1-2.5", 1.0, 2.5),
        ("whole", None, None),
    ]


@pytest.mark.parametrize(("text", "match"), [
    ("name\nx.mp4\n", r"missing column\(s\) \['video'\]"),
    ("video\n\n", r"no video rows"),
    ("video,start,end\nx.mp4,3,1\n", r"row 2: expected start < end"),
    ("video,start\nx.mp4,soon\n", r"row 2.start: expected seconds"),
])  # fmt: skip
def test_bad_csv_rows_are_named(tmp_path: Path, text: str, match: str) -> None:
    table = tmp_path / "t.csv"
    table.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_videos(str(table), Storage())


def test_unknown_suffix_and_bad_jsonl(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected a Parquet manifest"):
        read_videos(str(tmp_path / "list.txt"), Storage())
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"video": "a.mp4"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"t.jsonl:line 2: expected a JSON object"):
        read_videos(str(bad), Storage())


def test_parquet_manifest_every_split_or_one(tmp_path: Path) -> None:
    table = pa.table(
        {
            "video_id": ["a", "b", "c"],
            "video_uri": ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"],
            "captions": [["x"], [], ["y", "z"]],
            "start": [None, None, 1.0],
            "end": [None, None, 2.0],
            "split": ["train", "test", "test"],
            "dataset": ["custom"] * 3,
        }
    )
    uri = str(tmp_path / "m.parquet")
    write_manifest(table, uri, Storage())
    assert [r["video_id"] for r in read_videos(uri, Storage())] == ["a", "b", "c"]
    assert [r["video_id"] for r in read_videos(uri, Storage(), split="test")] == ["b", "c"]
    with pytest.raises(ValueError, match=r"no rows of split 'val'"):
        read_videos(uri, Storage(), split="val")
