"""Checkpoint directories in object storage: upload (meta last) and download-then-verify.

A checkpoint directory holds ``state.pt`` and ``meta.json`` (see ``vidret.train.checkpoint``). Uploads copy
``state.pt`` first and ``meta.json`` last, each atomically, so a reader never sees a meta whose state is
missing; downloads verify the sha256 before anything is loaded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from vidret.storage import Storage, join
from vidret.train.checkpoint import (
    META_FILE,
    STATE_FILE,
    CheckpointError,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)


def upload_checkpoint(local_dir: str | Path, uri: str, storage: Storage) -> str:
    """Copy a verified local checkpoint directory to ``uri`` (state first, meta last); returns ``uri``."""
    read_meta(local_dir, verify=True)
    local = Path(local_dir)
    meta_uri = join(uri, META_FILE)
    if storage.exists(
        meta_uri
    ):  # invalidate the old one first: a failed upload must not pair old meta + new state
        storage.delete(meta_uri)
    storage.write_bytes(join(uri, STATE_FILE), (local / STATE_FILE).read_bytes())
    storage.write_bytes(meta_uri, (local / META_FILE).read_bytes())
    return uri


def save_state(uri: str, state: dict[str, Any], storage: Storage) -> str:
    """``save_checkpoint`` into a temporary folder, then ``upload_checkpoint`` to ``uri``."""
    with tempfile.TemporaryDirectory(prefix="vidret-ckpt-") as tmp:
        save_checkpoint(tmp, state)
        return upload_checkpoint(tmp, uri, storage)


def load_state(uri: str, storage: Storage) -> dict[str, Any]:
    """Download and verify the checkpoint at ``uri`` and load it (tensors only, ``weights_only``).

    ``CheckpointError`` (corrupt, incomplete, or a pickle that would run code) names the files under ``uri``,
    not the temporary download.
    """
    with tempfile.TemporaryDirectory(prefix="vidret-ckpt-") as tmp:
        for name in (META_FILE, STATE_FILE):
            (Path(tmp) / name).write_bytes(storage.read_bytes(join(uri, name)))
        try:
            return load_checkpoint(tmp)
        except CheckpointError as err:  # <tmp>/state.pt -> <uri>/state.pt
            raise CheckpointError(str(err).replace(tmp, uri)) from None


def checkpoint_exists(uri: str, storage: Storage) -> bool:
    """True when a meta file is present at ``uri`` (its state is verified on load)."""
    return storage.exists(join(uri, META_FILE))
