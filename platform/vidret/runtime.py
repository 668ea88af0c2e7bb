"""Ray start-up and its logging set-up: the only module that touches Ray internals (``ray._private``).

Train, evaluation, tuning and the data executors call :func:`ensure_ray` before their first Ray call; it
either connects to a configured cluster or starts a local one bound to loopback.
"""

from __future__ import annotations

import logging
import os

import ray

from vidret.config import RunConfig

__all__ = ["LOCAL_RAY_HOST", "ensure_ray", "live_actors", "quiet_local_ray_logs"]

LOCAL_RAY_HOST = "127.0.0.1"  # a local instance is reachable from this machine only


def ensure_ray(run: RunConfig) -> None:
    """Connect to (``run.ray_address``, or ``RAY_ADDRESS`` inside ``ray job submit``) or start a local Ray.

    A local instance uses ``address="local"`` so a stale cluster file is never picked up (``ray.init()``
    without an address joins whatever cluster Ray's temp dir last recorded), has
    no dashboard, and binds every Ray process (GCS, raylet, agents, workers) to ``127.0.0.1``: see
    :func:`_init_local_ray`. Does nothing when Ray is already initialised.
    """
    ctx = ray.data.DataContext.get_current()  # periodic log lines instead of redrawn bars (job logs, CI)
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    if ray.is_initialized():
        return
    if run.ray_address:
        ray.init(address=run.ray_address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        _init_local_ray(run.num_cpus)


def _init_local_ray(num_cpus: int | None) -> None:
    """``ray.init`` of a local instance bound to loopback.

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
            runtime_env={"worker_process_setup_hook": "vidret.runtime.quiet_local_ray_logs"},
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def quiet_local_ray_logs() -> None:
    """Worker setup hook of the local Ray: silence Ray Train's placement-group cleaner, which asks the state
    API (served by the dashboard, which a local instance does not start) about the Train controller every
    second and logs a warning each time it cannot. Errors still show."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
        logging.ERROR
    )


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
