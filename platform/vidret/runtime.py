"""Ray start-up and its logging set-up, and the connected cluster's description (uses ``ray._private``).

Train, evaluation, tuning and the data executors call :func:`ensure_ray` before their first Ray call; it
either connects to a configured cluster or starts a local one bound to loopback. Either way the driver and
every worker get vidret's quiet console (``vidret.console.logs``): Ray's logger at WARNING, the quiet
environment and the ``worker_process_setup_hook`` in the runtime environment, and Ray Data without execution
banners. ``--verbose`` (``VIDRET_LOG=debug``) keeps Ray's own output.
``describe_cluster``, ``head_node_id`` and ``wait_for_resources`` read the connected cluster for resource
planning (``vidret.planning``; ``vidret.startup.start_job`` puts them together).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray

from vidret.config import RunConfig
from vidret.console.logs import (
    quiet_data_context,
    quiet_loggers,
    quiet_worker,
    ray_init_kwargs,
    verbose_requested,
)
from vidret.planning import Cluster, Node, fraction_fits

__all__ = [
    "HEAD_RESOURCE",
    "LOCAL_RAY_HOST",
    "WORKER_SETUP_HOOK",
    "AutoscaleTimeoutError",
    "describe_cluster",
    "ensure_ray",
    "head_node_id",
    "live_actors",
    "setup_worker",
    "start_with_retries",
    "wait_for_resources",
]

LOCAL_RAY_HOST = "127.0.0.1"  # a local instance is reachable from this machine only
WORKER_SETUP_HOOK = f"{__name__}.setup_worker"


def ensure_ray(run: RunConfig) -> None:
    """Connect to (``run.ray_address``, or ``RAY_ADDRESS`` inside ``ray job submit``) or start a local Ray.

    A local instance uses ``address="local"`` so a stale cluster file is never picked up (``ray.init()``
    without an address joins whatever cluster Ray's temp dir last recorded), has
    no dashboard, and binds every Ray process (GCS, raylet, agents, workers) to ``127.0.0.1``: see
    :func:`_init_local_ray`. Does nothing but quiet Ray Data when Ray is already initialised.
    """
    verbose = verbose_requested()
    if not ray.is_initialized():
        kwargs = ray_init_kwargs(verbose)
        kwargs["runtime_env"]["worker_process_setup_hook"] = WORKER_SETUP_HOOK
        if run.ray_address:
            ray.init(address=run.ray_address, **kwargs)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            _init_local_ray(run.num_cpus, kwargs)
        if not verbose:
            quiet_loggers()  # ray.init re-configures the ``ray`` logger
    quiet_data_context(ray.data.DataContext.get_current(), verbose)


LOCAL_START_ATTEMPTS = 3
# Ray's own error when the raylet has not registered with the GCS within a fixed 30 s (not configurable). On
# a saturated machine a healthy start can take longer (docs/stack-notes.md P23).
_START_TIMED_OUT = "timed out during startup"


def start_with_retries(start: Callable[[], None], attempts: int = LOCAL_START_ATTEMPTS) -> None:
    """Call ``start`` (a local Ray start) until it does not fail with Ray's start-up timeout, at most
    ``attempts`` times. The processes a failed attempt left running (its GCS, raylet and agents: descendants
    of this process) are killed before the next one; any other error, or the last timeout, is raised."""
    for attempt in range(1, attempts + 1):
        before = _descendants()
        try:
            start()
            return
        except Exception as exc:
            if _START_TIMED_OUT not in str(exc) or attempt == attempts:
                raise
            for pid in _descendants() - before:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            print(
                f"[ray] the local Ray instance did not start within Ray's 30 s (a busy machine?); "
                f"starting it again ({attempt + 1}/{attempts})",
                file=sys.stderr,
                flush=True,
            )


def _descendants() -> set[int]:
    """The pids of this process's descendants, from ``/proc`` (an empty set where there is none)."""
    parent: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:  # exited meanwhile
                continue
            parent[int(entry)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def _init_local_ray(num_cpus: int | None, kwargs: dict[str, Any]) -> None:
    """:func:`_init_local_ray_once`, again if Ray's start-up timed out (:func:`start_with_retries`)."""
    start_with_retries(lambda: _init_local_ray_once(num_cpus, kwargs))


def _init_local_ray_once(num_cpus: int | None, kwargs: dict[str, Any]) -> None:
    """``ray.init`` of a local instance bound to loopback, with ``kwargs`` (the console's) added.

    On Linux Ray replaces a loopback ``_node_ip_address`` with the machine's routable address, so its GCS,
    raylet and agents would listen on every interface, unless its cluster mode is off
    (``ray._private.services.get_node_ip_address``; the flag is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read at
    import). The flag is switched off for this call only: a later connection to a real cluster in the same
    process must still see the routable address.
    """
    from ray._private import ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host=LOCAL_RAY_HOST,
            _node_ip_address=LOCAL_RAY_HOST,
            **kwargs,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def setup_worker() -> None:
    """``worker_process_setup_hook`` of every worker of vidret's jobs: the console's quiet defaults
    (``vidret.console.logs.quiet_worker``), and ``RAY_ADDRESS`` set to the worker's own cluster when unset.

    Why the address: Ray Train's placement-group cleaner asks the state API without an address, and on a
    machine running more than one Ray instance (CI runners, a dev box with ``ray start``) that lookup fails
    with "Found multiple active Ray instances" and a traceback in the middle of the run."""
    quiet_worker()
    if not os.environ.get("RAY_ADDRESS"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def live_actors() -> list[dict[str, str]]:
    """Actors of the connected cluster that are not dead: ``[{"class", "state"}]`` (ALIVE, PENDING_CREATION,
    RESTARTING, DEPENDENCIES_UNREADY). Read from the GCS, so it works without the dashboard; for checks that
    a job left nothing behind."""
    from ray._private import state

    return [
        {"class": str(a.get("ActorClassName", "")), "state": str(a.get("State", ""))}
        for a in state.actors().values()
        if a.get("State") != "DEAD"
    ]


# ------------------------------------------------------------------------------------------- the cluster
HEAD_RESOURCE = "node:__internal_head__"  # carried by the head node only


class AutoscaleTimeoutError(RuntimeError):
    """The autoscaler did not bring the resources a job needs within ``run.autoscale_wait_s``."""


def _schedulable(resources: Mapping[str, float]) -> dict[str, float]:
    """What work can ask for: CPU, GPU and custom resources (not memory, node ids or accelerator types)."""
    skip = ("node:", "accelerator_type:")
    return {
        k: float(v)
        for k, v in resources.items()
        if not k.startswith(skip) and k not in ("memory", "object_store_memory")
    }


def describe_cluster(run: RunConfig) -> Cluster:
    """The alive nodes of the connected Ray cluster (the head marked) and the autoscaler's bound from
    ``run.autoscale_max_cpus`` / ``run.autoscale_max_gpus`` (None when neither is set)."""
    nodes = tuple(
        Node(
            name=n["NodeID"][:8],
            resources=_schedulable(n["Resources"]),
            is_head=HEAD_RESOURCE in n["Resources"],
        )
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n["Alive"]
    )
    bound = {"CPU": run.autoscale_max_cpus, "GPU": run.autoscale_max_gpus}
    max_total = {k: float(v) for k, v in bound.items() if v is not None} or None
    return Cluster(nodes, max_total)


def head_node_id() -> str | None:
    """The head's node id when the cluster has other nodes to work on (work is kept off it), else None."""
    alive = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
    if len(alive) <= 1:
        return None
    return next((n["NodeID"] for n in alive if HEAD_RESOURCE in n["Resources"]), None)


def wait_for_resources(
    need: Mapping[str, float],
    timeout_s: float,
    *,
    poll_s: float = 5.0,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Wait until the cluster's totals reach ``need`` (nodes an autoscaler adds), printing progress each
    poll; :class:`AutoscaleTimeoutError` after ``timeout_s``. Returns at once when they already do."""
    say = progress or _log
    deadline = time.monotonic() + timeout_s
    while True:
        have = _schedulable(ray.cluster_resources())  # type: ignore[no-untyped-call]
        shown = ", ".join(f"{k} {have.get(k, 0.0):g}/{v:g}" for k, v in sorted(need.items()))
        if fraction_fits(need, have) >= 1.0:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise AutoscaleTimeoutError(
                f"waited {timeout_s:g} s for the autoscaler, the cluster has {shown} (have/need): raise "
                "run.autoscale_wait_s, check the autoscaler's node types and quotas, or size the job down"
            )
        say(f"[cluster] waiting for nodes: {shown} (have/need), {left:.0f} s left")
        time.sleep(min(poll_s, max(left, 0.0)))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
