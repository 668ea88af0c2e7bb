"""A watchdog that ends a job whose actors or placement groups stay pending (the Ray side of resource
planning; the live cluster and the bounded wait for autoscaler nodes are in :mod:`vidret.runtime`).

A Ray job whose actors cannot be placed waits forever without an error (an actor pool that holds every CPU
while the actors it waits for need more; an ask no node can satisfy). :class:`PendingWatchdog` runs in the
driver next to the job: it polls Ray's state API (the GCS tables on a local instance, which serves no state
API) for this job's actors in ``PENDING_CREATION`` and its placement groups in ``PENDING``, and when one has
been pending longer than ``run.pending_timeout_s`` it interrupts the driver, which then raises
:class:`PendingTimeoutError` naming what is pending and what it asked for.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import ray

from vidret.config import RunConfig
from vidret.runtime import (  # re-exported: the Ray side of planning in one place for callers
    AutoscaleTimeoutError,
    describe_cluster,
    head_node_id,
    wait_for_resources,
)

__all__ = [
    "AutoscaleTimeoutError",
    "Pending",
    "PendingTimeoutError",
    "PendingWatchdog",
    "describe_cluster",
    "head_node_id",
    "pending_work",
    "wait_for_resources",
    "watching",
]


class PendingTimeoutError(RuntimeError):
    """Ray work stayed pending past the watchdog's limit; the message names it and what it asked for."""


_REINTERRUPT_S = 15.0  # after the first interrupt, again this often (leaves a graceful abort time to end)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- pending work
@dataclass(frozen=True)
class Pending:
    """One actor or placement group that is not placed yet: its id, a readable name and what it asks for."""

    kind: str  # "actor" or "placement group"
    id: str
    name: str
    asked: str

    def describe(self) -> str:
        return f"{self.kind} {self.name} asking for {self.asked}"


def _resources_text(res: Mapping[str, float] | None) -> str:
    if not res:
        return "no resources (a node constraint or unknown)"
    return "{" + ", ".join(f"{k}: {float(v):g}" for k, v in sorted(res.items())) + "}"


def _bundles_text(bundles: Any) -> str:
    items = bundles.values() if isinstance(bundles, Mapping) else bundles or []
    parts = [_resources_text(b.get("unit_resources", b) if isinstance(b, Mapping) else None) for b in items]
    return f"bundles [{', '.join(parts)}]"


def _dashboard_url() -> str | None:
    """The state API's address of the cluster this driver is connected to; None without a dashboard."""
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()  # type: ignore[no-untyped-call]
    return f"http://{url}" if url else None


def _pending_state_api(address: str, job_id: str) -> list[Pending]:
    """Pending actors and placement groups of ``job_id`` from Ray's state API (served by the dashboard at
    ``address``: given explicitly, since without one the state API picks any Ray on the machine)."""
    from ray.util.state import list_actors, list_placement_groups

    actors = list_actors(
        address=address,
        filters=[("job_id", "=", job_id), ("state", "=", "PENDING_CREATION")],
        detail=True,
        timeout=10,
        raise_on_missing_output=False,
    )
    groups = list_placement_groups(
        address=address,
        filters=[("creator_job_id", "=", job_id), ("state", "=", "PENDING")],
        detail=True,
        timeout=10,
        raise_on_missing_output=False,
    )
    out = [
        Pending("actor", a.actor_id, a.repr_name or a.class_name, _resources_text(a.required_resources))
        for a in actors
    ]
    out += [
        Pending(
            "placement group",
            g.placement_group_id,
            g.name or g.placement_group_id[:8],
            _bundles_text(g.bundles),
        )
        for g in groups
    ]
    return out


def _pending_gcs(job_id: str) -> list[Pending]:
    """The same from the GCS tables, for a local instance without a dashboard. Ray's internal accessor is
    the only way to the actors' required resources there."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    out = []
    for raw in accessor.get_actor_table(ray.JobID.from_hex(job_id), "PENDING_CREATION"):
        a = gcs_pb2.ActorTableData.FromString(raw)  # type: ignore[attr-defined]
        res = dict(a.required_resources)
        out.append(Pending("actor", a.actor_id.hex(), a.class_name, _resources_text(res)))
    for pg_id, g in ray.util.placement_group_table().items():
        if g.get("state") == "PENDING":
            out.append(
                Pending("placement group", pg_id, g.get("name") or pg_id[:8], _bundles_text(g.get("bundles")))
            )
    return out


_STATE_API_DOWN: set[str] = set()  # dashboards whose state API failed once (said once per process)


def pending_work(job_id: str) -> list[Pending]:
    """Actors and placement groups of ``job_id`` that Ray has not placed yet: from the state API when the
    cluster has a dashboard, else (or when the state API does not answer) from the GCS tables."""
    address = _dashboard_url()
    if address:
        try:
            return _pending_state_api(address, job_id)
        except Exception as e:  # a dashboard whose state API is down must not blind the watchdog
            if address not in _STATE_API_DOWN:
                _STATE_API_DOWN.add(address)
                _log(
                    f"[watchdog] Ray's state API did not answer ({type(e).__name__}); reading the GCS tables"
                )
    return _pending_gcs(job_id)


# ------------------------------------------------------------------------------------------- the watchdog
class PendingWatchdog:
    """Ends the driver's job when this job's actors or placement groups stay pending past ``limit_s``.

    Use as a context manager around the blocking call (``trainer.fit()``, iterating a dataset)::

        with PendingWatchdog(cfg.run.pending_timeout_s):
            result = trainer.fit()

    A background thread polls :func:`pending_work` every ``poll_s``. When something has been pending longer
    than ``limit_s`` it interrupts the main thread (as Ctrl-C would: Ray Train aborts its run gracefully),
    and the ``with`` block raises :class:`PendingTimeoutError` whatever the block raised or returned. If the
    block has not ended ``hard_exit_after_s`` after the interrupt, the process exits with status 1 after
    printing the error: a job never waits forever. Must be entered in the main thread.
    """

    def __init__(
        self,
        limit_s: float,
        *,
        poll_s: float = 2.0,
        hard_exit_after_s: float | None = 60.0,
        job_id: str | None = None,
        source: Callable[[str], list[Pending]] = pending_work,
    ) -> None:
        self.limit_s, self.poll_s, self.hard_exit_after_s = limit_s, poll_s, hard_exit_after_s
        self.job_id = job_id
        self.source = source
        self.error: PendingTimeoutError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_seen: dict[str, float] = {}

    def __enter__(self) -> PendingWatchdog:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PendingWatchdog must be entered in the main thread (it interrupts it)")
        self.job_id = self.job_id or ray.get_runtime_context().get_job_id()
        self._thread = threading.Thread(target=self._run, name="vidret-pending-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 15)
        if self.error is not None:
            raise self.error from exc

    def check(self, now: float) -> PendingTimeoutError | None:
        """One poll: the error when something has been pending past the limit at ``now``, else None."""
        assert self.job_id is not None
        pending = self.source(self.job_id)
        seen = {p.id for p in pending}
        self._first_seen = {k: v for k, v in self._first_seen.items() if k in seen}
        late = []
        for p in pending:
            since = self._first_seen.setdefault(p.id, now)
            if now - since > self.limit_s:
                late.append(p)
        if not late:
            return None
        shown = "; ".join(p.describe() for p in late[:5]) + (
            f"; and {len(late) - 5} more" if len(late) > 5 else ""
        )
        return PendingTimeoutError(
            f"pending for more than {self.limit_s:g} s (run.pending_timeout_s), the job was stopped: "
            f"{shown}. "
            "The cluster cannot place them: lower the job's sizing (train.cpus_per_worker, data.decode_cpus, "
            "data.decode_concurrency) or add nodes"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                err = self.check(time.monotonic())
            except Exception as e:  # the state API can fail transiently: say so and keep watching
                _log(f"[watchdog] could not read Ray's pending work: {type(e).__name__}: {e}")
                continue
            if err is not None:
                self.error = err
                _log(f"[watchdog] {err}")
                _thread.interrupt_main()
                self._hard_exit_later()
                return

    def _hard_exit_later(self) -> None:
        """Interrupt the main thread again every ``_REINTERRUPT_S`` until the block ends (a job that one
        interrupt did not end was seen once, on a loaded 2-core machine; the cause was not found), and exit
        after ``hard_exit_after_s``, the last line naming the error as an uncaught exception's would."""
        deadline = None if self.hard_exit_after_s is None else time.monotonic() + self.hard_exit_after_s
        while True:
            left = _REINTERRUPT_S if deadline is None else deadline - time.monotonic()
            if self._stop.wait(max(min(left, _REINTERRUPT_S), 0.0)):
                return
            if deadline is not None and time.monotonic() >= deadline:
                break
            _thread.interrupt_main()
        _log(f"[watchdog] the job did not stop within {self.hard_exit_after_s:g} s; exiting")
        err = self.error
        _log(f"{type(err).__module__}.{type(err).__name__}: {err}")
        os._exit(1)


def watching(run: RunConfig) -> AbstractContextManager[Any]:
    """A :class:`PendingWatchdog` at ``run.pending_timeout_s`` for a job's blocking call when it runs in the
    main thread (the watchdog interrupts it); a no-op elsewhere (inside a Tune trial, whose own driver
    watches the job)."""
    if threading.current_thread() is not threading.main_thread():
        return nullcontext()
    return PendingWatchdog(run.pending_timeout_s)
