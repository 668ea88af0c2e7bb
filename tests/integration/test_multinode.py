"""A real three-raylet Ray cluster on this machine, every byte on (moto) S3, jobs through ``ray job submit``.

The head schedules nothing (``--num-cpus=0``, as ``cluster.yaml``'s head); two worker nodes of one CPU each
join it with ``ray start --address``, each with its own temp dir, ports, worker-port block and a custom
resource naming it (``ray_cluster.LocalRayCluster``). The corpus, manifests, Ray Train storage, checkpoints,
feature cache and evaluation output all live in one S3 bucket; no job is given a local path.

* stage 1 with 2 Ray Train workers lands one worker on each node (node ids from the state API), then builds
  the feature cache; stage 2 trains on it; the evaluation's re-ranking tasks run on both nodes;
* a worker node is SIGKILLed (its raylet, agents and workers, found by its temp dir) once stage 1 has
  registered a checkpoint, and a replacement node joins: the run resumes from that checkpoint and exports the
  weights of the uninterrupted run bit for bit (the rule of the single-node resume test in test_train.py);
* each node's unpacked working dir holds the shipped code only: no job wrote an output next to it;
* resource planning (``vidret.startup.start_job``): stage 1 at the default sizing fails within seconds with
  one line naming the shortfall and the knobs, before any actor exists; a multi-node job with a local
  ``run.out`` is refused (unless ``storage.shared_filesystem``); the pending watchdog ends a job whose actor
  cannot be placed; no actor of any job runs on the head (the actor table says where each one ran).

Sizing (2 CPUs in all): Train workers at 0.8 CPU and decode actors at 0.125 CPU, with
``data.decode_actors=auto`` shrinking each pool from 2 actors to 1 so that stage 1 fits (and saying so). The
default (1 CPU per Train worker plus two 0.5-CPU decode actors per pipeline) needs 4 CPUs: without the plan
its decode actors stayed pending forever on two 1-CPU nodes; with it the job fails before it starts.
Wall time of the module on the shared 2-core machine: 349 s (stage 1 154 s, stage 2 39 s, evaluation 20 s,
the node-kill run 107 s, cluster start and teardown the rest); about 3x that when the machine is saturated.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ray_cluster import JobRun, LocalRayCluster

from vidret.config import StorageConfig, SynthConfig
from vidret.storage import Storage, join

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.s3,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="node processes are found via /proc"),
]

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/synthetic.yaml"
LABELS = ("node_a", "node_b")
REPLACEMENT = "node_c"
VIDEOS = 40  # 32 train / 2 val / 4 test / 2 ood
STEPS = 8
TRAIN_WORKER = "RayTrainWorker"
RERANK_TASK = "_rerank_task"
# The GCS notices a vanished raylet within ~3 s instead of the default ~30 s.
FAST_NODE_FAILURE = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
RUNTIME_ENV = {"py_modules": ["platform/vidret"], "env_vars": {"OMP_NUM_THREADS": "1"}}
SIZING = [
    "train.cpus_per_worker=0.8",
    "data.decode_cpus=0.125",
    "data.decode_concurrency=2",
    "data.decode_actors=auto",
]
AUTO_NOTE = "[plan] data.decode_actors=auto: 1 decode actor(s) per pool instead of data.decode_concurrency=2"
DEFAULT_SIZING_ERROR = (
    "vidret train: error: stage 1 needs 4 CPUs (2 workers x 1 + 4 decode actors x 0.5), the cluster has 2: "
    "lower train.cpus_per_worker or data.decode_cpus, or add nodes"
)
# vidret's own actors: the Ray Train workers, Ray Data's workers running vidret's stages (decoding, the
# encoders) and the bad-video logs. Ray's own helpers are not vidret's to place: Ray Train V2 pins its
# controller and the controller's helpers to the driver's node (the head under `ray job submit`), and Ray
# Data's statistics and autoscaling actors are detached actors of Ray's.
VIDRET_ACTORS = (TRAIN_WORKER, "BadVideoLog", "MapWorker(")
TINY = [
    "run.seed=7",
    "data.size=32",
    "data.max_frames=4",
    "data.framerate=4",
    "data.max_words=16",
    "data.decoder=pyav",
    "data.rows_per_block=4",
    "data.test_split=test",
    "data.extra_eval_splits=[]",
    "model.preset=debug",
    "model.temporal_layers=1",
    "diffusion.steps=10",
    "diffusion.num=7",
    "diffusion.t2v_k=3",
    "diffusion.v2t_k=3",
    "train.batch_size=8",
    "train.epochs=1",
    f"train.max_steps={STEPS}",
    "train.lr=1e-3",
    "train.coef_lr=1.0",
    "train.optimizer=adamw",
    "train.schedule=warmup_cosine",
    "train.warmup_proportion=0.0",
    "train.bf16=false",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=2",
    "train.log_every=1000",
    "train.num_workers=2",
    "train.max_failures=1",
    "eval.batch_size=16",
    "eval.splits=[test]",
    "eval.num_workers=2",
    "eval.report=false",
]
OUTPUT_NAMES = re.compile(
    r"(\.parquet|\.pt|\.mp4|\.npz|\.npy|events\.out\.tfevents.*|checkpoint_manager_snapshot\.json|"
    r"metrics\.json|index\.json|config\.(discrimination|generation)\.yaml)$"
)


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bucket(moto_server: str) -> Iterator[tuple[StorageConfig, str]]:
    """One bucket for the module (the jobs of the module share its corpus and runs)."""
    import boto3

    name = f"vidret-multinode-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    try:
        yield StorageConfig(endpoint_url=moto_server, region="us-east-1"), f"s3://{name}"
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def cluster(moto_server: str) -> Iterator[LocalRayCluster]:
    """Head (0 CPU) + two 1-CPU worker nodes; started after moto, so every node inherits its credentials."""
    cluster = LocalRayCluster.start(LABELS, extra_env=FAST_NODE_FAILURE)
    try:
        yield cluster
    finally:
        cluster.stop()
        leftover = cluster.leftover_pids()
        for node in cluster.all_nodes():
            node.remove()
    assert not leftover, f"processes of the test cluster survived stop(): {leftover}"


@pytest.fixture(scope="module")
def corpus(bucket: tuple[StorageConfig, str]) -> str:
    """The generated corpus and its split manifests, written straight to S3; returns the manifest prefix."""
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.data.synthetic import generate_corpus

    storage_cfg, root = bucket
    storage = Storage(storage_cfg)
    out = join(root, "corpus")
    generate_corpus(
        SynthConfig(out=out, videos=VIDEOS, size=32, seconds=1.0, fps=4, seed=0, workers=1), storage
    )
    for split in ("train", "val", "test"):
        result = build_manifest("synthetic", join(out, "anns"), join(out, "videos"), split, storage)
        write_manifest(result, join(root, "manifest", f"{split}.parquet"), storage)
    return join(root, "manifest")


def _overrides(bucket: tuple[StorageConfig, str], manifest: str, run: str) -> list[str]:
    storage_cfg, root = bucket
    return [
        f"storage.endpoint_url={storage_cfg.endpoint_url}",
        f"storage.region={storage_cfg.region}",
        f"run.out={join(root, 'runs', run)}",
        f"data.manifest={manifest}",
        f"train.storage_path={join(root, 'ray-results')}",
        *TINY,
        *SIZING,
    ]


def _submission_id(name: str) -> str:
    return f"vidret-multinode-{name}-{uuid.uuid4().hex[:6]}"


def _submit(
    cluster: LocalRayCluster, name: str, job: str, overrides: list[str], submission_id: str | None = None
) -> JobRun:
    return cluster.head.submit(
        ["python", job, "--config", CONFIG, *overrides],
        working_dir=REPO,
        runtime_env=RUNTIME_ENV,
        submission_id=submission_id or _submission_id(name),
        timeout_s=900,
    )


def _nodes_of(cluster: LocalRayCluster, run: JobRun, kind: str, name: str) -> list[str]:
    """Node ids of the actors (class ``name``) or tasks (function ``name``) of a job, from the state API."""
    job_id = cluster.head.ray_job_id(run.submission_id)
    key = "class_name" if kind == "actors" else "name"
    rows = [
        r
        for r in cluster.head.state(kind)
        if r.get("job_id") == job_id and str(r.get(key, "")).split(".")[-1] == name
    ]
    return [str(r.get("node_id")) for r in rows]


def _actors_of(cluster: LocalRayCluster, run: JobRun) -> list[dict[str, Any]]:
    """The actor table's rows of a job (class name, node id, state)."""
    job_id = cluster.head.ray_job_id(run.submission_id)
    return [r for r in cluster.head.state("actors") if r.get("job_id") == job_id]


def _default_sizing(args: list[str]) -> list[str]:
    """``args`` at the default sizing (1 CPU per Train worker, pools of two 0.5-CPU decode actors)."""
    return [a for a in args if a not in SIZING]


# -- resource planning and storage: refused before anything starts ------------------------------------------
def test_local_run_out_is_refused_and_the_default_sizing_fails_fast(
    cluster: LocalRayCluster, bucket: tuple[StorageConfig, str], corpus: str
) -> None:
    local = f"/tmp/vidret-multinode-local-{uuid.uuid4().hex[:8]}"
    args = [*_overrides(bucket, corpus, "local"), f"run.out={local}"]
    run = _submit(cluster, "local", "jobs/train.py", args)
    assert run.status == "FAILED", run.describe()
    assert (
        f"the Ray cluster has 3 nodes but these paths are local to one machine: run.out={local}. "
        "Use s3:// URIs, or set storage.shared_filesystem=true"
    ) in run.logs, run.describe()
    assert _actors_of(cluster, run) == []
    assert not Path(local).exists(), "the refused job wrote to its local run.out"
    # declared shared, the same path passes the guard and the resource plan decides: the default sizing (1 CPU
    # per Train worker, pools of two 0.5-CPU decode actors) cannot fit two 1-CPU nodes
    shared = _submit(
        cluster, "shared", "jobs/train.py", [*_default_sizing(args), "storage.shared_filesystem=true"]
    )
    assert shared.status == "FAILED", shared.describe()
    assert "paths are local" not in shared.logs
    assert DEFAULT_SIZING_ERROR in shared.logs, shared.describe()
    assert _actors_of(cluster, shared) == [], "the job started actors before it was refused"
    print(f"default sizing refused: job round trip {shared.wall_s:.1f} s")


PENDING_PROBE = """
import ray
from vidret.watchdog import PendingWatchdog

@ray.remote
class Probe:
    def ping(self):
        return 1

ray.init()
probe = Probe.options(num_cpus=0, resources={"no_such_node": 1}).remote()
with PendingWatchdog(5, poll_s=1):
    ray.get(probe.ping.remote())
"""


def test_the_watchdog_ends_a_job_whose_actor_cannot_be_placed(cluster: LocalRayCluster) -> None:
    run = cluster.head.submit(
        ["python", "-c", PENDING_PROBE],
        working_dir=REPO,
        runtime_env=RUNTIME_ENV,
        submission_id=_submission_id("pending"),
        timeout_s=300,
    )
    assert run.status == "FAILED", run.describe()
    line = next((x for x in run.logs.splitlines() if "PendingTimeoutError: " in x), "")
    assert line.startswith(
        "vidret.watchdog.PendingTimeoutError: pending for more than 5 s (run.pending_timeout_s), the job "
        "was stopped: actor Probe asking for {"
    ), run.describe()
    assert "no_such_node: 1" in line, line
    print(f"unplaceable actor stopped by the watchdog: job round trip {run.wall_s:.1f} s")


@pytest.fixture(scope="module")
def pipeline(cluster: LocalRayCluster, bucket: tuple[StorageConfig, str], corpus: str) -> dict[str, Any]:
    """Stage 1 (+ feature cache), stage 2 and the evaluation of run ``ref``, each a submitted job, and the
    node ids of the worker nodes while they ran."""
    ids = cluster.node_ids()
    args = _overrides(bucket, corpus, "ref")
    t0 = time.monotonic()
    stage1 = _submit(cluster, "stage1", "jobs/train.py", args)
    stage2 = _submit(cluster, "stage2", "jobs/train.py", [*args, "train.stage=generation"])
    evaluation = _submit(cluster, "evaluate", "jobs/evaluate.py", args)
    wall = {"stage1": stage1.wall_s, "stage2": stage2.wall_s, "evaluate": evaluation.wall_s}
    print(f"multinode pipeline: {json.dumps(wall)} (total {time.monotonic() - t0:.0f} s)")
    return {"ids": ids, "stage1": stage1, "stage2": stage2, "evaluate": evaluation, "args": args}


# -- the pipeline ------------------------------------------------------------------------------------------
def test_stage1_places_one_train_worker_per_node(cluster: LocalRayCluster, pipeline: dict[str, Any]) -> None:
    run: JobRun = pipeline["stage1"]
    assert run.status == "SUCCEEDED", run.describe()
    workers = _nodes_of(cluster, run, "actors", TRAIN_WORKER)
    ids = pipeline["ids"]
    assert sorted(workers) == sorted([ids["node_a"], ids["node_b"]]), (workers, ids)
    assert ids["head"] not in workers
    assert "[cache] encoded" in run.logs, run.describe()
    assert AUTO_NOTE in run.logs, run.describe()  # the pools were shrunk to fit, and the log says so


def test_no_actor_of_any_job_runs_on_the_head(cluster: LocalRayCluster, pipeline: dict[str, Any]) -> None:
    head = pipeline["ids"]["head"]
    actors = {name: _actors_of(cluster, pipeline[name]) for name in ("stage1", "stage2", "evaluate")}
    on_head = {
        (name, str(a.get("class_name")))
        for name, rows in actors.items()
        for a in rows
        if a.get("node_id") == head
    }
    ours = sorted(x for x in on_head if x[1].startswith(VIDRET_ACTORS))
    assert ours == [], f"vidret actors placed on the head: {ours}"
    print(f"Ray's own actors on the head: {sorted({c for _, c in on_head})}")
    classes = [str(a.get("class_name")) for a in actors["stage1"]]
    # not vacuous: the zero-CPU actors (the bad-video logs, the validation decode actor) are among them
    assert classes.count(TRAIN_WORKER) == 2, classes
    assert classes.count("BadVideoLog") >= 3, classes
    assert any("_DecodeStage" in c for c in classes), classes


def test_stage2_and_outputs_on_s3(
    cluster: LocalRayCluster, pipeline: dict[str, Any], bucket: tuple[StorageConfig, str]
) -> None:
    run: JobRun = pipeline["stage2"]
    assert run.status == "SUCCEEDED", run.describe()
    assert "[cache] train: reusing" in run.logs, "stage 2 did not find stage 1's feature cache on S3"
    workers = _nodes_of(cluster, run, "actors", TRAIN_WORKER)
    assert len(set(workers)) == 2, workers
    assert pipeline["ids"]["head"] not in workers, workers
    storage_cfg, root = bucket
    storage = Storage(storage_cfg)
    runs = join(root, "runs", "ref")
    for part in (
        "checkpoints/discrimination",
        "checkpoints/generation",
        "features",
        "config.generation.yaml",
    ):
        assert storage.list(join(runs, part)), f"missing {part} on S3"
    snapshots = [u for u in storage.list(join(root, "ray-results")) if u.endswith("snapshot.json")]
    assert snapshots, "no Ray Train run state on S3"


def test_evaluation_reranks_on_both_nodes(
    cluster: LocalRayCluster, pipeline: dict[str, Any], bucket: tuple[StorageConfig, str]
) -> None:
    run: JobRun = pipeline["evaluate"]
    assert run.status == "SUCCEEDED", run.describe()
    tasks = _nodes_of(cluster, run, "tasks", RERANK_TASK)
    ids = pipeline["ids"]
    assert set(tasks) == {ids["node_a"], ids["node_b"]}, (tasks, ids)
    storage_cfg, root = bucket
    metrics = json.loads(
        Storage(storage_cfg).read_text(join(root, "runs", "ref", "eval", "generation", "metrics.json"))
    )
    assert set(metrics["splits"]["test"]) == {"stage1", "rerank"}, metrics["splits"]


# -- losing a node in the middle of stage 1 ------------------------------------------------------------------
def _registered_step(storage: Storage, uri: str) -> int:
    try:
        snap = json.loads(storage.read_text(uri))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    latest = snap.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("step", 0))


class _NodeKiller(threading.Thread):
    """Once Ray Train has registered a stage-1 checkpoint (its snapshot on S3), SIGKILLs node ``label`` and
    starts the replacement node."""

    def __init__(
        self, cluster: LocalRayCluster, storage: Storage, snapshot_uri: str, label: str, submission_id: str
    ) -> None:
        super().__init__(daemon=True)
        self.cluster, self.storage, self.snapshot_uri, self.label = cluster, storage, snapshot_uri, label
        self.submission_id = submission_id
        self.killed: list[int] = []
        self.at_step = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and self.at_step == 0:
                self.at_step = _registered_step(self.storage, self.snapshot_uri)
                time.sleep(0.2)
            if self.at_step:
                self.killed = self.cluster.kill_node(self.label)
                self.cluster.start_node(REPLACEMENT)
        except BaseException as exc:  # reported by the test; the job would wait for a node forever
            self.error = exc
            self.cluster.head.stop_job(self.submission_id)


def _copy_prefix(storage: Storage, src: str, dst: str) -> int:
    """Server-side copy of every object below ``src`` to ``dst``; returns the count."""
    uris = storage.list(src)
    for uri in uris:
        storage.copy(uri, dst + uri[len(src) :])
    return len(uris)


def test_node_killed_in_stage1_resumes_to_the_same_weights(
    cluster: LocalRayCluster, pipeline: dict[str, Any], bucket: tuple[StorageConfig, str], corpus: str
) -> None:
    from vidret.model.checkpoint import load_state

    storage_cfg, root = bucket
    storage = Storage(storage_cfg)
    # the reference's feature cache, keyed by the stage-1 weights: reused only if the weights come out equal
    assert _copy_prefix(
        storage, join(root, "runs", "ref", "features"), join(root, "runs", "kill", "features")
    )
    snapshot = join(root, "ray-results", "kill-discrimination", "checkpoint_manager_snapshot.json")
    submission_id = _submission_id("kill")
    killer = _NodeKiller(cluster, storage, snapshot, "node_b", submission_id)
    killer.start()
    run = _submit(cluster, "kill", "jobs/train.py", _overrides(bucket, corpus, "kill"), submission_id)
    killer.join(timeout=60)
    assert killer.error is None, f"the node killer failed: {killer.error!r}"
    assert killer.killed, f"node_b was never killed (no checkpoint registered?)\n{run.describe()}"
    assert run.status == "SUCCEEDED", run.describe()
    resumed = [int(m) for m in re.findall(r"\[train\] resuming discrimination at step (\d+)/", run.logs)]
    assert resumed, f"the run did not resume from a checkpoint\n{run.describe()}"
    assert 0 < resumed[-1] < STEPS, resumed
    assert resumed[-1] >= killer.at_step, (
        f"resumed from {resumed[-1]}, but step {killer.at_step} was registered"
    )
    ids = cluster.node_ids()
    workers = set(_nodes_of(cluster, run, "actors", TRAIN_WORKER))
    assert {pipeline["ids"]["node_b"], ids[REPLACEMENT], ids["node_a"]} <= workers, (workers, ids)
    ref = load_state(join(root, "runs", "ref", "checkpoints", "discrimination"), storage)
    got = load_state(join(root, "runs", "kill", "checkpoints", "discrimination"), storage)
    assert got["step"] == ref["step"] == STEPS
    assert got["key"] == ref["key"], "the resumed run's encoder differs from the uninterrupted run's"
    differ = [k for k in ref["selected"] if not torch.equal(ref["selected"][k], got["selected"][k])]
    assert not differ, f"exported weights differ from the uninterrupted run's: {differ[:5]}"
    assert "[cache] train: reusing" in run.logs  # equal weights, equal key: the copied cache serves it
    print(
        f"node_b killed after the checkpoint of step {killer.at_step} ({len(killer.killed)} processes); "
        f"resumed from step {resumed[-1]} on node_a + {REPLACEMENT}; job {run.wall_s:.0f} s"
    )


# -- no node relies on a local path --------------------------------------------------------------------------
def test_node_working_dirs_hold_code_only(cluster: LocalRayCluster, pipeline: dict[str, Any]) -> None:
    """Every node unpacked its own copy of the working dir and no job wrote an output anywhere under a
    node's temp dir (all outputs went to S3)."""
    nodes = cluster.all_nodes()
    for node in nodes:
        dirs = node.working_dirs()
        assert dirs, f"{node.label} never unpacked the job's working dir (did no work run there?)"
        for pkg in dirs:
            extra = [
                str(p.relative_to(pkg))
                for p in pkg.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and not (REPO / p.relative_to(pkg)).is_file()
            ]
            assert not extra, f"{node.label}: files written into the working dir {pkg}: {extra[:10]}"
    for temp in [cluster.head.temp_dir, *(n.temp_dir for n in nodes)]:
        outputs = [str(p) for p in temp.rglob("*") if p.is_file() and OUTPUT_NAMES.search(p.name)]
        assert not outputs, f"job outputs on a node's local disk: {outputs[:10]}"
