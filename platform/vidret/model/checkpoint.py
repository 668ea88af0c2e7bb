"""Checkpoint directories written atomically and read safely, their object-storage copies, and content keys.

A checkpoint is a local directory (Ray Train uploads it with ``Checkpoint.from_directory``) holding

    state.pt    ``torch.save`` of a dict of tensors and primitive containers only
    meta.json   {"format", "step", "epoch", "config_sha256", "state_sha256", "state_bytes"}, written LAST

``save_checkpoint`` removes any old ``meta.json`` first, writes ``state.pt`` through a temporary file and
``os.replace``, then writes ``meta.json`` the same way, so an interrupted save never leaves a directory that
``is_valid_checkpoint`` accepts. ``load_checkpoint`` verifies size and sha256 before reading, and reads with
``torch.load(weights_only=True)``: a pickle that would construct arbitrary objects (run code) is refused.
The state is checked at save time so a checkpoint that could not be loaded that way is never written.

In object storage (exported weights, ``save_state`` / ``load_state``) the same two files are copied with
``state.pt`` first and ``meta.json`` last, each atomically, so a reader never sees a meta whose state is
missing; downloads verify the sha256 before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vidret.storage import Storage, join
from vidret.storage.scratch import scratch_dir

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 22
_LEAVES = (Tensor, bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt, or holds something unsafe to load."""


def _check_safe(obj: Any, where: str) -> None:
    """Raise TypeError naming the key path if ``obj`` holds something ``weights_only`` loading refuses."""
    if isinstance(obj, _LEAVES):
        return
    if isinstance(obj, Mapping):
        if type(obj) not in (dict, OrderedDict):
            raise TypeError(f"save_checkpoint: {where}: expected a plain dict, got {type(obj).__name__}")
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"save_checkpoint: {where}: keys must be str or int, got {type(k).__name__}")
            _check_safe(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_safe(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"save_checkpoint: {where}: {type(obj).__name__} cannot be loaded with weights_only=True; store "
        "tensors, numbers, strings and lists/tuples/dicts of them (e.g. numpy arrays as tensors)"
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def config_hash(config: Any) -> str | None:
    """sha256 of a resolved config given as YAML text or a JSON-able mapping; None when absent."""
    if config is None:
        return None
    text = config if isinstance(config, str) else json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, fsync, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike[str], state: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``state`` to ``<directory>/state.pt`` and then ``meta.json``; return the meta dict.

    ``state`` must hold only tensors, numbers, strings, None and lists/tuples/dicts of them (optimizer and
    scheduler state dicts qualify; use ``capture_rng`` for RNG states). Optional keys ``step``, ``epoch`` and
    ``config`` (resolved YAML text or a mapping) are recorded in the meta.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"save_checkpoint: expected a dict state, got {type(state).__name__}")
    _check_safe(dict(state), "state")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta_path, state_path = d / META_FILE, d / STATE_FILE
    if meta_path.exists():  # invalidate first: a crash below must not leave an old meta over a new state
        meta_path.unlink()
        _fsync_dir(d)
    _atomic_write(state_path, lambda f: torch.save(dict(state), f))
    meta = {
        "format": FORMAT_VERSION,
        "step": state.get("step"),
        "epoch": state.get("epoch"),
        "config_sha256": config_hash(state.get("config")),
        "state_sha256": _sha256_file(state_path),
        "state_bytes": state_path.stat().st_size,
    }
    _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))
    _fsync_dir(d)
    return meta


def read_meta(directory: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """The meta of a checkpoint directory; with ``verify`` also check ``state.pt``'s size and sha256.

    Raises CheckpointError naming the path when the meta or state is missing, unreadable or mismatched.
    """
    d = Path(directory)
    meta_path, state_path = d / META_FILE, d / STATE_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing (incomplete or not a checkpoint directory)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e.__class__.__name__}: {e})") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT_VERSION
        or not isinstance(meta.get("state_sha256"), str)
    ):
        raise CheckpointError(f"{meta_path}: expected a format-{FORMAT_VERSION} meta with state_sha256")
    if verify:
        if not state_path.is_file():
            raise CheckpointError(f"{state_path}: missing")
        size = state_path.stat().st_size
        if size != meta.get("state_bytes"):
            raise CheckpointError(
                f"{state_path}: {size} bytes, meta.json says {meta.get('state_bytes')} "
                "(truncated or replaced)"
            )
        digest = _sha256_file(state_path)
        if digest != meta["state_sha256"]:
            raise CheckpointError(
                f"{state_path}: sha256 {digest[:12]}... does not match meta.json "
                f"({meta['state_sha256'][:12]}...): corrupt"
            )
    return meta


def is_valid_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` holds a complete checkpoint whose state matches its meta."""
    try:
        read_meta(directory, verify=True)
    except CheckpointError:
        return False
    return True


def load_checkpoint(
    directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Verify and load ``<directory>/state.pt`` with ``weights_only=True``.

    Raises CheckpointError naming the path if the checkpoint is incomplete, corrupt, or its pickle would
    construct objects other than tensors and primitive containers.
    """
    read_meta(directory, verify=True)
    state_path = Path(directory) / STATE_FILE
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        from vidret.model.clip import unpickling_refusal

        first = unpickling_refusal(e)
        raise CheckpointError(
            f"{state_path}: refused: the pickle would construct objects that weights_only loading does not "
            f"allow (possibly code execution); {first}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{state_path}: unreadable ({e.__class__.__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: expected a dict, got {type(state).__name__}")
    return state


# -- object storage ------------------------------------------------------------------------------


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
    with scratch_dir("ckpt") as tmp:
        save_checkpoint(tmp, state)
        return upload_checkpoint(tmp, uri, storage)


def load_state(uri: str, storage: Storage) -> dict[str, Any]:
    """Download and verify the checkpoint at ``uri`` and load it (tensors only, ``weights_only``).

    ``CheckpointError`` (corrupt, incomplete, or a pickle that would run code) names the files under ``uri``,
    not the temporary download.
    """
    with scratch_dir("ckpt") as tmp:
        for name in (META_FILE, STATE_FILE):
            (Path(tmp) / name).write_bytes(storage.read_bytes(join(uri, name)))
        try:
            return load_checkpoint(tmp)
        except CheckpointError as err:  # <tmp>/state.pt -> <uri>/state.pt
            raise CheckpointError(str(err).replace(tmp, uri)) from None


# -- content keys ------------------------------------------------------------------------------------


def _feed(h: Any, obj: Any, where: str) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"{where}|{t.dtype}|{tuple(obj.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            _feed(h, obj[k], f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    else:
        h.update(f"{where}={obj!r}|".encode())


def checkpoint_key(state_dict: Mapping[str, Any], length: int = 16) -> str:
    """A short hex content hash of a (model) state dict: names, dtypes, shapes and tensor bytes, in sorted
    name order. Equal weights give equal keys on any device; used to key feature caches by checkpoint."""
    h = hashlib.sha256()
    _feed(h, state_dict, "")
    return h.hexdigest()[:length]
