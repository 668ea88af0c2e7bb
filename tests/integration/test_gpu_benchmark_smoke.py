"""``benchmarks/gpu.py --cpu-smoke``: the GPU benchmark's code (stage 1 in memory and through the Ray Data
decode pipeline, stage 2 on encoded features, evaluation with re-ranking) runs at tiny sizes on CPU, so the
script cannot rot where no GPU is available. It prints only JSON, every section present and error-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("stage1_compute", "stage1_end_to_end", "stage2_cached", "evaluation")


def test_gpu_benchmark_cpu_smoke() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "platform"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)  # stdout is one JSON object and nothing else
    assert report["device"] == "cpu"
    assert report["errors"] == [], [report[k].get("traceback") for k in report["errors"]]
    for name in SECTIONS:
        assert "error" not in report[name], report[name]
    assert report["stage1_compute"]["samples_per_s"] > 0
    assert report["stage1_end_to_end"]["timed_samples"] > 0
    assert report["stage2_cached"]["samples_per_s"] > 0
    assert report["evaluation"]["rerank_directions"] == ["t2v", "v2t"]
