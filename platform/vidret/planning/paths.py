"""No local paths across nodes: a job on a cluster of more than one node refuses local output and input
paths unless ``storage.shared_filesystem`` says every node mounts them at the same place. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vidret.config import Config

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local(uri: str) -> bool:
    """A path on this machine's file system: no scheme, or ``file://`` (not ``s3://`` or another scheme)."""
    return not _SCHEME.match(uri) or uri.startswith("file://")


@dataclass(frozen=True)
class PathUse:
    """A local path the job reads or writes, and the config key (or manifest column) that set it."""

    key: str
    uri: str


def job_paths(cfg: Config, keys: Sequence[str] | None = None) -> list[PathUse]:
    """The paths of ``cfg`` that every node must reach: ``run.out``, ``train.storage_path``, the manifest,
    the weights and checkpoints (empty values skipped); only ``keys`` of them when given (a job that does
    not use ``train.storage_path`` need not set it)."""
    values = (
        ("run.out", cfg.run.out),
        ("train.storage_path", cfg.train.storage_path),
        ("data.manifest", cfg.data.manifest),
        ("train.init_checkpoint", cfg.train.init_checkpoint),
        ("eval.checkpoint", cfg.eval.checkpoint),
        ("model.weights", cfg.model.weights),
    )
    return [PathUse(k, v) for k, v in values if v and (keys is None or k in keys)]


def check_shared_paths(
    cfg: Config,
    num_nodes: int,
    video_uris: Iterable[str] = (),
    extra: Sequence[PathUse] = (),
    keys: Sequence[str] | None = None,
) -> None:
    """Refuse local paths on a cluster of more than one node unless ``storage.shared_filesystem``.

    A local path written on one node (a checkpoint by rank 0, the feature cache by the driver) is not on the
    others; a node that goes away takes it along. ``video_uris`` are the manifest's ``video_uri`` values
    (the first local one is named; they are not read on one node). ``keys`` limits the config keys checked
    (:func:`job_paths`). Raises ``ValueError`` naming the keys and the fix.
    """
    if num_nodes <= 1 or cfg.storage.shared_filesystem:
        return
    local = [p for p in (*job_paths(cfg, keys), *extra) if is_local(p.uri)]
    video = next((u for u in video_uris if is_local(u)), None)
    if video is not None:
        local.append(PathUse("video_uri (manifest)", video))
    if local:
        shown = "; ".join(f"{p.key}={p.uri}" for p in local)
        raise ValueError(
            f"the Ray cluster has {num_nodes} nodes but these paths are local to one machine: {shown}. "
            "Use s3:// URIs, or set storage.shared_filesystem=true if every node mounts them at one place"
        )
