"""Fail fast: validate a command's configuration and inputs before Ray starts.

``preflight(command, cfg, ...)`` checks, in about a second and without importing Ray or torch: the shipped
``YOUR-BUCKET`` placeholders, that every ``s3://`` URI the command touches has credentials to use, the
required keys, that the manifests exist and have rows, that requested splits are among the manifest's, and
that the checkpoint a command reads is there. Every problem is one line naming the key and what was
expected; all of them are raised together as one :class:`PreflightError` (a ``ValueError``, so the CLI
prints it as ``vidret <command>: error: ...``).

Manifests live at ``<data.manifest>/<split>.parquet`` and exported weights at ``<uri>/meta.json``
(``docs/architecture.md``); a stage's weights at ``<run.out>/checkpoints/<stage>``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vidret.config import Config
from vidret.storage import Storage, StorageError, is_remote, join

PLACEHOLDER = "YOUR-BUCKET"
META_FILE = "meta.json"  # vidret.train.checkpoint.META_FILE (a test keeps them equal)
INDEX_FILE = "index.json"  # vidret.search.layout.INDEX_FILE (a test keeps them equal)
FLAG_INPUTS = ("manifest", "anno", "videos", "checkpoint", "index", "out")  # flags that name a URI
STAGES = ("discrimination", "generation")
COMMANDS = (
    "synth",
    "manifest",
    "check",
    "prepare",
    "train",
    "evaluate",
    "tune",
    "quickstart",
    "index",
    "search",
    "serve",
)

# Where credentials for s3:// can come from without a request (boto's chain, instance metadata last).
_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_METADATA_HOST = ("169.254.169.254", 80)  # EC2/EKS instance roles (the usual case on a Ray cluster)


class PreflightError(ValueError):
    """One or more configuration or input mistakes found before Ray started; ``problems`` lists them."""

    def __init__(self, command: str, problems: Sequence[str]) -> None:
        self.command, self.problems = command, list(problems)
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


def placeholder_problems(cfg: Config) -> list[str]:
    """The keys still holding the ``s3://YOUR-BUCKET`` placeholder of the shipped real-dataset configs."""
    keys = {
        "run.out": cfg.run.out,
        "synth.out": cfg.synth.out,
        "data.manifest": cfg.data.manifest,
        "data.prepare_out": cfg.data.prepare_out,
        "train.storage_path": cfg.train.storage_path,
        "train.init_checkpoint": cfg.train.init_checkpoint,
        "model.weights": cfg.model.weights,
        "eval.checkpoint": cfg.eval.checkpoint,
        "tracking.mlflow_uri": cfg.tracking.mlflow_uri,
    }
    return [
        f"{key} is still the placeholder {value!r}: set it to your bucket (e.g. {key}=s3://my-bucket/...)"
        for key, value in keys.items()
        if value and PLACEHOLDER in value
    ]


def _instance_role_reachable(timeout_s: float = 0.3) -> bool:
    try:
        with socket.create_connection(_METADATA_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def has_s3_credentials(cfg: Config, env: Mapping[str, str] | None = None) -> bool:
    """Whether some credential source exists for s3:// (keys are checked by the first request, not here)."""
    env = os.environ if env is None else env
    st = cfg.storage
    if st.anonymous or (st.access_key_id and st.secret_access_key):
        return True
    if any(env.get(name) for name in _CREDENTIAL_ENV):
        return True
    files = [
        env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        env.get("AWS_CONFIG_FILE", "~/.aws/config"),
    ]
    for name in files:
        path = Path(name).expanduser()
        if path.is_file() and any(
            word in path.read_text(errors="replace")
            for word in ("aws_access_key_id", "credential_process", "sso_", "role_arn")
        ):
            return True
    return env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true" and _instance_role_reachable()


def credential_problems(
    cfg: Config, uris: Mapping[str, str | None], env: Mapping[str, str] | None = None
) -> list[str]:
    """One line when s3:// URIs are used and no credential source exists (env, config, files, role)."""
    remote = [f"{key}={uri}" for key, uri in uris.items() if uri and uri.startswith("s3://")]
    if not remote or has_s3_credentials(cfg, env):
        return []
    endpoint = f" at {cfg.storage.endpoint_url}" if cfg.storage.endpoint_url else ""
    return [
        f"{remote[0]} needs S3 credentials{endpoint} and none were found: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), storage.access_key_id/secret_access_key, or "
        "storage.anonymous=true for a public bucket"
    ]


def manifest_splits(manifest: str, storage: Storage) -> list[str]:
    """The split names present under a manifest folder (``<split>.parquet`` files)."""
    names = [uri.rsplit("/", 1)[-1] for uri in storage.list(manifest)]
    return sorted(n[: -len(".parquet")] for n in names if n.endswith(".parquet"))


def _rows(uri: str, storage: Storage) -> int:
    import pyarrow.parquet as pq

    with storage.open_read(uri) as f:
        return int(pq.read_metadata(f).num_rows)


def manifest_problems(cfg: Config, splits: Iterable[str], storage: Storage, key: str) -> list[str]:
    """``data.manifest`` set, and each of ``splits`` (named by config key ``key``) present with rows."""
    manifest = cfg.data.manifest
    if not manifest:
        return ["data.manifest is empty: set it to the folder or s3:// prefix holding the manifests"]
    present = manifest_splits(manifest, storage)
    if not present:
        return [
            f"data.manifest: no manifests at {manifest} (expected <split>.parquet files, written by "
            "`vidret manifest`, `vidret synth` or `vidret prepare`)"
        ]
    out = []
    for split in dict.fromkeys(splits):
        if split not in present:
            out.append(f"{key}: unknown split {split!r}: {manifest} has {', '.join(present)}")
        elif _rows(join(manifest, f"{split}.parquet"), storage) == 0:
            out.append(f"{key}: the manifest {join(manifest, f'{split}.parquet')} has no rows")
    return out


def checkpoint_problems(key: str, uri: str | None, cfg: Config, storage: Storage) -> list[str]:
    """Exported weights at ``uri`` (``key`` names its setting); ``None``: the run's latest stage."""
    if uri:
        if storage.exists(join(uri, META_FILE)):
            return []
        return [f"{key}: no exported weights at {uri} (expected {join(uri, META_FILE)})"]
    if any(storage.exists(join(cfg.run.out, "checkpoints", s, META_FILE)) for s in STAGES):
        return []
    return [f"no exported weights under {join(cfg.run.out, 'checkpoints')}: train first or pass --checkpoint"]


def local_path_problems(paths: Mapping[str, str | None]) -> list[str]:
    """Local inputs that do not exist (remote ones are left to their first read)."""
    return [
        f"{key}: {value} does not exist"
        for key, value in paths.items()
        if value and not is_remote(value) and not os.path.exists(value.removeprefix("file://"))
    ]


def _uris(cfg: Config, command: str, extra: Mapping[str, str | None]) -> dict[str, str | None]:
    """The URIs ``command`` reads or writes, by config key (or flag)."""
    by_command: dict[str, dict[str, str | None]] = {
        "synth": {"synth.out": cfg.synth.out},
        "manifest": {"data.manifest": cfg.data.manifest},
        "check": {},
        "prepare": {"data.manifest": cfg.data.manifest, "data.prepare_out": cfg.data.prepare_out},
        "quickstart": {"run.out": cfg.run.out},
    }
    if command in ("index", "search", "serve"):
        return {"model.weights": cfg.model.weights, **extra}
    common = {
        "data.manifest": cfg.data.manifest,
        "run.out": cfg.run.out,
        "model.weights": cfg.model.weights,
        "train.storage_path": cfg.train.storage_path,
        "train.init_checkpoint": cfg.train.init_checkpoint,
        "eval.checkpoint": cfg.eval.checkpoint,
        "tracking.mlflow_uri": cfg.tracking.mlflow_uri,
    }
    return {**by_command.get(command, common), **extra}


def tracking_problems(cfg: Config) -> list[str]:
    """``tracking.mlflow_uri``: a store or server MLflow can use, and MLflow installed to use it."""
    uri = cfg.tracking.mlflow_uri
    if not uri:
        return []
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    known = ("file", "http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql")
    if "://" in uri and scheme not in known:
        return [
            f"tracking.mlflow_uri: {uri!r} is not an MLflow store: expected a local path or file: URI, "
            "or a server (http://host:5000)"
        ]
    if importlib.util.find_spec("mlflow") is None:
        return [f"tracking.mlflow_uri={uri} needs MLflow: pip install 'vidret[tracking]' (or set it to '')"]
    return []


def _search_problems(
    command: str, cfg: Config, storage: Storage, inputs: Mapping[str, str | None]
) -> list[str]:
    """``index``: the weights and the manifest exist; ``search``, ``serve``: the index is there (index.json;
    its parts are verified when it is opened)."""
    if command == "index":
        p = checkpoint_problems("--checkpoint", inputs.get("checkpoint"), cfg, storage)
        manifest = inputs.get("manifest")
        if not manifest or not storage.exists(manifest):
            p.append(f"--manifest: no manifest at {manifest}")
        return p
    index = inputs.get("index")
    if not index or not storage.exists(join(index, INDEX_FILE)):
        return [f"--index: no search index at {index} (expected {INDEX_FILE}; build one with `vidret index`)"]
    if inputs.get("checkpoint"):
        return checkpoint_problems("--checkpoint", inputs.get("checkpoint"), cfg, storage)
    return []


def _input_problems(
    command: str, cfg: Config, storage: Storage, inputs: Mapping[str, str | None]
) -> list[str]:
    """The checks of one command after placeholders and credentials passed."""
    p: list[str] = local_path_problems({"model.weights": cfg.model.weights}) + tracking_problems(cfg)
    if command in ("index", "search", "serve"):
        p += _search_problems(command, cfg, storage, inputs)
    elif command == "train":
        p += manifest_problems(cfg, [cfg.data.train_split], storage, "data.train_split")
        if cfg.train.stage == "generation":
            init = cfg.train.init_checkpoint or join(cfg.run.out, "checkpoints", "discrimination")
            p += checkpoint_problems("train.init_checkpoint", init, cfg, storage)
    elif command == "evaluate":
        p += manifest_problems(cfg, cfg.eval.splits, storage, "eval.splits")
        p += checkpoint_problems(
            "--checkpoint", inputs.get("checkpoint") or cfg.eval.checkpoint, cfg, storage
        )
    elif command == "tune":
        p += manifest_problems(cfg, [cfg.data.val_split], storage, "data.val_split")
        p += checkpoint_problems("--checkpoint", inputs.get("checkpoint"), cfg, storage)
    elif command == "prepare":
        splits = [s for s in (inputs.get("splits") or "").split(",") if s]
        p += manifest_problems(cfg, splits, storage, "--split")
        if not cfg.data.prepare_out:
            p.append("data.prepare_out is empty: pass --out or set data.prepare_out")
    elif command == "check":
        manifest = inputs.get("manifest")
        if not manifest or not storage.exists(manifest):
            p.append(f"--manifest: no manifest at {manifest}")
        elif _rows(manifest, storage) == 0:
            p.append(f"--manifest: {manifest} has no rows")
    elif command == "manifest":
        p += local_path_problems({"--anno": inputs.get("anno"), "--videos": inputs.get("videos")})
    return p


def preflight(
    command: str,
    cfg: Config,
    storage: Storage | None = None,
    env: Mapping[str, str] | None = None,
    **inputs: str | None,
) -> None:
    """Validate ``command``'s configuration and inputs; raise :class:`PreflightError` listing every mistake.

    ``inputs`` are the command's flags that are not config keys: ``manifest`` (check, index), ``anno`` and
    ``videos`` (manifest), ``checkpoint`` (evaluate, tune, index, search, serve), ``index`` (search,
    serve), ``out`` (an output URI, for its credentials), ``splits`` (prepare, comma-separated). Nothing
    here imports Ray or torch; storage is touched only once placeholders and credentials are fine.
    """
    if command not in COMMANDS:
        raise ValueError(f"preflight: unknown command {command!r} (one of {', '.join(COMMANDS)})")
    extra = {f"--{k}": v for k, v in inputs.items() if k in FLAG_INPUTS}
    problems = placeholder_problems(cfg) or credential_problems(cfg, _uris(cfg, command, extra), env)
    if not problems:
        storage = storage or Storage(cfg.storage)
        try:
            problems = _input_problems(command, cfg, storage, inputs)
        except ValueError as err:  # a malformed URI (parse_uri names it)
            problems = [" ".join(str(err).split())]
        except StorageError as err:  # unreachable endpoint, denied bucket: one line, before Ray
            problems = [f"{command}: cannot read the inputs: {' '.join(str(err).split())}"]
    if problems:
        raise PreflightError(command, problems)
