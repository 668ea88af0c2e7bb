"""Starting a job on Ray: connect, refuse local paths across nodes, and plan its resources, in seconds.

:func:`start_job` replaces a plain :func:`~vidret.runtime.ensure_ray` in the jobs (training, evaluation,
tuning, the search index). A job that cannot fit the cluster fails here with one line naming the shortfall
and the knobs (:class:`~vidret.planning.PlanError`, a ``ValueError``), before any actor or placement group
exists; where an autoscaler may add nodes (``run.autoscale_max_cpus``/``_gpus``) it waits for them, bounded
by ``run.autoscale_wait_s``. :func:`planned` applies the plan to the config (the decode pools' size under
``data.decode_actors: auto``). Keeping zero-resource actors off the head is done where they are created
(:mod:`vidret.data.pipeline`), and pending work is bounded by :func:`vidret.watchdog.watching`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from vidret.config import Config, replace
from vidret.data.annotations.manifest import read_manifest
from vidret.planning import Cluster, PathUse, Plan, check_shared_paths, plan_job
from vidret.runtime import describe_cluster, ensure_ray, head_node_id, wait_for_resources
from vidret.storage import Storage, join

__all__ = ["PATH_KEYS", "check_paths", "manifest_video_uris", "planned", "start_job"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def manifest_video_uris(cfg: Config, splits: Iterable[str]) -> Iterator[str]:
    """The ``video_uri`` values of ``<data.manifest>/<split>.parquet`` for ``splits``, read lazily: the path
    guard iterates them only on a cluster of more than one node."""
    storage = Storage(cfg.storage)
    for split in dict.fromkeys(splits):
        table = read_manifest(join(cfg.data.manifest, f"{split}.parquet"), storage)
        yield from table.column("video_uri").to_pylist()


def _nodes_for_paths(cluster: Cluster) -> int:
    """Nodes the job may run on: those alive, and at least two when an autoscaler may add some."""
    return len(cluster.nodes) if cluster.max_total is None else max(2, len(cluster.nodes))


# The config paths each job reads or writes (None: all of vidret.planning.job_paths); other jobs' keys
# may stay local (evaluation never writes to train.storage_path).
_EVAL_KEYS = ("run.out", "data.manifest", "eval.checkpoint", "model.weights")
PATH_KEYS: dict[str, tuple[str, ...] | None] = {
    "stage 1": None,
    "stage 2": None,
    "tune": None,
    "feature cache": _EVAL_KEYS,
    "evaluation": _EVAL_KEYS,
    "index": ("model.weights",),
}


def check_paths(
    cfg: Config,
    video_uris: Iterable[str] = (),
    paths: Sequence[PathUse] = (),
    keys: Sequence[str] | None = ("data.manifest",),
) -> Cluster:
    """Connect to Ray and refuse local paths on a cluster of more than one node: the config ``keys``,
    ``paths`` and ``video_uris`` (``ValueError``, one line; see :func:`vidret.planning.check_shared_paths`).
    Returns the cluster. Check and prepare call it directly (they have no plan)."""
    ensure_ray(cfg.run)
    cluster = describe_cluster(cfg.run)
    check_shared_paths(cfg, _nodes_for_paths(cluster), video_uris, paths, keys)
    return cluster


def start_job(
    job: str,
    cfg: Config,
    video_uris: Iterable[str] = (),
    *,
    paths: Sequence[PathUse] = (),
    **extra: Any,
) -> tuple[Plan, str | None]:
    """Connect (or start a local Ray), refuse local paths across nodes, and plan ``job`` (one of
    :data:`vidret.planning.JOBS`; ``extra`` goes to :func:`~vidret.planning.plan_job`).

    Raises ``ValueError`` (a local path on a multi-node cluster), :class:`~vidret.planning.PlanError` (the
    job cannot fit, even at the autoscaler's bound) or :class:`~vidret.runtime.AutoscaleTimeoutError`. Prints
    the plan's adjustments as ``[plan]`` lines. Returns the plan and the head's node id (None on one node).
    """
    cluster = check_paths(cfg, video_uris, paths, PATH_KEYS.get(job))
    plan = plan_job(job, cfg, cluster, **extra)
    if plan.wait_for:
        wait_for_resources(plan.wait_for, cfg.run.autoscale_wait_s, progress=_log)
        cluster = describe_cluster(cfg.run)
        plan = plan_job(job, cfg, cluster, **extra)  # re-plan on the nodes that came
    for note in plan.notes:
        _log(f"[plan] {note}")
    _log(f"[plan] {job}: {_summary(plan, cluster)}")
    return plan, head_node_id()


def _summary(plan: Plan, cluster: Cluster) -> str:
    """``phase needs CPU 2 (of 2)`` per phase, for the job's log."""
    have = cluster.total
    parts = []
    for phase in plan.phases:
        need = phase.need()
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(need.items()) if v > 0) or "no reserved resources"
        parts.append(f"{phase.name} {shown}")
    totals = ", ".join(f"{k} {v:g}" for k, v in sorted(have.items()) if k in ("CPU", "GPU"))
    return f"{'; '.join(parts)} (the cluster has {totals or 'no CPUs'} on {len(cluster.nodes)} node(s))"


def planned(cfg: Config, plan: Plan) -> Config:
    """``cfg`` as the plan runs it: each decode pool of ``plan.decode_actors`` actors (smaller than
    ``data.decode_concurrency`` only under ``data.decode_actors: auto``)."""
    if plan.decode_actors < 1 or plan.decode_actors == cfg.data.decode_concurrency:
        return cfg
    data = replace(cfg.data, decode_concurrency=plan.decode_actors)
    return replace(cfg, data=data)
