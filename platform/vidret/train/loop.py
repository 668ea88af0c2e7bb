"""``train_loop_per_worker``: plain PyTorch plus Ray Train's ``get_dataset_shard``, ``prepare_model``,
``report``.

The driver below is short on purpose; its parts are named elsewhere: the stage's batches and loss
(``vidret.train.steps``), the state carried from step to step and its checkpoint form
(``vidret.train.state``), throughput (``vidret.train.meter``), and here ``maybe_validate`` /
``maybe_checkpoint``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train.torch import prepare_model

from vidret.config import Config, to_dict
from vidret.console.progress import Progress
from vidret.features.scoring import evaluate_features
from vidret.model.checkpoint import load_checkpoint
from vidret.storage import Storage
from vidret.tracking import Tracker
from vidret.train import distributed as dist
from vidret.train.checkpoint import report_with_checkpoint
from vidret.train.meter import Throughput
from vidret.train.state import TrainState
from vidret.train.steps import DiscriminationStep, GenerationStep, Step, ValFeatures

PROGRESS_EVERY_S = 10.0  # a plain progress line on rank 0 at most this often (and at the last step)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry. ``config``: ``cfg`` (Config), ``plan_rows`` (int64 (S, G) global row ids per
    step), ``steps_per_epoch``, ``init_state_uri`` (stage 2), ``cache_uri`` (stage 2: {split: uri}).

    Rank 0 prints the progress lines (step, %, loss, samples/s, data-wait share, ETA), which Ray forwards to
    the driver, and writes the scalars (``vidret.tracking.Tracker``: TensorBoard under
    ``<run.out>/tensorboard/<stage>``, MLflow when ``tracking.mlflow_uri`` is set)."""
    cfg: Config = config["cfg"]
    tcfg = cfg.train
    torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))
    rank = dist.rank()
    plan_rows: np.ndarray = config["plan_rows"]
    total_steps, global_batch = plan_rows.shape
    per_epoch = int(config["steps_per_epoch"])
    state = TrainState.create(cfg, Storage(cfg.storage), config.get("init_state_uri"), total_steps)
    _resume(state, rank, total_steps)
    step = _make_step(state, config, global_batch // dist.world_size())
    forward = prepare_model(step.module, parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    val = step.validation() if rank == 0 else None
    tracker = _tracker(cfg) if rank == 0 else None
    progress = Progress(
        f"train {tcfg.stage}",
        total_steps,
        unit="step",
        enabled=rank == 0,
        every_s=PROGRESS_EVERY_S,
        live=False,  # a worker's stderr is a pipe to Ray's log forwarding: plain lines
        initial=state.step,
    )
    meter = Throughput(global_batch)
    batches = step.batches(state.step)
    while state.step < total_steps:
        waited = meter.wait_s
        with meter.waiting():
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        waited = meter.wait_s - waited
        loss = step.loss(forward, batch, state.step)
        state.update(loss)
        meter.step()
        done = state.step
        loss_value = float(dist.all_reduce_mean(loss.detach()))
        progress.set(done, samples=global_batch, data_wait_s=waited, loss=loss_value)
        metrics = {"step": done, "epoch": done / per_epoch, "loss": loss_value, "lr": state.lr}
        end_of_epoch = done % per_epoch == 0 or done == total_steps
        want_ckpt = done % tcfg.checkpoint_every == 0 or end_of_epoch
        if done % tcfg.log_every == 0 or want_ckpt:
            metrics.update(meter.read())
        if end_of_epoch and val is not None:
            metrics.update(maybe_validate(state, val, per_epoch))
        if tracker is not None:
            tracker.scalars(done, metrics, prefix=tcfg.stage)
        maybe_checkpoint(state, metrics, rank, want_ckpt, per_epoch, total_steps)
    progress.close()
    if tracker is not None:
        tracker.close()


def _tracker(cfg: Config) -> Tracker:
    """Rank 0's scalars: TensorBoard (synced to an ``s3://`` run.out) and MLflow when configured."""
    return Tracker(
        cfg.run.out,
        cfg.train.stage,
        Storage(cfg.storage),
        mlflow_uri=cfg.tracking.mlflow_uri or None,
        params=to_dict(cfg),
    )


def _make_step(state: TrainState, config: dict[str, Any], local_batch: int) -> Step:
    cfg: Config = config["cfg"]
    device = ray.train.torch.get_device()
    bf16 = cfg.train.bf16 and device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if cfg.train.stage == "discrimination":
        return DiscriminationStep(state.model, cfg, local_batch, autocast)
    return GenerationStep(state.model, cfg, config["plan_rows"], config["cache_uri"], autocast)


def _resume(state: TrainState, rank: int, total_steps: int) -> None:
    """Load Ray Train's latest checkpoint of this run into ``state``, if there is one."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return
    with ckpt.as_directory() as d:
        state.load(load_checkpoint(d))
    if rank == 0:
        _say(f"[train] resuming {state.cfg.train.stage} at step {state.step}/{total_steps}")


def maybe_validate(state: TrainState, val: ValFeatures, per_epoch: int) -> dict[str, float]:
    """t2v R@1 on the validation split for the live weights and the EMA (stage 2: after re-ranking); keeps
    the better as the best weights when it beats the best so far. Returns the metrics to log."""
    cfg, model = state.cfg, state.model
    variant = "rerank" if cfg.train.stage == "generation" else "stage1"
    scores = {}
    for name in ("model", "ema"):
        if name == "ema":
            with state.ema.swap(model):
                res = evaluate_features(model, val(model), cfg.eval, rerank=variant == "rerank")
        else:
            res = evaluate_features(model, val(model), cfg.eval, rerank=variant == "rerank")
        scores[f"val_{name}_t2v_R1"] = res.metrics[variant]["t2v"]["R1"]
    model.train()
    state.select(scores["val_model_t2v_R1"], scores["val_ema_t2v_R1"])
    best = state.best
    _say(
        f"[train] epoch {state.step // per_epoch} val t2v R@1 model {scores['val_model_t2v_R1']:.2f} "
        f"ema {scores['val_ema_t2v_R1']:.2f} (best {best.score:.2f} at step {best.step}, {best.source})"
    )
    return {**scores, "best_val_t2v_R1": best.score, "best_step": best.step}


def maybe_checkpoint(
    state: TrainState, metrics: dict[str, float], rank: int, want: bool, per_epoch: int, total_steps: int
) -> None:
    """Report ``metrics`` to Ray Train: with a checkpoint when ``want``, else only on ``log_every`` steps."""
    if want:
        final = state.step == total_steps
        report_with_checkpoint(metrics, rank, state.state_dict(per_epoch, final=final))
    elif state.step % state.cfg.train.log_every == 0:
        ray.train.report(metrics)


def _say(line: str) -> None:
    """One line on this worker's stderr (forwarded to the driver's stderr by Ray: stdout is kept for the
    command's result, e.g. ``--json``). Not ``print``: Ray Train patches it to write to the stream *and* its
    logger, so every line reached the driver twice."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
