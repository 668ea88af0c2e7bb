"""Fail fast through the CLI: every command validates before it imports Ray, so a mistake is one line and Ray
never started.

The cases run ``vidret.cli.main`` in one fresh interpreter, one after the other, and record after each
whether ``ray`` (or ``torch``) has been imported yet: a handler that imported Ray before its preflight would
show there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidret.preflight import INDEX_FILE, META_FILE

ROOT = Path(__file__).resolve().parents[3]

_SCRIPT = """
import contextlib, io, json, sys
from vidret.cli import main
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    loaded = {m: m in sys.modules for m in ("ray", "torch")}
    out[name] = {"code": code, "err": err.getvalue(), **loaded}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("fail-fast")
    manifest = tmp / "manifest"
    manifest.mkdir()
    rows = pa.table({"video_id": ["a", "b"], "caption": ["x", "y"]})
    for split in ("train", "val", "test"):
        pq.write_table(rows, manifest / f"{split}.parquet")
    weights = tmp / "weights"
    weights.mkdir()
    (weights / META_FILE).write_text("{}")
    data = f"data.manifest={manifest}"
    cases = {
        "empty data.manifest": ["train", f"run.out={tmp}/run"],
        "missing manifest": ["train", f"data.manifest={tmp}/nothing", f"run.out={tmp}/run"],
        "unknown split": ["evaluate", data, "eval.splits=[nope]", "--checkpoint", str(weights)],
        "missing checkpoint": ["evaluate", data, f"run.out={tmp}/run"],
        "s3 without credentials": ["train", "data.manifest=s3://some-bucket/manifest"],
        "placeholder bucket": ["train", "--config", str(ROOT / "configs" / "msrvtt.yaml")],
        "missing search index": ["serve", "--index", str(tmp / "no-index")],
        "search of a missing index": ["search", "a red circle", "--index", str(tmp / "no-index")],
        "index without weights": [
            "index",
            "--checkpoint",
            str(tmp / "none"),
            "--manifest",
            str(manifest / "test.parquet"),
            "--out",
            str(tmp / "index"),
        ],
        "check of a missing manifest": ["check", "--manifest", str(tmp / "none.parquet")],
        "unknown MLflow store": ["train", data, "tracking.mlflow_uri=ftp://host/x"],
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("VIDRET_LOG", "RAY_ADDRESS")
    }
    env.update(
        PYTHONPATH=str(ROOT / "platform"),
        AWS_EC2_METADATA_DISABLED="true",  # no instance role either: s3:// has no credentials at all
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-credentials"),
        AWS_CONFIG_FILE=str(tmp / "no-config"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty data.manifest", "data.manifest is empty"),
        ("missing manifest", "data.manifest: no manifests at"),
        ("unknown split", "eval.splits: unknown split 'nope'"),
        ("missing checkpoint", "no exported weights under"),
        ("s3 without credentials", "data.manifest=s3://some-bucket/manifest needs S3 credentials"),
        ("placeholder bucket", "is still the placeholder 's3://YOUR-BUCKET"),
        ("missing search index", "--index: no search index at"),
        ("search of a missing index", "--index: no search index at"),
        ("index without weights", "--checkpoint: no exported weights at"),
        ("check of a missing manifest", "--manifest: no manifest at"),
        ("unknown MLflow store", "tracking.mlflow_uri: 'ftp://host/x' is not an MLflow store"),
    ],
)
def test_mistake_is_one_line_before_ray(results: dict[str, dict], case: str, expected: str) -> None:
    r = results[case]
    command = r["err"].split(":", 1)[0]
    assert r["code"] == 1, r
    lines = r["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), r["err"]
    assert expected in lines[0], lines[0]
    assert not r["ray"], f"{case}: ray was imported before the mistake was reported"
    assert not r["torch"], f"{case}: torch was imported before the mistake was reported"


def test_index_file_name_matches_the_search_layout() -> None:
    from vidret.search.layout import INDEX_FILE as SEARCH_INDEX_FILE

    assert INDEX_FILE == SEARCH_INDEX_FILE
