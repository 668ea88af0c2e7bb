"""The end of a run: table, verdicts and paths on the console; the long JSON in summary.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

from vidret.storage import Storage
from vidret.tracking import finish_run


def test_finish_run_prints_a_short_ending_and_writes_the_json(tmp_path: Path) -> None:
    summary = {
        "wall_s": 12.34,
        "evaluation": {"splits": {"test": {"t2v_R1": 30.0}}},
        "long": list(range(200)),
    }
    out = io.StringIO()
    uri = finish_run(
        summary,
        str(tmp_path),
        Storage(),
        table="split  t2v_R@1\ntest   30.0",
        verdicts=["Re-ranking helps: +1.2 R@1 on test."],
        paths={"report": str(tmp_path / "report.html"), "metrics": None},
        tensorboard=f"tensorboard --logdir {tmp_path}/tensorboard",
        stream=out,
    )
    assert json.loads(Path(uri).read_text()) == json.loads(json.dumps(summary))
    text = out.getvalue()
    assert text.splitlines()[:2] == ["split  t2v_R@1", "test   30.0"]
    assert "Re-ranking helps" in text
    assert f"summary:     {uri}" in text and "tensorboard: tensorboard --logdir" in text
    assert "metrics" not in text  # unset paths are left out
    assert text.rstrip().endswith("done in 12.3 s")
    assert len(text.splitlines()) < 15


def test_end_run_json_flag_prints_only_the_summary_on_stdout(tmp_path: Path, capsys) -> None:
    import argparse

    from vidret.cli.common import end_run
    from vidret.config import load_config

    cfg = load_config(None, [f"run.out={tmp_path / 'run'}"])
    summary = {"stage": "discrimination", "wall_s": 1.0}
    end_run(argparse.Namespace(json=True), cfg, summary, str(tmp_path), table="t", verdicts=["v"])
    assert json.loads(capsys.readouterr().out) == summary
    assert not (tmp_path / "summary.json").exists()
    end_run(argparse.Namespace(json=False), cfg, summary, str(tmp_path), verdicts=["v."], filename="s.json")
    text = capsys.readouterr().out
    assert text.startswith("v.\n") and f"tensorboard --logdir {tmp_path / 'run'}/tensorboard" in text
    assert json.loads((tmp_path / "s.json").read_text()) == summary


def test_quickstart_and_tune_end_with_verdicts_and_paths(tmp_path: Path, capsys, monkeypatch) -> None:
    """The CLI's endings of the two long commands, on their summaries' real shapes (the pipelines
    themselves run in the integration tests and ``make demo``)."""
    import vidret.quickstart
    import vidret.tune.sweep
    from vidret.cli import main

    run = tmp_path / "run"
    quick = {
        "evaluation": {"report": f"{run}/eval/generation/report.html", "out": f"{run}/eval/generation"},
        "table": "split | R@1\ntest  | 30.0",
        "sentences": ["test: re-ranking helps (+1.0 R@1)."],
        "wall_s": 3.0,
    }
    monkeypatch.setattr(vidret.quickstart, "run_quickstart", lambda cfg, progress=None: dict(quick))
    assert main(["quickstart", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("split | R@1\ntest  | 30.0\n\ntest: re-ranking helps")
    assert f"metrics:     {run}/eval/generation/metrics.json" in out
    assert json.loads((run / "summary.json").read_text())["wall_s"] == 3.0
    tuned = {
        "num_trials": 4,
        "split": "val",
        "metric": "t2v_R1",
        "best_metric": 31.25,
        "best_overrides": ["diffusion.t2v_k=16"],
        "table": "the table",
        "table_path": f"{run}/tune/inference/results.csv",
        "best_config": f"{run}/tune/inference/best_config.yaml",
        "out": f"{run}/tune/inference",
    }
    monkeypatch.setattr(vidret.tune.sweep, "run_tune", lambda cfg, ckpt, train=None: dict(tuned))
    monkeypatch.setattr("vidret.cli.commands.preflight", lambda *a, **k: None)  # no weights in this folder
    assert main(["tune", f"run.out={run}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best_metric"] == 31.25
    assert main(["tune", f"run.out={run}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Best of 4 trials on 'val': t2v_R1 31.25 with diffusion.t2v_k=16.")
    assert "best config: " in out and "the table" not in out  # run_tune has printed the table
