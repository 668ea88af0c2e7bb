"""cluster.yaml: valid for Ray's launcher, sized for the recipes, no credentials, loopback-only dashboard, and
installing exactly the versions pinned in constraints.txt."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
CONSTRAINTS = ROOT / "constraints.txt"

# (vCPUs, NVIDIA GPUs) of the instance types we may use; add a row when cluster.yaml adopts a new type.
INSTANCE_SPECS = {
    "m6i.2xlarge": (8, 0),
    "m6i.4xlarge": (16, 0),
    "m7i.2xlarge": (8, 0),
    "m7i.4xlarge": (16, 0),
    "c6i.8xlarge": (32, 0),
    "c6i.16xlarge": (64, 0),
    "c7i.8xlarge": (32, 0),
    "c7i.16xlarge": (64, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "g6.12xlarge": (48, 4),
    "g6e.12xlarge": (48, 4),
    "p4d.24xlarge": (96, 8),
    "p5.48xlarge": (192, 8),
}
PINNED_PACKAGES = {"torch", "torchvision", "ray", "open-clip-torch"}
RAY_EXTRAS = {"default", "data", "train", "tune", "serve"}  # ray[default]: `ray start` and the job server
JOB_EXTRAS = ("tracking",)  # optional extras the jobs use on the cluster (tracking.mlflow_uri)
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}
PIP_VALUE_OPTIONS = {
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-e",
    "--editable",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
}
SHELL_OPERATORS = {"&&", "||", ";", "|", "then", "fi", "else"}

SECRET_PATTERNS = [
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"(?i)aws_(?:secret_access_key|access_key_id|session_token)"), "an AWS credential setting"),
    (re.compile(r"(?i)secret"), "the word 'secret'"),
    (re.compile(r"(?i)passw(?:or)?d"), "a password"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*[^\s$]"), "a literal Ray auth token"),
    (re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"), "a 40-character key-like string"),
]


def secret_findings(text: str) -> list[str]:
    """Descriptions of everything in ``text`` that looks like a credential."""
    return [
        f"{what}: {m.group(0)[:12]}..." for pattern, what in SECRET_PATTERNS for m in pattern.finditer(text)
    ]


def constraint_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of constraints.txt."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt pins exactly, got {line!r}"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def all_commands(cfg: dict[str, Any]) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    cmds = [c for k in keys for c in cfg.get(k) or []]
    for node in cfg["available_node_types"].values():
        cmds += [c for k in ("initialization_commands", "worker_setup_commands") for c in node.get(k) or []]
    return cmds


def pip_installs(command: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a shell command (``pip``, ``pip3``, ``-m pip``)."""
    tokens = shlex.split(command)
    out = []
    for i in range(len(tokens) - 1):
        if (tokens[i].endswith(("/pip", "/pip3")) or tokens[i] in ("pip", "pip3")) and tokens[
            i + 1
        ] == "install":
            args = []
            for tok in tokens[i + 2 :]:
                if tok in SHELL_OPERATORS or tok.endswith(";"):
                    break
                args.append(tok)
            out.append(args)
    return out


def parse_pip_args(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``({option: [values]}, positional requirement strings and local paths)``."""
    opts: dict[str, list[str]] = {}
    positional = []
    it = iter(args)
    for tok in it:
        if tok in PIP_VALUE_OPTIONS:
            opts.setdefault(tok, []).append(next(it))
        elif tok.startswith("-"):
            opts.setdefault(tok, [])
        else:
            positional.append(tok)
    return opts, positional


def version_problems(commands: list[str], pins: dict[str, str]) -> list[str]:
    """Every way the pip installs in ``commands`` could install something other than constraints.txt."""
    problems = []
    for cmd in commands:
        for args in pip_installs(cmd):
            opts, positional = parse_pip_args(args)
            reqs = [Requirement(p) for p in positional if not p.startswith(("~", "/", "."))]
            if all(canonicalize_name(r.name) == "pip" for r in reqs) and not opts.get("-e"):
                continue  # upgrading pip itself
            constraints = opts.get("-c", []) + opts.get("--constraint", [])
            if not any(Path(c).name == "constraints.txt" for c in constraints):
                problems.append(f"`pip install {' '.join(args)}` is not run with -c constraints.txt")
            for req in reqs:
                name = canonicalize_name(req.name)
                if name not in pins:
                    problems.append(f"{req.name} is not pinned in constraints.txt")
                    continue
                specs = list(req.specifier)
                if specs and not (
                    len(specs) == 1 and specs[0].operator == "==" and specs[0].version == pins[name]
                ):
                    problems.append(f"{req} does not match constraints.txt ({req.name}=={pins[name]})")
    return problems


def explicit_pins(commands: list[str]) -> dict[str, Requirement]:
    out = {}
    for cmd in commands:
        for args in pip_installs(cmd):
            for p in parse_pip_args(args)[1]:
                if not p.startswith(("~", "/", ".")):
                    req = Requirement(p)
                    if req.specifier:
                        out[canonicalize_name(req.name)] = req
    return out


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER.read_text()


@pytest.fixture(scope="module")
def cfg(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def _resources(node: dict[str, Any]) -> dict[str, int]:
    return node["resources"]


# ----------------------------------------------------------------------------------------- validity
def test_matches_rays_json_schema(cfg: dict[str, Any]) -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)


def test_passes_rays_own_preflight(cfg: dict[str, Any]) -> None:
    """What `ray up` runs before any AWS call: defaults merged, then Ray's cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"][cfg["head_node_type"]]["max_workers"] == 0


def test_file_mounts_ship_code_not_the_venv(cfg: dict[str, Any]) -> None:
    mounts = cfg["file_mounts"]
    locals_ = {str(Path(p)) for p in mounts.values()}
    for remote, local in mounts.items():
        assert (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist in the repository"
        assert (ROOT / local).resolve() != ROOT, "mounting the repo root would hash and copy .venv and runs/"
        assert not {".venv", "runs"} & set(Path(local).parts), local
    assert {"pyproject.toml", "constraints.txt", "platform/vidret", "configs", "jobs"} <= locals_


# ------------------------------------------------------------------------------------------- sizing
def test_every_node_type_declares_resources_matching_its_instance(cfg: dict[str, Any]) -> None:
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for name, node in types.items():
        itype = node["node_config"]["InstanceType"]
        assert itype in INSTANCE_SPECS, f"{name}: add {itype} (vCPUs, GPUs) to INSTANCE_SPECS"
        vcpus, gpus = INSTANCE_SPECS[itype]
        res = _resources(node)
        assert "CPU" in res and res["CPU"] <= vcpus, (
            f"{name}: CPU {res.get('CPU')} vs {vcpus} vCPUs of {itype}"
        )
        assert res.get("GPU", 0) == gpus, (
            f"{name}: {itype} has {gpus} GPUs, resources say {res.get('GPU', 0)}"
        )


def test_head_runs_drivers_but_no_tasks(cfg: dict[str, Any]) -> None:
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert _resources(head) == {"CPU": 0}
    assert head.get("max_workers", 0) == 0


def test_worker_types_cover_the_recipes_within_bounds(cfg: dict[str, Any]) -> None:
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"] <= cfg["max_workers"], name
    gpus = {name: _resources(n).get("GPU", 0) * n["max_workers"] for name, n in workers.items()}
    assert max(gpus.values()) >= 8, "stage 1 needs 8 GPUs from one node type"
    assert any(1 <= _resources(n).get("GPU", 0) <= 2 for n in workers.values()), "no 1-2 GPU type for eval"
    assert any(_resources(n).get("GPU", 0) == 0 for n in workers.values()), "no CPU-only type for decoding"
    assert sum(n["min_workers"] for n in workers.values()) <= cfg["max_workers"]
    assert 0 < cfg["idle_timeout_minutes"] <= 60


def test_every_node_has_an_image_a_disk_and_an_instance_profile(cfg: dict[str, Any]) -> None:
    for name, node in cfg["available_node_types"].items():
        nc = node["node_config"]
        assert re.fullmatch(r"ami-[\w-]+", nc["ImageId"]), f"{name}: ImageId {nc['ImageId']!r}"
        assert nc["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] >= 100, name
        arn = nc["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::[\w-]+:instance-profile/[\w+=,.@-]+", arn), f"{name}: {arn!r}"


# ----------------------------------------------------------------------------------------- security
def test_no_credentials_in_the_file(text: str) -> None:
    assert secret_findings(text) == []


def test_secret_scanner_catches_what_it_claims() -> None:
    key_id = "AKIA" + "Q" * 16
    samples = [
        f"x: {key_id}",
        "aws_secret_access_key: x",
        "password: hunter2",
        "-----BEGIN RSA PRIVATE KEY-----",
        "RAY_AUTH_TOKEN=abc",
        "k: " + "aB3/" * 10,
    ]
    for sample in samples:
        assert secret_findings(sample), sample
    assert secret_findings("RAY_AUTH_TOKEN_PATH=~/.ray/t ray start --dashboard-host=127.0.0.1") == []


def test_dashboard_only_on_loopback_and_no_public_ports(cfg: dict[str, Any], text: str) -> None:
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in " ".join(all_commands(cfg))
    for perm in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        cidrs = {r.get("CidrIp") for r in perm.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in perm.get("Ipv6Ranges", [])
        }
        if cidrs & PUBLIC_CIDRS:
            assert (perm.get("FromPort"), perm.get("ToPort")) == (22, 22), f"public ingress {perm}"


def test_token_auth_on_every_node(cfg: dict[str, Any], text: str) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert "~/.ray/auth_token" in cfg["cluster_synced_files"]
    assert "RAY_AUTH_MODE=disabled" not in text


def test_every_raylet_starts_with_the_allocator_settings(cfg: dict[str, Any]) -> None:
    """Ray workers inherit their raylet's environment: the allocator settings that keep a streaming job's
    memory flat (benchmarks/scale.py ALLOCATOR_ENV) must be exported before each ``ray start``."""
    wanted = ("MALLOC_MMAP_THRESHOLD_=1048576", "ARROW_DEFAULT_MEMORY_POOL=system")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cfg[key] if "ray start" in c]
        before = start[: start.index("ray start")]
        assert all(w in before for w in wanted), f"{key}: {start!r} does not set {wanted}"


# ----------------------------------------------------------------------------------------- versions
def test_installs_exactly_the_constrained_versions(cfg: dict[str, Any]) -> None:
    commands = all_commands(cfg)
    assert version_problems(commands, constraint_pins()) == []
    pins = explicit_pins(commands)
    assert set(pins) >= PINNED_PACKAGES, f"cluster.yaml must pin {sorted(PINNED_PACKAGES - set(pins))}"
    assert pins["ray"].extras >= RAY_EXTRAS


def _pyproject_requirements() -> tuple[list[Requirement], list[Requirement]]:
    """``(project dependencies, requirements of the extras in JOB_EXTRAS)`` from pyproject.toml."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [Requirement(r) for e in JOB_EXTRAS for r in project["optional-dependencies"][e]]
    return [Requirement(r) for r in project["dependencies"]], extras


def missing_installs(commands: list[str]) -> list[str]:
    """What the jobs need (pyproject's dependencies with their extras, plus ``JOB_EXTRAS``) that the pip
    installs in ``commands`` leave out. ``-e <repo>`` brings the plain dependencies but not the extras of
    the package, nor of a dependency pinned by name with fewer extras (ray[serve])."""
    deps, extras = _pyproject_requirements()
    pins = explicit_pins(commands)
    editable = any(
        opts.get("-e") or opts.get("--editable")
        for cmd in commands
        for opts, _ in (parse_pip_args(a) for a in pip_installs(cmd))
    )
    missing = []
    for req in [*deps, *extras]:
        name = canonicalize_name(req.name)
        pinned = pins.get(name)
        if pinned is not None:
            if not req.extras <= pinned.extras:
                missing.append(f"{req.name}[{','.join(sorted(req.extras - pinned.extras))}]")
        elif req in extras or req.extras or not editable:
            missing.append(req.name)
    return missing


def test_installs_what_the_jobs_need(cfg: dict[str, Any]) -> None:
    assert missing_installs(all_commands(cfg)) == []


def test_missing_installs_detects_a_dropped_package(cfg: dict[str, Any]) -> None:
    commands = all_commands(cfg)
    pins = constraint_pins()
    no_serve = [c.replace("tune,serve]", "tune]") for c in commands]
    assert "ray[serve]" in missing_installs(no_serve)
    no_mlflow = [c.replace(f"mlflow-skinny=={pins['mlflow-skinny']}", "") for c in commands]
    assert "mlflow-skinny" in missing_installs(no_mlflow)


def test_version_check_detects_drift(cfg: dict[str, Any]) -> None:
    """The check above can fail: a bumped pin, an unconstrained install, an unpinned package."""
    commands = all_commands(cfg)
    pins = constraint_pins()
    drifted = [c.replace(f"torch=={pins['torch']}", "torch==2.13.0") for c in commands]
    assert any("torch==2.13.0" in p for p in version_problems(drifted, pins))
    assert version_problems(["pip install open_clip_torch==3.3.0"], pins)
    assert version_problems(["pip install -c constraints.txt leftpad"], pins)


def test_installs_the_package_from_the_mounted_repo(cfg: dict[str, Any]) -> None:
    roots = {
        str(Path(r).parent) for r, local in cfg["file_mounts"].items() if local.endswith("pyproject.toml")
    }
    installed = set()
    for cmd in all_commands(cfg):
        for args in pip_installs(cmd):
            opts, positional = parse_pip_args(args)
            installed |= {
                p
                for p in positional + opts.get("-e", []) + opts.get("--editable", [])
                if p.startswith(("~", "/"))
            }
    assert installed & roots, f"no pip install of the mounted repository {roots}: {installed}"


def test_gpu_driver_check_rejects_pre_r580_drivers(cfg: dict[str, Any], tmp_path: Path) -> None:
    """Run the setup command with a fake PCI tree and a fake nvidia-smi: R570 fails, R580 passes, a CPU node
    (no NVIDIA vendor id) passes without nvidia-smi."""
    (check,) = [c for c in cfg["setup_commands"] if "nvidia-smi" in c and "580" in c]
    sysfs = "/sys/bus/pci/devices/*/vendor"
    assert sysfs in check
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dev = tmp_path / "pci" / "0000:00:1e.0"
    dev.mkdir(parents=True)
    cmd = check.replace(sysfs, str(tmp_path / "pci" / "*" / "vendor"))

    def run(vendor: str, driver: str | None) -> int:
        (dev / "vendor").write_text(vendor + "\n")
        smi = bin_dir / "nvidia-smi"
        smi.unlink(missing_ok=True)
        if driver is not None:
            smi.write_text(f"#!/bin/sh\necho {driver}\n")
            smi.chmod(0o755)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
        return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, timeout=30).returncode

    assert run("0x10de", "570.172.08") != 0
    assert run("0x10de", None) != 0
    assert run("0x10de", "580.65.06") == 0
    assert run("0x8086", None) == 0
