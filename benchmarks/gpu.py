"""The CUDA path in one script: stage 1 (ViT-B/32, random weights, 12 frames, bf16), stage 2, evaluation.

Prints one JSON object. ``python benchmarks/gpu.py`` on a CUDA machine (finishes in a few minutes on one
H100; every section has a step budget, not a time loop); ``python benchmarks/gpu.py --cpu-smoke`` runs the
same code at tiny sizes on CPU (a test runs it, so the script cannot rot where no GPU is available).

* ``stage1_compute``: the stage-1 training step (forward of both towers, WTI contrastive loss, backward,
  optimizer, EMA) on a batch already in device memory, bf16 autocast on CUDA: samples/s bound by compute.
* ``stage1_end_to_end``: the same step fed by the Ray Data decode pipeline (``build_dataset``) from prepared
  224 px files (generated corpus -> ``run_prepare``), batches moved to the device as they come.
* ``gpu``: utilisation sampled by ``nvidia-smi`` during each stage-1 section, peak memory allocated by torch.
* ``stage2_cached``: the stage-2 step (both denoisers, 127 hard negatives) on encoded features in memory.
* ``evaluation``: ``evaluate_features`` on 1,000 texts x 1,000 videos (blocked WTI on the device, re-ranking
  of both directions, metrics), wall time with the device synchronised.

A section that fails reports ``{"error": ...}`` and the others still run (the CUDA path has not run before).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vidret.config import Config, load_config


@dataclass(frozen=True)
class Sizes:
    preset: str
    size: int
    frames: int
    words: int
    batch: int
    steps: int
    warmup: int
    videos: int
    eval_n: int


FULL = Sizes("ViT-B-32", 224, 12, 32, 128, 12, 3, 640, 1000)
SMOKE = Sizes("debug", 32, 4, 16, 4, 2, 1, 8, 48)


def _config(sz: Sizes, work: Path, device: torch.device) -> Config:
    return load_config(
        None,
        [
            f"run.out={work / 'run'}",
            f"model.preset={sz.preset}",
            f"data.size={sz.size}",
            f"data.max_frames={sz.frames}",
            f"data.max_words={sz.words}",
            "data.framerate=3.0",
            f"data.prepare_short_side={sz.size}",
            "data.decoder=pyav",
            f"data.decode_concurrency={12 if device.type == 'cuda' else 1}",
            f"data.decode_cpus={1.0 if device.type == 'cuda' else 0.25}",
            "data.rows_per_block=8" if device.type == "cuda" else "data.rows_per_block=2",
            f"diffusion.num={sz.batch - 1}",
            f"train.batch_size={sz.batch}",
            "train.optimizer=adamw",
            f"train.bf16={'true' if device.type == 'cuda' else 'false'}",
            f"eval.block_size={256 if device.type == 'cuda' else 32}",
        ],
    )


# -- measurement helpers ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GpuUtil(threading.Thread):
    """``nvidia-smi`` utilisation and memory samples every 200 ms (nothing on CPU)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(daemon=True)
        self.device, self.util, self.mem_mb = device, [], []
        self.stop_event = threading.Event()

    def run(self) -> None:
        if self.device.type != "cuda":
            return
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self.stop_event.is_set():
            try:
                line = subprocess.run(
                    query, check=False, capture_output=True, text=True, timeout=5
                ).stdout.splitlines()[0]
                util, mem = (float(x) for x in line.split(","))
                self.util.append(util)
                self.mem_mb.append(mem)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self.stop_event.wait(0.2)

    def __enter__(self) -> GpuUtil:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.join()

    def summary(self) -> dict[str, Any]:
        if not self.util:
            return {"util_mean_pct": None, "util_max_pct": None, "smi_mem_max_mb": None}
        return {
            "util_mean_pct": round(float(np.mean(self.util)), 1),
            "util_max_pct": max(self.util),
            "smi_mem_max_mb": max(self.mem_mb),
        }


def _section(name: str, fn: Callable[[], dict[str, Any]], report: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # a benchmark reports what broke and goes on with the next section
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    report[name]["section_wall_s"] = round(time.perf_counter() - t0, 1)


# -- stage 1 ---------------------------------------------------------------------------------------------
def _stage1_step(model: Any, cfg: Config, device: torch.device) -> Callable[[dict[str, Tensor]], float]:
    """The training loop's stage-1 step: ``DiscriminationStep.loss`` then ``TrainState.update`` (backward,
    clipping, optimiser, schedule, logit-scale clamp, EMA), on one process."""
    from vidret.train.ema import EMA
    from vidret.train.optim import build_optimizer, build_scheduler
    from vidret.train.state import TrainState
    from vidret.train.steps import DiscriminationStep

    model.set_stage("discrimination")
    opt = build_optimizer(model, cfg.train)
    state = TrainState(
        model, EMA(model, cfg.train.ema_decay), opt, build_scheduler(opt, cfg.train, 10_000), cfg
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16)
    disc = DiscriminationStep(model, cfg, cfg.train.batch_size, autocast)

    def step(batch: dict[str, Tensor]) -> float:
        loss = disc.loss(model, batch, state.step)
        state.update(loss)
        return float(loss)

    return step


def _memory_batch(cfg: Config, sz: Sizes, device: torch.device) -> dict[str, Tensor]:
    from vidret.data.batches import tokenize_rows
    from vidret.data.tokenizer import ClipTokenizer

    g = np.random.default_rng(0)
    caps = np.array([f"a person does thing number {i} in a room" for i in range(sz.batch)], dtype=object)
    tok = tokenize_rows({"caption": caps}, ClipTokenizer(sz.words), sz.words)
    video = g.integers(0, 256, (sz.batch, sz.frames, sz.size, sz.size, 3), dtype=np.uint8)
    batch = {
        "video": torch.from_numpy(video),
        "video_mask": torch.ones(sz.batch, sz.frames, dtype=torch.long),
        "text_ids": torch.from_numpy(np.asarray(tok["text_ids"])).long(),
        "text_mask": torch.from_numpy(np.asarray(tok["text_mask"])).long(),
        "video_index": torch.arange(sz.batch),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _timed_steps(step: Callable[[], Any], sz: Sizes, device: torch.device) -> float:
    for _ in range(sz.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(sz.steps):
        step()
    _sync(device)
    return time.perf_counter() - t0


def stage1_compute(cfg: Config, sz: Sizes, device: torch.device, model: Any) -> dict[str, Any]:
    batch = _memory_batch(cfg, sz, device)
    step = _stage1_step(model, cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with GpuUtil(device) as util:
        secs = _timed_steps(lambda: step(batch), sz, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "samples_per_s": round(sz.batch * sz.steps / secs, 1),
        "step_s": round(secs / sz.steps, 4),
        "batch": sz.batch,
        "frames": sz.frames,
        "bf16": cfg.train.bf16,
        "peak_allocated_mb": None if peak is None else round(peak),
        **util.summary(),
    }


def _prepared_rows(cfg: Config, sz: Sizes, work: Path) -> Any:
    from vidret.config import SynthConfig, replace
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.data.executors import run_prepare
    from vidret.data.pipeline import load_split
    from vidret.data.synthetic import generate_corpus
    from vidret.storage import Storage

    storage, corpus = Storage(), work / "corpus"
    workers = 8 if sz.videos > 64 else 1
    synth = SynthConfig(
        out=str(corpus), videos=sz.videos, size=max(64, sz.size + 32), seconds=4.0, fps=8, workers=workers
    )
    generate_corpus(synth, storage)
    build = build_manifest("synthetic", str(corpus / "anns"), str(corpus / "videos"), "train", storage)
    write_manifest(build, str(work / "manifest" / "train.parquet"), storage)
    prep_cfg = replace(cfg, data=replace(cfg.data, manifest=str(work / "manifest")))
    out = run_prepare(prep_cfg, splits=["train"], out=str(work / "prepared"))
    return load_split(out["manifest"], "train", storage, pairs=True)


def stage1_end_to_end(cfg: Config, sz: Sizes, device: torch.device, model: Any, work: Path) -> dict[str, Any]:
    import ray

    from vidret.data.pipeline import build_dataset, iter_numpy_batches
    from vidret.storage import Storage

    if not ray.is_initialized():  # worker output stays off stdout: it carries only the JSON
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    rows = _prepared_rows(cfg, sz, work)
    setup_s = time.perf_counter() - t0
    ds, _ = build_dataset(rows, cfg.data, Storage())
    step = _stage1_step(model, cfg, device)
    keys = ("video", "video_mask", "text_ids", "text_mask", "video_index")
    done = samples = 0
    with GpuUtil(device) as util:
        for batch in iter_numpy_batches(ds, sz.batch, drop_last=True):
            step({k: torch.from_numpy(np.asarray(batch[k])).to(device, non_blocking=True) for k in keys})
            done += 1
            if done == sz.warmup:  # the first batches wait for the decode actors to start
                _sync(device)
                t0, samples = time.perf_counter(), 0
            elif done > sz.warmup:
                samples += sz.batch
    _sync(device)
    secs = time.perf_counter() - t0
    return {
        "samples_per_s": round(samples / secs, 1) if samples else None,
        "timed_samples": samples,
        "corpus_and_prepare_s": round(setup_s, 1),
        "decode_actors": cfg.data.decode_concurrency,
        **util.summary(),
    }


# -- stage 2 and evaluation --------------------------------------------------------------------------------
def _encoded(model: Any, cfg: Config, sz: Sizes, device: torch.device) -> dict[str, Tensor]:
    """Frozen-encoder features of one in-memory batch (what the stage-2 cache holds), float32."""
    batch = _memory_batch(cfg, sz, device)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16):
        feats = {
            **model.encode_text(batch["text_ids"], batch["text_mask"]),
            **model.encode_video(batch["video"], batch["video_mask"]),
        }
    feats = {k: v.float() if v.is_floating_point() else v for k, v in feats.items()}
    feats["video_index"] = batch["video_index"]
    return feats


def stage2_cached(cfg: Config, sz: Sizes, device: torch.device, model: Any) -> dict[str, Any]:
    """The stage-2 objective (``GenerationObjective``, both denoisers, ``diffusion.num`` hard negatives) and
    the training update on encoded features in device memory."""
    from vidret.train.ema import EMA
    from vidret.train.objectives import GenerationObjective
    from vidret.train.optim import build_optimizer, build_scheduler
    from vidret.train.state import TrainState

    feats = _encoded(model, cfg, sz, device)
    model.set_stage("generation")
    model.train()
    opt = build_optimizer(model, cfg.train)
    state = TrainState(
        model, EMA(model, cfg.train.ema_decay), opt, build_scheduler(opt, cfg.train, 10_000), cfg
    )
    objective = GenerationObjective(model)
    gen = torch.Generator().manual_seed(0)
    k = cfg.diffusion.num + 1
    pos_BG = feats["video_index"][:, None] == feats["video_index"][None, :]

    def step() -> float:
        t_B = model.diffusion.sample_timesteps(sz.batch, generator=gen).to(device)
        noise_2BK = torch.randn(2, sz.batch, k, generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16):
            out = objective(feats, feats, pos_BG, 0, t_B, noise_2BK[0], noise_2BK[1])
        state.update(out["loss_generation"])
        return float(out["loss_generation"])

    secs = _timed_steps(step, sz, device)
    return {
        "samples_per_s": round(sz.batch * sz.steps / secs, 1),
        "step_s": round(secs / sz.steps, 4),
        "negatives": k - 1,
    }


def evaluation(cfg: Config, sz: Sizes, device: torch.device, model: Any) -> dict[str, Any]:
    """``evaluate_features`` (blocked WTI, re-ranking of both directions, metrics) on random features of
    ``eval_n`` texts x ``eval_n`` videos on the device."""
    from vidret.features.scoring import evaluate_features
    from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures

    n, d = sz.eval_n, model.backbone.embed_dim
    g = torch.Generator().manual_seed(0)
    text_mask = (torch.arange(sz.words) < torch.randint(6, sz.words + 1, (n, 1), generator=g)).long()
    text, video = torch.randn(n, sz.words, d, generator=g), torch.randn(n, sz.frames, d, generator=g)
    video_mask = torch.ones(n, sz.frames, dtype=torch.long)
    eot = torch.randn(n, d, generator=g)
    model.eval()
    with torch.no_grad():
        text, text_mask, video, video_mask = (x.to(device) for x in (text, text_mask, video, video_mask))
        text_w, video_w = model.wti.text_weights(text, text_mask), model.wti.video_weights(video, video_mask)
    fs = FeatureSet(
        text=TextFeatures(text, text_mask, text_w, eot.to(device)),
        video=VideoFeatures(video, video_mask, video_w),
        text_to_video_T=torch.arange(n),
    )
    _sync(device)
    t0 = time.perf_counter()
    res = evaluate_features(model, fs, cfg.eval, cfg.diffusion, rerank=True)
    _sync(device)
    return {
        "texts": n,
        "videos": n,
        "wall_s": round(time.perf_counter() - t0, 2),
        "t2v_R1": [round(res.metrics[v]["t2v"]["R1"], 2) for v in ("stage1", "rerank")],
        "rerank_directions": sorted(res.metrics["rerank"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="the same code at tiny sizes on CPU")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print(json.dumps({"error": "no CUDA device: run on a GPU machine, or pass --cpu-smoke"}))
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    sz = FULL if cuda else SMOKE
    torch.manual_seed(0)
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "sizes": sz.__dict__,
    }
    with tempfile.TemporaryDirectory(prefix="vidret-gpu-") as tmp:
        work = Path(tmp)
        cfg = _config(sz, work, device)
        from vidret.model.build import build_model
        from vidret.storage import Storage

        model = build_model(cfg, Storage(), None).to(device)
        _section("stage1_compute", lambda: stage1_compute(cfg, sz, device, model), report)
        _section("stage1_end_to_end", lambda: stage1_end_to_end(cfg, sz, device, model, work), report)
        _section("stage2_cached", lambda: stage2_cached(cfg, sz, device, model), report)
        _section("evaluation", lambda: evaluation(cfg, sz, device, model), report)
    report["errors"] = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["torch"] = torch.__version__
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
