"""The feature cache's completeness check: a split is readable only with its index and every shard."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vidret.features.store import read_index, require_index, write_split
from vidret.storage import Storage


def _write_tiny_split(uri: str) -> dict[str, object]:
    text = {
        "text_eot": np.zeros((2, 4), np.float32),
        "video_index": np.array([0, 0]),
        "caption_row": np.arange(2),
    }
    video = {"video": np.zeros((1, 3, 4), np.float32), "video_index": np.array([0]), "ok": np.ones(1, bool)}
    return write_split(Storage(), uri, [text], [video], {"video_ids": ["v0"], "captions": ["a", "b"]})


def test_require_index_returns_the_index_of_a_complete_split(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache" / "train")
    written = _write_tiny_split(uri)
    index = require_index(Storage(), uri)
    assert index == written
    assert [s["rows"] for s in index["texts"]] == [2]


def test_require_index_names_the_split_when_a_shard_is_missing(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache" / "train")
    _write_tiny_split(uri)
    os.remove(os.path.join(uri, "videos-00000.npz"))
    assert read_index(Storage(), uri) is None
    with pytest.raises(ValueError, match=r"/cache/train: no complete feature cache here"):
        require_index(Storage(), uri)


def test_require_index_rejects_a_split_without_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"/nothing: no complete feature cache here"):
        require_index(Storage(), str(tmp_path / "nothing"))
