"""Training throughput: stage 1 on decoded video, stage 2 on cached features vs stage 2 fed by decoding,
and the
cost of 2 Ray Train workers vs 1 at the same global batch.

Prints one JSON object. ``python benchmarks/train.py [--preset tiny] [--size 64] [--frames 8] [--batch 32]
[--steps 3] [--ray-steps 8] [--no-ray]``.

In-process part (no Ray, one thread, the real model / loss / optimizer code of ``vidret.train``):

* ``stage1``: decode a batch of videos (PyAV, one core), then one stage-1 step (forward, contrastive loss,
  backward, AdamW, EMA). ``samples_per_s`` counts both serially; ``step_only_samples_per_s`` assumes decoding
  fully overlapped on other cores (what the Ray Data decode actors aim at).
* ``stage2_cached``: one stage-2 step (hard negatives, both denoisers, backward, AdamW) on features already in
  memory, as the loop does when it reads the feature cache.
* ``stage2_decoding``: what the upstream does for every stage-2 step: decode the batch, run the frozen
  encoders (no grad) on frames and captions, then the same stage-2 step.
* ``stage2_cached_vs_decoding`` = cached samples/s / decoding samples/s (target >= 10); the
  ``..._decode_overlapped`` variant leaves the decoding out of the decoding side (a lower bound).

Ray part (a local Ray with 2 logical CPUs): stage 1 through ``run_training`` with 1 and then 2 workers and the
same global batch; the time per global step is the median gap between consecutive steps' TensorBoard events
(no reports or checkpoints in between, first step excluded). ``two_workers_overhead`` = 2-worker / 1-worker
time per step (< 1: the second worker helps; on 2 shared cores it also competes with the decode actors).
Times are wall clock on a possibly shared machine: compare runs made in one invocation only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from vidret.console.logs import quiet_environment

quiet_environment()  # before Ray is imported (it reads its log settings then): stdout stays pure JSON
from train_helpers import make_corpus, scalar_times, small_config

from vidret.config import Config
from vidret.data.annotations.manifest import read_manifest
from vidret.data.batches import decode_rows, split_rows, tokenize_rows
from vidret.data.tokenizer import ClipTokenizer
from vidret.model.build import build_model
from vidret.model.retrieval import SIMILARITY_KEYS, RetrievalModel
from vidret.storage import Storage, join
from vidret.train import distributed as dist
from vidret.train.ema import EMA
from vidret.train.objectives import GenerationObjective
from vidret.train.optim import build_optimizer, build_scheduler, clip_gradients

MODEL_KEYS = ("video", "video_mask", "text_ids", "text_mask", "video_index")


def _best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall seconds of ``repeat`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _config(args: argparse.Namespace, out: Path, manifest: Path, *extra: str, workers: int = 1) -> Config:
    return small_config(
        out,
        manifest,
        f"model.preset={args.preset}",
        f"data.size={args.size}",
        f"data.max_frames={args.frames}",
        f"data.framerate={args.fps / 2}",
        "data.test_split=val",
        *extra,
        workers=workers,
        batch=args.batch,
        steps=args.ray_steps,
    )


def _rows(cfg: Config, batch: int, start: int) -> dict[str, np.ndarray]:
    """``batch`` training pairs (video uri, caption, ...) as a numpy batch, from row ``start``."""
    rows = split_rows(read_manifest(join(cfg.data.manifest, "train.parquet"), Storage()), "train", pairs=True)
    table = rows.table.slice(start, batch)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _decode(cfg: Config, rows: dict[str, np.ndarray], tokenizer: ClipTokenizer) -> dict[str, Tensor]:
    out = decode_rows(rows, cfg.data, Storage())
    if not out["ok"].all():
        raise ValueError(f"benchmark corpus: {int((~out['ok']).sum())} videos failed to decode")
    out = tokenize_rows(out, tokenizer, cfg.data.max_words)
    return {
        k: torch.from_numpy(np.asarray(out[k])).long() if k != "video" else torch.from_numpy(out[k])
        for k in MODEL_KEYS
    }


def _stage1_step(model: RetrievalModel, cfg: Config) -> Callable[[dict[str, Tensor]], float]:
    model.set_stage("discrimination")
    model.train()
    opt = build_optimizer(model, cfg.train)
    sched = build_scheduler(opt, cfg.train, 1000)
    ema = EMA(model, cfg.train.ema_decay)

    def step(batch: dict[str, Tensor]) -> float:
        feats = model(batch)
        loss = dist.contrastive_loss(
            {k: feats[k] for k in (*SIMILARITY_KEYS, "video_index")},
            model.similarity,
            logit_scale=feats["logit_scale"],
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, cfg.train.clip_grad_norm)
        opt.step()
        sched.step()
        ema.update(model)
        return float(loss)

    return step


def _stage2_step(model: RetrievalModel, cfg: Config) -> Callable[[dict[str, Tensor]], float]:
    """The loop's stage-2 step on one worker (gathered batch = local batch)."""
    model.set_stage("generation")
    model.train()
    opt = build_optimizer(model, cfg.train)
    gen = torch.Generator().manual_seed(0)
    k = cfg.diffusion.num + 1
    objective = GenerationObjective(model)

    def step(feats: dict[str, Tensor]) -> float:
        b = feats["text"].shape[0]
        pos_BG = feats["video_index"][:, None] == feats["video_index"][None, :]
        t_B = model.diffusion.sample_timesteps(b, generator=gen)
        noise_2BK = torch.randn(2, b, k, generator=gen)
        out = objective(feats, feats, pos_BG, 0, t_B, noise_2BK[0], noise_2BK[1])
        opt.zero_grad(set_to_none=True)
        out["loss_generation"].backward()
        clip_gradients(model, cfg.train.clip_grad_norm)
        opt.step()
        return float(out["loss_generation"])

    return step


@torch.no_grad()
def _encode(model: RetrievalModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The frozen encoders' features of a decoded batch (the feature cache's content)."""
    model.eval()
    feats = {
        **model.encode_text(batch["text_ids"], batch["text_mask"]),
        **model.encode_video(batch["video"], batch["video_mask"]),
        "video_index": batch["video_index"],
    }
    model.train()
    return feats


def in_process(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    torch.set_num_threads(1)
    storage, tokenizer = Storage(), ClipTokenizer()
    rows = _rows(cfg, args.batch, 0)
    t_decode = _best(lambda: _decode(cfg, rows, tokenizer), args.steps)
    batch = _decode(cfg, rows, tokenizer)
    model = build_model(cfg, storage, None)
    step1 = _stage1_step(model, cfg)
    t_step1 = _best(lambda: step1(batch), args.steps)
    feats = _encode(model, batch)
    t_encode = _best(lambda: _encode(model, batch), args.steps)
    step2 = _stage2_step(model, cfg)
    t_step2 = _best(lambda: step2(feats), args.steps)
    b = args.batch
    cached = b / t_step2
    decoding = b / (t_decode + t_encode + t_step2)
    decoding_overlapped = b / (t_encode + t_step2)
    return {
        "batch": b,
        "decode_s_per_batch": round(t_decode, 4),
        "stage1": {
            "samples_per_s": round(b / (t_decode + t_step1), 2),
            "step_only_samples_per_s": round(b / t_step1, 2),
            "step_s": round(t_step1, 4),
        },
        "encode_s_per_batch": round(t_encode, 4),
        "stage2_cached": {"samples_per_s": round(cached, 2), "step_s": round(t_step2, 4)},
        "stage2_decoding": {
            "samples_per_s": round(decoding, 2),
            "decode_overlapped_samples_per_s": round(decoding_overlapped, 2),
        },
        "stage2_cached_vs_decoding": round(cached / decoding, 2),
        "stage2_cached_vs_decoding_decode_overlapped": round(cached / decoding_overlapped, 2),
    }


def _step_time(cfg: Config) -> dict[str, Any]:
    from vidret.train import trainer

    t0 = time.perf_counter()
    trainer.run_training(cfg)
    wall = time.perf_counter() - t0
    times = scalar_times(Path(cfg.run.out) / "tensorboard" / cfg.train.stage, f"{cfg.train.stage}/loss")
    steps = sorted(times)
    gaps = [times[s] - times[s - 1] for s in steps[1:] if s - 1 in times]
    return {
        "median_step_s": round(statistics.median(gaps), 4),
        "steps": len(steps),
        "fit_wall_s": round(wall, 1),
    }


def with_ray(args: argparse.Namespace, root: Path, manifest: Path) -> dict[str, Any]:
    import os

    import ray

    from vidret.train import trainer

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    trainer.build_feature_cache = lambda *a, **k: {}  # only the training steps are measured here
    try:
        out = {}
        for workers in (1, 2):
            # one checkpoint, at the end: no report interrupts the measured steps
            cfg = _config(
                args,
                root / f"ray-w{workers}",
                manifest,
                f"train.checkpoint_every={args.ray_steps}",
                workers=workers,
            )
            out[f"stage1_{workers}w"] = _step_time(cfg)
    finally:
        ray.shutdown()
    out["two_workers_overhead"] = round(
        out["stage1_2w"]["median_step_s"] / out["stage1_1w"]["median_step_s"], 3
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model.preset (tiny = the quickstart's)")
    p.add_argument("--size", type=int, default=64, help="frame side (data.size and the corpus)")
    p.add_argument("--frames", type=int, default=8, help="data.max_frames")
    p.add_argument(
        "--fps", type=int, default=8, help="corpus frame rate (clips of 3 s); decoding samples fps/2"
    )
    p.add_argument("--videos", type=int, default=64, help="corpus size")
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--steps", type=int, default=3, help="timed repeats per in-process measurement")
    p.add_argument("--ray-steps", type=int, default=8, help="training steps per Ray Train run")
    p.add_argument("--no-ray", action="store_true", help="skip the 1 vs 2 workers runs")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vidret-bench-train-") as tmp:
        root = Path(tmp)
        corpus = make_corpus(root, videos=args.videos, size=args.size, seconds=3.0, fps=args.fps)
        cfg = _config(args, root / "inproc", corpus.manifest)
        result: dict[str, Any] = {
            "config": {k: getattr(args, k) for k in vars(args)},
            **in_process(args, cfg),
        }
        if not args.no_ray:
            result.update(with_ray(args, root, corpus.manifest))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
