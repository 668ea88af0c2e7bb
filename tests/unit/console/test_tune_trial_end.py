"""Tune's driver-side callback: a progress line per finished trial and its metric in TensorBoard."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

from vidret.config import load_config


def test_each_finished_trial_is_a_progress_line_and_a_scalar(tmp_path: Path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vidret.tune import sweep

    cfg = load_config(None, [f"run.out={tmp_path / 'run'}", "tune.metric=t2v_R1"])
    callback = pickle.loads(pickle.dumps(sweep.TrialEnd(cfg, 2)))  # Tune pickles its callbacks
    for r1 in (10.0, 30.0):
        trial = SimpleNamespace(last_result={"t2v_R1": r1}, config={"params": {"alpha": 0.5, "k": 16}})
        callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[tune inference] trial 1/2 (50%)") and "t2v_R1 10" in lines[0]
    assert lines[-1].startswith("[tune inference] trial 2/2 (100%)") and "ETA 0:00:00" in lines[-1]
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "tune"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("tune/t2v_R1")] == [(0, 10.0), (1, 30.0)]
    assert [e.value for e in acc.Scalars("tune/alpha")] == [0.5, 0.5]
