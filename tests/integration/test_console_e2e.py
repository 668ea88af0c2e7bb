"""The console end to end: a real `vidret train` then `vidret evaluate`, each in its own process with its
output captured (not a terminal), as a user or CI sees them.

What must hold (issue 14): no line of Ray's, Ray Train's, Ray Data's, torch's or our own known noise; vidret's
progress lines with an ETA for the training steps and the feature cache; `--json` keeps stdout one JSON
object; a run ends with its table, verdicts and paths (not a JSON dump) and writes TensorBoard events for
training and evaluation. Removing the console wiring (setup_console in the CLI, the quiet runtime
environment of ensure_ray, the training progress, the writable batches, the cache's actor pool settings)
makes one of these fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import make_corpus, small_config

from vidret.config import dump_yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]

# Noise seen on the console before the wiring (issue 14), by what produced it.
NOISE: dict[str, re.Pattern[str]] = {
    "Ray's INFO log lines (e.g. 'INFO worker.py -- Started a local Ray instance')": re.compile(
        r"\bINFO \w+\.py:\d+ --"
    ),
    "Ray Train's per-report line": re.compile(r"Reporting training result"),
    "Ray Train's checkpoint line": re.compile(r"Checkpoint successfully created"),
    "Ray Train's worker-group set-up lines": re.compile(r"Started training worker group|Attempting to start"),
    "Ray Data's execution banners": re.compile(r"Starting execution of Dataset|Execution plan of Dataset"),
    "Ray Data's disabled-progress-bar warning": re.compile(r"Progress bars disabled"),
    "our deprecated `concurrency` argument": re.compile(r"concurrency.{0,3} is deprecated"),
    "Ray's deprecation warnings": re.compile(r"RayDeprecationWarning"),
    "torch's read-only NumPy warning": re.compile(r"NumPy array is not writable"),
    "the raylet's worker count": re.compile(r"worker processes have been started"),
    "Ray's worker prefixes": re.compile(
        r"\((RayTrainWorker|TrainController|MapWorker|PlacementGroupCleaner)[^)]*pid="
    ),
    "Ray's token-auth notice": re.compile(r"Token authentication is enabled"),
    "the core worker's actor-restart advice (the driver's own, on fd 2)": re.compile(
        r"has constructor arguments in the object store"
    ),
    "the state API lookup of another Ray instance": re.compile(r"Found multiple active Ray instances"),
    "FFmpeg's decoder lines": re.compile(r"^\[\w+ @ 0x[0-9a-f]+\]"),
    "ANSI colour codes": re.compile("\x1b\\["),
}
STEPS = 6
TRAIN_PROGRESS = re.compile(
    rf"^\[train discrimination\] step (\d+)/{STEPS} \(\d+%\) [\d.]+ step/s ETA \d+:\d\d:\d\d loss [\d.]+"
    r" samples/s [\d.]+ data \d+%$",
    re.MULTILINE,
)
CACHE_PROGRESS = re.compile(r"^\[cache videos\] video \d+/\d+ \(\d+%\) .* ETA \d+:\d\d:\d\d$", re.MULTILINE)


def _vidret(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIDRET_LOG", "NO_COLOR", "RAY_ADDRESS")}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), env.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, "-m", "vidret", *argv],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


def _noise(text: str) -> list[str]:
    return [f"{what}: {line!r}" for line in text.splitlines() for what, p in NOISE.items() if p.search(line)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny corpus, `vidret train --json` (stage 1) and `vidret evaluate` on its weights."""
    tmp = tmp_path_factory.mktemp("console")
    corpus = make_corpus(tmp, videos=32)
    cfg = small_config(tmp / "run", corpus.manifest, "run.num_cpus=2", f"train.max_steps={STEPS}")
    config = tmp / "config.yaml"
    config.write_text(dump_yaml(cfg))
    train = _vidret("train", "--config", str(config), "--json", cwd=tmp)
    assert train.returncode == 0, train.stderr[-4000:]
    evaluate = _vidret(
        "evaluate", "--config", str(config), "eval.report=false", "eval.bootstrap_resamples=20", cwd=tmp
    )
    assert evaluate.returncode == 0, evaluate.stderr[-4000:]
    return {"root": tmp / "run", "train": train, "evaluate": evaluate}


def test_no_library_noise_on_the_console(run: dict[str, object]) -> None:
    seen = []
    for name in ("train", "evaluate"):
        proc = run[name]
        assert isinstance(proc, subprocess.CompletedProcess)
        seen += [f"{name}: {n}" for n in _noise(proc.stdout + "\n" + proc.stderr)]
    assert not seen, "\n".join(seen)


def test_progress_lines_with_eta_for_training_and_the_feature_cache(run: dict[str, object]) -> None:
    train = run["train"]
    assert isinstance(train, subprocess.CompletedProcess)
    steps = [int(m.group(1)) for m in TRAIN_PROGRESS.finditer(train.stderr)]
    assert steps and steps[-1] == STEPS, train.stderr  # the first step and the last always show
    assert CACHE_PROGRESS.search(train.stderr), train.stderr


def test_json_flag_keeps_stdout_one_json_object(run: dict[str, object]) -> None:
    train = run["train"]
    assert isinstance(train, subprocess.CompletedProcess)
    summary = json.loads(train.stdout)  # the whole stdout: nothing else was printed there
    assert summary["stage"] == "discrimination" and summary["steps"] == STEPS


def test_a_run_ends_with_table_verdicts_paths_and_tensorboard(run: dict[str, object]) -> None:
    evaluate, root = run["evaluate"], run["root"]
    assert isinstance(evaluate, subprocess.CompletedProcess) and isinstance(root, Path)
    out = evaluate.stdout
    assert "R@1" in out and not out.lstrip().startswith("{"), out  # the table, not a JSON dump
    summary = root / "eval" / "discrimination" / "summary.json"
    assert re.search(rf"^summary: +{re.escape(str(summary))}$", out, re.MULTILINE), out
    assert f"tensorboard --logdir {root / 'tensorboard'}" in out, out
    assert json.loads(summary.read_text())["stage"] == "discrimination"
    for stage in ("discrimination", "eval"):
        assert list((root / "tensorboard" / stage).glob("events.out.tfevents.*")), stage
