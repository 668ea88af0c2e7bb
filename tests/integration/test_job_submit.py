"""`ray job submit` of the jobs/*.py entrypoints to a real (loopback) Ray head, the way a cluster runs them.

One head for the module (``ray start --head`` on 127.0.0.1, private temp dir and ports, see ray_cluster.py);
each job is submitted with ``--working-dir <repo>`` and ``py_modules: ["platform/vidret"]`` exactly as the
README tells users to, writes to absolute paths under tmp_path (a job's cwd is the unpacked working dir), and
is checked through its status, its logs, its outputs and what was uploaded.

jobs/quickstart.py is not submitted here: it is now the whole pipeline (corpus, stage 1, stage 2, evaluation),
minutes on 2 cores; the synth, train and evaluate jobs below cover its pieces within the ~3 min budget.
"""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_cluster import JobRun, LocalRayHead

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the head's cleanup reads /proc (Linux)"),
]

REPO = Path(__file__).resolve().parents[2]
RUNTIME_ENV = {"py_modules": ["platform/vidret"], "env_vars": {"OMP_NUM_THREADS": "1"}}
CONFIG = "configs/synthetic.yaml"
VIDEOS = 24  # 18 train / 2 val / 2 test / 2 ood: enough for batch_size 8
TINY_SYNTH = ["synth.size=32", "synth.seconds=1", "synth.workers=1"]
# Small enough for 2 cores; diffusion.num must stay <= batch_size - 1.
TINY_TRAIN = [
    "train.epochs=1",
    "train.batch_size=8",
    "diffusion.num=7",
    "diffusion.t2v_k=4",
    "diffusion.v2t_k=4",
]
SPLITS = ("train", "val", "test", "ood")
UPLOAD_LIMIT_BYTES = 64 << 20  # Ray refuses > 512 MiB and warns at half; the code is ~1 MiB


def _entrypoint(job: str, *args: str) -> list[str]:
    """What a user types after ``ray job submit ... --``."""
    return ["python", job, "--config", CONFIG, *args]


def _submit(head: LocalRayHead, name: str, entrypoint: list[str], timeout_s: float) -> JobRun:
    return head.submit(
        entrypoint,
        working_dir=REPO,
        runtime_env=RUNTIME_ENV,
        submission_id=f"vidret-test-{name}-{uuid.uuid4().hex[:8]}",
        timeout_s=timeout_s,
    )


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def head() -> Iterator[LocalRayHead]:
    head = LocalRayHead.start(num_cpus=2)
    try:
        yield head
    finally:
        head.stop()
    leftover = head.leftover_pids()
    assert not leftover, f"processes of the test head survived stop(): {leftover}"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def synth_job(head: LocalRayHead, out_dir: Path) -> tuple[JobRun, Path]:
    """jobs/synth.py with 24 videos, preceded by a probe of where the job imports vidret and platform from."""
    corpus = out_dir / "synth"
    probe = [
        "python",
        "-c",
        'import platform, vidret; assert platform.system(); print("VIDRET_FILE=" + vidret.__file__)',
    ]
    synth = _entrypoint("jobs/synth.py", f"synth.out={corpus}", f"synth.videos={VIDEOS}", *TINY_SYNTH)
    entry = ["sh", "-c", f"{shlex.join(probe)} && {shlex.join(synth)}"]
    return _submit(head, "synth", entry, timeout_s=600), corpus


@pytest.fixture(scope="module")
def run_dir(synth_job: tuple[JobRun, Path], out_dir: Path) -> Path:
    """A run folder with the split manifests of the synth job's corpus (written here, in-process: no job
    entrypoint writes manifests alone any more)."""
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.storage import Storage

    job, corpus = synth_job
    if job.status != "SUCCEEDED":
        pytest.skip(f"needs the synth job's corpus: {job.status}")
    run, storage = out_dir / "run", Storage()
    for split in SPLITS:
        result = build_manifest("synthetic", str(corpus / "anns"), str(corpus / "videos"), split, storage)
        write_manifest(result, str(run / "manifest" / f"{split}.parquet"), storage)
    return run


def test_synth_job_writes_the_corpus(synth_job: tuple[JobRun, Path]) -> None:
    job, corpus = synth_job
    assert job.status == "SUCCEEDED", job.describe()
    assert job.cli_returncode == 0, job.describe()
    videos = sorted((corpus / "videos").glob("*.mp4"))
    assert len(videos) == VIDEOS, job.describe()
    assert all(v.stat().st_size > 0 for v in videos), job.describe()
    anns = json.loads((corpus / "anns" / "MSRVTT_data.json").read_text())
    assert sorted(v["video_id"] for v in anns["videos"]) == sorted(v.stem for v in videos)
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["videos"] == VIDEOS
    assert summary["size"] == 32
    assert (corpus / "config.yaml").is_file()
    assert f'"out": "{corpus}"' in job.logs, (
        "the job's stdout (the CLI's JSON summary) is missing from its logs"
    )


def test_job_imports_vidret_from_the_shipped_py_modules(synth_job: tuple[JobRun, Path]) -> None:
    """On a cluster node without the editable install, only runtime_env.py_modules provides the package."""
    job, _ = synth_job
    lines = [ln for ln in job.logs.splitlines() if ln.startswith("VIDRET_FILE=")]
    assert lines, job.describe()
    assert "runtime_resources/py_modules_files/_ray_pkg_" in lines[0], lines[0]
    runtime_env = job.info.get("runtime_env") or {}
    assert str(runtime_env.get("working_dir", "")).startswith("gcs://"), runtime_env
    assert [str(u).startswith("gcs://") for u in runtime_env.get("py_modules", [])] == [True], runtime_env


def test_working_dir_upload_is_code_only(head: LocalRayHead, synth_job: tuple[JobRun, Path]) -> None:
    job, _ = synth_job
    assert job.status == "SUCCEEDED", job.describe()
    (pkg,) = head.uploaded_dirs("working_dir")
    files = _files(pkg)
    assert {"jobs/synth.py", "jobs/train.py", "configs/synthetic.yaml", "constraints.txt"} <= files
    top = {f.split("/", 1)[0] for f in files}
    assert not top & {".venv", "venv", "runs", "out", ".git", ".pytest_cache", ".ruff_cache"}, sorted(top)
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pt", ".ckpt", ".mp4"))]
    size = sum((pkg / f).stat().st_size for f in files)
    assert size < UPLOAD_LIMIT_BYTES, f"working dir upload is {size / 2**20:.1f} MiB"
    (mod,) = head.uploaded_dirs("py_modules")
    assert (mod / "vidret" / "cli" / "main.py").is_file()
    assert not (mod / "__init__.py").exists()


def test_train_job_exports_stage1_weights(head: LocalRayHead, run_dir: Path) -> None:
    run = run_dir
    entry = _entrypoint(
        "jobs/train.py",
        f"run.out={run}",
        f"data.manifest={run / 'manifest'}",
        f"train.storage_path={run / 'ray-results'}",
        *TINY_TRAIN,
    )
    job = _submit(head, "train", entry, timeout_s=600)
    assert job.status == "SUCCEEDED", job.describe()
    assert job.cli_returncode == 0, job.describe()
    weights = run / "checkpoints" / "discrimination"
    assert weights.exists(), f"no exported weights under {weights}\n{job.describe()}"
    assert _files(weights), f"no exported weights under {weights}\n{job.describe()}"


def test_evaluate_job_writes_results(head: LocalRayHead, run_dir: Path) -> None:
    run = run_dir
    if not (run / "checkpoints").exists():
        pytest.fail("needs the weights exported by test_train_job_exports_stage1_weights")
    before = _files(run)
    entry = _entrypoint(
        "jobs/evaluate.py", f"run.out={run}", f"data.manifest={run / 'manifest'}", *TINY_TRAIN
    )
    job = _submit(head, "evaluate", entry, timeout_s=600)
    assert job.status == "SUCCEEDED", job.describe()
    assert job.cli_returncode == 0, job.describe()
    assert _files(run) - before, f"the evaluation wrote nothing under {run}\n{job.describe()}"
