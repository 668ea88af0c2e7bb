"""Fault-injection scoreboard: runs the tests/faults suite and prints one JSON object.

Every fault test records each fault it injects (``faults.inject``) and what it cost (``faults.loss``) as one
JSON line in ``$VIDRET_FAULTS_LOG`` (see ``tests/faults/conftest.py``); this script points that at a temporary
file, runs ``python -m pytest -q tests/faults`` (pytest's own output goes to stderr) and aggregates:

  faults_injected, runs_survived (injected faults whose test passed), rows_lost, checkpoints_corrupted,
  known_bugs (faults whose test is an xfail with a reason), by_kind {kind: {injected, survived}},
  failed (test ids with a fault not survived, known bugs excluded), pytest_rc, wall_s.

Exits non-zero when a row was lost, a corrupt checkpoint was loaded, a fault was not survived (other than a
known bug) or pytest itself failed. Arguments it does not know go to pytest unchanged:

    python benchmarks/faults.py                                        # the whole suite
    python benchmarks/faults.py -k "bad_input or security or storage"  # no Ray Train
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAULTS_LOG_ENV = "VIDRET_FAULTS_LOG"  # read by tests/faults/conftest.py


def run_suite(path: str, pytest_args: list[str], log: Path) -> tuple[int, float]:
    """Run pytest on ``path`` with ``$VIDRET_FAULTS_LOG=log``; returns (exit code, wall seconds)."""
    env = {**os.environ, FAULTS_LOG_ENV: str(log)}
    cmd = [sys.executable, "-m", "pytest", "-q", path, *pytest_args]
    print("benchmarks/faults.py: " + " ".join(cmd), file=sys.stderr, flush=True)
    t = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr, check=False).returncode
    return rc, time.perf_counter() - t


def read_records(log: Path) -> list[dict[str, Any]]:
    """The JSON lines the suite wrote (none when no fault test ran)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def summarise(records: list[dict[str, Any]], pytest_rc: int, wall_s: float) -> dict[str, Any]:
    """Totals over the injected faults, per kind, and the tests that did not survive theirs."""
    injected, survived = Counter(), Counter()
    failed: list[str] = []
    for r in records:
        injected[r["kind"]] += 1
        survived[r["kind"]] += bool(r["survived"])
        if not r["survived"] and not r.get("bug") and r["test"] not in failed:
            failed.append(r["test"])
    return {
        "faults_injected": len(records),
        "runs_survived": sum(bool(r["survived"]) for r in records),
        "rows_lost": sum(int(r["rows_lost"]) for r in records),
        "checkpoints_corrupted": sum(int(r["checkpoints_corrupted"]) for r in records),
        "known_bugs": sum(1 for r in records if r.get("bug")),
        "by_kind": {k: {"injected": injected[k], "survived": survived[k]} for k in sorted(injected)},
        "failed": failed,
        "pytest_rc": pytest_rc,
        "wall_s": round(wall_s, 1),
    }


def healthy(result: dict[str, Any]) -> bool:
    """No data lost, no corrupt checkpoint loaded, every fault survived (known bugs aside), pytest passed."""
    return (
        result["rows_lost"] == 0
        and result["checkpoints_corrupted"] == 0
        and not result["failed"]
        and result["pytest_rc"] == 0
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Other arguments (e.g. -k EXPR, -x) are passed to pytest."
    )
    parser.add_argument(
        "--path", default="tests/faults", help="test folder or file, relative to the repo root"
    )
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="vidret-faults-") as tmp:
        log = Path(tmp) / "faults.jsonl"
        rc, wall_s = run_suite(args.path, pytest_args, log)
        result = summarise(read_records(log), rc, wall_s)
    print(json.dumps(result, indent=2))
    return 0 if healthy(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
