"""A throwaway Ray head on 127.0.0.1 for job-submission tests, and a `ray job submit` wrapper.

The head is started with ``ray start --head`` in its own process group and its own ``--temp-dir``, on free
ports, with the dashboard on loopback and token auth off (``RAY_AUTH_MODE=disabled``, ray-notes P3). It is
stopped by signalling that process group and any process whose command line names its temp dir, never with
``ray stop`` (which kills every Ray process on the host, other tests' clusters included, ray-notes 4.6).

Jobs are submitted with the real CLI (``ray job submit``) and inspected through the Jobs REST API of the
dashboard (``/api/jobs/<id>``), so the test process never imports or initialises Ray itself.
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
    do not collide with the single ports ``free_port`` hands out."""
    for _ in range(50):
        start = random.randrange(low, high - count)
        if _range_is_free(start, count):
            return start
    raise RuntimeError(f"no {count} consecutive free ports found in [{low}, {high})")


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

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @classmethod
    def start(cls, num_cpus: int = 2, timeout_s: float = 90.0) -> LocalRayHead:
        """Start ``ray start --head`` on 127.0.0.1 with free ports and a private temp dir.

        The temp dir is short and under /tmp: Ray's unix socket paths (``<temp>/session_*/sockets/...``) must
        stay under 107 bytes, which pytest's ``tmp_path`` would exceed.
        """
        temp_dir = Path(tempfile.mkdtemp(prefix="vr-ray-", dir="/tmp"))
        ray_bin = str(Path(sys.executable).with_name("ray"))
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
        worker_lo = free_port_range(WORKER_PORTS)
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
            try:
                self._get_json("/api/jobs/")
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
                time.sleep(0.5)
        raise RuntimeError(f"the Jobs API at {self.dashboard_url} did not come up: {last}")

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
            subprocess.run(
                [ray_bin, "job", "stop", "--address", self.dashboard_url, submission_id],
                env=self.env,
                capture_output=True,
                timeout=60,
            )
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

    def uploaded_dirs(self, kind: str) -> list[Path]:
        """The unpacked runtime-env packages on this single node; kind: ``working_dir`` or ``py_modules``."""
        root = self.temp_dir / "session_latest" / "runtime_resources" / f"{kind}_files"
        return sorted(p for p in root.glob("_ray_pkg_*") if p.is_dir())

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM the head's processes, SIGKILL what is left after ``grace_s``, then delete the temp dir.

        Only processes of this head are touched: its process group, plus anything whose command line names
        its temp dir (workers started by the raylet).
        """
        if self.stopped:
            return
        self.stopped = True
        marker = str(self.temp_dir)
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            pids = _pids_of_group_or_dir(self.pgid, marker)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _pids_of_group_or_dir(self.pgid, marker):
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes of this head still alive (should be none after ``stop``)."""
        return _pids_of_group_or_dir(self.pgid, str(self.temp_dir))
