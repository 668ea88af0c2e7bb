"""The driver side of training: datasets, the ``TorchTrainer``, the exported weights and the feature cache.

``run_training(cfg)`` runs one stage (``train.stage``):

* discrimination: per-worker Ray datasets that follow the seeded ``StepPlan`` (``vidret.train.plan``), a
  validation dataset for model selection, then the selected weights exported to
  ``<run.out>/checkpoints/discrimination`` and the feature cache of every split built from them.
* generation: the feature cache of ``train.init_checkpoint`` (built if missing), then stage 2 on it, exported
  to ``<run.out>/checkpoints/generation``.

Runs resume: a re-run with the same ``run.out`` continues the Ray Train run from its latest checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
import ray
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from vidret.config import Config, dump_yaml, replace, with_absolute_paths
from vidret.console.logs import train_log_level
from vidret.data.pipeline import SplitRows, build_dataset, check_bad_fractions, load_split
from vidret.features.build import build_feature_cache, eval_splits
from vidret.features.store import require_index
from vidret.layout import check_placeholders, checkpoint_exists, stage_uri
from vidret.model.build import encoder_key
from vidret.model.checkpoint import load_checkpoint, load_state, save_state
from vidret.startup import manifest_video_uris, planned, start_job
from vidret.storage import Storage, is_remote, join
from vidret.train.loop import train_loop_per_worker
from vidret.train.plan import make_plan
from vidret.watchdog import watching


def _storage_path(cfg: Config, storage: Storage) -> tuple[str, Any]:
    path = cfg.train.storage_path
    if is_remote(path):
        fs, p = storage.pyarrow_fs(path)
        return p, fs
    return os.path.abspath(path), None


def _run_config(cfg: Config, storage: Storage, name: str) -> RunConfig:
    path, fs = _storage_path(cfg, storage)
    # mypy sees ray.train's V1 RunConfig; V2 (Ray's default) is what runs, and it takes logging_config
    return RunConfig(  # type: ignore[call-arg]
        name=name,
        storage_path=path,
        storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        # WARNING unless verbose: no "Reporting training result" / worker-group set-up lines
        logging_config=LoggingConfig(log_level=train_log_level()),
    )


def _run_name(cfg: Config, stage: str) -> str:
    base = cfg.run.out.rstrip("/").split("/")[-1] or "run"
    return f"{base}-{stage}"


def _scaling(cfg: Config) -> ScalingConfig:
    return ScalingConfig(
        num_workers=cfg.train.num_workers,
        use_gpu=cfg.train.use_gpu,
        resources_per_worker={"CPU": cfg.train.cpus_per_worker},
    )


def _fit(
    cfg: Config, storage: Storage, loop_config: dict[str, Any], datasets: dict[str, Any], stage: str
) -> ray.train.Result:
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=_scaling(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=_run_config(cfg, storage, _run_name(cfg, stage)),
    )
    with watching(cfg.run):  # workers or decode actors the cluster cannot place end the job
        result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training ({stage}) failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training ({stage}) reported no checkpoint")
    return result


def _export(result: ray.train.Result, cfg: Config, storage: Storage, stage: str) -> tuple[str, str]:
    """Copy the final checkpoint's selected weights to ``stage_uri``; returns (uri, checkpoint key)."""
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError(f"training ({stage}) reported no checkpoint")
    with checkpoint.as_directory() as d:
        state = load_checkpoint(d)
    if "selected" not in state:
        raise RuntimeError("the last checkpoint has no selected weights (the run did not finish)")
    key = encoder_key(state["selected"])
    uri = stage_uri(cfg, stage)
    save_state(
        uri,
        {
            "selected": state["selected"],
            "best": state["best"],
            "step": state["step"],
            "key": key,
            "stage": stage,
            "config": dump_yaml(cfg),
        },
        storage,
    )
    return uri, key


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_training(cfg: Config) -> dict[str, Any]:
    """Run ``train.stage`` and return a summary (exported weights, cache location, metrics, wall time)."""
    cfg = with_absolute_paths(cfg)
    check_placeholders(cfg)
    storage = Storage(cfg.storage)
    job = "stage 1" if cfg.train.stage == "discrimination" else "stage 2"
    plan, _ = start_job(job, cfg, manifest_video_uris(cfg, eval_splits(cfg)))  # fails fast when it cannot fit
    cfg = planned(cfg, plan)
    t0 = time.perf_counter()
    summary = _run_stage1(cfg, storage) if cfg.train.stage == "discrimination" else _run_stage2(cfg, storage)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    storage.write_text(join(cfg.run.out, f"config.{cfg.train.stage}.yaml"), dump_yaml(cfg))
    return summary


def _take(rows: SplitRows, idx: np.ndarray) -> SplitRows:
    return SplitRows(table=rows.table.take(idx), num_videos=rows.num_videos)


def _run_stage1(cfg: Config, storage: Storage) -> dict[str, Any]:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the plan's row order is the training order
    train = load_split(cfg.data.manifest, cfg.data.train_split, storage, pairs=True)
    val = load_split(cfg.data.manifest, cfg.data.val_split, storage, pairs=False)
    plan = make_plan(
        train.table.num_rows, cfg.train.batch_size, cfg.train.epochs, cfg.run.seed, cfg.train.max_steps
    )
    world = cfg.train.num_workers
    datasets: dict[str, Any] = {}
    logs = []
    for r in range(world):
        ds, log = build_dataset(_take(train, plan.worker_rows(r, world)), cfg.data, storage, drop_bad=False)
        datasets[f"train_{r}"] = ds
        logs.append(log)
    # The val pass runs at epoch ends while the train shard's decode actors still hold their CPUs (the train
    # iterator is paused, not finished): its single decode actor reserves no CPU, or it would wait forever
    # for one. It is short and runs while training waits for it.
    val_data = replace(cfg.data, decode_cpus=0.0, decode_concurrency=1)
    datasets["val"], _ = build_dataset(val, val_data, storage, drop_bad=False)
    _log(
        f"[train] stage 1: {train.table.num_rows} pairs over {train.num_videos} videos, {plan.total_steps} "
        f"steps of {cfg.train.batch_size} on {world} worker(s)"
    )
    loop_config = {
        "cfg": cfg,
        "plan_rows": plan.rows_S_B,
        "steps_per_epoch": plan.steps_per_epoch,
    }
    result = _fit(cfg, storage, loop_config, datasets, "discrimination")
    # one verdict over the workers' shards: a bad video whose captions landed on two workers counts once,
    # against the split's distinct videos (the decode stage's fail-fast budget), not its caption rows
    bad = check_bad_fractions(logs, train.num_videos, cfg.data)
    uri, key = _export(result, cfg, storage, "discrimination")
    _log(f"[train] stage 1 weights -> {uri} (key {key})")
    cache = build_feature_cache(cfg, storage, uri, key)
    return {
        "stage": "discrimination",
        "weights": uri,
        "key": key,
        "cache": cache,
        "steps": plan.total_steps,
        "metrics": result.metrics,
        "bad_videos": len(bad["bad"]),
        "bad_videos_by_uri": bad["bad"],
    }


def _run_stage2(cfg: Config, storage: Storage) -> dict[str, Any]:
    init = cfg.train.init_checkpoint or stage_uri(cfg, "discrimination")
    if not checkpoint_exists(init, storage):
        raise ValueError(f"train.init_checkpoint: no stage-1 weights at {init} (run stage 1 first)")
    key = load_state(init, storage)["key"]
    cache = build_feature_cache(cfg, storage, init, key)
    train_index = require_index(storage, cache[cfg.data.train_split])
    num_rows = sum(s["rows"] for s in train_index["texts"])
    if cfg.diffusion.num > cfg.train.batch_size - 1:
        raise ValueError(
            f"diffusion.num {cfg.diffusion.num} needs a global batch of at least num + 1 = "
            f"{cfg.diffusion.num + 1}, got train.batch_size {cfg.train.batch_size}"
        )
    plan = make_plan(num_rows, cfg.train.batch_size, cfg.train.epochs, cfg.run.seed + 1, cfg.train.max_steps)
    _log(f"[train] stage 2 on cached features: {num_rows} captions, {plan.total_steps} steps")
    loop_config = {
        "cfg": cfg,
        "plan_rows": plan.rows_S_B,
        "steps_per_epoch": plan.steps_per_epoch,
        "init_state_uri": init,
        "cache_uri": cache,
    }
    result = _fit(cfg, storage, loop_config, {}, "generation")
    uri, key2 = _export(result, cfg, storage, "generation")
    _log(f"[train] stage 2 weights -> {uri}")
    return {
        "stage": "generation",
        "weights": uri,
        "key": key2,
        "cache": cache,
        "steps": plan.total_steps,
        "metrics": result.metrics,
    }
