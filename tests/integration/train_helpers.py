"""Helpers for the training integration tests and ``benchmarks/train.py``: a small generated corpus with its
manifests, a small training config, per-step scalars from the TensorBoard event files, exported weights, and
the Ray Train worker processes of this driver's local Ray instance (to SIGKILL one).

Nothing here starts Ray: the tests' session fixture (tests/conftest.py) and the benchmark do.
"""

from __future__ import annotations

import importlib
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vidret.config import Config, SynthConfig, load_config
from vidret.storage import Storage, join

SPLITS = ("train", "val", "test", "ood")
TRAIN_WORKER_CLASS = "RayTrainWorker"


@dataclass(frozen=True)
class Corpus:
    """A generated corpus (``root``) and the folder of its per-split manifests (``manifest``)."""

    root: Path
    manifest: Path
    summary: dict


def make_corpus(
    out: Path, videos: int = 64, size: int = 32, seconds: float = 1.0, fps: int = 4, seed: int = 0
) -> Corpus:
    """Generate ``videos`` synthetic clips under ``out/corpus`` and write ``out/manifest/<split>.parquet``."""
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.data.synthetic import generate_corpus

    storage = Storage()
    root, manifest = out / "corpus", out / "manifest"
    summary = generate_corpus(
        SynthConfig(out=str(root), videos=videos, size=size, seconds=seconds, fps=fps, seed=seed, workers=1),
        storage,
    )
    for split in SPLITS:
        result = build_manifest("synthetic", str(root / "anns"), str(root / "videos"), split, storage)
        write_manifest(result, join(str(manifest), f"{split}.parquet"), storage)
    return Corpus(root=root, manifest=manifest, summary=summary)


def small_config(
    out: Path, manifest: Path, *overrides: str, workers: int = 1, steps: int = 6, batch: int = 8
) -> Config:
    """A debug-model config for a few steps on the 32 px corpus that fits 2 logical CPUs with 2 workers.

    Resources (docs/stack-notes.md P8): stage 1 has one dataset per worker plus the validation dataset,
    each with one
    decode actor at 0.25 CPU, and ``workers`` Train workers at 0.5 CPU: at most 1.75 of 2 CPUs.
    """
    return load_config(
        None,
        [
            f"run.out={out}",
            "run.seed=7",
            f"data.manifest={manifest}",
            "data.size=32",
            "data.max_frames=4",
            "data.framerate=4",
            "data.max_words=16",
            "data.decoder=pyav",
            "data.decode_concurrency=1",
            "data.decode_cpus=0.25",
            "data.rows_per_block=4",
            "data.extra_eval_splits=[]",
            "model.preset=debug",
            "model.temporal_layers=1",
            "diffusion.steps=10",
            f"diffusion.num={batch - 1}",
            "diffusion.t2v_k=4",
            "diffusion.v2t_k=4",
            f"train.batch_size={batch}",
            "train.epochs=1",
            f"train.max_steps={steps}",
            "train.lr=1e-3",
            "train.coef_lr=1.0",
            "train.optimizer=adamw",
            "train.schedule=warmup_cosine",
            "train.warmup_proportion=0.0",
            "train.bf16=false",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=2",
            "train.log_every=1000",  # per-step scalars go to TensorBoard; Ray reports only at checkpoints
            f"train.num_workers={workers}",
            "train.cpus_per_worker=0.5",
            "train.max_failures=1",
            f"train.storage_path={out / 'ray-results'}",
            "eval.batch_size=16",
            "eval.splits=[test]",
            *overrides,
        ],
    )


# -- TensorBoard event files (tensorboardX writes TFRecords; tensorboard itself is not installed) ----------
def _records(path: Path) -> list[bytes]:
    """The payloads of a TFRecord file (length u64, crc u32, data, crc u32); a torn tail is ignored."""
    data, out, pos = path.read_bytes(), [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):
            break
        out.append(data[pos + 12 : pos + 12 + length])
        pos = end
    return out


def read_scalars(tb_dir: Path | str, tag: str) -> list[dict[int, float]]:
    """``{step: value}`` of scalar ``tag`` for each event file of ``tb_dir``, in file-creation order (one
    file per start of rank 0: a restarted worker writes a new file)."""
    from tensorboardX.proto.event_pb2 import Event

    files = sorted(Path(tb_dir).glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))
    out = []
    for path in files:
        series: dict[int, float] = {}
        for payload in _records(path):
            event = Event.FromString(payload)
            for value in event.summary.value:
                if value.tag == tag:
                    series[int(event.step)] = float(value.simple_value)
        out.append(series)
    return out


def scalar_times(tb_dir: Path | str, tag: str) -> dict[int, float]:
    """``{step: wall time}`` of scalar ``tag`` in the last event file of ``tb_dir``."""
    from tensorboardX.proto.event_pb2 import Event

    files = sorted(Path(tb_dir).glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))
    times: dict[int, float] = {}
    for payload in _records(files[-1]):
        event = Event.FromString(payload)
        if any(v.tag == tag for v in event.summary.value):
            times[int(event.step)] = float(event.wall_time)
    return times


# -- exported weights ------------------------------------------------------------------------------------
def exported(cfg: Config, stage: str) -> dict:
    """The exported checkpoint of ``stage`` (``selected``, ``best``, ``step``, ``key``, ...)."""
    from vidret.layout import stage_uri
    from vidret.model.checkpoint import load_state

    return load_state(stage_uri(cfg, stage), Storage(cfg.storage))


def max_abs_diff(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Sequence[str] | None = None
) -> tuple[float, str]:
    """Largest absolute difference over the floating tensors of two state dicts, and where it is."""
    if set(a) != set(b):
        raise ValueError(f"state dicts differ in keys: {sorted(set(a) ^ set(b))[:8]}")
    worst, where = 0.0, ""
    for k in keys if keys is not None else sorted(a):
        if not a[k].is_floating_point():
            continue
        d = float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
        if d > worst:
            worst, where = d, k
    return worst, where


def update_difference(
    init: dict[str, torch.Tensor], a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
) -> float:
    """``||b - a|| / ||a - init||`` over the floating tensors of ``a``: how far two runs that started from
    ``init`` ended apart, relative to how far training moved (0 = identical; 1 = as far as a whole run).
    Tensors absent from ``init`` (non-persistent buffers an EMA tracks, e.g. attention masks) are skipped."""
    num = den = 0.0
    for k, v in a.items():
        if v.is_floating_point() and k in init:
            num += float(((b[k].double() - v.double()) ** 2).sum())
            den += float(((v.double() - init[k].double()) ** 2).sum())
    if den == 0.0:
        raise ValueError("update_difference: the reference did not move from its initial weights")
    return (num / den) ** 0.5


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Floating tensors whose values differ between two state dicts."""
    return [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]


# -- Ray Train workers of this driver's local Ray instance -------------------------------------------------
def ray_pids(marker: str) -> list[int]:
    """PIDs of live processes below this one whose command line contains ``marker`` (a local Ray instance
    started here runs its raylet, and so its workers, as our descendants: other users' Ray instances are never
    matched)."""
    importlib.import_module("ray")  # psutil is vendored by ray: importable only after it
    psutil = importlib.import_module("psutil")

    def matches(proc: Any) -> bool:
        try:
            return marker in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    return [p.pid for p in psutil.Process(os.getpid()).children(recursive=True) if matches(p)]


def train_worker_pids() -> list[int]:
    """PIDs of this driver's live Ray Train worker processes."""
    return ray_pids(TRAIN_WORKER_CLASS)


def wait_for(cond: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``cond`` until it is true (returns True) or ``timeout_s`` passes (returns False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll_s)
    return False


# -- Ray Train run folders ---------------------------------------------------------------------------------
def run_name(cfg: Config, stage: str) -> str:
    """The Ray Train run name ``run_training`` gives ``stage`` (see ``vidret.train.trainer``)."""
    from vidret.train.trainer import _run_name

    return _run_name(cfg, stage)


def _snapshot(cfg: Config, stage: str) -> dict | None:
    import json

    path = Path(cfg.train.storage_path) / run_name(cfg, stage) / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return None


def registered_step(cfg: Config, stage: str) -> int:
    """The step of the latest checkpoint Ray Train has registered for ``stage`` (0 when none)."""
    snap = _snapshot(cfg, stage)
    latest = (snap or {}).get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("step", 0))


def final_checkpoint(cfg: Config, stage: str) -> dict:
    """The full state (``model``, ``ema``, ``optimizer``, ...) of the latest registered checkpoint."""
    from vidret.model.checkpoint import load_checkpoint

    snap = _snapshot(cfg, stage)
    if snap is None or not snap.get("latest_checkpoint_result"):
        raise ValueError(f"{cfg.train.storage_path}: no registered checkpoint for {stage}")
    name = snap["latest_checkpoint_result"]["checkpoint_dir_name"]
    return load_checkpoint(Path(cfg.train.storage_path) / run_name(cfg, stage) / name)
