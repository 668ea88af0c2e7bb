"""Ray start-up and its logging set-up: the only module that touches Ray internals (``ray._private``).

Train, evaluation, tuning and the data executors call :func:`ensure_ray` before their first Ray call; it
either connects to a configured cluster or starts a local one bound to loopback. Either way the driver and
every worker get vidret's quiet console (``vidret.console.logs``): Ray's logger at WARNING, the quiet
environment and the ``worker_process_setup_hook`` in the runtime environment, and Ray Data without execution
banners. ``--verbose`` (``VIDRET_LOG=debug``) keeps Ray's own output.
"""

from __future__ import annotations

import os
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

__all__ = ["LOCAL_RAY_HOST", "WORKER_SETUP_HOOK", "ensure_ray", "live_actors", "setup_worker"]

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


def _init_local_ray(num_cpus: int | None, kwargs: dict[str, Any]) -> None:
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
