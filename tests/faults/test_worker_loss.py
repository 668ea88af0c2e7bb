"""Worker loss on a real local Ray: one process of each Ray stage is SIGKILLed and nothing is lost.

* (a) the decode actor of the Ray Data pipeline dies inside a task: Ray restarts it and retries the task;
every
  video comes out exactly once, with the frames of an undisturbed decode;
* (b) the encoder actor of the evaluation's feature encoding (Ray Data batch inference) dies half-way through
  the video pass: the feature cache is complete, every video and caption once, equal to an uninterrupted
  run's;
* (c) a Ray Train worker dies during stage 2 (generation): the run resumes from its last checkpoint and ends
  with the step count and weights of an uninterrupted run, bit-identical as in the stage-1 kill test
  (``tests/integration/test_train.py::test_worker_sigkill_resumes_from_checkpoint``, not repeated here).

The kills of (a) and (b) are placed, not raced: the videos are read from moto S3 through the fault proxy,
whose policy holds the first GET of one video until the victim is dead. The pass is then provably half done,
and in (a) the decode actor is blocked inside its task.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from fault_helpers import ProxiedBucket, wait_until
from s3proxy import PASS, Request
from test_evaluate import _export  # random debug weights exported as a checkpoint
from test_train import _assert_resumed, _Killer  # the stage-1 kill test's killer and resume check
from train_helpers import (
    SPLITS,
    Corpus,
    final_checkpoint,
    make_corpus,
    ray_pids,
    small_config,
    train_worker_pids,
)

from vidret.config import Config, DataConfig, replace
from vidret.data.annotations.manifest import read_manifest, write_manifest
from vidret.data.pipeline import build_dataset, iter_numpy_batches, load_split
from vidret.data.video import decode_with_config
from vidret.eval.job import run_evaluation
from vidret.features import store as cache
from vidret.layout import cache_root
from vidret.storage import Storage, join
from vidret.train import trainer

pytestmark = pytest.mark.ray

DECODE_ACTOR = "MapBatches(_DecodeStage)"  # in the process title of Ray Data's map actors
ENCODER_ACTOR = "MapBatches(_Encoder)"
HELD = 6  # the video whose first read is held: the 7th of the train split, half-way through the pass
EVAL_SPLITS = ("train", "val")  # what stage 2 needs (data.test_split=val)
STAGE2_STEPS = 8
DATA = DataConfig(
    size=32,
    max_frames=4,
    max_words=16,
    decoder="pyav",
    rows_per_block=2,
    decode_concurrency=1,
    decode_cpus=0.25,
    max_bad_fraction=0.0,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """16 clips of 32 px, 1 s at 4 fps (12 train / 1 val / 2 test / 1 ood) and their manifests."""
    return make_corpus(tmp_path_factory.mktemp("worker-loss-corpus"), videos=16)


def _to_s3(pb: ProxiedBucket, corpus: Corpus) -> str:
    """Copy the videos and manifests to the bucket (around the proxy); returns the manifest prefix."""
    direct = Storage(pb.direct)
    for split in SPLITS:
        table = read_manifest(str(corpus.manifest / f"{split}.parquet"), Storage())
        uris = []
        for local in table.column("video_uri").to_pylist():
            uri = join(pb.root, "videos", Path(local).name)
            direct.write_bytes(uri, Path(local).read_bytes())
            uris.append(uri)
        table = table.set_column(table.schema.get_field_index("video_uri"), "video_uri", pa.array(uris))
        write_manifest(table, join(pb.root, "manifest", f"{split}.parquet"), direct)
    return join(pb.root, "manifest")


class _Hold:
    """A proxy policy holding the first GET of ``key`` until :meth:`release` (or ``timeout_s``)."""

    def __init__(self, key: str, timeout_s: float = 180.0) -> None:
        self.key, self.timeout_s = key, timeout_s
        self.reached, self._open, self._lock, self._seen = (
            threading.Event(),
            threading.Event(),
            threading.Lock(),
            0,
        )

    def __call__(self, req: Request) -> str:
        if req.method == "GET" and req.key.endswith(self.key):
            with self._lock:
                self._seen += 1
                first = self._seen == 1
            if first:
                self.reached.set()
                self._open.wait(self.timeout_s)
        return PASS

    def release(self) -> None:
        self._open.set()


class _KillWhileHeld(threading.Thread):
    """Once ``hold`` holds its read and ``ready()`` is true, SIGKILLs every Ray process whose title has
    ``marker``, then releases the read (always: the pipeline never hangs on the proxy)."""

    def __init__(
        self,
        hold: _Hold,
        marker: str,
        ready: Callable[[], int] = lambda: 1,
        snapshot: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.hold, self.marker, self.ready, self.snapshot = hold, marker, ready, snapshot or ready
        self.killed: list[int] = []
        self.ready_at_kill = 0  # what ``snapshot()`` said when the kill went out

    def run(self) -> None:
        try:
            if self.hold.reached.wait(self.hold.timeout_s) and wait_until(self.ready, 120):
                self.ready_at_kill = self.snapshot()
                for pid in ray_pids(self.marker):
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                wait_until(lambda: not set(self.killed) & set(ray_pids(self.marker)), 30)
        finally:
            self.hold.release()


def _lost(ids: list[int], expected: int) -> tuple[int, int]:
    """(missing, duplicated) rows of ``ids`` against 0..expected-1."""
    counts = Counter(ids)
    missing = sum(1 for i in range(expected) if i not in counts)
    return missing, sum(c - 1 for c in counts.values()) + sum(1 for i in counts if not 0 <= i < expected)


# -------------------------------------------------------------------------------------------------- (a)
@pytest.mark.s3
def test_decode_actor_sigkill_mid_task_every_video_once(
    ray_train: None, corpus: Corpus, proxied_bucket: ProxiedBucket, faults
) -> None:
    pb, storage = proxied_bucket, Storage(proxied_bucket.storage)
    rows = load_split(_to_s3(pb, corpus), "train", storage, pairs=False)
    uris = rows.table.column("video_uri").to_pylist()
    held = uris[HELD].rsplit("/", 1)[-1]
    hold = pb.proxy.policy = _Hold(held)
    killer = _KillWhileHeld(hold, DECODE_ACTOR)
    ds, log = build_dataset(rows, DATA, storage, tokenize=False)
    faults.inject("worker_loss", "SIGKILL the Ray Data decode actor inside a task (its S3 read held)")
    killer.start()
    batches = list(iter_numpy_batches(ds, 2, log=log, total=rows.num_videos, cfg=DATA))
    killer.join(timeout=30)
    assert killer.killed, "no decode actor was found to kill"
    got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    missing, duplicated = _lost(got["video_index"].tolist(), rows.num_videos)
    faults.loss(rows_lost=missing + duplicated)
    assert (missing, duplicated) == (0, 0), got["video_index"].tolist()
    # the task that was in flight ran again on the restarted actor: the held video was read twice
    assert pb.proxy.count("GET", held) >= 2
    order = np.argsort(got["video_index"])
    local = read_manifest(str(corpus.manifest / "train.parquet"), Storage()).column("video_uri").to_pylist()
    for i, path in enumerate(local):
        frames, mask = decode_with_config(path, DATA)
        np.testing.assert_array_equal(got["video"][order][i], frames, err_msg=path)
        np.testing.assert_array_equal(got["video_mask"][order][i], mask, err_msg=path)


# -------------------------------------------------------------------------------------------------- (b)
def _eval_config(out: Path, corpus: Corpus, *overrides: str) -> Config:
    return small_config(
        out,
        corpus.manifest,
        "data.test_split=val",
        f"eval.splits=[{', '.join(EVAL_SPLITS)}]",
        "eval.rerank=false",
        "eval.report=false",
        "eval.batch_size=4",
        *overrides,
    )


@dataclass(frozen=True)
class Reference:
    cfg: Config  # the uninterrupted evaluation (its run.out holds the feature cache)
    init: str  # random debug weights exported as a stage-1 checkpoint
    key: str


@pytest.fixture(scope="module")
def reference(ray_train: None, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """An uninterrupted evaluation of random stage-1 weights: the features of train and val."""
    root = tmp_path_factory.mktemp("worker-loss-ref")
    cfg = _eval_config(root / "ref", corpus)
    init = str(root / "init" / "discrimination")
    key = _export(cfg, init, "discrimination")
    run_evaluation(cfg, init)
    return Reference(cfg, init, key)


def _split_uri(cfg: Config, key: str, split: str) -> str:
    return cache.split_uri(cache_root(cfg, key), split)


@pytest.mark.s3
@pytest.mark.slow
def test_encoder_actor_sigkill_mid_pass_features_complete_and_equal(
    reference: Reference,
    corpus: Corpus,
    proxied_bucket: ProxiedBucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults,
) -> None:
    pb = proxied_bucket
    base = _eval_config(tmp_path / "kill", corpus)
    cfg = replace(base, storage=pb.storage, data=replace(base.data, manifest=_to_s3(pb, corpus)))
    delivered = Counter()  # feature batches the driver has written, by kind
    add = cache.ShardWriter.add

    def counting_add(self: cache.ShardWriter, arrays: dict[str, np.ndarray]) -> None:
        delivered[self.prefix] += 1
        add(self, arrays)

    monkeypatch.setattr(cache.ShardWriter, "add", counting_add)
    train = read_manifest(str(corpus.manifest / "train.parquet"), Storage())
    hold = pb.proxy.policy = _Hold(Path(train.column("video_uri")[HELD].as_py()).name)
    # the train videos come first in the video pass: the kill goes out once the decode of the held video waits
    # and the encoder actor is up, so the held video's features (at least) come from the restarted actor. (Not
    # "once some features were written": the held video may share its decode block with those before it, and
    # on a loaded machine a client timeout and retry got past the hold first, so the kill came after the
    # pass.)
    killer = _KillWhileHeld(
        hold, ENCODER_ACTOR, ready=lambda: ray_pids(ENCODER_ACTOR), snapshot=lambda: delivered["videos"]
    )
    faults.inject("worker_loss", "SIGKILL the feature-encoder actor half-way through the video pass")
    killer.start()
    run_evaluation(cfg, reference.init)
    killer.join(timeout=30)
    assert killer.killed, "no encoder actor was found to kill"
    assert delivered["videos"] > killer.ready_at_kill, "no video features came after the kill"
    storage, ref_storage = Storage(cfg.storage), Storage(reference.cfg.storage)
    lost = 0
    for split in EVAL_SPLITS:
        uri, ref_uri = _split_uri(cfg, reference.key, split), _split_uri(reference.cfg, reference.key, split)
        index, ref_index = cache.read_index(storage, uri), cache.read_index(ref_storage, ref_uri)
        assert index is not None, f"{split}: the feature cache is incomplete"
        videos = [int(i) for p in cache._load_shards(storage, uri, index["videos"]) for i in p["video_index"]]
        texts = [int(i) for p in cache._load_shards(storage, uri, index["texts"]) for i in p["caption_row"]]
        v_missing, v_dup = _lost(videos, len(ref_index["video_ids"]))
        t_missing, t_dup = _lost(texts, len(ref_index["captions"]))
        lost += v_missing + v_dup + t_missing + t_dup
        assert (v_missing, v_dup, t_missing, t_dup) == (0, 0, 0, 0), f"{split}: {videos} {texts}"
        assert (index["video_ids"], index["captions"]) == (ref_index["video_ids"], ref_index["captions"])
        got, want = cache.load_split(storage, uri), cache.load_split(ref_storage, ref_uri)
        for kind in ("text", "video"):
            for k, v in getattr(want, kind).as_model().items():
                torch.testing.assert_close(
                    getattr(got, kind).as_model()[k], v, rtol=1e-5, atol=1e-6, msg=f"{split} {k}"
                )
        assert got.video_ok.all()
        assert torch.equal(got.text_to_video_T, want.text_to_video_T)
    faults.loss(rows_lost=lost)


# -------------------------------------------------------------------------------------------------- (c)
def _stage2(root: Path, corpus: Corpus, ref: Reference, name: str) -> Config:
    """Stage 2 on the reference's feature cache (copied into the run), from its random stage-1 weights."""
    cfg = small_config(
        root / name,
        corpus.manifest,
        "data.test_split=val",
        "train.stage=generation",
        f"train.init_checkpoint={ref.init}",
        "train.epochs=3",  # 3 steps an epoch on the 27 training captions: at least STAGE2_STEPS
        steps=STAGE2_STEPS,
    )
    shutil.copytree(Path(ref.cfg.run.out) / "features", Path(cfg.run.out) / "features")
    return cfg


@pytest.mark.slow
def test_train_worker_sigkill_in_stage2_resumes_from_checkpoint(
    reference: Reference, corpus: Corpus, tmp_path: Path, faults
) -> None:
    base = _stage2(tmp_path, corpus, reference, "base")
    assert trainer.run_training(base)["steps"] == STAGE2_STEPS
    cfg = _stage2(tmp_path, corpus, reference, "kill")
    killer = _Killer(cfg, "generation", train_worker_pids)
    faults.inject("worker_loss", "SIGKILL the Ray Train worker after stage 2's first checkpoint")
    killer.start()
    summary = trainer.run_training(cfg)  # train.max_failures=1: the worker group restarts once
    killer.join(timeout=5)
    assert killer.killed, "no Ray Train worker was found to kill (did the run register no checkpoint?)"
    assert summary["steps"] == STAGE2_STEPS
    faults.loss(rows_lost=STAGE2_STEPS - final_checkpoint(cfg, "generation")["step"])  # steps never trained
    _assert_resumed(
        cfg, base, "generation", killer.at_step, STAGE2_STEPS
    )  # the same steps, bit-identical weights
