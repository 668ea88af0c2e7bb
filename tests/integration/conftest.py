"""Integration fixtures: the session's local Ray instance, and a small generated corpus.

Ray start-up costs 3-7 s and the first Ray Data batch ~10 s on 2 cores (docs/stack-notes.md P19), so every
test of a test process shares one instance (``ray_session`` in tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from vidret.config import SynthConfig
from vidret.storage import Storage

SPLITS = ("train", "val", "test", "ood")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """12 generated videos (32x32, 1 s at 8 fps) and one manifest holding all of them as split ``all``.

    Yields ``{"root": Path, "manifest": pa.Table}``; the manifest rows keep the generator's split in
    ``dataset`` order and use absolute local paths.
    """
    from vidret.data.annotations.manifest import build_manifest
    from vidret.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    storage = Storage()
    generate_corpus(SynthConfig(out=str(root), videos=12, size=32, seconds=1.0, fps=8, workers=1), storage)
    tables = [
        build_manifest("synthetic", str(root / "anns"), str(root / "videos"), split, storage).table
        for split in SPLITS
    ]
    table = pa.concat_tables(tables)
    table = table.set_column(
        table.schema.get_field_index("split"), "split", pa.array(["all"] * table.num_rows)
    )
    return {"root": Path(root), "manifest": table}
