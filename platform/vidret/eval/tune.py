"""Ray Tune sweeps, selected on the VALIDATION split only: re-ranking parameters, or stage-2 learning rates.

Two kinds (``tune.kind``):

* ``inference``: each trial builds the model from the exported generation weights (shipped once through the
  object store by ``tune.with_parameters``, never re-read), applies its diffusion overrides and re-ranks the
  cached features of ``data.val_split`` with ``evaluate_features``. Nothing is decoded; only the validation
  cache is built or read, never the test split.
* ``training``: each trial runs stage 2 (``run_training``) on the cached train/val features with its
  ``train.lr`` in its own ``run.out`` (``<run.out>/tune/training/trials/<name>``; the caches are copied there
  first and its test split is pointed at validation, so nothing else is encoded), then evaluates its exported
  weights on validation like an inference trial. A re-run with the same ``run.out`` resumes those trials.

Search space: the axes (inference: ``alpha`` x ``temp`` x ``k`` x ``sample_steps``, each value applied to both
directions; training: ``lr``) are enumerated as a grid. When the grid has more than ``tune.num_samples`` points,
a random subset of ``num_samples`` distinct points (seeded by ``run.seed``) runs instead. The points reach Tune
as one ``tune.grid_search`` axis, so no point runs twice (``tune.choice`` would draw duplicates).

Outputs under ``<run.out>/tune/<kind>/``, each written atomically through Storage: ``results.csv`` (a row per
trial, best first), ``results.txt`` (the metrics table), ``best_overrides.yaml`` (the fields the best trial
sets), ``best_config.yaml`` (the resolved config with them applied) and ``summary.json``. Tune's own folders go
to ``<run.out>/tune/ray`` when ``run.out`` is local, else to a temporary folder removed afterwards.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import torch
import yaml
from ray import tune

from vidret.config import Config, TuneConfig, dump_yaml, replace
from vidret.eval.metrics import metrics_table
from vidret.eval.retrieval import FeatureSet, evaluate_features
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage, is_remote, join, parse_uri

DIRECTIONS = ("t2v", "v2t")
REPORTED = ("R1", "R5", "R10", "MdR", "MnR")
METRICS = tuple(f"{d}_{m}" for d in DIRECTIONS for m in REPORTED)
"""Selectable metrics (``tune.metric``): the re-ranked validation metrics each trial reports."""
BASELINE = tuple(f"stage1_{k}" for k in METRICS)  # stage-1 metrics, reported for reference
EXTRAS = ("train_steps", "train_wall_s")  # training trials only

TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "inference": {
        "alpha": ("diffusion.t2v_alpha", "diffusion.v2t_alpha"),
        "temp": ("diffusion.t2v_temp", "diffusion.v2t_temp"),
        "k": ("diffusion.t2v_k", "diffusion.v2t_k"),
        "sample_steps": ("diffusion.sample_steps",),
    },
    "training": {"lr": ("train.lr",)},
}
"""Search axis -> the ``section.field`` config keys one value of it sets."""


# -- the search space (pure) --------------------------------------------------------------------------------
def search_axes(tcfg: TuneConfig) -> dict[str, tuple[Any, ...]]:
    """The grid axes of ``tune.kind`` from ``TuneConfig`` (duplicates dropped, order kept)."""
    raw = {
        "inference": {
            "alpha": ("alphas", tcfg.alphas),
            "temp": ("temps", tcfg.temps),
            "k": ("ks", tcfg.ks),
            "sample_steps": ("sample_steps", tcfg.sample_steps),
        },
        "training": {"lr": ("lrs", tcfg.lrs)},
    }[tcfg.kind]
    axes = {}
    for axis, (field_name, values) in raw.items():
        if not values:
            raise ValueError(f"tune.{field_name}: expected at least one value for a {tcfg.kind} sweep")
        axes[axis] = tuple(dict.fromkeys(values))
    return axes


def search_points(axes: Mapping[str, Sequence[Any]], num_samples: int, seed: int) -> list[dict[str, Any]]:
    """Grid points (dicts axis -> value) in grid order: all of them when there are at most ``num_samples``,
    else ``num_samples`` distinct ones drawn with ``random.Random(seed)`` (kept in grid order)."""
    if num_samples < 1:
        raise ValueError(f"tune.num_samples: expected an integer >= 1, got {num_samples}")
    names = list(axes)
    grid = [dict(zip(names, values, strict=True)) for values in itertools.product(*(axes[n] for n in names))]
    if len(grid) <= num_samples:
        return grid
    picked = sorted(random.Random(seed).sample(range(len(grid)), num_samples))
    return [grid[i] for i in picked]


def param_space(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Tune's ``param_space``: the points as one ``grid_search`` axis named ``params`` (one trial each)."""
    return {"params": tune.grid_search([dict(p) for p in points])}


def metric_mode(metric: str) -> str:
    """``"min"`` for rank metrics (MdR, MnR), ``"max"`` for recalls; ValueError for an unknown metric."""
    if metric not in METRICS:
        raise ValueError(f"tune.metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    return "min" if metric.endswith(("MdR", "MnR")) else "max"


def overrides_for(kind: str, params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{section: {field: value}}`` that a trial's ``params`` set (e.g. alpha -> t2v_alpha and v2t_alpha)."""
    out: dict[str, dict[str, Any]] = {}
    for axis, value in params.items():
        if axis not in TARGETS[kind]:
            raise ValueError(f"tune ({kind}): unknown search axis {axis!r}; expected {sorted(TARGETS[kind])}")
        for key in TARGETS[kind][axis]:
            section, name = key.split(".")
            out.setdefault(section, {})[name] = value
    return out


def apply_overrides(cfg: Config, overrides: Mapping[str, Mapping[str, Any]]) -> Config:
    """``cfg`` with ``{section: {field: value}}`` applied; the sections' own checks run on the new values."""
    return replace(cfg, **{s: replace(getattr(cfg, s), **fields) for s, fields in overrides.items()})


def dotted(overrides: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``["diffusion.t2v_k=16", ...]``: the overrides as CLI arguments."""
    return [f"{s}.{k}={v}" for s, fields in overrides.items() for k, v in fields.items()]


def trial_name(params: Mapping[str, Any]) -> str:
    """A readable, path-safe name of a point, e.g. ``alpha-0.5_temp-10.0_k-16_sample_steps-0``."""
    return "_".join(f"{k}-{v}" for k, v in params.items())


def flat_metrics(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """``{"t2v_R1": ..., "stage1_t2v_R1": ...}`` from ``EvalResult.metrics`` (re-ranked and stage-1)."""
    out = {}
    for prefix, variant in (("", "rerank"), ("stage1_", "stage1")):
        for d in DIRECTIONS:
            out.update({f"{prefix}{d}_{m}": float(metrics[variant][d][m]) for m in REPORTED})
    return out


# -- trials (run in Tune's worker processes) ----------------------------------------------------------------
def _model(cfg: Config, state: Mapping[str, torch.Tensor]) -> RetrievalModel:
    from vidret.train.loop import build_model

    model = build_model(cfg, Storage(cfg.storage), None)
    model.load_state_dict(state)
    return model.eval()


def _inference_trial(
    config: dict[str, Any], *, cfg: Config, state: dict[str, torch.Tensor], features: FeatureSet
) -> None:
    torch.set_num_threads(1)
    trial_cfg = apply_overrides(cfg, overrides_for("inference", config["params"]))
    model = _model(cfg, state)
    res = evaluate_features(model, features, cfg.eval, trial_cfg.diffusion, rerank=True)
    tune.report(flat_metrics(res.metrics))


def _training_trial(config: dict[str, Any], *, cfg: Config, init_uri: str) -> None:
    from vidret.train.artifacts import load_state
    from vidret.train.cache import load_split
    from vidret.train.trainer import run_training

    torch.set_num_threads(1)
    trial_cfg = training_trial_config(cfg, config["params"], init_uri)
    summary = run_training(trial_cfg)
    storage = Storage(cfg.storage)
    model = _model(trial_cfg, load_state(summary["weights"], storage)["selected"])
    features = load_split(storage, summary["cache"][cfg.data.val_split])
    res = evaluate_features(model, features, trial_cfg.eval, trial_cfg.diffusion, rerank=True)
    tune.report(
        {**flat_metrics(res.metrics), "train_steps": summary["steps"], "train_wall_s": summary["wall_s"]}
    )


def _absolute(uri: str) -> str:
    """Local relative paths made absolute: Tune may run trials in another working directory."""
    return uri if "://" in uri else os.path.abspath(uri)


def trial_out(cfg: Config, params: Mapping[str, Any]) -> str:
    return join(_absolute(cfg.run.out), "tune", "training", "trials", trial_name(params))


def training_trial_config(cfg: Config, params: Mapping[str, Any], init_uri: str) -> Config:
    """A stage-2 config of its own: the point's overrides, its own ``run.out`` and Ray storage, stage-1 init,
    and its test split pointed at validation so the trial never encodes or reads the test split."""
    out = trial_out(cfg, params)
    base = apply_overrides(cfg, overrides_for("training", params))
    return replace(
        base,
        train=replace(
            base.train, stage="generation", init_checkpoint=init_uri, storage_path=join(out, "ray-results")
        ),
        run=replace(base.run, out=out),
        data=replace(
            base.data,
            test_split=base.data.val_split,
            extra_eval_splits=(),
            manifest=_absolute(base.data.manifest) if base.data.manifest else "",
        ),
    )


def detach_init_weights(cfg: Config, storage: Storage) -> Config:
    """The config trials build from: ``model.weights`` dropped (the exported state overwrites every tensor, so
    trials need not re-read it) with the activation it implied pinned, as ``build_clip`` resolves it."""
    mcfg = cfg.model
    if mcfg.weights is None:
        return cfg
    quick = mcfg.quick_gelu
    if quick is None:
        from vidret.model.clip import read_clip_weights
        from vidret.model.presets import preset_config

        fmt = read_clip_weights(mcfg.weights, mcfg.weights_format, storage).format
        quick = True if fmt == "openai" else bool(preset_config(mcfg.preset)["quick_gelu"])
    return replace(cfg, model=replace(mcfg, weights=None, quick_gelu=quick))


# -- the driver ---------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_tune(cfg: Config, checkpoint_uri: str | None = None) -> dict[str, Any]:
    """Sweep ``tune.kind`` on ``data.val_split`` and write the results table and best config.

    ``checkpoint_uri``: exported weights; inference needs generation weights (default
    ``<run.out>/checkpoints/generation``), training needs stage-1 weights (default ``train.init_checkpoint``
    or ``<run.out>/checkpoints/discrimination``). Returns ``kind``, ``metric``, ``mode``, ``best_params``,
    ``best_metric``, ``best_overrides`` (CLI arguments), ``num_trials``, ``table_path`` (CSV), ``table``
    (the text table), ``best_config`` and ``out``.
    """
    from vidret.train.artifacts import load_state
    from vidret.train.trainer import build_feature_cache, check_placeholders, ensure_ray, stage_uri

    tcfg, kind, data = cfg.tune, cfg.tune.kind, cfg.data
    mode = metric_mode(tcfg.metric)
    if data.val_split in (data.test_split, *data.extra_eval_splits):
        raise ValueError(
            f"data.val_split {data.val_split!r} is also an evaluation split: a sweep selects on "
            "validation only, so it needs a split of its own"
        )
    if tcfg.max_concurrent < 1:
        raise ValueError(f"tune.max_concurrent: expected an integer >= 1, got {tcfg.max_concurrent}")
    points = search_points(search_axes(tcfg), tcfg.num_samples, cfg.run.seed)
    for p in points:  # fail before Ray starts on values the config sections reject (k < 1, sample_steps > T)
        try:
            apply_overrides(cfg, overrides_for(kind, p))
        except ValueError as e:
            raise ValueError(f"tune ({kind}): the point {p} is invalid: {e}") from None
    check_placeholders(cfg)
    storage = Storage(cfg.storage)
    if checkpoint_uri is None:
        checkpoint_uri = (
            stage_uri(cfg, "generation")
            if kind == "inference"
            else (cfg.train.init_checkpoint or stage_uri(cfg, "discrimination"))
        )
    exported = load_state(checkpoint_uri, storage)
    want = "generation" if kind == "inference" else "discrimination"
    if exported.get("stage") != want:
        raise ValueError(
            f"tune ({kind}): {checkpoint_uri} holds {exported.get('stage')!r} weights, expected "
            f"{want!r} ({'trained denoisers' if want == 'generation' else 'stage-1 init'})"
        )
    ensure_ray(cfg)
    t0 = time.perf_counter()
    splits = [data.val_split] if kind == "inference" else [data.train_split, data.val_split]
    cache = build_feature_cache(cfg, storage, checkpoint_uri, exported["key"], splits=splits)
    trial_cfg = detach_init_weights(cfg, storage)
    if kind == "inference":
        from vidret.train.cache import load_split

        features = load_split(storage, cache[data.val_split])
        fn = tune.with_parameters(
            _inference_trial, cfg=trial_cfg, state=exported["selected"], features=features
        )
        concurrency = tcfg.max_concurrent
    else:
        init = _absolute(checkpoint_uri)
        for p in points:
            _seed_trial_cache(storage, cache, training_trial_config(trial_cfg, p, init), exported["key"])
        fn = tune.with_parameters(_training_trial, cfg=trial_cfg, init_uri=init)
        concurrency = _training_concurrency(cfg)
    rows = _fit(cfg, fn, points, concurrency)
    summary = _write_outputs(cfg, storage, rows, points, mode)
    summary.update(checkpoint=checkpoint_uri, split=data.val_split, wall_s=round(time.perf_counter() - t0, 1))
    storage.write_text(
        join(summary["out"], "summary.json"),
        json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1, sort_keys=True),
    )
    _log(summary["table"])
    return summary


def _training_concurrency(cfg: Config) -> int:
    """Concurrent training trials that fit: a trial holds 1 CPU while its trainer's workers need their own, so
    more trials than fit would hold every CPU with trainers that never start (ray-notes P8)."""
    need = 1 + cfg.train.num_workers * cfg.train.cpus_per_worker
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    fit = int(cpus // need)
    if fit < 1:
        raise ValueError(
            f"tune (training): a trial needs {need:g} CPUs (1 + train.num_workers x "
            f"train.cpus_per_worker) but the Ray cluster has {cpus:g}"
        )
    if fit < cfg.tune.max_concurrent:
        warnings.warn(
            f"tune.max_concurrent {cfg.tune.max_concurrent} lowered to {fit}: each training trial "
            f"needs {need:g} of the cluster's {cpus:g} CPUs",
            stacklevel=2,
        )
    return min(fit, cfg.tune.max_concurrent)


def _seed_trial_cache(storage: Storage, cache: Mapping[str, str], trial_cfg: Config, key: str) -> None:
    """Copy the train/val feature caches into the trial's ``run.out`` (index.json last, so a partial copy
    reads as incomplete); complete copies are kept."""
    from vidret.train import cache as feature_cache
    from vidret.train.trainer import cache_root

    root = cache_root(trial_cfg, key)
    for split, src in cache.items():
        dst = feature_cache.split_uri(root, split)
        if feature_cache.read_index(storage, dst) is not None:
            continue
        files = storage.list(src)
        files.sort(key=lambda u: u.endswith("/" + feature_cache.INDEX))
        for f in files:
            storage.copy(f, join(dst, f[len(src) :]))


def _fit(cfg: Config, fn: Any, points: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    """Run the trials; a row per trial: ``params`` and the reported metrics. Any failed trial raises."""
    kind = cfg.tune.kind
    tmp = tempfile.mkdtemp(prefix="vidret-tune-") if is_remote(cfg.run.out) else None
    path = tmp or os.path.abspath(parse_uri(join(cfg.run.out, "tune", "ray")).path)
    try:
        tuner = tune.Tuner(
            tune.with_resources(fn, {"CPU": 1}),  # 1 CPU per trial: {"CPU": 0} is rejected (ray-notes P17)
            param_space=param_space(points),
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True
            ),  # trials start in warm processes
            run_config=tune.RunConfig(
                name=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=path, verbose=0
            ),
        )
        _log(f"[tune] {kind}: {len(points)} trial(s), {concurrency} at a time, Tune folders under {path}")
        grid = tuner.fit()
        failed = [(r.config.get("params"), r.error) for r in grid if r.error is not None]
        if failed:
            raise RuntimeError(
                f"tune ({kind}): {len(failed)} of {len(grid)} trials failed; first "
                f"{failed[0][0]}: {failed[0][1]}"
            )
        keep = (*METRICS, *BASELINE, *EXTRAS)
        return [
            {"params": r.config["params"], **{k: r.metrics[k] for k in keep if k in r.metrics}} for r in grid
        ]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def rank_rows(
    rows: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]], metric: str, mode: str
) -> list[Mapping[str, Any]]:
    """Rows best first by ``metric``; ties go to the earlier grid point, so the choice is deterministic."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (sign * float(r[metric]), points.index(r["params"])))


def _by_direction(row: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, float]]:
    return {d: {m: row[f"{prefix}{d}_{m}"] for m in REPORTED} for d in DIRECTIONS}


def _write_outputs(
    cfg: Config, storage: Storage, rows: list[dict[str, Any]], points: list[dict[str, Any]], mode: str
) -> dict[str, Any]:
    kind, metric = cfg.tune.kind, cfg.tune.metric
    ranked = rank_rows(rows, points, metric, mode)
    best = ranked[0]
    best_overrides = overrides_for(kind, best["params"])
    out = join(cfg.run.out, "tune", kind)

    axes = list(points[0])
    columns = ["rank", "name", *axes, *(k for k in (*METRICS, *BASELINE, *EXTRAS) if k in best)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for i, row in enumerate(ranked, 1):
        values = {"rank": i, "name": trial_name(row["params"]), **row["params"], **row}
        writer.writerow([values[c] for c in columns])
    table_path = join(out, "results.csv")
    storage.write_text(table_path, buf.getvalue())

    header = (
        f"tune {kind}: {len(rows)} trials on split {cfg.data.val_split!r}, selected by {metric} ({mode}); "
        f"best {trial_name(best['params'])}\n"
    )
    table = header + metrics_table(
        {
            "stage 1 (no re-rank)": _by_direction(best, "stage1_"),
            **{trial_name(r["params"]): _by_direction(r) for r in ranked},
        }
    )
    storage.write_text(join(out, "results.txt"), table)
    storage.write_text(join(out, "best_overrides.yaml"), yaml.safe_dump(best_overrides, sort_keys=False))
    best_config = join(out, "best_config.yaml")
    storage.write_text(best_config, dump_yaml(apply_overrides(cfg, best_overrides)))
    return {
        "kind": kind,
        "metric": metric,
        "mode": mode,
        "best_params": dict(best["params"]),
        "best_metric": float(best[metric]),
        "best_overrides": dotted(best_overrides),
        "num_trials": len(rows),
        "table_path": table_path,
        "table": table,
        "best_config": best_config,
        "out": out,
    }
