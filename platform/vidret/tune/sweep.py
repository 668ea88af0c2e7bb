"""Ray Tune sweeps, selected on the VALIDATION split only: re-ranking parameters, or stage-2 learning rates.

Two kinds (``tune.kind``):

* ``inference``: each trial builds the model from the exported generation weights (shipped once through the
  object store by ``tune.with_parameters``, never re-read), applies its diffusion overrides and re-ranks the
  cached features of ``data.val_split`` with ``evaluate_features``. Nothing is decoded; only the validation
  cache is built or read, never the test split.
* ``training``: each trial runs stage 2 (the ``train`` entry point) on the cached train/val features with its
  ``train.lr`` in its own ``run.out`` (``<run.out>/tune/training/trials/<name>``; the caches are copied there
  first and its test split is pointed at validation, so nothing else is encoded), then evaluates its exported
  weights on validation like an inference trial. A re-run with the same ``run.out`` resumes those trials.

The search space is ``vidret.tune.space``. Training trials run the training entry point the caller passes
(``train=``), so tune depends only on the layers below train and eval (features, model, layout).

Outputs under ``<run.out>/tune/<kind>/``, each written atomically through Storage: ``results.csv`` (a row per
trial, best first), ``results.txt`` (the metrics table), ``best_overrides.yaml`` (the fields the best trial
sets), ``best_config.yaml`` (the resolved config with them applied) and ``summary.json``. Tune's own
folders go
to ``<run.out>/tune/ray`` when ``run.out`` is local, else to a temporary folder removed afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import yaml
from ray import tune

from vidret.config import Config, dump_yaml
from vidret.console.logs import tune_verbosity
from vidret.console.progress import Progress
from vidret.eval.metrics import metrics_table
from vidret.features import store
from vidret.features.build import build_feature_cache
from vidret.features.scoring import evaluate_features
from vidret.features.store import load_split
from vidret.features.types import FeatureSet
from vidret.layout import cache_root, check_placeholders, stage_uri
from vidret.model.build import model_from_state
from vidret.model.checkpoint import load_state
from vidret.planning import Plan
from vidret.startup import manifest_video_uris, planned, start_job
from vidret.storage import Storage, is_remote, join, parse_uri
from vidret.storage.scratch import make_scratch_dir
from vidret.tracking import Tracker, mlflow_tune_callbacks
from vidret.tune.space import (
    BASELINE,
    EXTRAS,
    METRICS,
    absolute,
    apply_overrides,
    by_direction,
    detach_init_weights,
    dotted,
    flat_metrics,
    metric_mode,
    overrides_for,
    param_space,
    rank_rows,
    search_axes,
    search_points,
    training_trial_config,
    trial_name,
)
from vidret.watchdog import watching

TrainFn = Callable[[Config], dict[str, Any]]
"""The training entry point a training trial runs (``vidret.train.trainer.run_training``): a config in, a
summary with ``weights``, ``cache``, ``steps`` and ``wall_s`` out. Passed in by the caller, so this package
does not depend on ``vidret.train``."""


def _inference_trial(
    config: dict[str, Any], *, cfg: Config, state: dict[str, torch.Tensor], features: FeatureSet
) -> None:
    torch.set_num_threads(1)
    trial_cfg = apply_overrides(cfg, overrides_for("inference", config["params"]))
    model = model_from_state(cfg, Storage(cfg.storage), state)
    res = evaluate_features(model, features, cfg.eval, trial_cfg.diffusion, rerank=True)
    tune.report(flat_metrics(res.metrics))


def _training_trial(config: dict[str, Any], *, cfg: Config, init_uri: str, train: TrainFn) -> None:
    torch.set_num_threads(1)
    trial_cfg = training_trial_config(cfg, config["params"], init_uri)
    summary = train(trial_cfg)
    storage = Storage(cfg.storage)
    model = model_from_state(trial_cfg, storage, load_state(summary["weights"], storage)["selected"])
    features = load_split(storage, summary["cache"][cfg.data.val_split])
    res = evaluate_features(model, features, trial_cfg.eval, trial_cfg.diffusion, rerank=True)
    tune.report(
        {**flat_metrics(res.metrics), "train_steps": summary["steps"], "train_wall_s": summary["wall_s"]}
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class TrialEnd(tune.Callback):
    """Driver side, per finished trial: a progress line (trials done, ETA, the trial's metric) and its
    metric and numeric parameters as scalars under ``<run.out>/tensorboard/tune`` (step = trial number).
    The progress and the writer are made on first use: Tune pickles its callbacks with the run config."""

    def __init__(self, cfg: Config, num_trials: int) -> None:
        self.cfg, self.num_trials, self.done = cfg, num_trials, 0
        self._progress: Progress | None = None
        self._tracker: Tracker | None = None

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the trial and log its metric (a failed trial has none; the sweep raises for it after)."""
        metric = self.cfg.tune.metric
        value = (trial.last_result or {}).get(metric)
        if self._progress is None:
            self._progress = Progress(f"tune {self.cfg.tune.kind}", self.num_trials, unit="trial")
            self._tracker = Tracker(self.cfg.run.out, "tune", Storage(self.cfg.storage))
        numbers = {k: v for k, v in trial.config.get("params", {}).items() if isinstance(v, (int, float))}
        if isinstance(value, (int, float)) and self._tracker is not None:
            self._tracker.scalars(self.done, {metric: value, **numbers}, prefix="tune")
        self.done += 1
        self._progress.update(**({metric: value} if value is not None else {}))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Close the progress line and the writer (uploads the events of an ``s3://`` run)."""
        if self._progress is not None:
            self._progress.close()
        if self._tracker is not None:
            self._tracker.close()


def run_tune(
    cfg: Config, checkpoint_uri: str | None = None, *, train: TrainFn | None = None
) -> dict[str, Any]:
    """Sweep ``tune.kind`` on ``data.val_split`` and write the results table and best config.

    ``checkpoint_uri``: exported weights; inference needs generation weights (default
    ``<run.out>/checkpoints/generation``), training needs stage-1 weights (default ``train.init_checkpoint``
    or ``<run.out>/checkpoints/discrimination``). ``train``: the training entry point a training trial runs
    (required for ``tune.kind = training``; the CLI passes ``vidret.train.trainer.run_training``). Returns
    ``kind``, ``metric``, ``mode``, ``best_params``, ``best_metric``, ``best_overrides`` (CLI arguments),
    ``num_trials``, ``table_path`` (CSV), ``table`` (the text table), ``best_config`` and ``out``.
    """
    kind, data = cfg.tune.kind, cfg.data
    points = _checked_points(cfg)
    if kind == "training" and train is None:
        raise ValueError("tune (training): pass train=, the training entry point each trial runs")
    check_placeholders(cfg)
    storage = Storage(cfg.storage)
    uri, exported = _exported(cfg, storage, checkpoint_uri)
    splits = [data.val_split] if kind == "inference" else [data.train_split, data.val_split]
    plan, _ = start_job("tune", cfg, manifest_video_uris(cfg, splits))
    cfg = planned(cfg, plan)
    t0 = time.perf_counter()
    cache = build_feature_cache(cfg, storage, uri, exported["key"], splits=splits)
    trial_cfg = detach_init_weights(cfg, storage)
    if kind == "inference":
        features = load_split(storage, cache[data.val_split])
        fn = tune.with_parameters(
            _inference_trial, cfg=trial_cfg, state=exported["selected"], features=features
        )
        concurrency = cfg.tune.max_concurrent
    else:
        init = absolute(uri)
        for p in points:
            _seed_trial_cache(storage, cache, training_trial_config(trial_cfg, p, init), exported["key"])
        fn = tune.with_parameters(_training_trial, cfg=trial_cfg, init_uri=init, train=train)
        concurrency = _training_concurrency(cfg, plan)
    rows = _fit(cfg, fn, points, concurrency)
    summary = _write_outputs(cfg, storage, rows, points, metric_mode(cfg.tune.metric))
    summary.update(checkpoint=uri, split=data.val_split, wall_s=round(time.perf_counter() - t0, 1))
    storage.write_text(
        join(summary["out"], "summary.json"),
        json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1, sort_keys=True),
    )
    _log(summary["table"])
    return summary


def _checked_points(cfg: Config) -> list[dict[str, Any]]:
    """The sweep's points, after checking the settings and every point (before Ray starts)."""
    tcfg, kind, data = cfg.tune, cfg.tune.kind, cfg.data
    metric_mode(tcfg.metric)
    if data.val_split in (data.test_split, *data.extra_eval_splits):
        raise ValueError(
            f"data.val_split {data.val_split!r} is also an evaluation split: a sweep selects on "
            "validation only, so it needs a split of its own"
        )
    if tcfg.max_concurrent < 1:
        raise ValueError(f"tune.max_concurrent: expected an integer >= 1, got {tcfg.max_concurrent}")
    points = search_points(search_axes(tcfg), tcfg.num_samples, cfg.run.seed)
    for p in points:
        _check_point(cfg, kind, p)
    return points


def _check_point(cfg: Config, kind: str, point: Mapping[str, Any]) -> None:
    """ValueError naming ``point`` when a config section rejects its values (k < 1, sample_steps > T)."""
    try:
        apply_overrides(cfg, overrides_for(kind, point))
    except ValueError as e:
        raise ValueError(f"tune ({kind}): the point {point} is invalid: {e}") from None


def _exported(cfg: Config, storage: Storage, uri: str | None) -> tuple[str, dict[str, Any]]:
    """The sweep's exported weights (default: the run's, of the stage the kind needs) and their uri."""
    kind = cfg.tune.kind
    if uri is None:
        uri = (
            stage_uri(cfg, "generation")
            if kind == "inference"
            else (cfg.train.init_checkpoint or stage_uri(cfg, "discrimination"))
        )
    exported = load_state(uri, storage)
    want = "generation" if kind == "inference" else "discrimination"
    if exported.get("stage") != want:
        raise ValueError(
            f"tune ({kind}): {uri} holds {exported.get('stage')!r} weights, expected "
            f"{want!r} ({'trained denoisers' if want == 'generation' else 'stage-1 init'})"
        )
    return uri, exported


def _training_concurrency(cfg: Config, plan: Plan) -> int:
    """Concurrent training trials as planned (``vidret.planning``): a trial holds 1 CPU while its trainer's
    workers need their own, so more trials than fit would hold every CPU with trainers that never start."""
    fit = plan.trial_concurrency or cfg.tune.max_concurrent
    if fit < cfg.tune.max_concurrent:
        need = 1 + cfg.train.num_workers * cfg.train.cpus_per_worker
        warnings.warn(
            f"tune.max_concurrent {cfg.tune.max_concurrent} lowered to {fit}: each training trial "
            f"needs {need:g} CPUs (1 + train.num_workers x train.cpus_per_worker)",
            stacklevel=2,
        )
    return fit


def _seed_trial_cache(storage: Storage, cache: Mapping[str, str], trial_cfg: Config, key: str) -> None:
    """Copy the train/val feature caches into the trial's ``run.out`` (index.json last, so a partial copy
    reads as incomplete); complete copies are kept."""
    root = cache_root(trial_cfg, key)
    for split, src in cache.items():
        dst = store.split_uri(root, split)
        if store.read_index(storage, dst) is not None:
            continue
        files = storage.list(src)
        files.sort(key=lambda u: u.endswith("/" + store.INDEX))
        for f in files:
            storage.copy(f, join(dst, f[len(src) :]))


def _fit(cfg: Config, fn: Any, points: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    """Run the trials; a row per trial: ``params`` and the reported metrics. Any failed trial raises."""
    kind = cfg.tune.kind
    tmp = make_scratch_dir("tune") if is_remote(cfg.run.out) else None
    path = tmp or os.path.abspath(parse_uri(join(cfg.run.out, "tune", "ray")).path)
    try:
        tuner = tune.Tuner(
            tune.with_resources(fn, {"CPU": 1}),  # 1 CPU per trial: Tune rejects {"CPU": 0}
            param_space=param_space(points),
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True
            ),  # trials start in warm processes
            run_config=tune.RunConfig(
                name=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=path,
                verbose=tune_verbosity(),  # silent unless --verbose: vidret prints the trials' table
                callbacks=[*mlflow_tune_callbacks(cfg.tracking.mlflow_uri), TrialEnd(cfg, len(points))],
            ),
        )
        _log(f"[tune] {kind}: {len(points)} trial(s), {concurrency} at a time, Tune folders under {path}")
        with watching(cfg.run):  # trials or trainers the cluster cannot place end the sweep
            grid = tuner.fit()
        results = [grid[i] for i in range(len(grid))]  # ResultGrid has no __iter__ in its typing
        failed = [((r.config or {}).get("params"), r.error) for r in results if r.error is not None]
        if failed:
            raise RuntimeError(
                f"tune ({kind}): {len(failed)} of {len(grid)} trials failed; first "
                f"{failed[0][0]}: {failed[0][1]}"
            )
        keep = (*METRICS, *BASELINE, *EXTRAS)
        rows = []
        for r in results:
            metrics = r.metrics or {}
            rows.append(
                {"params": (r.config or {})["params"], **{k: metrics[k] for k in keep if k in metrics}}
            )
        return rows
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


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
            "stage 1 (no re-rank)": by_direction(best, "stage1_"),
            **{trial_name(r["params"]): by_direction(r) for r in ranked},
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
