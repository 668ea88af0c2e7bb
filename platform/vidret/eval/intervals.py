"""Bootstrap confidence intervals for retrieval metrics, and the paired bootstrap of a difference.

Pure numpy, single process. Inputs are the per-query 0-based ranks the evaluation already computes
(``EvalResult.ranks``), one array per variant and direction, and the *resampling unit* of each query.

Method (stated in every output as ``method``): the **percentile bootstrap**. ``resamples`` times, draw as
many units as there are, uniformly with replacement, from a ``numpy.random.default_rng(seed)`` generator;
every query of a drawn unit enters the resample once per draw. A metric is computed on each resample; the
interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's default linear
interpolation) of those values. The point estimate is the metric on the original ranks.

Resampling unit: on a multi-caption split (several captions per video) a t2v query is a caption and its
unit is its video, so the captions of one video move together (they are not independent draws); a v2t
query is a video and is its own unit. On a single-caption split the unit is the query (one per video).

Paired bootstrap: two runs over the same queries (e.g. stage 1 and re-ranked) are resampled with the
*same* unit draws, and the difference ``b - a`` is computed per resample. Its interval is the percentile
interval of those differences; the two-sided p-value is ``min(1, 2 * (1 + m) / (resamples + 1))`` with
``m = min(#{diff <= 0}, #{diff >= 0})``: the bootstrap test that inverts the percentile interval (p < 0.05
roughly when 0 lies outside the 95% interval), with the add-one correction so it is never exactly 0.
Because the two runs share the per-query difficulty, the paired interval is much narrower than the
difference of two independent intervals.

Metrics (as :func:`vidret.eval.metrics.metrics_from_ranks`): ``R1``, ``R5``, ``R10`` (percent), ``MdR``
(median rank + 1, ``midpoint`` or ``lower`` median) and ``MnR`` (mean rank + 1). Weighted forms are used so
one pass over the sorted ranks serves every resample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Median = Literal["midpoint", "lower"]
METRICS: tuple[str, ...] = ("R1", "R5", "R10", "MdR", "MnR")
METHOD = "percentile"
_CHUNK = 256  # resamples per vectorised block (bounds memory at _CHUNK x queries)


@dataclass(frozen=True)
class BootstrapSpec:
    """How intervals are drawn: ``resamples`` (>= 1000 in reports), ``seed``, confidence ``level``."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"bootstrap resamples: expected an integer >= 1, got {self.resamples}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"bootstrap level: expected a number in (0, 1), got {self.level}")

    def describe(self) -> dict[str, Any]:
        """The settings as written to metrics.json."""
        return {"method": METHOD, "resamples": self.resamples, "seed": self.seed, "level": self.level}


def _check_ranks(ranks: Any, name: str) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 1 or r.shape[0] == 0 or not np.issubdtype(r.dtype, np.number):
        raise ValueError(f"{name}: expected a non-empty 1-D array of 0-based ranks, got shape {r.shape}")
    if not np.isfinite(r).all() or r.min() < 0:
        raise ValueError(f"{name}: expected finite 0-based ranks >= 0")
    return r.astype(np.float64)


def _unit_index(units: Any, n: int) -> tuple[np.ndarray, int]:
    """(Q,) dense unit index 0..U-1 of each query, and U. ``None``: every query is its own unit."""
    if units is None:
        return np.arange(n), n
    u = np.asarray(units)
    if u.shape != (n,):
        raise ValueError(f"units: expected one unit id per query, shape ({n},), got {u.shape}")
    uniq, dense = np.unique(u, return_inverse=True)
    return dense.reshape(-1), int(uniq.shape[0])


def unit_counts(num_units: int, spec: BootstrapSpec) -> np.ndarray:
    """(resamples, U) how often each unit is drawn in each resample (rows sum to U)."""
    rng = np.random.default_rng(spec.seed)
    draws_BU = rng.integers(0, num_units, size=(spec.resamples, num_units))
    counts_BU = np.zeros((spec.resamples, num_units), dtype=np.int64)
    rows_B = np.repeat(np.arange(spec.resamples), num_units)
    np.add.at(counts_BU, (rows_B, draws_BU.reshape(-1)), 1)
    return counts_BU


def weighted_metrics(
    ranks_Q: np.ndarray, weights_BQ: np.ndarray, median: Median = "midpoint"
) -> dict[str, np.ndarray]:
    """Each metric per row of integer query weights: the metric of the multiset holding query q w[b, q] times.

    Returns {metric: (B,) values}. A row with zero total weight gives NaN.
    """
    w = weights_BQ.astype(np.float64)
    total_B = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {f"R{k}": 100.0 * (w @ (ranks_Q < k)) / total_B for k in (1, 5, 10)}
        out["MnR"] = (w @ ranks_Q) / total_B + 1.0
    order = np.argsort(ranks_Q, kind="stable")
    sorted_Q = ranks_Q[order]
    cum_BQ = np.cumsum(weights_BQ[:, order], axis=1)
    n_B = cum_BQ[:, -1]
    # value at 0-based position p of the expanded sorted multiset: the first j with cum_j > p
    lo_B = sorted_Q[np.minimum((cum_BQ > ((n_B - 1) // 2)[:, None]).argmax(axis=1), len(order) - 1)]
    if median == "lower":
        med_B = lo_B
    else:
        hi_B = sorted_Q[np.minimum((cum_BQ > (n_B // 2)[:, None]).argmax(axis=1), len(order) - 1)]
        med_B = (lo_B + hi_B) / 2.0
    out["MdR"] = np.where(n_B > 0, med_B + 1.0, np.nan)
    return out


def point_metrics(ranks: Any, median: Median = "midpoint") -> dict[str, float]:
    """The metrics of the ranks themselves (each query once)."""
    r = _check_ranks(ranks, "ranks")
    vals = weighted_metrics(r, np.ones((1, r.shape[0]), dtype=np.int64), median)
    return {m: float(vals[m][0]) for m in METRICS}


def _resampled(
    ranks_by_run: list[np.ndarray], units: Any, spec: BootstrapSpec, median: Median
) -> list[dict[str, np.ndarray]]:
    """Per run, {metric: (resamples,) values} over the same unit draws."""
    n = ranks_by_run[0].shape[0]
    dense_Q, num_units = _unit_index(units, n)
    counts_BU = unit_counts(num_units, spec)
    out: list[dict[str, list[np.ndarray]]] = [{m: [] for m in METRICS} for _ in ranks_by_run]
    for start in range(0, spec.resamples, _CHUNK):
        weights_BQ = counts_BU[start : start + _CHUNK][:, dense_Q]
        for run, ranks in enumerate(ranks_by_run):
            for m, v in weighted_metrics(ranks, weights_BQ, median).items():
                out[run][m].append(v)
    return [{m: np.concatenate(v) for m, v in run.items()} for run in out]


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def bootstrap_intervals(
    ranks: Any, units: Any = None, spec: BootstrapSpec | None = None, *, median: Median = "midpoint"
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap interval of each metric: {metric: {"estimate", "lo", "hi"}}.

    ranks: (Q,) 0-based ranks. units: (Q,) resampling unit of each query (e.g. its video id on a
    multi-caption split); ``None`` resamples queries.
    """
    spec = spec or BootstrapSpec()
    r = _check_ranks(ranks, "ranks")
    est = point_metrics(r, median)
    (boot,) = _resampled([r], units, spec, median)
    return {
        m: {"estimate": est[m], **dict(zip(("lo", "hi"), _quantiles(boot[m], spec.level), strict=True))}
        for m in METRICS
    }


def p_value(diffs_B: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being 0 (see the module docstring)."""
    m = min(int((diffs_B <= 0).sum()), int((diffs_B >= 0).sum()))
    return float(min(1.0, 2.0 * (1 + m) / (diffs_B.shape[0] + 1)))


def paired_difference(
    ranks_a: Any,
    ranks_b: Any,
    units: Any = None,
    spec: BootstrapSpec | None = None,
    *,
    median: Median = "midpoint",
) -> dict[str, dict[str, float]]:
    """Paired bootstrap of ``metric(b) - metric(a)`` over the same queries.

    Returns {metric: {"diff", "lo", "hi", "p"}}.

    ``ranks_a[q]`` and ``ranks_b[q]`` must be the same query q (same order, same length).
    """
    spec = spec or BootstrapSpec()
    a, b = _check_ranks(ranks_a, "ranks_a"), _check_ranks(ranks_b, "ranks_b")
    if a.shape != b.shape:
        raise ValueError(
            "paired bootstrap: the two runs must rank the same queries, got "
            f"{a.shape[0]} and {b.shape[0]} ranks"
        )
    est_a, est_b = point_metrics(a, median), point_metrics(b, median)
    boot_a, boot_b = _resampled([a, b], units, spec, median)
    return _differences(est_a, est_b, boot_a, boot_b, spec.level)


def _differences(
    est_a: dict[str, float],
    est_b: dict[str, float],
    boot_a: dict[str, np.ndarray],
    boot_b: dict[str, np.ndarray],
    level: float,
) -> dict[str, dict[str, float]]:
    """``{metric: {diff, lo, hi, p}}`` of b - a from point estimates and bootstrap replicates."""
    out = {}
    for m in METRICS:
        diffs = boot_b[m] - boot_a[m]
        lo, hi = _quantiles(diffs, level)
        out[m] = {"diff": est_b[m] - est_a[m], "lo": lo, "hi": hi, "p": p_value(diffs)}
    return out


def unpaired_difference(
    ranks_a: Any, ranks_b: Any, spec: BootstrapSpec | None = None, *, median: Median = "midpoint"
) -> dict[str, dict[str, float]]:
    """Bootstrap of ``metric(b) - metric(a)`` resampling each run independently (queries as units).

    For comparison only: the right test for two runs on the same queries is :func:`paired_difference`.
    """
    spec = spec or BootstrapSpec()
    a, b = _check_ranks(ranks_a, "ranks_a"), _check_ranks(ranks_b, "ranks_b")
    (boot_a,) = _resampled([a], None, spec, median)
    (boot_b,) = _resampled([b], None, BootstrapSpec(spec.resamples, spec.seed + 1, spec.level), median)
    est_a, est_b = point_metrics(a, median), point_metrics(b, median)
    return _differences(est_a, est_b, boot_a, boot_b, spec.level)


def half_width(interval: Mapping[str, float]) -> float:
    """Half the interval's width: the ``±`` printed next to an estimate."""
    return (float(interval["hi"]) - float(interval["lo"])) / 2.0


def chance_levels(gallery: int) -> dict[str, float]:
    """Expected metrics of a random ranking of ``gallery`` items with one correct item."""
    return {
        "R1": 100.0 * min(1, gallery) / gallery,
        "R5": 100.0 * min(5, gallery) / gallery,
        "R10": 100.0 * min(10, gallery) / gallery,
        "MdR": (gallery + 1) / 2.0,
        "MnR": (gallery + 1) / 2.0,
    }
