"""The pending watchdog on a real local Ray: an actor that asks for a resource no node has ends the driver's
blocking call with the watchdog's error, naming the actor and what it asked for."""

from __future__ import annotations

import signal
import time

import pytest

ray = pytest.importorskip("ray")

from vidret.config import RunConfig  # noqa: E402
from vidret.planning import NODE_ID_LABEL  # noqa: E402
from vidret.watchdog import (  # noqa: E402
    AutoscaleTimeoutError,
    PendingTimeoutError,
    PendingWatchdog,
    describe_cluster,
    head_node_id,
    pending_work,
    wait_for_resources,
)


@ray.remote
class Probe:
    def ping(self) -> int:
        return 1


def test_an_impossible_actor_ends_the_job_with_the_watchdog_error(
    ray_session: None, request: pytest.FixtureRequest
) -> None:
    # the watchdog interrupts the main thread like Ctrl-C: a SIGINT handler left behind by an earlier Ray
    # Train run in this process would swallow it (the product's jobs then exit via hard_exit_after_s)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    impossible = Probe.options(num_cpus=0, resources={"impossible_gpu_sim": 1}).remote()
    # an off-head constraint on a one-node cluster: the same label selector the jobs use, unplaceable here
    node = ray.get_runtime_context().get_node_id()
    excluded = Probe.options(num_cpus=0, label_selector={NODE_ID_LABEL: f"!{node}"}).remote()
    placed = Probe.options(num_cpus=0.5).remote()
    assert ray.get(placed.ping.remote()) == 1
    with pytest.raises(PendingTimeoutError) as e, PendingWatchdog(2.0, poll_s=0.5, hard_exit_after_s=None):
        ray.get(impossible.ping.remote())  # blocks forever without the watchdog
    msg = str(e.value)
    assert msg.startswith("pending for more than 2 s (run.pending_timeout_s), the job was stopped: ")
    assert "actor Probe asking for {impossible_gpu_sim: 1}" in msg
    assert (
        msg.count("actor Probe asking for") == 2
    )  # the label-selected one too; the placed one is not pending
    job = ray.get_runtime_context().get_job_id()
    assert {p.id for p in pending_work(job)} == {impossible._actor_id.hex(), excluded._actor_id.hex()}
    ray.kill(impossible)
    ray.kill(excluded)


def test_the_cluster_description_and_the_bounded_wait(ray_session: None) -> None:
    # the session's Ray: 2 CPUs on one node
    have = ray.cluster_resources()["CPU"]
    cluster = describe_cluster(RunConfig(autoscale_max_cpus=4))
    (node,) = cluster.nodes
    assert node.is_head
    assert node.resources["CPU"] == have
    assert "memory" not in node.resources
    assert cluster.max_total == {"CPU": 4.0}
    assert head_node_id() is None  # one node: the head is where the work runs
    lines: list[str] = []
    wait_for_resources({"CPU": have}, timeout_s=0, progress=lines.append)
    assert lines == []
    need = int(have) + 2
    expected = rf"the cluster has CPU {int(have)}/{need} \(have/need\)"
    with pytest.raises(AutoscaleTimeoutError, match=expected):
        wait_for_resources({"CPU": float(need)}, timeout_s=0.2, poll_s=0.1, progress=lines.append)
    assert lines[0].startswith(f"[cluster] waiting for nodes: CPU {int(have)}/{need} (have/need)")


def test_pending_work_reads_the_gcs_when_the_state_api_does_not_answer(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vidret.watchdog as wd

    monkeypatch.setattr(wd, "_dashboard_url", lambda: "http://127.0.0.1:9")  # nothing listens there
    impossible = Probe.options(num_cpus=0, resources={"impossible_gpu_sim": 1}).remote()
    job = ray.get_runtime_context().get_job_id()
    seen: set[str] = set()
    try:
        for _ in range(60):  # the actor reaches the GCS's table asynchronously: poll (bounded)
            seen = {p.id for p in pending_work(job)}
            if impossible._actor_id.hex() in seen:
                break
            time.sleep(0.5)
        assert impossible._actor_id.hex() in seen
    finally:
        ray.kill(impossible)
