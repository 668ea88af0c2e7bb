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
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from vidret.config import Config, dump_yaml, replace, with_absolute_paths
from vidret.data.pipeline import (
    SplitRows,
    build_dataset,
    check_bad_fraction,
    check_bad_fractions,
    iter_numpy_batches,
    load_split,
    tokenize_rows,
)
from vidret.data.tokenizer import ClipTokenizer
from vidret.runtime import ensure_ray as pipeline_ensure_ray
from vidret.storage import Storage, is_remote, join
from vidret.train import cache as feature_cache
from vidret.train.artifacts import checkpoint_exists, load_state, save_state
from vidret.train.checkpoint import checkpoint_key, load_checkpoint
from vidret.train.loop import train_loop_per_worker
from vidret.train.plan import make_plan

PLACEHOLDER = "YOUR-BUCKET"


def ensure_ray(cfg: Config) -> None:
    """Connect to the configured cluster or start a local instance (see ``vidret.data.pipeline.ensure_ray``)."""
    pipeline_ensure_ray(cfg.run)


def check_placeholders(cfg: Config) -> None:
    """Refuse to run on the ``s3://YOUR-BUCKET`` placeholders of the shipped real-dataset configs."""
    for key, value in (
        ("run.out", cfg.run.out),
        ("data.manifest", cfg.data.manifest),
        ("train.storage_path", cfg.train.storage_path),
        ("model.weights", cfg.model.weights),
        ("train.init_checkpoint", cfg.train.init_checkpoint),
    ):
        if value and PLACEHOLDER in value:
            raise ValueError(
                f"{key} is still the placeholder {value!r}: set it to your bucket "
                f"(e.g. {key}=s3://my-bucket/...)"
            )


def stage_uri(cfg: Config, stage: str) -> str:
    """Where the selected weights of ``stage`` are exported."""
    return join(cfg.run.out, "checkpoints", stage)


DENOISER_PREFIXES = ("t2v_denoiser.", "v2t_denoiser.")


def encoder_key(state_dict: dict[str, Any]) -> str:
    """Content key of the encoder weights (everything but the denoisers): the feature cache's key, shared by a
    stage-1 checkpoint and the stage-2 checkpoints trained on top of it (their encoder is frozen)."""
    return checkpoint_key({k: v for k, v in state_dict.items() if not k.startswith(DENOISER_PREFIXES)})


def cache_root(cfg: Config, key: str) -> str:
    return join(cfg.run.out, "features", key)


def eval_splits(cfg: Config) -> list[str]:
    out = [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split, *cfg.data.extra_eval_splits]
    return list(dict.fromkeys(out))


def _storage_path(cfg: Config, storage: Storage) -> tuple[str, Any]:
    path = cfg.train.storage_path
    if is_remote(path):
        fs, p = storage.pyarrow_fs(path)
        return p, fs
    return os.path.abspath(path), None


def _run_config(cfg: Config, storage: Storage, name: str) -> RunConfig:
    path, fs = _storage_path(cfg, storage)
    return RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
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
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training ({stage}) failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training ({stage}) reported no checkpoint")
    return result


def _export(result: ray.train.Result, cfg: Config, storage: Storage, stage: str) -> tuple[str, str]:
    """Copy the final checkpoint's selected weights to ``stage_uri``; returns (uri, checkpoint key)."""
    with result.checkpoint.as_directory() as d:
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
    ensure_ray(cfg)
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
    # for one (ray-notes P8). It is short and runs while training waits for it.
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
        "tb_dir": _tb_dir(cfg, "discrimination"),
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


def _tb_dir(cfg: Config, stage: str) -> str | None:
    return None if is_remote(cfg.run.out) else os.path.abspath(join(cfg.run.out, "tensorboard", stage))


def _run_stage2(cfg: Config, storage: Storage) -> dict[str, Any]:
    init = cfg.train.init_checkpoint or stage_uri(cfg, "discrimination")
    if not checkpoint_exists(init, storage):
        raise ValueError(f"train.init_checkpoint: no stage-1 weights at {init} (run stage 1 first)")
    key = load_state(init, storage)["key"]
    cache = build_feature_cache(cfg, storage, init, key)
    train_index = feature_cache.read_index(storage, cache["train"])
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
        "tb_dir": _tb_dir(cfg, "generation"),
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


# -- feature cache (Ray Data batch inference) ---------------------------------------------------------------
class _Encoder:
    """Ray Data actor: frozen stage-1 encoder applied to decoded video rows or tokenised caption rows."""

    def __init__(self, cfg: Config, weights_uri: str, what: str) -> None:
        import torch

        from vidret.train.loop import build_model

        torch.set_num_threads(1)
        storage = Storage(cfg.storage)
        self.model = build_model(cfg, storage, None)
        self.model.load_state_dict(load_state(weights_uri, storage)["selected"])
        self.model.eval()
        self.what, self.max_words = what, cfg.data.max_words
        self.tokenizer = ClipTokenizer() if what == "texts" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vidret.eval.retrieval import encode_batches

        if self.tokenizer is not None:
            batch = tokenize_rows(batch, self.tokenizer, self.max_words)
        feats = encode_batches(self.model, [batch], texts=self.what == "texts", videos=self.what == "videos")
        out = {k: v.numpy() for k, v in feats.items()}
        if self.what == "texts":
            out["caption_row"] = np.asarray(batch["caption_row"], np.int64)
            out.pop("ok", None)
        return out


def build_feature_cache(
    cfg: Config, storage: Storage, weights_uri: str, key: str, splits: list[str] | None = None
) -> dict[str, str]:
    """Encode ``splits`` (default: train, val, test and extra) with the weights at ``weights_uri`` into
    ``<run.out>/features/<key>/<split>``. Complete splits are reused; the missing ones are encoded together,
    in one text pass and one video pass (the actors start once). Returns {split: uri}.
    """
    root = cache_root(cfg, key)
    out, missing = {}, []
    for split in splits if splits is not None else eval_splits(cfg):
        out[split] = feature_cache.split_uri(root, split)
        if feature_cache.read_index(storage, out[split]) is not None:
            _log(f"[cache] {split}: reusing {out[split]}")
        else:
            missing.append(split)
    if missing:
        t0 = time.perf_counter()
        infos = _encode_splits(cfg, storage, weights_uri, {s: out[s] for s in missing})
        for split in missing:
            _log(
                f"[cache] {split}: {infos[split]['num_texts']} captions, {infos[split]['num_videos']} videos "
                f"-> {out[split]}"
            )
        _log(f"[cache] encoded {', '.join(missing)} in {time.perf_counter() - t0:.1f} s")
    return out


def _encode_splits(cfg: Config, storage: Storage, weights_uri: str, uris: dict[str, str]) -> dict[str, Any]:
    """One text pass and one video pass over the union of the splits; rows are routed back to each split's
    shards by their offset ranges (video rows ``[v0, v1)`` and caption rows ``[t0, t1)`` of the union)."""
    import pyarrow as pa

    texts, videos, ranges, infos = [], [], {}, {}
    v_off = t_off = 0
    for split in uris:
        pairs = load_split(cfg.data.manifest, split, storage, pairs=True)
        vids = load_split(cfg.data.manifest, split, storage, pairs=False)
        n_t, n_v = pairs.table.num_rows, vids.num_videos
        texts.append(
            pa.table(
                {
                    "caption": pairs.table.column("caption"),
                    "caption_row": pa.array(np.arange(n_t) + t_off, pa.int64()),
                    "video_index": pa.array(pairs.table.column("video_index").to_numpy() + v_off),
                }
            )
        )
        vt = vids.table
        videos.append(
            vt.set_column(
                vt.schema.get_field_index("video_index"),
                "video_index",
                pa.array(vt.column("video_index").to_numpy() + v_off),
            )
        )
        ranges[split] = (t_off, t_off + n_t, v_off, v_off + n_v)
        infos[split] = {
            "split": split,
            "num_texts": n_t,
            "num_videos": n_v,
            "weights": weights_uri,
            "video_ids": vt.column("video_id").to_pylist(),
            "captions": pairs.table.column("caption").to_pylist(),
        }
        t_off, v_off = t_off + n_t, v_off + n_v
    union = SplitRows(table=pa.concat_tables(videos), num_videos=v_off)
    video_ds, log = build_dataset(union, cfg.data, storage, tokenize=False, drop_bad=False)
    kwargs = {"concurrency": 1, "num_cpus": 0.5, "batch_size": cfg.eval.batch_size}  # headroom: P8
    encoder = {"cfg": cfg, "weights_uri": weights_uri}
    text_feats = ray.data.from_arrow(pa.concat_tables(texts)).map_batches(
        _Encoder, fn_constructor_kwargs={**encoder, "what": "texts"}, **kwargs
    )
    video_feats = video_ds.map_batches(
        _Encoder, fn_constructor_kwargs={**encoder, "what": "videos"}, **kwargs
    )
    writers = {
        s: (feature_cache.ShardWriter(storage, u, "texts"), feature_cache.ShardWriter(storage, u, "videos"))
        for s, u in uris.items()
    }
    # the video pass is read with its bad-video log: past data.max_bad_fraction it raises the typed
    # TooManyBadVideosError listing them (Ray Data would hand over a wrapped RayTaskError(UserCodeException))
    passes = (("texts", text_feats, "caption_row", None), ("videos", video_feats, "video_index", log))
    for kind, feats, row_key, pass_log in passes:
        for batch in iter_numpy_batches(
            feats, cfg.eval.batch_size, log=pass_log, total=union.num_videos, cfg=cfg.data
        ):
            for split, (t0, t1, v0, v1) in ranges.items():
                lo, hi = (t0, t1) if kind == "texts" else (v0, v1)
                sel = (batch[row_key] >= lo) & (batch[row_key] < hi)
                if not sel.any():
                    continue
                part = {k: v[sel] for k, v in batch.items()}
                part["video_index"] = part["video_index"] - v0
                if kind == "texts":
                    part["caption_row"] = part["caption_row"] - t0
                writers[split][0 if kind == "texts" else 1].add(part)
    bad = check_bad_fraction(log, union.num_videos, cfg.data)["bad"]
    for split, uri in uris.items():
        split_uris = {u for u in bad if u in set(_video_uris(videos, ranges[split]))}
        feature_cache.write_index(
            storage,
            uri,
            {**infos[split], "bad_videos": {u: bad[u] for u in split_uris}},
            writers[split][0].close(),
            writers[split][1].close(),
        )
    return infos


def _video_uris(tables: list[Any], rng: tuple[int, int, int, int]) -> list[str]:
    import pyarrow as pa

    union = pa.concat_tables(tables)
    return union.column("video_uri").to_pylist()[rng[2] : rng[3]]
