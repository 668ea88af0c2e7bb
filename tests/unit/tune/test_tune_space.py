"""The sweep's search space, overrides and ranking, built from TuneConfig without Ray running."""

from __future__ import annotations

import itertools

import pytest

from vidret.config import Config, TuneConfig, load_config
from vidret.tune.space import (
    apply_overrides,
    dotted,
    metric_mode,
    overrides_for,
    param_space,
    rank_rows,
    search_axes,
    search_points,
    training_trial_config,
    trial_name,
)


def test_inference_axes_come_from_tune_config_and_drop_duplicates() -> None:
    tcfg = TuneConfig(alphas=(0.5, 1.0, 0.5), temps=(1.0,), ks=(8, 16), sample_steps=(0, 10))
    axes = search_axes(tcfg)
    assert axes == {"alpha": (0.5, 1.0), "temp": (1.0,), "k": (8, 16), "sample_steps": (0, 10)}
    assert search_axes(TuneConfig(kind="training", lrs=(1e-4, 3e-4))) == {"lr": (1e-4, 3e-4)}


def test_empty_axis_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"tune\.ks"):
        search_axes(TuneConfig(ks=()))
    with pytest.raises(ValueError, match=r"tune\.lrs"):
        search_axes(TuneConfig(kind="training", lrs=()))


def test_full_grid_when_it_fits_num_samples() -> None:
    axes = {"alpha": (0.5, 1.0), "k": (8, 16, 32)}
    points = search_points(axes, num_samples=6, seed=0)
    assert points == [{"alpha": a, "k": k} for a, k in itertools.product((0.5, 1.0), (8, 16, 32))]
    assert search_points(axes, num_samples=100, seed=0) == points


def test_larger_grid_is_sampled_without_repeats_and_seeded() -> None:
    axes = {"alpha": (0.25, 0.5, 1.0, 2.0), "temp": (1.0, 10.0, 100.0), "k": (8, 16)}
    grid = search_points(axes, num_samples=24, seed=0)
    a = search_points(axes, num_samples=5, seed=3)
    assert len(a) == 5
    assert len({tuple(p.items()) for p in a}) == 5  # distinct points
    assert all(p in grid for p in a)
    assert [grid.index(p) for p in a] == sorted(grid.index(p) for p in a)  # kept in grid order
    assert search_points(axes, num_samples=5, seed=3) == a  # reproducible
    draws = {tuple(tuple(p.items()) for p in search_points(axes, num_samples=5, seed=s)) for s in range(6)}
    assert len(draws) > 1  # the seed matters


def test_num_samples_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        search_points({"lr": (1e-4,)}, num_samples=0, seed=0)


def test_param_space_is_one_grid_axis_of_the_points() -> None:
    points = [{"alpha": 0.5, "k": 8}, {"alpha": 1.0, "k": 8}]
    space = param_space(points)
    assert list(space) == ["params"]
    assert space["params"] == {"grid_search": points}


def test_metric_mode_and_unknown_metric() -> None:
    assert metric_mode("t2v_R1") == "max"
    assert metric_mode("v2t_R5") == "max"
    assert metric_mode("t2v_MnR") == "min"
    assert metric_mode("v2t_MdR") == "min"
    with pytest.raises(ValueError, match=r"tune\.metric"):
        metric_mode("R@1")
    with pytest.raises(ValueError, match=r"tune\.metric"):
        metric_mode("stage1_t2v_R1")  # the stage-1 baseline does not depend on the swept values


def test_overrides_set_both_directions_and_apply_to_the_config() -> None:
    params = {"alpha": 0.5, "temp": 10.0, "k": 4, "sample_steps": 5}
    ov = overrides_for("inference", params)
    assert ov == {
        "diffusion": {
            "t2v_alpha": 0.5,
            "v2t_alpha": 0.5,
            "t2v_temp": 10.0,
            "v2t_temp": 10.0,
            "t2v_k": 4,
            "v2t_k": 4,
            "sample_steps": 5,
        }
    }
    cfg = apply_overrides(Config(), ov)
    assert (cfg.diffusion.t2v_k, cfg.diffusion.v2t_k, cfg.diffusion.sample_steps) == (4, 4, 5)
    assert cfg.diffusion.steps == Config().diffusion.steps  # untouched fields stay
    assert "diffusion.v2t_temp=10.0" in dotted(ov)
    # the dotted form is accepted by the config loader and gives the same config
    assert load_config(None, dotted(ov)).diffusion == cfg.diffusion


def test_overrides_reject_unknown_axis_and_invalid_values() -> None:
    with pytest.raises(ValueError, match="unknown search axis"):
        overrides_for("inference", {"lr": 1e-4})
    too_many = overrides_for("inference", {"sample_steps": Config().diffusion.steps + 1})
    with pytest.raises(ValueError, match="sample_steps"):
        apply_overrides(Config(), too_many)


def test_training_trial_config_is_isolated_from_the_run_and_the_test_split() -> None:
    base = load_config(None, ["run.out=/tmp/runs/x", "data.extra_eval_splits=[ood]"])
    cfg = training_trial_config(base, {"lr": 3e-4}, "/tmp/runs/x/checkpoints/discrimination")
    assert cfg.train.lr == 3e-4
    assert cfg.train.stage == "generation"
    assert cfg.train.init_checkpoint == "/tmp/runs/x/checkpoints/discrimination"
    assert cfg.run.out.startswith("/tmp/runs/x/tune/training/trials/")
    assert trial_name({"lr": 3e-4}) in cfg.run.out
    assert cfg.train.storage_path.startswith(cfg.run.out)
    assert cfg.data.test_split == cfg.data.val_split
    assert cfg.data.extra_eval_splits == ()


def test_rank_rows_orders_by_metric_and_breaks_ties_by_grid_order() -> None:
    points = [{"k": 1}, {"k": 2}, {"k": 3}]
    rows = [
        {"params": {"k": 3}, "t2v_R1": 50.0, "t2v_MnR": 2.0},
        {"params": {"k": 1}, "t2v_R1": 40.0, "t2v_MnR": 1.5},
        {"params": {"k": 2}, "t2v_R1": 50.0, "t2v_MnR": 3.0},
    ]
    best_r1 = rank_rows(rows, points, "t2v_R1", "max")
    assert [r["params"]["k"] for r in best_r1] == [2, 3, 1]
    best_mnr = rank_rows(rows, points, "t2v_MnR", "min")
    assert [r["params"]["k"] for r in best_mnr] == [1, 3, 2]
