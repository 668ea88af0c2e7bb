"""The benchmarks' quick modes and the check that one prints exactly one JSON object on stdout; used by
``test_benchmarks_json.py`` and by the ``test_benchmark_<name>_json.py`` files (the long quick modes each have
their own file, so that `make test`'s two pytest-xdist workers, which share out whole files, run them side by
side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The smallest mode of each script (read each one's --help): sizes that run in a minute or two on 2 cores.
QUICK = {
    # --n 2: too few rows for a steady rate; 3-4 s clips and one repeat: the same code, less work
    "decode.py": ["--n", "4", "--pool", "2", "--bare", "1", "--seconds", "3", "4", "--repeats", "1"],
    "evaluate.py": ["--quick"],
    # two fault tests (the suite runs all of them itself): the scoreboard's code, in 5 s instead of 30 s
    "faults.py": [
        "--path",
        "tests/faults/test_bad_input.py",
        "-x",
        "-q",
        "-k",
        "msvd_pickle or column_counts",
    ],
    "rerank.py": ["--quick"],
    "scale.py": ["--quick"],
    "train.py": ["--videos", "16", "--frames", "4", "--batch", "4", "--steps", "1", "--ray-steps", "2"],
}


# Scripts checked elsewhere or that cannot run from a fresh clone, and modules that are not scripts.
ELSEWHERE = {
    "gpu.py": "tests/integration/test_gpu_benchmark_smoke.py runs --cpu-smoke and parses its JSON",
    "search.py": "needs the demo's trained weights (make demo); tests/integration/test_search.py covers it",
}
MODULES = {"child.py", "scale_projection.py"}

# Quick modes long enough to get a test file of their own: tests/integration/test_benchmark_<stem>_json.py.
OWN_FILE = ("decode.py", "scale.py", "train.py")


def check_quick_mode(script: str) -> None:
    """Run ``benchmarks/<script>`` in its quick mode; fail unless its stdout is one non-empty JSON object."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("VIDRET_LOG", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *QUICK[script]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        pytest.fail(
            f"{script}: stdout is not one JSON object ({err}), exit status {proc.returncode}; stdout was:\n"
            f"{proc.stdout[:2000]}\nstderr ended with:\n{proc.stderr[-2000:]}"
        )
    assert isinstance(result, dict) and result, f"{script}: empty result"
    assert "worker processes have been started" not in proc.stdout
