"""``train_loop_per_worker``: plain PyTorch plus Ray Train's ``get_dataset_shard``, ``prepare_model``, ``report``.

Stage 1 (discrimination) consumes decoded, tokenised batches from this worker's dataset shard; stage 2
(generation) consumes the feature cache. Both follow the driver's ``StepPlan`` (``vidret.train.plan``), so
the all-gathered global batch is the same whatever the number of workers, and a resumed run continues at the
exact row where its checkpoint was taken.

Shape legend: B local batch, G global batch (W * B), L tokens, F frames, D width, K candidates.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train.torch import prepare_model
from torch import Tensor, nn

from vidret.config import Config, dump_yaml
from vidret.eval.retrieval import FeatureSet, encode_batches, evaluate_features
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage
from vidret.train import distributed as dist
from vidret.train.artifacts import load_state
from vidret.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from vidret.train.ema import EMA, select_better
from vidret.train.optim import (
    build_optimizer,
    build_scheduler,
    clamp_logit_scale_,
    clip_gradients,
    freeze_fp16_clip,
)

SIM_KEYS = ("text", "text_mask", "text_weight", "video", "video_mask", "video_weight")
BATCH_DTYPES = {
    "video": torch.uint8,
    "video_mask": torch.int64,
    "text_ids": torch.int64,
    "text_mask": torch.int64,
    "video_index": torch.int64,
}


class _GenerationStep(nn.Module):
    """Stage 2's forward on cached features, as a module so DDP sees the denoisers' use (ray-notes P12)."""

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        local: Mapping[str, Tensor],
        gathered: Mapping[str, Tensor],
        pos_BG: Tensor,
        row_offset: int,
        t_B: Tensor,
        noise_t2v_BK: Tensor,
        noise_v2t_BK: Tensor,
    ) -> dict[str, Tensor]:
        return self.model.generation_loss(
            local,
            gathered,
            pos_BG,
            row_offset=row_offset,
            t_B=t_B,
            noise_t2v_BK=noise_t2v_BK,
            noise_v2t_BK=noise_v2t_BK,
        )


def _say(line: str) -> None:
    """One progress line on this worker's stdout (forwarded to the driver by Ray). Not ``print``: Ray Train
    patches it to write to stdout *and* its logger, so every line reached the driver twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: Config, storage: Storage, init_state_uri: str | None) -> RetrievalModel:
    """The model of ``cfg``; for stage 2, stage 1's selected weights from ``init_state_uri`` (strict)."""
    seed_everything(cfg.run.seed)  # identical initialisation on every worker
    model = RetrievalModel.build(cfg.model, cfg.diffusion, storage)
    if init_state_uri:
        state = load_state(init_state_uri, storage)
        missing, unexpected = model.load_state_dict(state["selected"], strict=False)
        stage1_missing = [k for k in missing if not k.startswith(("t2v_denoiser.", "v2t_denoiser."))]
        if stage1_missing or unexpected:
            raise ValueError(
                f"{init_state_uri}: weights do not match the model: missing {stage1_missing[:8]}, "
                f"unexpected {list(unexpected)[:8]}"
            )
    model.set_stage(cfg.train.stage)
    if cfg.train.stage == "discrimination" and cfg.train.clip_precision == "fp16_frozen":
        freeze_fp16_clip(model)
    return model


def _stage1_batches(shard: Any, local_batch: int, skip_steps: int) -> Iterator[dict[str, Tensor]]:
    """Decoded batches of this worker's shard; the first ``skip_steps`` batches are consumed and dropped."""
    it = shard.iter_batches(batch_size=local_batch, batch_format="numpy", drop_last=True, prefetch_batches=1)
    for i, batch in enumerate(it):
        if i < skip_steps:  # resuming: these rows were consumed before the checkpoint
            continue
        yield {k: torch.from_numpy(np.asarray(batch[k])).to(BATCH_DTYPES[k]) for k in BATCH_DTYPES}


def _stage2_batches(features: FeatureSet, rows: np.ndarray, local_batch: int) -> Iterator[dict[str, Tensor]]:
    """Local feature batches of the caption rows ``rows`` (this worker's plan)."""
    for s in range(len(rows) // local_batch):
        r = torch.from_numpy(rows[s * local_batch : (s + 1) * local_batch])
        vi = features.text_to_video_T[r]
        batch = {k: features.text[k][r] for k in ("text", "text_mask", "text_weight", "text_eot")}
        batch.update({k: features.video[k][vi] for k in ("video", "video_mask", "video_weight")})
        batch["video_index"] = vi
        yield batch


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The stage-2 draws (t, noise) of global step ``step``: the same on every worker, whatever W is."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 17) % 2**63)


ValFeatures = Callable[[RetrievalModel], FeatureSet]
"""Features of the validation split under the model's current weights."""


def _val_score(model: RetrievalModel, val: ValFeatures, cfg: Config, ema: EMA) -> dict[str, float]:
    """t2v R@1 on the validation split for the live weights and the EMA (stage 2: after re-ranking)."""
    variant = "rerank" if cfg.train.stage == "generation" else "stage1"
    out = {}
    for name in ("model", "ema"):
        if name == "ema":
            with ema.swap(model):
                res = evaluate_features(model, val(model), cfg.eval, rerank=variant == "rerank")
        else:
            res = evaluate_features(model, val(model), cfg.eval, rerank=variant == "rerank")
        out[f"val_{name}_t2v_R1"] = res.metrics[variant]["t2v"]["R1"]
    model.train()
    return out


VAL_CACHE_BYTES = 512 << 20  # decoded validation batches kept in memory below this size


def _stage1_val(cfg: Config) -> ValFeatures | None:
    """Re-encodes the validation split (one caption per video, from the 'val' dataset shard) with the current
    weights at each call. The decoded batches are kept in memory when small, else streamed (decoded) again."""
    shard = ray.train.get_dataset_shard("val")
    if shard is None:
        return None
    kept: list[dict[str, np.ndarray]] = []
    state = {"complete": False}

    def batches() -> Iterator[dict[str, np.ndarray]]:
        if state["complete"]:
            yield from kept
            return
        size = 0
        for batch in shard.iter_batches(
            batch_size=cfg.eval.batch_size, batch_format="numpy", prefetch_batches=1
        ):
            size += sum(np.asarray(v).nbytes for v in batch.values())
            if size <= VAL_CACHE_BYTES:
                kept.append(batch)
            yield batch
        state["complete"] = size <= VAL_CACHE_BYTES

    def features(model: RetrievalModel) -> FeatureSet:
        feats = encode_batches(model, batches())
        order = torch.argsort(feats["video_index"])
        text = {k: feats[k][order] for k in ("text", "text_mask", "text_weight", "text_eot")}
        video = {k: feats[k][order] for k in ("video", "video_mask", "video_weight")}
        return FeatureSet(text=text, video=video, text_to_video_T=torch.arange(len(order)))

    return features


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry. ``config``: ``cfg`` (Config), ``plan_rows`` (int64 (S, G) global row ids per
    step), ``steps_per_epoch``, ``init_state_uri`` (stage 2), ``cache_uri`` (stage 2: the split folders)."""
    cfg: Config = config["cfg"]
    tcfg = cfg.train
    torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))
    rank, world = dist.rank(), dist.world_size()
    storage = Storage(cfg.storage)
    plan_rows: np.ndarray = config["plan_rows"]
    total_steps, global_batch = plan_rows.shape
    local_batch = global_batch // world
    model = build_model(cfg, storage, config.get("init_state_uri"))
    ema = EMA(model, tcfg.ema_decay)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, total_steps)
    start_step, best = 0, {"score": -math.inf, "step": -1, "source": "model"}
    best_state: dict[str, Tensor] | None = None

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(d)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, best, best_state = int(state["step"]), dict(state["best"]), state.get("best_state")
        restore_rng(state["rng"])
        if rank == 0:
            _say(f"[train] resuming {tcfg.stage} at step {start_step}/{total_steps}")

    step_module: nn.Module = _GenerationStep(model) if tcfg.stage == "generation" else model
    ddp = prepare_model(step_module, parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.bf16 and device.type == "cuda")

    if tcfg.stage == "discrimination":
        # unsplit per-rank datasets: worker r reads exactly the rows the plan gives it (see trainer._run_stage1)
        batches = _stage1_batches(ray.train.get_dataset_shard(f"train_{rank}"), local_batch, start_step)
        val = _stage1_val(cfg) if rank == 0 else None
    else:
        from vidret.train.cache import load_split

        train_fs = load_split(storage, config["cache_uri"]["train"])
        my_rows = plan_rows[start_step:, rank * local_batch : (rank + 1) * local_batch].reshape(-1)
        batches = _stage2_batches(train_fs, my_rows, local_batch)
        val_fs = load_split(storage, config["cache_uri"]["val"]) if rank == 0 else None
        val = (lambda _model: val_fs) if val_fs is not None else None  # frozen encoder: cached features

    writer = _tensorboard(config.get("tb_dir")) if rank == 0 else None
    steps_per_epoch = int(config["steps_per_epoch"])
    last_metrics: dict[str, float] = {}
    t_last, wait = time.perf_counter(), 0.0
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        wait += time.perf_counter() - t0
        model.train()
        if tcfg.stage == "discrimination":
            with autocast:
                feats = ddp(batch)
            loss = dist.contrastive_loss(
                {k: feats[k] for k in (*SIM_KEYS, "video_index")},
                model.similarity,
                mode=tcfg.gather,
                logit_scale=feats["logit_scale"],
                same_video_positives=tcfg.same_video_positives,
            )
        else:
            gathered = {k: dist.gather_with_grad(v, "exact") for k, v in batch.items()}
            pos_BG = batch["video_index"][:, None] == gathered["video_index"][None, :]
            gen = _step_generator(cfg.run.seed, step)
            k = cfg.diffusion.num + 1
            t_G = model.diffusion.sample_timesteps(global_batch, generator=gen)
            noise_G2K = torch.randn(2, global_batch, k, generator=gen)
            rows = slice(rank * local_batch, (rank + 1) * local_batch)
            with autocast:
                out = ddp(
                    batch,
                    gathered,
                    pos_BG,
                    rank * local_batch,
                    t_G[rows].to(device),
                    noise_G2K[0, rows].to(device),
                    noise_G2K[1, rows].to(device),
                )
            loss = out["loss_generation"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, tcfg.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        clamp_logit_scale_(model, cfg.model.logit_scale_max)
        ema.update(model)

        done = step + 1
        loss_value = float(dist.all_reduce_mean(loss.detach()))
        metrics: dict[str, float] = {
            "step": done,
            "epoch": done / steps_per_epoch,
            "loss": loss_value,
            "lr": optimizer.param_groups[-1]["lr"],
        }
        end_of_epoch = done % steps_per_epoch == 0 or done == total_steps
        want_ckpt = done % tcfg.checkpoint_every == 0 or end_of_epoch
        if done % tcfg.log_every == 0 or want_ckpt:
            now = time.perf_counter()
            metrics["samples_per_s"] = tcfg.log_every * global_batch / max(now - t_last, 1e-9)
            metrics["data_wait_s"] = wait
            t_last, wait = now, 0.0
            if rank == 0:
                _say(
                    f"[train] {tcfg.stage} step {done}/{total_steps} loss {loss_value:.4f} "
                    f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.1f} samples/s"
                )
        if end_of_epoch and rank == 0 and val is not None:
            scores = _val_score(model, val, cfg, ema)
            metrics.update(scores)
            source = select_better(scores["val_model_t2v_R1"], scores["val_ema_t2v_R1"])
            score = scores[f"val_{source}_t2v_R1"]
            if score > best["score"]:
                best = {"score": score, "step": done, "source": source}
                best_state = _selected_state(model, ema, source)
            metrics.update(best_val_t2v_R1=best["score"], best_step=best["step"])
            _say(
                f"[train] epoch {done // steps_per_epoch} val t2v R@1 model {scores['val_model_t2v_R1']:.2f} "
                f"ema {scores['val_ema_t2v_R1']:.2f} (best {best['score']:.2f} at step {best['step']}, "
                f"{best['source']})"
            )
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(f"{tcfg.stage}/{key}", value, done)
        last_metrics = metrics
        if want_ckpt:
            _report_with_checkpoint(
                metrics,
                rank,
                {
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": done,
                    "epoch": done // steps_per_epoch,
                    "best": best,
                    "best_state": best_state if done == total_steps else None,
                    "selected": (best_state if best_state is not None else model.state_dict())
                    if done == total_steps
                    else None,
                    "rng": capture_rng(),
                    "config": dump_yaml(cfg),
                },
            )
        elif done % tcfg.log_every == 0:
            ray.train.report(metrics)
    if writer is not None:
        writer.close()
    del last_metrics


def _selected_state(model: RetrievalModel, ema: EMA, source: str) -> dict[str, Tensor]:
    """A copy of the selected weights. Frozen parameters always come from the model itself: their EMA equals
    them only up to rounding, and the stage-2 feature cache is keyed by the exact frozen encoder."""
    live = copy.deepcopy(model.state_dict())
    if source == "model":
        return live
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    with ema.swap(model):
        averaged = copy.deepcopy(model.state_dict())
    return {k: live[k] if k in frozen else v for k, v in averaged.items()}


def _report_with_checkpoint(metrics: dict[str, float], rank: int, state: dict[str, Any]) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint (verified sha256 in meta.json)."""
    state = {k: v for k, v in state.items() if v is not None}
    with tempfile.TemporaryDirectory(prefix="vidret-ckpt-") as tmp:
        if rank == 0:
            save_checkpoint(tmp, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def _tensorboard(tb_dir: str | None) -> Any:
    if not tb_dir:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(tb_dir)
