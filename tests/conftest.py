"""Shared fixtures: a real local S3 (moto server), a fresh bucket per test, and the ../shared data folder."""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# `make test` runs two pytest-xdist workers on 2 cores: one OpenMP/torch thread per process, set before torch
# is imported (the Ray workers and the subprocesses the tests start inherit it). Measured once on the 2-core
# machine: two concurrent runs of the stage 1 + cache + stage 2 test used 10 % less CPU and wall time; the
# whole suite's time did not change measurably.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train starts a preemption watcher actor per run (a process: ~2 CPU-s on this machine) that polls the
# cloud provider for spot-instance notices; no test preempts a node, so the tests' runs go without it.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

from vidret.config import StorageConfig

TEST_ACCESS_KEY_ID = "testing-key-id"
# Distinctive, so a test can assert that it never leaks into logs, errors, repr or pickles.
TEST_SECRET_ACCESS_KEY = "vidret-test-SECRET-7f3b9c2e41d8"
TEST_REGION = "us-east-1"
RAY_OBJECT_STORE_BYTES = 256 << 20


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 at a free port for the whole session; yields its endpoint URL.

    Sets the AWS test credentials and region in the environment for the session and hides any real AWS
    profile or endpoint. One server per session: moto keeps objects in RAM and does not give memory back.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
        ):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        mp.setenv("AWS_DEFAULT_REGION", TEST_REGION)
        werkzeug_log = logging.getLogger("werkzeug")  # logs one INFO line per request
        old_level = werkzeug_log.level
        werkzeug_log.setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            werkzeug_log.setLevel(old_level)


@pytest.fixture(scope="session")
def ray_session(moto_server: str) -> Iterator[None]:
    """One local 2-CPU Ray instance per test process, started at its first use and shared by every module that
    runs Ray in-process (no dashboard, no progress bars, worker logs kept off the driver).

    Started after moto, so Ray's worker processes inherit its test credentials. ``address="local"`` never
    attaches to a stale cluster (docs/stack-notes.md P15). Modules used to start and stop their own: each
    start costs the Ray daemons, a pool of workers and Ray Data's own actors again (docs/stack-notes.md P19).
    """
    import ray

    if ray.is_initialized():  # started by another fixture or plugin: share it
        yield
        return
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=RAY_OBJECT_STORE_BYTES,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_train(ray_session: None) -> Iterator[None]:
    """The session's Ray, with Ray Train's health check every 0.25 s for this module's runs (the controller
    reads it from the driver's environment when a run starts), so a killed worker is noticed at once and
    reports do not wait on the 2 s default."""
    with pytest.MonkeyPatch.context() as mp:
        # ray.train.report waits for the controller's health check to collect the previous report
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
        yield


@pytest.fixture
def s3_bucket(moto_server: str) -> Iterator[tuple[StorageConfig, str]]:
    """A fresh, empty bucket; yields ``(StorageConfig for the moto server, "s3://<bucket>")``.

    The bucket is created with boto3 (s3fs.mkdir sends a LocationConstraint that moto rejects for
    us-east-1) and emptied and deleted afterwards to keep moto's memory small.
    """
    name = f"vidret-test-{uuid.uuid4().hex[:16]}"
    client = _s3_client(moto_server)
    client.create_bucket(Bucket=name)
    try:
        yield StorageConfig(endpoint_url=moto_server, region=TEST_REGION), f"s3://{name}"
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)


@functools.cache
def _s3_client(endpoint_url: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=TEST_REGION)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared`` (real MSR-VTT annotations and videos); skips the test when it is missing."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"../shared not found: {path} is missing; these tests need the shared data")
    return path
