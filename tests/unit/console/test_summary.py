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
