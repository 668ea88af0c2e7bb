"""A throwaway Ray head on 127.0.0.1 for job-submission tests, and a `ray job submit` wrapper.

The head is started with ``ray start --head`` in its own process group and its own ``--temp-dir``, on free
ports, with the dashboard on loopback and token auth off (``RAY_AUTH_MODE=disabled``,
docs/stack-notes.md P3). It is stopped by signalling that process group and any process whose command line
names its temp dir, never with ``ray stop`` (which kills every Ray process on the host, other tests' clusters
included, docs/stack-notes.md §4.6).

Jobs are submitted with the real CLI (``ray job submit``) and inspected through the Jobs REST API of the
dashboard (``/api/jobs/<id>``), so the test process never imports or initialises Ray itself.

``LocalRayCluster`` adds worker nodes to a head (``ray start --address``): each node is its own raylet with
its own ``--temp-dir``, custom resource (its label), ports and worker-port block, started in its own session,
so a test can place work on nodes, read where it ran (the state API, ``/api/v0/...``), kill one node (its
raylet and every process below it) and start a replacement, as on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
WORKER_PORTS = 100  # one port per worker process; plenty for a 2-CPU head
CLUSTER_OBJECT_STORE = f"--object-store-memory={300 << 20}"  # per node; the default is 30 % of the RAM each


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (picked by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _range_is_free(start: int, count: int) -> bool:
    for port in range(start, start + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_range(count: int, low: int = 20000, high: int = 32000) -> int:
    """First port of ``count`` consecutive free ports below the kernel's ephemeral range (32768+), so they
    do not collide with the single ports ``free_port`` hands out. Free now only: for Ray worker ports, which
    are bound later, use :func:`claim_port_block`."""
    for _ in range(50):
        start = random.randrange(low, high - count)
        if _range_is_free(start, count):
            return start
    raise RuntimeError(f"no {count} consecutive free ports found in [{low}, {high})")


# Worker-port blocks: Ray binds a node's worker ports only when it starts workers, so "free right now" does
# not keep two nodes (or two test sessions) apart; one was seen overlapping another. Blocks are aligned
# (never partly overlapping) and claimed with a file created exclusively, so no process on this machine is
# handed a block that another one holds; a claim whose process is gone is taken over.
PORT_CLAIMS = Path(tempfile.gettempdir()) / "vidret-test-ports"
PORT_LOW, PORT_HIGH = 20000, 32000


def _claim_is_stale(claim: Path) -> bool:
    try:
        pid = int(claim.read_text() or "0")
    except (OSError, ValueError):
        return False  # being written, or unreadable: leave it
    return pid > 0 and not Path(f"/proc/{pid}").exists()


def claim_port_block(count: int = WORKER_PORTS) -> int:
    """First port of a block of ``count`` ports, aligned to ``count`` in [PORT_LOW, PORT_HIGH), free now and
    claimed for this process until :func:`release_port_block` (every caller uses the same ``count``, so
    blocks never partly overlap)."""
    PORT_CLAIMS.mkdir(exist_ok=True)
    starts = list(range(PORT_LOW, PORT_HIGH - count + 1, count))
    random.shuffle(starts)
    for start in starts:
        claim = PORT_CLAIMS / f"{start}-{count}"
        if claim.exists() and _claim_is_stale(claim):
            with contextlib.suppress(FileNotFoundError):
                claim.unlink()
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        if _range_is_free(start, count):
            return start
        claim.unlink()
    raise RuntimeError(f"no unclaimed free block of {count} ports in [{PORT_LOW}, {PORT_HIGH})")


def release_port_block(start: int, count: int = WORKER_PORTS) -> None:
    """Give a block of :func:`claim_port_block` back."""
    with contextlib.suppress(FileNotFoundError):
        (PORT_CLAIMS / f"{start}-{count}").unlink()


def _pids_of_group_or_dir(pgid: int, marker: str) -> list[int]:
    """Live processes in process group ``pgid`` or whose command line contains ``marker`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # exited while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        if fields[0] == "Z":
            continue
        if int(fields[2]) == pgid or marker in cmdline:
            out.append(int(entry.name))
    return [p for p in out if p != os.getpid()]


def _children_map() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` of every live process (Linux /proc)."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def with_descendants(pids: Sequence[int]) -> list[int]:
    """``pids`` and every live process below them: Ray's detached actors (``_StatsActor``, ...) run in
    process groups of their own, with ``ray::Name`` command lines that do not name the temp dir."""
    children, seen, todo = _children_map(), set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(seen - {os.getpid()})


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def node_pids(pgid: int, marker: str) -> list[int]:
    """A Ray node's live processes: group ``pgid``, command lines naming ``marker``, everything below them."""
    return with_descendants(_pids_of_group_or_dir(pgid, marker))


def kill_tree(
    pgid: int, marker: str, grace_s: float = 3.0, first: signal.Signals = signal.SIGTERM
) -> set[int]:
    """Signal a Ray node's processes (:func:`node_pids`) with ``first``, then SIGKILL what is left after
    ``grace_s`` (GCS, raylet and agents may ignore SIGTERM). The set found first is kept: a process whose
    parent died is re-parented and no longer found below the node. Returns every pid signalled (a caller
    checks later that none is alive: :func:`alive_of`)."""
    victims: set[int] = set()
    for sig, wait_s in ((first, grace_s), (signal.SIGKILL, 5.0)):
        victims |= set(node_pids(pgid, marker))
        alive = [p for p in victims if _alive(p)]
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.2)
    return victims


def alive_of(pids: Sequence[int] | set[int]) -> list[int]:
    """The live ones of ``pids`` (not zombies)."""
    return sorted(p for p in pids if _alive(p))


def _ray_env() -> dict[str, str]:
    """The environment of every ``ray start`` here (the moto credentials of the session are inherited)."""
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    env.update(
        RAY_AUTH_MODE="disabled",  # a throwaway loopback cluster; the AWS one uses tokens (cluster.yaml)
        RAY_USAGE_STATS_ENABLED="0",
        # The job entrypoint's `python` must be this venv's, even when the venv is not activated.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        OMP_NUM_THREADS="1",  # 2-core CI machine
        PYTHONUNBUFFERED="1",
    )
    return env


NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


def _run_ray_start(argv: list[str], env: dict[str, str], timeout_s: float) -> int:
    """Run ``ray start ...`` in a new session (its daemons inherit the process group); returns the pgid.

    On failure the daemons it left are killed and ``RuntimeError`` carries its output.
    """
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = "(timed out)"
    if proc.returncode != 0:
        temp = next((a.split("=", 1)[1] for a in argv if a.startswith("--temp-dir=")), "")
        kill_tree(proc.pid, temp or "\0")
        raise RuntimeError(f"`{' '.join(argv[1:3])}` failed (rc {proc.returncode}):\n{out[-4000:]}")
    return proc.pid


@dataclass
class JobRun:
    """The outcome of one submitted job."""

    submission_id: str
    status: str
    logs: str
    info: dict[str, Any]
    cli_returncode: int
    cli_output: str
    wall_s: float

    def describe(self) -> str:
        """Status, the CLI's exit code and the tail of the job's logs, for assertion messages."""
        tail = "\n".join(self.logs.splitlines()[-40:])
        return (
            f"job {self.submission_id}: status {self.status} (cli rc {self.cli_returncode}, "
            f"{self.wall_s:.1f} s); message: {self.info.get('message')}\n--- log tail ---\n{tail}"
        )


@dataclass
class LocalRayHead:
    """A running head node; create with ``LocalRayHead.start()``, always ``stop()`` it (see the fixture)."""

    temp_dir: Path
    dashboard_port: int
    gcs_port: int
    pgid: int
    env: dict[str, str]
    start_s: float = 0.0
    stopped: bool = field(default=False)
    claimed_ports: int | None = None  # the worker-port block this head claimed itself (released by stop)
    signalled: set[int] = field(default_factory=set)  # every process stop() signalled

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @classmethod
    def start(
        cls,
        num_cpus: int = 2,
        timeout_s: float = 90.0,
        *,
        worker_ports: int | None = None,
        extra_args: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
    ) -> LocalRayHead:
        """Start ``ray start --head`` on 127.0.0.1 with free ports and a private temp dir.

        The temp dir is short and under /tmp: Ray's unix socket paths (``<temp>/session_*/sockets/...``) must
        stay under 107 bytes, which pytest's ``tmp_path`` would exceed. ``worker_ports``: the first of the
        head's ``WORKER_PORTS`` worker ports (default: a free block); ``extra_args``/``extra_env`` are
        added to the command line and the environment (the environment is also that of the jobs' drivers).
        """
        temp_dir = Path(tempfile.mkdtemp(prefix="vr-ray-", dir="/tmp"))
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = {**_ray_env(), **(extra_env or {})}
        ports = {
            name: free_port()
            for name in (
                "port",
                "dashboard-port",
                "ray-client-server-port",
                "node-manager-port",
                "object-manager-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        }
        worker_lo = worker_ports if worker_ports is not None else claim_port_block()
        argv = [
            ray_bin,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            f"--min-worker-port={worker_lo}",
            f"--max-worker-port={worker_lo + WORKER_PORTS - 1}",
            *(f"--{name}={port}" for name, port in ports.items()),
            *extra_args,
        ]
        t0 = time.monotonic()
        # A new session makes `ray start` the leader of a fresh process group that its daemons inherit.
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        head = cls(
            temp_dir=temp_dir,
            dashboard_port=ports["dashboard-port"],
            gcs_port=ports["port"],
            pgid=proc.pid,
            env=env,
            claimed_ports=None if worker_ports is not None else worker_lo,
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"`ray start --head` failed (rc {proc.returncode}):\n{out[-4000:]}")
            head._wait_for_jobs_api(deadline=t0 + timeout_s)
        except BaseException:
            proc.kill()
            head.stop()
            raise
        head.start_s = time.monotonic() - t0
        return head

    def _get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.dashboard_url + path, timeout=10) as resp:
            return json.loads(resp.read().decode())

    def _wait_for_jobs_api(self, deadline: float) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            last = self._probe("/api/jobs/")
            if last is None:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Jobs API at {self.dashboard_url} did not come up: {last}")

    def _probe(self, path: str) -> Exception | None:
        """None when ``path`` answers with JSON, else the error."""
        try:
            self._get_json(path)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return exc
        return None

    def job_info(self, submission_id: str) -> dict[str, Any]:
        return self._get_json(f"/api/jobs/{submission_id}")

    def job_logs(self, submission_id: str) -> str:
        return self._get_json(f"/api/jobs/{submission_id}/logs")["logs"]

    def submit(
        self,
        entrypoint: Sequence[str],
        *,
        working_dir: Path,
        runtime_env: dict[str, Any],
        submission_id: str,
        timeout_s: float,
    ) -> JobRun:
        """``ray job submit ... -- <entrypoint>`` (blocking, run from ``working_dir``), then its final status.

        ``entrypoint`` is the argv a user types after ``--``: the CLI shell-quotes each item (``shlex.join``),
        so shell operators need ``["sh", "-c", "a && b"]``.

        On timeout the job is stopped and the run is returned with its last status, so the caller's assertion
        shows the logs.
        """
        ray_bin = str(Path(sys.executable).with_name("ray"))
        argv = [
            ray_bin,
            "job",
            "submit",
            "--address",
            self.dashboard_url,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(working_dir),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            *entrypoint,
        ]
        t0 = time.monotonic()
        try:
            cli = subprocess.run(
                argv, cwd=working_dir, env=self.env, capture_output=True, text=True, timeout=timeout_s
            )
            rc, cli_out = cli.returncode, cli.stdout + cli.stderr
        except subprocess.TimeoutExpired as exc:
            rc, cli_out = -1, f"timed out after {timeout_s} s: {exc.stdout!r} {exc.stderr!r}"
            self.stop_job(submission_id)
        info: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                info = self.job_info(submission_id)
            except (urllib.error.URLError, OSError, ValueError):
                info = {}
            if info.get("status") in TERMINAL or rc == -1:
                break
            time.sleep(0.5)
        try:
            logs = self.job_logs(submission_id)
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            logs = f"(logs unavailable: {exc})"
        return JobRun(
            submission_id=submission_id,
            status=str(info.get("status")),
            logs=logs,
            info=info,
            cli_returncode=rc,
            cli_output=cli_out,
            wall_s=time.monotonic() - t0,
        )

    def stop_job(self, submission_id: str) -> None:
        """``ray job stop`` (a test gives up on a job; its ``submit`` then returns the final status)."""
        ray_bin = str(Path(sys.executable).with_name("ray"))
        subprocess.run(
            [ray_bin, "job", "stop", "--address", self.dashboard_url, submission_id],
            env=self.env,
            capture_output=True,
            timeout=60,
        )

    def uploaded_dirs(self, kind: str) -> list[Path]:
        """The unpacked runtime-env packages on this single node; kind: ``working_dir`` or ``py_modules``."""
        root = self.temp_dir / "session_latest" / "runtime_resources" / f"{kind}_files"
        return sorted(p for p in root.glob("_ray_pkg_*") if p.is_dir())

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM the head's processes, SIGKILL what is left after ``grace_s``, then delete the temp dir.

        Only processes of this head are touched: its process group, anything whose command line names its
        temp dir (workers started by the raylet), and every process below those.
        """
        if self.stopped:
            return
        self.stopped = True
        self.signalled = kill_tree(self.pgid, str(self.temp_dir), grace_s)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.claimed_ports is not None:
            release_port_block(self.claimed_ports)

    def leftover_pids(self) -> list[int]:
        """Processes of this head still alive (should be none after ``stop``): those found now and those
        ``stop`` signalled (re-parented descendants, such as Ray's detached helper actors, are no longer
        found below the head)."""
        return sorted({*node_pids(self.pgid, str(self.temp_dir)), *alive_of(self.signalled)})

    # -- the state API (served by the dashboard): where actors, tasks and nodes are -------------------------
    def state(self, kind: str, limit: int = 10000) -> list[dict[str, Any]]:
        """Rows of ``/api/v0/<kind>`` (``nodes``, ``actors``, ``tasks``), all detail fields."""
        body = self._get_json(f"/api/v0/{kind}?limit={limit}&detail=1")
        data = body.get("data", body)
        while isinstance(data, dict):  # {"result": {"result": [...]}} nests differently across versions
            data = data.get("result", data.get("data"))
        if not isinstance(data, list):
            raise RuntimeError(f"/api/v0/{kind}: unexpected reply {str(body)[:300]}")
        return data

    def ray_job_id(self, submission_id: str) -> str:
        """The hex job id (what the state API files actors and tasks under) of a submitted job."""
        return str(self.job_info(submission_id)["job_id"])


@dataclass
class LocalRayNode:
    """A worker node (``ray start --address``) of a :class:`LocalRayHead`: its own raylet, temp dir, ports,
    worker-port block and custom resource ``label`` (1 unit), in its own process group."""

    label: str
    temp_dir: Path
    pgid: int
    num_cpus: float
    stopped: bool = field(default=False)
    signalled: set[int] = field(default_factory=set)  # every process kill()/stop() signalled

    @classmethod
    def start(
        cls,
        head: LocalRayHead,
        label: str,
        worker_ports: int,
        num_cpus: int = 1,
        extra_args: Sequence[str] = (),
        timeout_s: float = 90.0,
    ) -> LocalRayNode:
        """Join ``head`` with ``num_cpus`` CPUs and the resource ``{label: 1}``; worker ports from
        ``worker_ports`` (``WORKER_PORTS`` of them: give each node a block of its own)."""
        temp_dir = Path(tempfile.mkdtemp(prefix=f"vr-{label}-", dir="/tmp"))
        ray_bin = str(Path(sys.executable).with_name("ray"))
        argv = [
            ray_bin,
            "start",
            f"--address=127.0.0.1:{head.gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps({label: 1})}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--min-worker-port={worker_ports}",
            f"--max-worker-port={worker_ports + WORKER_PORTS - 1}",
            *(f"--{name}={free_port()}" for name in NODE_PORTS),
            *extra_args,
        ]
        pgid = _run_ray_start(argv, head.env, timeout_s)
        return cls(label=label, temp_dir=temp_dir, pgid=pgid, num_cpus=num_cpus)

    def pids(self) -> list[int]:
        """This node's live processes: raylet, agents, workers and everything below them, and any process
        signalled by ``kill``/``stop`` still alive (a re-parented descendant is no longer below the node)."""
        return sorted({*node_pids(self.pgid, str(self.temp_dir)), *alive_of(self.signalled)})

    def kill(self) -> list[int]:
        """SIGKILL the node at once, like a machine that vanishes (no graceful shutdown); returns the pids."""
        pids = self.pids()
        self.signalled |= kill_tree(self.pgid, str(self.temp_dir), grace_s=5.0, first=signal.SIGKILL)
        self.stopped = True
        return pids

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM then SIGKILL the node's processes; the temp dir is kept for inspection (``remove``)."""
        if not self.stopped:
            self.stopped = True
            self.signalled |= kill_tree(self.pgid, str(self.temp_dir), grace_s)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def working_dirs(self) -> list[Path]:
        """The job working dirs this node unpacked (``runtime_resources/working_dir_files/_ray_pkg_*``)."""
        root = self.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
        return sorted(p for p in root.glob("_ray_pkg_*") if p.is_dir())


@dataclass
class LocalRayCluster:
    """A head that schedules nothing (``--num-cpus=0``, as ``cluster.yaml``'s) and worker nodes, one CPU each.

    Every node gets a worker-port block of its own, claimed (:func:`claim_port_block`) so that no other node
    or test session on this machine is handed an overlapping one; ``stop`` gives them back. ``start_node``
    adds a node (a replacement after ``kill``).
    """

    head: LocalRayHead
    nodes: dict[str, LocalRayNode]
    port_blocks: list[int]  # claimed blocks not used yet (for nodes still to start)
    retired: list[LocalRayNode] = field(default_factory=list)
    claimed: list[int] = field(default_factory=list)  # every block claimed, released by stop()

    @classmethod
    def start(
        cls, labels: Sequence[str], spare_nodes: int = 1, extra_env: dict[str, str] | None = None
    ) -> LocalRayCluster:
        """The head plus one node per label; ``spare_nodes`` more worker-port blocks for replacements."""
        port_blocks = [claim_port_block() for _ in range(len(labels) + 1 + spare_nodes)]
        try:
            head = LocalRayHead.start(
                num_cpus=0,
                worker_ports=port_blocks[0],
                extra_args=[CLUSTER_OBJECT_STORE],
                extra_env=extra_env,
            )
        except BaseException:
            for block in port_blocks:
                release_port_block(block)
            raise
        cluster = cls(head=head, nodes={}, port_blocks=port_blocks[1:], claimed=port_blocks)
        try:
            for label in labels:
                cluster.start_node(label)
            cluster.wait_for_nodes(len(labels))
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def start_node(self, label: str, attempts: int = 3) -> LocalRayNode:
        """Add a worker node; retried, because ``ray start`` gives a raylet a fixed 30 s to register and a
        loaded machine (or a GCS busy with a node that just died) can miss that."""
        if not self.port_blocks:
            raise RuntimeError(
                "no worker-port block left for another node (LocalRayCluster.start spare_nodes)"
            )
        for attempt in range(attempts):
            try:
                node = LocalRayNode.start(
                    self.head, label, self.port_blocks[0], extra_args=[CLUSTER_OBJECT_STORE]
                )
                break
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        self.port_blocks.pop(0)
        self.nodes[label] = node
        return node

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.head.state("nodes") if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, workers: int, timeout_s: float = 60.0) -> None:
        """Until the head sees ``workers`` alive worker nodes (plus itself)."""
        deadline, seen = time.monotonic() + timeout_s, -1
        while time.monotonic() < deadline:
            seen = len(self.alive_nodes()) - 1
            if seen == workers:
                return
            time.sleep(0.5)
        raise RuntimeError(f"expected {workers} alive worker nodes, the head sees {seen}")

    def node_ids(self) -> dict[str, str]:
        """``{label: node_id}`` of the alive nodes (``head`` for the head), from their resources."""
        out = {}
        for n in self.alive_nodes():
            total = n.get("resources_total") or {}
            label = next((k for k in self.nodes if k in total), "head" if n.get("is_head_node") else "?")
            out[label] = str(n["node_id"])
        return out

    def kill_node(self, label: str) -> list[int]:
        """SIGKILL node ``label`` (raylet, agents, workers); it moves to ``retired``. Returns the pids."""
        node = self.nodes.pop(label)
        self.retired.append(node)
        return node.kill()

    def all_nodes(self) -> list[LocalRayNode]:
        return [*self.nodes.values(), *self.retired]

    def stop(self) -> None:
        """Stop every worker node, then the head (removing its temp dir), never with ``ray stop``."""
        for node in self.all_nodes():
            node.stop()
        self.head.stop()
        for block in self.claimed:
            release_port_block(block)
        self.claimed = []

    def leftover_pids(self) -> list[int]:
        return sorted({*self.head.leftover_pids(), *(p for n in self.all_nodes() for p in n.pids())})
