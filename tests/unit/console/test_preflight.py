"""Fail fast: each configuration mistake is one clear line, found before Ray is imported (so never started).

Each case runs ``preflight`` in a fresh interpreter and asserts that ``ray`` was never imported there: no Ray
instance can have been started, and the answer does not wait for Ray's start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidret.config import load_config, replace
from vidret.preflight import META_FILE, PreflightError, preflight
from vidret.storage import Storage

PLATFORM = Path(__file__).resolve().parents[3] / "platform"

_SCRIPT = """
import json, sys
from vidret.config import load_config, replace
from vidret.preflight import PreflightError, preflight
command, overrides, inputs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
try:
    preflight(command, load_config(None, overrides), **inputs)
    error = None
except PreflightError as exc:
    error = str(exc)
loaded = {name: name in sys.modules for name in ("ray", "torch")}
print(json.dumps({"error": error, "ray_imported": loaded["ray"], "torch_imported": loaded["torch"]}))
"""


def _run(command: str, overrides: list[str], env: dict[str, str] | None = None, **inputs: Any) -> dict:
    full_env = {**os.environ, "PYTHONPATH": str(PLATFORM), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, command, json.dumps(overrides), json.dumps(inputs)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=True,
    )
    result = json.loads(proc.stdout)
    assert not result["ray_imported"], "preflight imported ray"
    assert not result["torch_imported"], "preflight imported torch"
    return result


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A manifest folder: train and test with rows, val empty."""
    folder = tmp_path / "manifest"
    folder.mkdir()
    rows = pa.table({"video_id": ["a", "b"], "caption": ["x", "y"]})
    pq.write_table(rows, folder / "train.parquet")
    pq.write_table(rows, folder / "test.parquet")
    pq.write_table(rows.slice(0, 0), folder / "val.parquet")
    return folder


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "discrimination"
    ckpt.mkdir(parents=True)
    (ckpt / META_FILE).write_text("{}")
    return run


def test_empty_data_manifest(tmp_path: Path) -> None:
    r = _run("train", [f"run.out={tmp_path}/run"])
    assert r["error"] == "data.manifest is empty: set it to the folder or s3:// prefix holding the manifests"


def test_missing_manifest(tmp_path: Path) -> None:
    r = _run("train", [f"data.manifest={tmp_path}/nowhere", f"run.out={tmp_path}/run"])
    assert r["error"].startswith(f"data.manifest: no manifests at {tmp_path}/nowhere")


def test_unknown_split(manifests: Path, weights: Path) -> None:
    r = _run("evaluate", [f"data.manifest={manifests}", f"run.out={weights}", "eval.splits=[nope]"])
    assert r["error"] == f"eval.splits: unknown split 'nope': {manifests} has test, train, val"


def test_empty_split_manifest(manifests: Path, weights: Path) -> None:
    r = _run("tune", [f"data.manifest={manifests}", f"run.out={weights}"])
    assert r["error"] == f"data.val_split: the manifest {manifests}/val.parquet has no rows"


def test_missing_checkpoint(manifests: Path, tmp_path: Path) -> None:
    r = _run("evaluate", [f"data.manifest={manifests}", f"run.out={tmp_path}/fresh"])
    assert r["error"].startswith(f"no exported weights under {tmp_path}/fresh/checkpoints")
    r = _run("evaluate", [f"data.manifest={manifests}"], checkpoint=str(tmp_path / "gone"))
    assert (
        r["error"]
        == f"--checkpoint: no exported weights at {tmp_path}/gone (expected {tmp_path}/gone/meta.json)"
    )
    r = _run("train", [f"data.manifest={manifests}", f"run.out={tmp_path}/fresh", "train.stage=generation"])
    assert r["error"].startswith("train.init_checkpoint: no exported weights at")


def test_s3_uri_without_credentials(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    env.update(dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"), ""))
    r = _run("train", ["data.manifest=s3://my-data/manifest", "run.out=s3://my-data/runs/r1"], env=env)
    assert r["error"].startswith(
        "data.manifest=s3://my-data/manifest needs S3 credentials and none were found"
    )


def test_placeholder_bucket(tmp_path: Path) -> None:
    r = _run("train", ["data.manifest=s3://YOUR-BUCKET/msrvtt/manifest", f"run.out={tmp_path}"])
    assert r["error"].startswith("data.manifest is still the placeholder 's3://YOUR-BUCKET/msrvtt/manifest'")


def test_check_and_manifest_inputs(manifests: Path, tmp_path: Path) -> None:
    r = _run("check", [], manifest=str(manifests / "val.parquet"))
    assert r["error"] == f"--manifest: {manifests}/val.parquet has no rows"
    r = _run("manifest", [], anno=str(tmp_path / "anno"), videos=str(tmp_path))
    assert r["error"] == f"--anno: {tmp_path}/anno does not exist"


def test_valid_configuration_passes(manifests: Path, weights: Path) -> None:
    cfg = load_config(None, [f"data.manifest={manifests}", f"run.out={weights}"])
    preflight("train", cfg)
    preflight("evaluate", cfg)
    preflight("check", cfg, manifest=str(manifests / "train.parquet"))
    with pytest.raises(PreflightError) as info:  # several mistakes: all of them, first one first
        preflight("evaluate", load_config(None, [f"data.manifest={manifests}", "eval.splits=[a, b]"]))
    assert len(info.value.problems) == 3 and "(and 2 more: " in str(info.value)


@pytest.mark.s3
def test_s3_manifest_with_credentials_is_read(s3_bucket, manifests: Path) -> None:
    storage_cfg, bucket = s3_bucket
    storage = Storage(storage_cfg)
    for name in ("train", "test", "val"):
        storage.write_bytes(f"{bucket}/m/{name}.parquet", (manifests / f"{name}.parquet").read_bytes())
    cfg = load_config(None, [f"data.manifest={bucket}/m", f"storage.endpoint_url={storage_cfg.endpoint_url}"])
    preflight("train", cfg, storage)
    with pytest.raises(
        PreflightError, match=f"eval.splits: unknown split 'ood': {bucket}/m has test, train, val"
    ):
        preflight("evaluate", replace(cfg, eval=replace(cfg.eval, splits=("ood",))), storage)


def test_meta_file_name_matches_the_checkpoint_module() -> None:
    from vidret.model.checkpoint import META_FILE as TRAIN_META_FILE

    assert META_FILE == TRAIN_META_FILE
