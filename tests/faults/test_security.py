"""Security faults: pickles that would run code, credentials leaking into text, a local Ray open to the
network.

(a) Checkpoints (``load_checkpoint``, ``load_state``) and CLIP weights (``read_clip_weights``, ``build_clip``)
    load tensors only: a file whose pickle would run code is refused with an error naming the file, and the
    code never runs (its marker file is never created), in every container (torch zip, legacy torch, raw
    pickle, a zip disguised as TorchScript).
(b) Credentials never appear in errors (messages, reprs, tracebacks), logs, the CLI's output, saved resolved
    configs, checkpoints or reports, whether they come from the config or the environment.
(c) ``ensure_ray`` starts a local Ray whose processes all listen on 127.0.0.1 only, with no dashboard.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import socket
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vidret import cli
from vidret.config import Config, ModelConfig, StorageConfig, dump_yaml, load_config, to_dict
from vidret.eval.report import write_report
from vidret.model.checkpoint import (
    META_FILE,
    STATE_FILE,
    CheckpointError,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_state,
)
from vidret.model.clip import read_clip_weights
from vidret.model.presets import build_clip
from vidret.storage import Storage, StorageError, join


# -- (a) pickles that would run code -----------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``exec``, which creates ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _malicious(container: str, marker: Path) -> bytes:
    """A checkpoint-looking file whose unpickling would run ``_Payload``'s code."""
    state = {"visual.proj": torch.zeros(2, 2), "step": 3, "payload": _Payload(marker)}
    buf = io.BytesIO()
    if container == "torch_zip":
        torch.save(state, buf)
    elif container == "torch_legacy":
        torch.save(state, buf, _use_new_zipfile_serialization=False)
    elif container == "raw_pickle":
        buf.write(pickle.dumps({"step": 3, "payload": _Payload(marker)}, protocol=2))
    else:  # a torch zip with a constants.pkl entry, so the loader takes it for a TorchScript archive
        torch.save(state, buf)
        with zipfile.ZipFile(buf, "a") as zf:
            root = zf.namelist()[0].split("/")[0]
            zf.writestr(f"{root}/constants.pkl", pickle.dumps((_Payload(marker),), protocol=2))
    return buf.getvalue()


CONTAINERS = ["torch_zip", "torch_legacy", "raw_pickle", "disguised_torchscript"]


def _tamper(directory: Path, data: bytes) -> None:
    """Replace a checkpoint's state.pt by ``data`` and make meta.json agree (whoever writes one can write
    both)."""
    (directory / STATE_FILE).write_bytes(data)
    meta = json.loads((directory / META_FILE).read_text())
    meta.update(state_sha256=hashlib.sha256(data).hexdigest(), state_bytes=len(data))
    (directory / META_FILE).write_text(json.dumps(meta))


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file that looks like a TorchScript")
@pytest.mark.parametrize("container", CONTAINERS)
def test_malicious_checkpoints_and_weights_are_refused_and_never_run_code(
    container: str, tmp_path: Path, faults
) -> None:
    marker = tmp_path / "code-ran"
    data = _malicious(container, marker)
    if container == "torch_zip":  # the payload is live: an unsafe load would run it
        torch.load(io.BytesIO(data), weights_only=False)
        assert marker.exists()
        marker.unlink()

    faults.inject("security", f"checkpoint state.pt whose pickle runs code ({container})")
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, {"model": {"w": torch.ones(2)}, "step": 1})
    _tamper(ckpt, data)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    assert str(ckpt / STATE_FILE) in str(err.value)
    assert "refused" in str(err.value) or "unreadable" in str(err.value), err.value
    assert not marker.exists(), "load_checkpoint ran code from a pickle"

    faults.inject("security", f"checkpoint in storage whose pickle runs code ({container})")
    storage, uri = Storage(StorageConfig()), str(tmp_path / "exported" / "discrimination")
    save_state(uri, {"selected": {"w": torch.ones(2)}}, storage)
    local = tmp_path / "exported" / "discrimination"
    _tamper(local, data)
    with pytest.raises(CheckpointError) as err:
        load_state(uri, storage)
    assert join(uri, STATE_FILE) in str(err.value), f"the error names a temporary copy: {err.value}"
    assert not marker.exists(), "load_state ran code from a pickle"

    faults.inject("security", f"CLIP weights whose pickle runs code ({container})")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(data)
    for fmt in ("auto", "openai", "open_clip"):
        with pytest.raises(ValueError, match=rf"CLIP weights {weights}: (refused|unreadable|a TorchScript)"):
            read_clip_weights(str(weights), fmt)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"CLIP weights {weights}"):
        build_clip(ModelConfig(preset="debug", weights=str(weights)))
    assert not marker.exists(), "CLIP weight loading ran code from a pickle"


@pytest.mark.s3
def test_malicious_checkpoint_in_s3_is_refused_naming_the_s3_uri(
    s3_bucket: tuple[StorageConfig, str], tmp_path: Path, faults
) -> None:
    cfg, root = s3_bucket
    storage, uri = Storage(cfg), join(root, "run", "checkpoints", "generation")
    marker = tmp_path / "code-ran"
    faults.inject("security", "checkpoint in S3 whose pickle runs code")
    save_state(uri, {"selected": {"w": torch.ones(2)}}, storage)
    local = tmp_path / "copy"
    local.mkdir()
    for name in (STATE_FILE, META_FILE):
        (local / name).write_bytes(storage.read_bytes(join(uri, name)))
    _tamper(local, _malicious("torch_zip", marker))
    for name in (STATE_FILE, META_FILE):
        storage.write_bytes(join(uri, name), (local / name).read_bytes())
    with pytest.raises(CheckpointError, match=rf"{join(uri, STATE_FILE)}: refused.*exec"):
        load_state(uri, storage)
    assert not marker.exists()


# -- (b) credentials ---------------------------------------------------------------------------------------
ACCESS_KEY = "AKIAVIDRETFAULTACCESS7Q"
SECRET_KEY = "vidret-fault-SECRET-9d1c5e77aa0f"
SESSION_TOKEN = "vidret-fault-TOKEN-3b8f12c4d6"
NUMERIC_SECRET = "918273645546372819"  # a secret YAML reads as a number: a type error must not quote it


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text_of(err: BaseException) -> str:
    """Everything an error shows: message, repr, and the traceback with its causes and their messages."""
    return "\n".join([str(err), repr(err), "".join(traceback.format_exception(err))])


def _errors(fn: Callable[[], Any], *types: type[BaseException]) -> str:
    with pytest.raises(types or (Exception,)) as err:
        fn()
    return _text_of(err.value)


def test_credentials_never_appear_in_errors_logs_output_configs_or_reports(
    moto_server: str, tmp_path: Path, faults, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="vidret")
    env_secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # set by the moto_server fixture (distinctive too)
    secrets = [ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, env_secret, NUMERIC_SECRET]
    creds = {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "session_token": SESSION_TOKEN}
    down = StorageConfig(
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        region="us-east-1",
        max_retries=1,
        retry_backoff_s=0.01,
        **creds,
    )
    up = StorageConfig(
        endpoint_url=moto_server, region="us-east-1", max_retries=1, retry_backoff_s=0.01, **creds
    )
    assert SECRET_KEY in str(to_dict(down, redact=False))  # the scan below looks for the real values
    seen: list[str] = []

    faults.inject("security", "storage errors with config credentials: endpoint down, missing object/bucket")
    st = Storage(down)
    for call in (
        lambda: st.read_bytes("s3://bucket/key"),
        lambda: st.write_bytes("s3://bucket/key", b"x"),
        lambda: st.list("s3://bucket/prefix"),
        lambda: st.exists("s3://bucket/key"),
    ):
        seen.append(_errors(call, StorageError))
    st = Storage(up)
    for call in (lambda: st.read_bytes("s3://no-such-bucket/key"), lambda: st.list("s3://no-such-bucket/p")):
        seen.append(_errors(call, StorageError))
    env_st = Storage(
        StorageConfig(endpoint_url=moto_server, max_retries=0)
    )  # credentials from the environment
    seen.append(_errors(lambda: env_st.read_text("s3://no-such-bucket/key"), StorageError))
    seen += [repr(down), str(down), repr(Storage(down)), repr(Config(storage=down)), repr(env_st)]
    seen.append(pickle.dumps(env_st).decode("latin-1"))  # environment credentials stay out of pickles

    faults.inject("security", "config errors near credentials: numeric secret, YAML error, bad overrides")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"storage:\n  access_key_id: {ACCESS_KEY}\n  secret_access_key: {NUMERIC_SECRET}\n")
    seen.append(_errors(lambda: load_config(bad), ValueError))
    bad.write_text(f'storage:\n  secret_access_key: "{SECRET_KEY}\n  region: [\n')
    seen.append(_errors(lambda: load_config(bad), ValueError))
    for override in (
        f"storage.secret_access_key=[{SECRET_KEY}",
        f"storage.secret_access_key={{a: {SECRET_KEY}}}",
        f"storage.session_token.x={SESSION_TOKEN}",
        f"storage.access_key_id=!!int {ACCESS_KEY}",
    ):
        seen.append(_errors(lambda o=override: load_config(None, [o]), ValueError))

    faults.inject("security", "resolved configs, checkpoints and reports written with credentials configured")
    cfg = Config(storage=StorageConfig(region="us-east-1", **creds))
    seen.append(dump_yaml(cfg))
    written = Path(cli.write_resolved_config(cfg, str(tmp_path / "out")))
    seen.append(written.read_text())
    save_checkpoint(tmp_path / "ckpt", {"step": 1, "config": dump_yaml(cfg), "w": torch.ones(1)})
    seen += [(tmp_path / "ckpt" / n).read_bytes().decode("latin-1") for n in (STATE_FILE, META_FILE)]
    report = write_report(
        str(tmp_path / "report"),
        Storage(),
        metrics={"stage 1": {"t2v": {"R1": 1.0}}},
        ranks={},
        samples=[],
        thumbnails={},
        title="fault",
        config_yaml=dump_yaml(cfg),
    )
    seen += [Path(report).read_text(), (tmp_path / "report" / "metrics.json").read_text()]

    faults.inject("security", "CLI runs failing with credentials in the config file and in overrides")
    good = tmp_path / "creds.yaml"
    good.write_text(
        f"storage:\n  endpoint_url: {down.endpoint_url}\n  max_retries: 0\n"
        f"  access_key_id: {ACCESS_KEY}\n  secret_access_key: {SECRET_KEY}\n"
        f"  session_token: {SESSION_TOKEN}\n"
    )
    manifest = [
        "manifest",
        "--dataset",
        "msrvtt",
        "--anno",
        "s3://bucket/anno",
        "--videos",
        "s3://bucket/v",
        "--split",
        "test",
        "--out",
        "s3://bucket/out/test.parquet",
        "--config",
        str(good),
    ]
    assert cli.main(manifest) == cli.EXIT_ERROR
    assert cli.main([*manifest, f"storage.secret_access_key=[{SECRET_KEY}"]) == cli.EXIT_ERROR
    assert cli.main([*manifest[:-2], "--config", str(bad)]) == cli.EXIT_ERROR
    out = capsys.readouterr()
    seen += [out.out, out.err, caplog.text]
    assert "vidret manifest: error:" in out.err and "s3://bucket/anno" in out.err, out.err

    leaks = [
        (s, text[max(0, text.find(s) - 80) : text.find(s) + 40])
        for text in seen
        for s in secrets
        if s in text
    ]
    faults.loss()
    assert not leaks, f"credentials leaked: {leaks[:3]}"
    assert "***" in dump_yaml(cfg)  # redacted, not dropped: the saved config says credentials were set


# -- (c) local Ray binds to loopback -----------------------------------------------------------------------
# Runs in a fresh Python process: the check needs a Ray that ensure_ray starts, and the pytest worker may
# already hold the session's Ray. Prints one JSON object: what the assertions below look at.
_LOOPBACK_PROBE = """
import ipaddress, json
import ray  # before psutil, which ray vendors (docs/stack-notes.md P16)
import psutil
from ray._private import ray_constants
from vidret.config import RunConfig
from vidret.runtime import ensure_ray

def listening(proc):
    get = proc.net_connections if hasattr(proc, "net_connections") else proc.connections
    conns = get(kind="inet")
    return [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]

def loopback(ip):
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback

cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
ensure_ray(RunConfig(num_cpus=1))
try:
    exposed = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            ips = [ip for ip in listening(proc) if not loopback(ip)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if ips:
            exposed[f"{proc.name()} ({proc.pid})"] = ips
    out = {
        "cluster_mode_kept": cluster_mode == ray_constants.ENABLE_RAY_CLUSTER,
        "node_ip": ray.util.get_node_ip_address(),
        "node_addresses": [n["NodeManagerAddress"] for n in ray.nodes()],
        "gcs_address": ray.get_runtime_context().gcs_address,
        "task_ip": ray.get(ray.remote(ray.util.get_node_ip_address).remote()),
        "webui": ray._private.worker.global_worker.node.address_info.get("webui_url") or "",
        "exposed": exposed,
    }
finally:
    ray.shutdown()
print(json.dumps(out))
"""


@pytest.mark.ray
def test_local_ray_and_its_dashboard_bind_to_loopback_only(faults) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "platform"), env.get("PYTHONPATH", "")])
    faults.inject("security", "local Ray started by ensure_ray reachable from the network")
    proc = subprocess.run(
        [sys.executable, "-c", _LOOPBACK_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cluster_mode_kept"], "ensure_ray left Ray's cluster mode changed"
    assert out["node_ip"] == "127.0.0.1"
    assert out["node_addresses"] == ["127.0.0.1"]
    assert out["gcs_address"].startswith("127.0.0.1:")
    assert out["task_ip"] == "127.0.0.1"
    assert out["webui"] == "" or out["webui"].startswith(("127.0.0.1:", "http://127.0.0.1:")), out["webui"]
    assert not out["exposed"], f"Ray processes listen beyond loopback: {out['exposed']}"
