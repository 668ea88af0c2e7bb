"""Bootstrap intervals pinned against a brute-force reference: explicit resamples, the metric recomputed
on each with ``metrics_from_ranks``, percentiles with ``np.quantile``."""

from __future__ import annotations

import numpy as np
import pytest

from vidret.eval.intervals import (
    METRICS,
    BootstrapSpec,
    bootstrap_intervals,
    chance_levels,
    p_value,
    paired_difference,
    unit_counts,
    unpaired_difference,
)
from vidret.eval.metrics import metrics_from_ranks


def _draws(num_units: int, spec: BootstrapSpec) -> np.ndarray:
    """The same unit draws as the implementation: one generator, (resamples, U) integers."""
    return np.random.default_rng(spec.seed).integers(0, num_units, size=(spec.resamples, num_units))


def _brute(
    ranks: np.ndarray, units: np.ndarray | None, spec: BootstrapSpec, median: str = "midpoint"
) -> dict:
    """Expand every resample into its list of ranks and recompute the metrics the slow way."""
    if units is None:
        units = np.arange(ranks.shape[0])
    uniq = np.unique(units)
    members = [np.flatnonzero(units == u) for u in uniq]
    values = {m: [] for m in METRICS}
    for row in _draws(len(uniq), spec):
        sample = np.concatenate([ranks[members[u]] for u in row])
        got = metrics_from_ranks(sample, median=median)
        for m in METRICS:
            values[m].append(got[m])
    lo_q, hi_q = (1 - spec.level) / 2, (1 + spec.level) / 2
    return {m: tuple(np.quantile(values[m], [lo_q, hi_q])) for m in METRICS}, values


RANKS = np.array([0, 0, 3, 1, 0, 12, 7, 0, 2, 5, 0, 1, 30, 0, 4])


@pytest.mark.parametrize("median", ["midpoint", "lower"])
def test_query_level_matches_brute_force(median: str) -> None:
    spec = BootstrapSpec(resamples=1000, seed=7)
    got = bootstrap_intervals(RANKS, None, spec, median=median)
    want, _ = _brute(RANKS, None, spec, median)
    ref = metrics_from_ranks(RANKS, median=median)
    for m in METRICS:
        assert got[m]["estimate"] == pytest.approx(ref[m])
        assert (got[m]["lo"], got[m]["hi"]) == pytest.approx(want[m]), m


def test_known_ranks_give_known_interval_under_a_fixed_seed() -> None:
    """Pinned numbers: a change to the sampling scheme or the quantile rule shows up here."""
    got = bootstrap_intervals(RANKS, None, BootstrapSpec(resamples=1000, seed=0))
    assert got["R1"]["estimate"] == pytest.approx(40.0)
    assert (got["R1"]["lo"], got["R1"]["hi"]) == pytest.approx((13.333333, 66.666667), abs=1e-5)
    assert got["MnR"]["estimate"] == pytest.approx(1 + RANKS.mean())


def test_video_units_move_captions_together_and_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    units = np.repeat(np.arange(8), [1, 3, 2, 4, 1, 2, 3, 2])  # 18 captions of 8 videos
    ranks = rng.integers(0, 6, size=units.shape[0])
    spec = BootstrapSpec(resamples=1000, seed=11)
    got = bootstrap_intervals(ranks, units, spec)
    want, values = _brute(ranks, units, spec)
    for m in METRICS:
        assert (got[m]["lo"], got[m]["hi"]) == pytest.approx(want[m]), m
    # the resample size varies with the drawn videos' caption counts: units, not captions, were drawn
    sizes = {len(np.concatenate([np.flatnonzero(units == u) for u in row])) for row in _draws(8, spec)}
    assert len(sizes) > 1
    # and it differs from resampling captions independently
    per_query = bootstrap_intervals(ranks, None, spec)
    assert any((got[m]["lo"], got[m]["hi"]) != (per_query[m]["lo"], per_query[m]["hi"]) for m in METRICS)
    del values


def test_unit_counts_rows_sum_to_units_and_are_seeded() -> None:
    spec = BootstrapSpec(resamples=50, seed=5)
    c = unit_counts(9, spec)
    assert c.shape == (50, 9)
    assert (c.sum(axis=1) == 9).all()
    assert np.array_equal(c, unit_counts(9, spec))
    assert not np.array_equal(c, unit_counts(9, BootstrapSpec(resamples=50, seed=6)))


def test_paired_matches_brute_force_and_is_narrower_than_unpaired_on_correlated_runs() -> None:
    rng = np.random.default_rng(0)
    difficulty = rng.geometric(0.25, size=300) - 1  # shared per-query difficulty: strongly correlated runs
    a = difficulty
    b = np.maximum(difficulty - (rng.random(300) < 0.4), 0)  # re-ranking lifts some queries by one
    spec = BootstrapSpec(resamples=1000, seed=1)
    paired = paired_difference(a, b, None, spec)
    # brute force: the same draws for both runs
    diffs = {m: [] for m in METRICS}
    for row in _draws(300, spec):
        ma, mb = metrics_from_ranks(a[row]), metrics_from_ranks(b[row])
        for m in METRICS:
            diffs[m].append(mb[m] - ma[m])
    for m in METRICS:
        assert (paired[m]["lo"], paired[m]["hi"]) == pytest.approx(
            tuple(np.quantile(diffs[m], [0.025, 0.975]))
        )
        assert paired[m]["p"] == pytest.approx(p_value(np.asarray(diffs[m])))
    unpaired = unpaired_difference(a, b, spec)
    for m in ("R1", "R5", "MnR"):
        width_p = paired[m]["hi"] - paired[m]["lo"]
        width_u = unpaired[m]["hi"] - unpaired[m]["lo"]
        assert width_p < 0.6 * width_u, (m, width_p, width_u)
        assert paired[m]["diff"] == pytest.approx(unpaired[m]["diff"])
    assert paired["R1"]["lo"] > 0  # the lift is detected by the paired test ...
    assert unpaired["R1"]["lo"] < 0  # ... and drowned in the noise of the unpaired one


def test_p_value_rules() -> None:
    assert p_value(np.zeros(999)) == 1.0  # no change at all
    assert p_value(np.ones(999)) == pytest.approx(2 / 1000)  # every resample positive: the floor
    assert p_value(np.r_[np.ones(500), -np.ones(500)]) == 1.0
    d = np.r_[np.full(990, 1.0), np.full(10, -1.0)]
    assert p_value(d) == pytest.approx(2 * 11 / 1001)


def test_identical_runs_have_zero_difference_and_p_one() -> None:
    got = paired_difference(RANKS, RANKS, None, BootstrapSpec(resamples=1000))
    for m in METRICS:
        assert got[m] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_difference(RANKS, RANKS[:-1])
    with pytest.raises(ValueError, match="one unit id per query"):
        bootstrap_intervals(RANKS, np.arange(3))
    with pytest.raises(ValueError, match="0-based ranks"):
        bootstrap_intervals(np.array([-1, 2]))
    with pytest.raises(ValueError, match="resamples"):
        BootstrapSpec(resamples=0)
    with pytest.raises(ValueError, match="level"):
        BootstrapSpec(level=1.5)


def test_chance_levels() -> None:
    ch = chance_levels(400)
    assert ch["R1"] == pytest.approx(0.25)
    assert ch["R10"] == pytest.approx(2.5)
    assert ch["MdR"] == pytest.approx(200.5)
    assert chance_levels(3)["R5"] == pytest.approx(100.0)
