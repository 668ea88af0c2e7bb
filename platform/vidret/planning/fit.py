"""Fitting asks onto a cluster: the types (:class:`Cluster`, :class:`Ask`, :class:`Phase`, :class:`Plan`) and
the checks. Pure arithmetic, no Ray import.

Everything in one phase runs at once:

* **gang** asks (Train workers in their placement group, Ray Data actor pools of fixed size, Tune trials
  with their trainer) must all be placed together, or the job waits forever for the rest: the sum must fit
  the cluster and the units must pack onto its worker nodes (first-fit decreasing);
* **queued** asks (Ray tasks) run as resources free up: one unit must fit next to the phase's gang asks.

Nothing runs on the head: an ask for no resource at all (a bookkeeping actor, the validation decode actor)
carries ``off_head``, and the job places it with :func:`remote_args`, whose label selector excludes the head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NODE_ID_LABEL = "ray.io/node-id"  # Ray's built-in node label; a selector ``!<id>`` excludes one node
_EPS = 1e-9
_UNIT = {"CPU": ("CPU", "CPUs"), "GPU": ("GPU", "GPUs")}


class PlanError(ValueError):
    """A job cannot fit the cluster; the message is one line naming the shortfall and the knobs."""


@dataclass(frozen=True)
class Node:
    """One Ray node: its resources (``CPU``, ``GPU``, custom) and whether it is the head."""

    name: str
    resources: Mapping[str, float]
    is_head: bool = False


@dataclass(frozen=True)
class Cluster:
    """What jobs can use: the nodes now, and the autoscaler's bound on the totals (None: no autoscaler)."""

    nodes: tuple[Node, ...]
    max_total: Mapping[str, float] | None = None

    @property
    def total(self) -> dict[str, float]:
        """Resources summed over every node (the head included: a ``--num-cpus=0`` head adds nothing)."""
        out: dict[str, float] = {}
        for node in self.nodes:
            for key, value in node.resources.items():
                out[key] = out.get(key, 0.0) + value
        return out

    @property
    def work_nodes(self) -> tuple[Node, ...]:
        """The nodes work is placed on: every node but the head, or the head alone on a one-node cluster."""
        workers = tuple(n for n in self.nodes if not n.is_head)
        return workers or self.nodes


@dataclass(frozen=True)
class Ask:
    """``count`` units of ``per_unit`` resources, for ``what`` (plural noun); ``knobs`` names, per resource,
    the config keys that lower it."""

    what: str
    count: int
    per_unit: Mapping[str, float]
    knobs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # resource -> config keys
    gang: bool = True
    off_head: bool = False  # asks for no resource: placed by a node constraint that excludes the head

    @property
    def is_zero(self) -> bool:
        return all(v <= 0 for v in self.per_unit.values())


@dataclass(frozen=True)
class Phase:
    """Asks that run at the same time, named for messages (``stage 1``, ``feature cache (videos)``)."""

    name: str
    asks: tuple[Ask, ...]

    def need(self) -> dict[str, float]:
        """The gang asks' resources summed."""
        out: dict[str, float] = {}
        for ask in self.asks:
            if ask.gang:
                for key, value in ask.per_unit.items():
                    out[key] = out.get(key, 0.0) + ask.count * value
        return out


@dataclass(frozen=True)
class Plan:
    """A job that fits: its phases as they will run, what was adjusted, and what to wait for, if anything."""

    job: str
    phases: tuple[Phase, ...]
    decode_actors: int = 0  # per decode pool, after ``data.decode_actors: auto``
    notes: tuple[str, ...] = ()
    wait_for: Mapping[str, float] | None = None  # totals the autoscaler must reach before the job starts
    trial_concurrency: int | None = None  # Tune: trials at a time

    def asks(self) -> dict[str, Ask]:
        """Every ask of the plan by ``what`` (the first phase wins on a repeated name)."""
        out: dict[str, Ask] = {}
        for p in self.phases:
            for a in p.asks:
                out.setdefault(a.what, a)
        return out


# ------------------------------------------------------------------------------------------- formatting
def _num(x: float) -> str:
    return f"{x:g}" if abs(x - round(x)) > _EPS else str(round(x))


def _amount(key: str, x: float) -> str:
    one, many = _UNIT.get(key, (key, key))
    return f"{_num(x)} {one if abs(x - 1) < _EPS else many}"


def _or_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _breakdown(phase: Phase, key: str) -> str:
    parts = [
        f"{a.count} {a.what} x {_num(a.per_unit[key])}"
        for a in phase.asks
        if a.gang and a.per_unit.get(key, 0.0) > 0
    ]
    return " + ".join(parts)


def _knobs(phase: Phase, key: str) -> list[str]:
    out: list[str] = []
    for a in phase.asks:
        if a.per_unit.get(key, 0.0) > 0:
            out += [k for k in a.knobs.get(key, ()) if k not in out]
    return out


def _advice(knobs: Sequence[str], nodes: str = "nodes") -> str:
    return f"lower {_or_list(knobs)}, or add {nodes}" if knobs else f"add {nodes}"


def _unit_knobs(ask: Ask, nodes: Sequence[Node]) -> list[str]:
    """The knobs of the resources of one unit of ``ask`` that exceed every node."""
    over = [k for k, v in ask.per_unit.items() if all(v > n.resources.get(k, 0.0) + _EPS for n in nodes)]
    return list(dict.fromkeys(x for k in over for x in ask.knobs.get(k, ())))


def _all_knobs(asks: Iterable[Ask]) -> list[str]:
    """The knobs of every resource the asks use (not of those they could use, e.g. GPUs off)."""
    return list(
        dict.fromkeys(k for a in asks for r, ks in a.knobs.items() if a.per_unit.get(r, 0.0) > 0 for k in ks)
    )


# ------------------------------------------------------------------------------------------- checking
def check_off_head(phases: Iterable[Phase]) -> None:
    """Every ask requests a non-zero resource or carries ``off_head``, so a head with no CPUs gets no work."""
    for phase in phases:
        for a in phase.asks:
            if a.is_zero and not a.off_head:
                raise PlanError(
                    f"{phase.name}: {a.what} ask for no resource and no node constraint, so Ray may place "
                    "them on the head: give them a resource or place them with vidret.planning.remote_args"
                )


def _shortfall(phase: Phase, cluster: Cluster) -> str | None:
    """The one-line reason ``phase`` cannot fit ``cluster`` at its current size, or None."""
    need, have = phase.need(), cluster.total
    for key, amount in sorted(need.items()):
        if amount > have.get(key, 0.0) + _EPS:
            bound = "" if cluster.max_total is None else f" (at most {_num(cluster.max_total.get(key, 0.0))})"
            return (
                f"{phase.name} needs {_amount(key, amount)} ({_breakdown(phase, key)}), the cluster has "
                f"{_num(have.get(key, 0.0))}{bound}: {_advice(_knobs(phase, key))}"
            )
    return _node_shortfall(phase, cluster)


def _fits(per_unit: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(v <= free.get(k, 0.0) + _EPS for k, v in per_unit.items() if v > 0)


def _node_shortfall(phase: Phase, cluster: Cluster) -> str | None:
    """Per-node fit: each unit fits some work node, and the gang units pack onto the work nodes together
    (first-fit decreasing), then one unit of each queued ask fits in what is left."""
    nodes = cluster.work_nodes
    sizes = ", ".join(f"{n.name} {_num(n.resources.get('CPU', 0.0))}" for n in nodes)
    for a in phase.asks:
        if a.count and not a.is_zero and not any(_fits(a.per_unit, n.resources) for n in nodes):
            shown = ", ".join(f"{_amount(k, v)}" for k, v in sorted(a.per_unit.items()) if v > 0)
            return (
                f"{phase.name}: one of the {a.what} needs {shown} but no node has that much (CPUs per node: "
                f"{sizes}): {_advice(_unit_knobs(a, nodes), 'larger nodes')}"
            )
    free = [dict(n.resources) for n in nodes]
    units = [a for a in phase.asks if a.gang and not a.is_zero for _ in range(a.count)]
    units.sort(key=lambda a: sorted(a.per_unit.values(), reverse=True), reverse=True)
    for a in units:
        slot = next((f for f in free if _fits(a.per_unit, f)), None)
        if slot is None:
            return (
                f"{phase.name} fits the cluster's totals but not node by node (CPUs per node: {sizes}): "
                f"{_advice(_all_knobs(phase.asks))}"
            )
        for k, v in a.per_unit.items():
            slot[k] = slot.get(k, 0.0) - v
    for a in phase.asks:
        if not a.gang and a.count and not a.is_zero and not any(_fits(a.per_unit, f) for f in free):
            return (
                f"{phase.name}: no node has room for one of the {a.what} next to the rest of the job "
                f"(CPUs per node: {sizes}): {_advice(_knobs(phase, 'CPU'))}"
            )
    return None


def _fits_at_bound(phase: Phase, cluster: Cluster) -> bool:
    if cluster.max_total is None:
        return False
    bound = {**cluster.total, **cluster.max_total}
    return all(v <= bound.get(k, 0.0) + _EPS for k, v in phase.need().items())


def check_phases(job: str, phases: Sequence[Phase], cluster: Cluster) -> Plan:
    """A :class:`Plan` when every phase fits ``cluster`` (now, or at the autoscaler's bound: ``wait_for``);
    :class:`PlanError` naming the first shortfall otherwise."""
    check_off_head(phases)
    wait: dict[str, float] = {}
    for phase in phases:
        reason = _shortfall(phase, cluster)
        if reason is None:
            continue
        if _fits_at_bound(phase, cluster):
            for k, v in phase.need().items():
                wait[k] = max(wait.get(k, 0.0), v)
            continue
        raise PlanError(reason)
    return Plan(job, tuple(phases), wait_for=wait or None)


def fraction_fits(need: Mapping[str, float], have: Mapping[str, float]) -> float:
    """The smallest have/need ratio over the needed resources (>= 1 when it fits); for progress lines."""
    ratios = [have.get(k, 0.0) / v for k, v in need.items() if v > 0]
    return min(ratios, default=math.inf)


# ------------------------------------------------------------------------------------------- placement
def remote_args(ask: Ask, head_node_id: str | None) -> dict[str, Any]:
    """Ray ``.options()`` / ``map_batches`` arguments for one unit of ``ask``.

    ``num_cpus``/``num_gpus`` and custom ``resources`` as planned; an ``off_head`` ask (no resource) gets a
    label selector that excludes the head node (``head_node_id``; None on a one-node cluster, where the
    head is the only place to run).
    """
    res = dict(ask.per_unit)
    out: dict[str, Any] = {"num_cpus": res.pop("CPU", 0.0)}
    if "GPU" in res:
        out["num_gpus"] = res.pop("GPU")
    if res:
        out["resources"] = res
    if ask.off_head and head_node_id:
        out["label_selector"] = {NODE_ID_LABEL: f"!{head_node_id}"}
    return out
