"""The search space of a sweep, its config overrides and the trial configs: pure functions of the config.

Search space: the axes (inference: ``alpha`` x ``temp`` x ``k`` x ``sample_steps``, each value applied to both
directions; training: ``lr``) are enumerated as a grid. When the grid has more than ``tune.num_samples``
points,
a random subset of ``num_samples`` distinct points (seeded by ``run.seed``) runs instead. The points reach
Tune
as one ``tune.grid_search`` axis, so no point runs twice (``tune.choice`` would draw duplicates).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ray import tune

from vidret.config import Config, TuneConfig, replace
from vidret.storage import Storage, join

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


def rank_rows(
    rows: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]], metric: str, mode: str
) -> list[Mapping[str, Any]]:
    """Rows best first by ``metric``; ties go to the earlier grid point, so the choice is deterministic."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (sign * float(r[metric]), points.index(r["params"])))


def by_direction(row: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, float]]:
    return {d: {m: row[f"{prefix}{d}_{m}"] for m in REPORTED} for d in DIRECTIONS}


def absolute(uri: str) -> str:
    """Local relative paths made absolute: Tune may run trials in another working directory."""
    return uri if "://" in uri else os.path.abspath(uri)


def trial_out(cfg: Config, params: Mapping[str, Any]) -> str:
    return join(absolute(cfg.run.out), "tune", "training", "trials", trial_name(params))


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
            manifest=absolute(base.data.manifest) if base.data.manifest else "",
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
