"""The index's files: round trip, digests, and clear errors for missing, foreign or corrupt indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vidret.search import layout
from vidret.storage import Storage


def _part(n: int = 3, f: int = 4, d: int = 8) -> layout.PartData:
    rng = np.random.default_rng(0)
    offsets, blob = layout.thumbs_to_arrays([b"jpeg-%d" % i for i in range(n)])
    return layout.PartData(
        arrays={
            "video": rng.normal(size=(n, f, d)).astype(np.float16),
            "video_mask": np.ones((n, f), np.uint8),
            "video_weight": np.full((n, f), 1 / f, np.float32),
            "thumb_offsets": offsets,
            "thumbs": blob,
        },
        pooled=rng.normal(size=(n, d)).astype(np.float32),
        video_ids=[f"v{i}" for i in range(n)],
        video_uris=[f"/lib/v{i}.mp4" for i in range(n)],
    )


def test_part_round_trip(tmp_path: Path) -> None:
    part = _part()
    entry = layout.write_part(Storage(), str(tmp_path), 0, part)
    assert entry["name"] == "part-00000" and entry["rows"] == 3
    assert set(entry["files"]) == {".npz", ".pooled.npy", ".json"}
    back = layout.read_part(Storage(), str(tmp_path), entry)
    assert back.video_ids == part.video_ids and back.video_uris == part.video_uris
    for k, v in part.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
    np.testing.assert_array_equal(back.pooled, part.pooled)
    light = layout.read_part(Storage(), str(tmp_path), entry, pooled_only=True)
    assert light.arrays == {} and light.rows == 3


def test_write_part_checks_row_counts(tmp_path: Path) -> None:
    part = _part()
    part.pooled = part.pooled[:2]
    with pytest.raises(ValueError, match=r"part 0: pooled has 2 rows, expected 3"):
        layout.write_part(Storage(), str(tmp_path), 0, part)


def test_a_flipped_byte_is_reported_with_its_uri(tmp_path: Path) -> None:
    entry = layout.write_part(Storage(), str(tmp_path), 0, _part())
    path = tmp_path / "parts" / "part-00000.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(layout.SearchIndexError, match=rf"{path}: corrupt"):
        layout.read_part(Storage(), str(tmp_path), entry)
    (tmp_path / "parts" / "part-00000.json").unlink()
    with pytest.raises(layout.SearchIndexError, match=r"part-00000.json: cannot read"):
        layout.read_part(Storage(), str(tmp_path), entry)


def test_index_json_states(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert layout.read_index(Storage(), root) is None
    with pytest.raises(layout.SearchIndexError, match=rf"{tmp_path}/index.json: no search index here"):
        layout.require_index(Storage(), root)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(layout.SearchIndexError, match=r"corrupt search index \(not JSON"):
        layout.read_index(Storage(), root)
    (tmp_path / "index.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(layout.SearchIndexError, match=r"not a vidret search index"):
        layout.read_index(Storage(), root)
    layout.write_index(Storage(), root, {"format": layout.FORMAT, "parts": [], "ann": None})
    assert layout.read_index(Storage(), root)["kind"] == "vidret-search-index"
    with pytest.raises(layout.SearchIndexError, match=r"incomplete \(its ANN was never built\)"):
        layout.require_index(Storage(), root)
    layout.write_index(Storage(), root, {"format": 99, "parts": [], "ann": None})
    with pytest.raises(layout.SearchIndexError, match=r"format 99"):
        layout.read_index(Storage(), root)


def test_blob_and_verify_index(tmp_path: Path) -> None:
    root = str(tmp_path)
    entry = layout.write_part(Storage(), root, 0, _part())
    blob = layout.write_blob(Storage(), root, "ann-3.faiss", b"abc")
    index = {"parts": [entry], "ann": blob}
    layout.verify_index(Storage(), root, index)
    assert layout.read_blob(Storage(), root, blob) == b"abc"
    (tmp_path / "ann-3.faiss").write_bytes(b"abd")
    with pytest.raises(layout.SearchIndexError, match=r"ann-3.faiss: corrupt"):
        layout.verify_index(Storage(), root, index)
