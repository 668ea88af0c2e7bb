"""TensorBoard scalars under local and s3:// run.out (read back with TensorBoard's reader), and MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidret.storage import Storage
from vidret.tracking import (
    Tracker,
    absolute_mlflow_uri,
    flat_scalars,
    log_once,
    tensorboard_hint,
    tensorboard_uri,
)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``folder``, by tag, read with TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.s3
def test_event_files_land_under_an_s3_run_out_and_read_back(s3_bucket, tmp_path: Path) -> None:
    storage_cfg, bucket = s3_bucket
    storage = Storage(storage_cfg)
    run_out = f"{bucket}/runs/r1"
    with Tracker(run_out, "discrimination", storage) as tracker:
        for step in range(3):
            tracker.scalars(step, {"loss": 1.0 / (step + 1), "lr": 1e-4}, prefix="train")
    uris = storage.list(tensorboard_uri(run_out, "discrimination"))
    assert uris, "no event file was uploaded"
    assert all("events.out.tfevents" in u for u in uris)
    for uri in uris:  # download, then read with TensorBoard's own reader
        (tmp_path / uri.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(uri))
    scalars = _scalars(tmp_path)
    assert [s for s, _ in scalars["train/loss"]] == [0, 1, 2]
    assert scalars["train/loss"][2][1] == pytest.approx(1 / 3)
    assert tracker._tmp is None  # the local copy of a remote run is removed
    assert tensorboard_hint(run_out).startswith(f"aws s3 sync {bucket}/runs/r1/tensorboard ")


def test_local_run_out_writes_in_place(tmp_path: Path) -> None:
    run_out = str(tmp_path / "run")
    with Tracker(run_out, "eval", Storage()) as tracker:
        tracker.scalars(0, {"t2v_R@1": 12.5})
    scalars = _scalars(tmp_path / "run" / "tensorboard" / "eval")
    assert scalars == {"t2v_R_at_1": [(0, 12.5)]}
    assert tensorboard_hint(run_out) == f"tensorboard --logdir {run_out}/tensorboard"


def test_mlflow_file_store_has_the_run_with_params_metrics_and_artifact(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    store = f"file:{tmp_path / 'mlruns'}"
    report = tmp_path / "report.html"
    report.write_text("<html>report</html>")
    params = {"train": {"lr": 1e-4, "stage": "generation"}}
    with Tracker(str(tmp_path / "run"), "eval", Storage(), mlflow_uri=store, params=params) as tracker:
        tracker.scalars(0, {"t2v_R@1": 10.0})
        tracker.scalars(1, {"t2v_R@1": 20.0})
        tracker.artifact(report)
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("vidret")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run-eval"
    assert run.data.params["train.lr"] == "0.0001"
    history = client.get_metric_history(run.info.run_id, "t2v_R_at_1")
    assert [(m.step, m.value) for m in history] == [(0, 10.0), (1, 20.0)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.html"]
    assert run.info.status == "FINISHED"


def test_log_once_writes_nested_metrics_of_each_split(tmp_path: Path) -> None:
    metrics = {"test": {"stage1": {"t2v": {"R1": 12.5, "MdR": 4.0}, "note": "text", "ok": True}}}
    folder = log_once(str(tmp_path / "run"), "eval", Storage(), metrics)
    assert folder == str(tmp_path / "run" / "tensorboard" / "eval")
    assert _scalars(Path(folder)) == {"test/stage1/t2v/R1": [(0, 12.5)], "test/stage1/t2v/MdR": [(0, 4.0)]}
    assert flat_scalars({"a": {"b": 1, "c": False, "d": "x"}, "e": 2.5}) == {"a/b": 1.0, "e": 2.5}


def test_a_relative_mlflow_store_is_made_absolute(tmp_path: Path) -> None:
    assert absolute_mlflow_uri("mlruns", cwd=str(tmp_path)) == f"file:{tmp_path}/mlruns"
    assert absolute_mlflow_uri("file:mlruns", cwd=str(tmp_path)) == f"file:{tmp_path}/mlruns"
    for kept in ("", "file:/abs/mlruns", "/abs/mlruns", "http://mlflow:5000", "databricks://profile"):
        assert absolute_mlflow_uri(kept, cwd=str(tmp_path)) == kept
