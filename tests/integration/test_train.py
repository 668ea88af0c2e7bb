"""Both training stages on a real local Ray instance, on a small generated corpus (issue 5).

* the two stages produce exported weights, a complete feature cache and per-step metrics;
* 1 vs 2 workers: same seed and global batch give the same loss curve and weights, within a tolerance;
* a Ray Train worker killed with SIGKILL after a checkpoint: the run resumes from it and ends with the weights
  of the uninterrupted run; the same after the DRIVER is killed and the job is re-run with the same run.out;
* the same pipeline twice (stage 1 -> feature cache -> stage 2 -> evaluation with fusion chosen on validation,
  intervals and report) into two folders: the same weights and byte-identical ``metrics.json`` and
  ``ranks.json`` (wall times live in ``timings.json``; paths under ``run.out`` are written relative to it).

The session's Ray instance (2 logical CPUs) and one corpus for the module; the uninterrupted 1-worker runs of
both stages (``baseline``) are the reference of every comparison. The controller's poll interval is shortened
(``ray_train`` in tests/conftest.py) so that ``ray.train.report`` (which waits for the previous report to be
collected) does not dominate the runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import (
    Corpus,
    changed_keys,
    exported,
    final_checkpoint,
    make_corpus,
    max_abs_diff,
    read_scalars,
    registered_step,
    small_config,
    train_worker_pids,
    update_difference,
    wait_for,
)

from vidret.config import Config, dump_yaml, replace
from vidret.features.scoring import evaluate_features
from vidret.features.store import load_split, read_index
from vidret.layout import stage_uri
from vidret.model.build import build_model
from vidret.storage import Storage
from vidret.train import trainer

pytestmark = [pytest.mark.slow, pytest.mark.ray]

STAGE1_STEPS = 8
STAGE2_STEPS = 8
# 1 vs 2 workers: the same global batch, but sums over ranks in another order (gather, all-reduce, DDP
# averaging), so float32 rounding differs and Adam's normalisation amplifies it where gradients are ~0
# (stage 2's
# fresh denoisers). Measured: loss 2e-7 relative; the runs end 9e-6 (stage 1) and 2.4e-4 (stage 2) of a
# whole run's update apart, the largest element 1.3e-4 (a denoiser bias), below one step's lr of 1e-3.
TWO_WORKERS_TOL = {"loss_rtol": 1e-4, "update_rtol": 2e-3, "max_abs": 1e-3}
# Resumed vs uninterrupted on one worker: the same arithmetic in the same order, so bitwise equal.
RESUME_TOL = {"loss_rtol": 0.0, "update_rtol": 0.0, "max_abs": 0.0}


@pytest.fixture(scope="module")
def train_ray(ray_train: None) -> None:
    """The session's Ray (2 logical CPUs) with the fast Train health check (tests/conftest.py)."""
    import ray

    if ray.cluster_resources().get("CPU", 0) < 2:
        pytest.skip("the running Ray instance has fewer than 2 CPUs: 2 workers + decode actors do not fit")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """64 clips of 32 px, 1 s at 4 fps (52 train / 3 val / 6 test / 3 ood) and their manifests."""
    return make_corpus(tmp_path_factory.mktemp("train-corpus"), videos=64)


# The evaluation of the baseline and of its re-run (test_the_same_pipeline_twice_is_byte_identical). The
# feature cache of stage 1 covers every split it reads (ood among them), so the evaluation decodes nothing;
# the long decode timeout keeps a loaded machine from marking a good video bad in one run only.
EVAL = (
    "data.extra_eval_splits=[ood]", "data.decode_timeout_s=600", "eval.splits=[test, ood]",
    "eval.select_fusion=true", "eval.fusion_alphas=[0.5, 1.0]", "eval.fusion_temps=[1.0, 10.0]",
    "eval.bootstrap_resamples=1000",
)  # fmt: skip


def _stage1(root: Path, corpus: Corpus, name: str, workers: int = 1, *overrides: str) -> Config:
    return small_config(root / name, corpus.manifest, *EVAL, *overrides, workers=workers, steps=STAGE1_STEPS)


def _stage2(cfg: Config, init: str | None = None) -> Config:
    return replace(
        cfg, train=replace(cfg.train, stage="generation", max_steps=STAGE2_STEPS, init_checkpoint=init)
    )


@dataclass
class Baseline:
    stage1: Config
    stage2: Config
    summary1: dict
    summary2: dict
    evaluation: Path  # the evaluation's output folder


def _pipeline(root: Path, corpus: Corpus, name: str) -> Baseline:
    """Stage 1 (and its feature cache), stage 2 on the cache, then the evaluation of the stage-2 weights."""
    from vidret.eval.job import run_evaluation

    cfg1 = _stage1(root, corpus, name)
    summary1 = trainer.run_training(cfg1)
    cfg2 = _stage2(cfg1)
    summary2 = trainer.run_training(cfg2)
    evaluation = Path(run_evaluation(cfg2, stage_uri(cfg1, "generation"))["out"])
    return Baseline(cfg1, cfg2, summary1, summary2, evaluation)


@pytest.fixture(scope="module")
def baseline(train_ray: None, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """The uninterrupted 1-worker runs of both stages and their evaluation."""
    return _pipeline(tmp_path_factory.mktemp("train-runs"), corpus, "base")


@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 without building the feature cache afterwards (driver side; the tests below compare
    weights)."""
    monkeypatch.setattr(trainer, "build_feature_cache", lambda *args, **kwargs: {})


def _losses(cfg: Config, stage: str) -> list[dict[int, float]]:
    return read_scalars(Path(cfg.run.out) / "tensorboard" / stage, f"{stage}/loss")


def _copy_cache(src: Config, dst: Config) -> None:
    """Reuse the baseline's feature cache (keyed by the stage-1 weights) in another run folder."""
    shutil.copytree(Path(src.run.out) / "features", Path(dst.run.out) / "features")


# -------------------------------------------------------------------------------------------------- (a)
def test_two_stages_write_weights_cache_and_metrics(baseline: Baseline, corpus: Corpus) -> None:
    s1, s2 = baseline.summary1, baseline.summary2
    assert s1["steps"] == STAGE1_STEPS
    assert s2["steps"] == STAGE2_STEPS
    w1, w2 = exported(baseline.stage1, "discrimination"), exported(baseline.stage2, "generation")
    assert (w1["stage"], w1["step"], w2["stage"], w2["step"]) == (
        "discrimination",
        STAGE1_STEPS,
        "generation",
        STAGE2_STEPS,
    )
    assert w1["key"] == s1["key"] == s2["key"]  # stage 2 keeps the encoder: same feature-cache key
    # stage 2 moved the denoisers and nothing else; stage 1 moved the encoder (not the frozen conv1)
    moved2 = changed_keys(w1["selected"], w2["selected"])
    assert moved2, moved2[:5]
    assert all(k.startswith(("t2v_denoiser.", "v2t_denoiser.")) for k in moved2), moved2[:5]
    init = build_model(baseline.stage1, Storage(), None).state_dict()  # seeded: the runs' initial weights
    moved1 = set(changed_keys(init, w1["selected"]))
    assert not any(k.startswith(("t2v_denoiser.", "v2t_denoiser.")) or ".conv1." in k for k in moved1)
    assert any(k.startswith("temporal.") for k in moved1)
    assert any(k.startswith("wti.") for k in moved1)
    assert any(k.startswith("backbone.") for k in moved1)
    # the feature cache: every split complete, every caption and video once, shared by both stages
    assert set(s1["cache"]) == {"train", "val", "test", "ood"}
    assert s1["cache"] == s2["cache"]
    storage = Storage()
    for split in ("train", "val", "test", "ood"):
        index = read_index(storage, s1["cache"][split])
        assert index is not None, f"{split}: cache incomplete"
        assert sum(s["rows"] for s in index["videos"]) == corpus.summary["splits"][split]
        assert (
            sum(s["rows"] for s in index["texts"])
            == len(index["captions"])
            >= corpus.summary["splits"][split]
        )
    # the in-loop validation score of the selected weights is what evaluating them on the cached val split
    # gives
    model = build_model(baseline.stage1, Storage(), None)
    model.load_state_dict(w1["selected"])
    val = evaluate_features(
        model, load_split(Storage(), s1["cache"]["val"]), baseline.stage1.eval, rerank=False
    )
    assert w1["best"]["step"] == STAGE1_STEPS
    assert val.metrics["stage1"]["t2v"]["R1"] == pytest.approx(
        s1["metrics"][f"val_{w1['best']['source']}_t2v_R1"]
    )
    # metrics: the Ray result of the last checkpoint, and one TensorBoard loss per step
    for summary, cfg, stage, steps in (
        (s1, baseline.stage1, "discrimination", STAGE1_STEPS),
        (s2, baseline.stage2, "generation", STAGE2_STEPS),
    ):
        assert summary["metrics"]["step"] == steps
        assert 0.0 <= summary["metrics"]["best_val_t2v_R1"] <= 100.0
        curves = _losses(cfg, stage)
        assert len(curves) == 1, curves
        assert sorted(curves[0]) == list(range(1, steps + 1)), curves
        assert all(np.isfinite(v) for v in curves[0].values())


def test_the_same_pipeline_twice_is_byte_identical(
    baseline: Baseline, corpus: Corpus, tmp_path: Path
) -> None:
    again = _pipeline(tmp_path, corpus, "again")
    for ref, other, stage in (
        (baseline.stage1, again.stage1, "discrimination"),
        (baseline.stage2, again.stage2, "generation"),
    ):
        w_ref, w = exported(ref, stage)["selected"], exported(other, stage)["selected"]
        assert all(torch.equal(w_ref[k], w[k]) for k in w_ref), f"{stage}: exported weights differ"
    a, b = baseline.evaluation, again.evaluation
    for name in ("metrics.json", "ranks.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two runs"
    metrics = json.loads((a / "metrics.json").read_text())
    assert "wall_s" not in metrics
    assert set(metrics["intervals"]) == {"test", "ood"}
    assert metrics["fusion"]["chosen_on"] == "val"
    assert metrics["checkpoint"] == "checkpoints/generation"  # relative to run.out
    assert "wall_s" in json.loads((a / "timings.json").read_text())
    assert (a / "report.html").is_file()


# -------------------------------------------------------------------------------------------------- (b)
def _initial_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The weights every run of ``cfg`` starts from (seeded init; stage 2: plus the stage-1 weights)."""
    init = None
    if cfg.train.stage == "generation":
        init = cfg.train.init_checkpoint or stage_uri(cfg, "discrimination")
    return build_model(cfg, Storage(), init).state_dict()


def _compare_runs(
    ref: Config,
    other: Config,
    stage: str,
    *,
    loss_rtol: float,
    update_rtol: float,
    max_abs: float,
    resumed: bool = False,
) -> str:
    """Assert the same per-step losses (from the TensorBoard file of ``other``'s last start: all steps, or
    the resumed ones) and final weights (model and EMA of the last checkpoint) within the tolerances."""
    ref_curve, other_curve = _losses(ref, stage)[-1], _losses(other, stage)[-1]
    steps = sorted(other_curve)
    if resumed:
        assert steps == list(range(steps[0], max(ref_curve) + 1)), steps
    else:
        assert steps == sorted(ref_curve), steps
    a = np.array([ref_curve[k] for k in steps])
    b = np.array([other_curve[k] for k in steps])
    np.testing.assert_allclose(b, a, rtol=loss_rtol, atol=0, err_msg=f"{stage} loss curves differ")
    ref_state, other_state = final_checkpoint(ref, stage), final_checkpoint(other, stage)
    assert other_state["step"] == ref_state["step"] == max(ref_curve)
    init = _initial_weights(ref)
    out = [f"loss max rel {float(np.max(np.abs(b - a) / np.abs(a))):.1e}"]
    for part in ("model", "ema"):
        ref_part, other_part = ref_state[part], other_state[part]
        if part == "ema":
            ref_part, other_part = ref_part["shadow"], other_part["shadow"]
        rel = update_difference(init, ref_part, other_part)
        diff, where = max_abs_diff(ref_part, other_part)
        assert rel <= update_rtol, (
            f"{stage} {part}: the runs ended {rel:.3g} of an update apart (> {update_rtol})"
        )
        assert diff <= max_abs, f"{stage} {part}: max |diff| {diff:.3g} at {where} > {max_abs}"
        out.append(f"{part}: update diff {rel:.1e}, max abs {diff:.1e}")
    return "; ".join(out)


def test_stage1_two_workers_match_one(
    baseline: Baseline, corpus: Corpus, tmp_path: Path, no_cache: None
) -> None:
    cfg = _stage1(tmp_path, corpus, "w2", workers=2)
    trainer.run_training(cfg)
    print(
        "stage 1, 2 vs 1 workers:",
        _compare_runs(baseline.stage1, cfg, "discrimination", **TWO_WORKERS_TOL),
    )


def test_stage2_two_workers_match_one(baseline: Baseline, corpus: Corpus, tmp_path: Path) -> None:
    cfg1 = _stage1(tmp_path, corpus, "w2s2", workers=2)
    cfg = _stage2(cfg1, init=stage_uri(baseline.stage1, "discrimination"))
    _copy_cache(baseline.stage1, cfg)
    trainer.run_training(cfg)
    print("stage 2, 2 vs 1 workers:", _compare_runs(baseline.stage2, cfg, "generation", **TWO_WORKERS_TOL))
    diff, where = max_abs_diff(
        exported(baseline.stage2, "generation")["selected"], exported(cfg, "generation")["selected"]
    )
    assert diff <= TWO_WORKERS_TOL["max_abs"], f"exported weights: {diff:.3g} at {where}"


# -------------------------------------------------------------------------------------------------- (c)
class _Killer(threading.Thread):
    """Waits until Ray Train has registered a checkpoint of ``stage``, then SIGKILLs ``target()``'s pids."""

    def __init__(self, cfg: Config, stage: str, target: object, timeout_s: float = 240.0) -> None:
        super().__init__(daemon=True)
        self.cfg, self.stage, self.target, self.timeout_s = cfg, stage, target, timeout_s
        self.killed: list[int] = []
        self.at_step = 0

    def run(self) -> None:
        if not wait_for(lambda: registered_step(self.cfg, self.stage) > 0, self.timeout_s):
            return
        self.at_step = registered_step(self.cfg, self.stage)
        for pid in self.target():  # type: ignore[operator]
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)


def _assert_resumed(cfg: Config, ref: Config, stage: str, at_step: int, total: int) -> None:
    """The run restarted after ``at_step`` from a checkpoint and ended with the reference's weights."""
    curves = _losses(cfg, stage)
    assert len(curves) >= 2, (
        f"expected a second TensorBoard file from the restarted worker, got {len(curves)}"
    )
    resumed_from = min(curves[-1]) - 1
    assert 0 < resumed_from < total, f"the restart began at step {resumed_from + 1}: not from a checkpoint"
    assert resumed_from >= at_step, f"resumed from step {resumed_from}, but step {at_step} was registered"
    print(
        f"{stage}: killed after the checkpoint of step {at_step}, resumed from step {resumed_from}; ",
        _compare_runs(ref, cfg, stage, resumed=True, **RESUME_TOL),
    )
    w_ref, w = exported(ref, stage)["selected"], exported(cfg, stage)["selected"]
    assert all(torch.equal(w_ref[k], w[k]) for k in w_ref), "exported weights differ"


def test_worker_sigkill_resumes_from_checkpoint(
    baseline: Baseline, corpus: Corpus, tmp_path: Path, no_cache: None
) -> None:
    cfg = _stage1(tmp_path, corpus, "kill")
    killer = _Killer(cfg, "discrimination", train_worker_pids)
    killer.start()
    trainer.run_training(cfg)  # max_failures=1: the controller restarts the worker group once
    killer.join(timeout=5)
    assert killer.killed, "no Ray Train worker was found to kill (did the run register no checkpoint?)"
    _assert_resumed(cfg, baseline.stage1, "discrimination", killer.at_step, STAGE1_STEPS)


def test_job_rerun_after_driver_kill_resumes(baseline: Baseline, corpus: Corpus, tmp_path: Path) -> None:
    """Stage 2 in a separate driver process on this Ray instance; the driver is SIGKILLed after the first
    checkpoint (its Train controller and workers die with it); ``run_training`` with the same run.out
    resumes."""
    import ray

    cfg1 = _stage1(tmp_path, corpus, "job")
    cfg = _stage2(cfg1, init=stage_uri(baseline.stage1, "discrimination"))
    _copy_cache(baseline.stage1, cfg)
    config_file = tmp_path / "job.yaml"
    config_file.write_text(dump_yaml(cfg))
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("vidret")),
            "train",
            "--config",
            str(config_file),
            f"run.ray_address={ray.get_runtime_context().gcs_address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        killer = _Killer(cfg, "generation", lambda: [driver.pid])
        killer.run()
        assert killer.killed, (
            f"the driver registered no checkpoint: {(tmp_path / 'driver.log').read_text()[-3000:]}"
        )
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    # Ray ends a dead driver's actors (Train controller, workers): wait for them before the re-run
    assert wait_for(lambda: not train_worker_pids(), 60, poll_s=0.5), (
        "the killed job's workers are still alive"
    )
    trainer.run_training(cfg)
    _assert_resumed(cfg, baseline.stage2, "generation", killer.at_step, STAGE2_STEPS)
