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
