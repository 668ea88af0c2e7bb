"""The local-path guard for clusters of more than one node (vidret.planning.check_shared_paths)."""

from __future__ import annotations

import pytest

from vidret.config import load_config
from vidret.planning import PathUse, check_shared_paths, job_paths

S3 = ["run.out=s3://bkt/run", "train.storage_path=s3://bkt/ray", "data.manifest=s3://bkt/manifest"]


def test_one_node_accepts_local_paths() -> None:
    check_shared_paths(load_config(None, ["run.out=/tmp/x"]), num_nodes=1, video_uris=["/v/a.mp4"])


def test_two_nodes_refuse_the_default_local_paths() -> None:
    cfg = load_config(None, ["run.out=/tmp/run", "data.manifest=s3://bkt/m"])
    with pytest.raises(ValueError) as e:
        check_shared_paths(cfg, num_nodes=2)
    msg = str(e.value)
    assert msg.startswith(
        "the Ray cluster has 2 nodes but these paths are local to one machine: run.out=/tmp/run;"
    )
    assert "train.storage_path=runs/ray-results" in msg
    assert "data.manifest" not in msg
    assert "storage.shared_filesystem=true" in msg


def test_two_nodes_refuse_a_local_video_uri_and_a_file_uri() -> None:
    cfg = load_config(None, S3)
    with pytest.raises(ValueError, match=r"video_uri \(manifest\)=file:///v/b.mp4"):
        check_shared_paths(cfg, num_nodes=3, video_uris=["s3://bkt/a.mp4", "file:///v/b.mp4"])
    with pytest.raises(ValueError, match=r"eval.checkpoint=/ck.pt"):
        check_shared_paths(load_config(None, [*S3, "eval.checkpoint=/ck.pt"]), num_nodes=2)


def test_two_nodes_accept_s3_or_a_shared_file_system() -> None:
    check_shared_paths(load_config(None, S3), num_nodes=2, video_uris=["s3://bkt/a.mp4"])
    shared = load_config(None, ["storage.shared_filesystem=true", "run.out=/mnt/nfs/run"])
    check_shared_paths(shared, num_nodes=2, video_uris=["/mnt/nfs/a.mp4"])


def test_extra_paths_are_checked_and_empty_values_skipped() -> None:
    cfg = load_config(None, S3)
    assert [p.key for p in job_paths(cfg)] == ["run.out", "train.storage_path", "data.manifest"]
    with pytest.raises(ValueError, match=r"tensorboard=/tb"):
        check_shared_paths(cfg, num_nodes=2, extra=[PathUse("tensorboard", "/tb")])


def test_a_job_checks_only_the_keys_it_uses() -> None:
    cfg = load_config(None, ["run.out=s3://bkt/run", "data.manifest=s3://bkt/m"])  # storage_path local
    assert [p.key for p in job_paths(cfg, keys=("run.out", "data.manifest"))] == ["run.out", "data.manifest"]
    check_shared_paths(cfg, num_nodes=2, keys=("run.out", "data.manifest"))
    with pytest.raises(ValueError, match=r"train.storage_path=runs/ray-results"):
        check_shared_paths(cfg, num_nodes=2)


def test_new_config_fields_are_validated() -> None:
    with pytest.raises(ValueError, match=r"data\.decode_actors"):
        load_config(None, ["data.decode_actors=some"])
    with pytest.raises(ValueError, match=r"run\.pending_timeout_s"):
        load_config(None, ["run.pending_timeout_s=0"])
    with pytest.raises(ValueError, match=r"run\.autoscale_max_cpus"):
        load_config(None, ["run.autoscale_max_cpus=-1"])
    assert load_config(None, ["data.decode_actors=auto"]).data.decode_actors == "auto"
