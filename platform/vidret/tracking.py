"""Experiment tracking that works where users train: TensorBoard scalars for local and ``s3://`` runs, MLflow.

:class:`Tracker` writes TensorBoard event files under ``<run.out>/tensorboard/<name>`` for both training
stages (``discrimination``, ``generation``), evaluation (``eval``) and Tune (``tune``). The events are
written locally (tensorboardX) and, when ``run.out`` is ``s3://``, uploaded by :meth:`Tracker.sync` (every
``sync_every_s`` seconds and on close) through :class:`vidret.storage.Storage`, so the README's cluster
recipe gets them too. Write from one process per run: the driver, or Ray Train rank 0.

With ``mlflow_uri`` (``tracking.mlflow_uri``: a local ``file:`` store or a server) the same scalars, the run's
parameters and artifacts (the report) go to MLflow through Ray's MLflow integration (``setup_mlflow``:
rank 0 only inside Ray Train; :func:`mlflow_tune_callbacks` for Tune). MLflow is optional: ``pip install
vidret[tracking]``.

The end of a run (:func:`finish_run`): the full summary goes to ``<out>/summary.json``; the console gets the
metrics table, the plain-sentence verdicts and the paths (report, metrics, summary, TensorBoard) instead of
a 100-line JSON object that scrolls the table away.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from vidret.storage import Storage, is_remote, join
from vidret.storage.scratch import make_scratch_dir, scratch_dir

TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"


def tensorboard_uri(run_out: str, name: str | None = None) -> str:
    """``<run.out>/tensorboard`` (or one run's folder below it)."""
    base = join(run_out, TENSORBOARD_DIR)
    return join(base, name) if name else base


def tensorboard_hint(run_out: str) -> str:
    """The command that shows a run's scalars (remote runs are copied locally first)."""
    uri = tensorboard_uri(run_out)
    if is_remote(uri):
        return f"aws s3 sync {uri} ./tensorboard && tensorboard --logdir ./tensorboard"
    return f"tensorboard --logdir {uri}"


def metric_tag(key: str, prefix: str = "") -> str:
    """The tag of a metric in TensorBoard and MLflow: ``R@1`` -> ``R_at_1`` (neither accepts ``@``)."""
    key = key.replace("@", "_at_")
    return f"{prefix}/{key}" if prefix else key


def flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested ``values`` as ``{"a/b/c": float}`` (booleans and text left out)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flat_scalars(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def absolute_mlflow_uri(uri: str, cwd: str | None = None) -> str:
    """``tracking.mlflow_uri`` with a relative local store made absolute (``file:`` + absolute path): Ray
    workers do not share the driver's working directory. Servers and absolute stores are kept."""
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return uri
    path = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
    if os.path.isabs(path):
        return uri
    return "file:" + os.path.join(cwd or os.getcwd(), path)


def _flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_params(v, f"{key}."))
        else:
            out[key] = str(v)[:500]  # MLflow caps a param value's length
    return out


class Tracker:
    """Scalars of one run to TensorBoard (local or ``s3://`` ``run.out``) and optionally MLflow."""

    def __init__(
        self,
        run_out: str,
        name: str,
        storage: Storage,
        *,
        mlflow_uri: str | None = None,
        experiment: str = "vidret",
        params: Mapping[str, Any] | None = None,
        sync_every_s: float = 60.0,
    ) -> None:
        from tensorboardX import SummaryWriter

        self.uri = tensorboard_uri(run_out, name)
        self.storage, self.sync_every_s = storage, sync_every_s
        self.remote = is_remote(self.uri)
        self._tmp = make_scratch_dir("tb") if self.remote else None
        self.local_dir = self._tmp or self.uri.removeprefix("file://")
        os.makedirs(self.local_dir, exist_ok=True)
        self.writer = SummaryWriter(self.local_dir, flush_secs=10)
        self._last_sync = time.monotonic()
        self.mlflow: Any = None
        if mlflow_uri:
            self.mlflow = _start_mlflow(mlflow_uri, experiment, f"{Path(run_out).name}-{name}", params or {})

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        """Log ``values`` at ``step`` (tags ``<prefix>/<key>`` when a prefix is given)."""
        tagged = {metric_tag(k, prefix): float(v) for k, v in values.items()}
        for tag, value in tagged.items():
            self.writer.add_scalar(tag, value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(tagged, step=step)
        if self.remote and time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def artifact(self, uri: str | Path) -> None:
        """Attach a file (the HTML report, metrics JSON; local or ``s3://``) to the MLflow run; no-op without
        MLflow."""
        if self.mlflow is None:
            return
        uri = str(uri)
        if not is_remote(uri):
            self.mlflow.log_artifact(uri.removeprefix("file://"))
            return
        with scratch_dir("artifact") as tmp:
            local = Path(tmp) / uri.rstrip("/").rsplit("/", 1)[-1]
            local.write_bytes(self.storage.read_bytes(uri))
            self.mlflow.log_artifact(str(local))

    def sync(self) -> list[str]:
        """Flush; for an ``s3://`` run upload the event files (whole: they are small). Returns their URIs."""
        self.writer.flush()
        self._last_sync = time.monotonic()
        if not self.remote:
            return []
        out = []
        for path in sorted(Path(self.local_dir).rglob("*")):
            if path.is_file():
                uri = join(self.uri, path.relative_to(self.local_dir).as_posix())
                self.storage.write_bytes(uri, path.read_bytes())
                out.append(uri)
        return out

    def close(self) -> None:
        """Flush, upload, end the MLflow run and remove the local copy of a remote run."""
        self.writer.close()
        self.sync()
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_once(
    run_out: str,
    name: str,
    storage: Storage,
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    mlflow_uri: str | None = None,
    params: Mapping[str, Any] | None = None,
    artifacts: Sequence[str | None] = (),
) -> str:
    """A one-shot run (an evaluation): the numeric leaves of each ``{prefix: nested metrics}`` at step 0,
    the ``artifacts`` (to MLflow), then closed. Returns the TensorBoard folder."""
    with Tracker(run_out, name, storage, mlflow_uri=mlflow_uri or None, params=params) as tracker:
        for prefix, values in metrics.items():
            tracker.scalars(0, flat_scalars(values), prefix=prefix)
        for uri in artifacts:
            if uri:
                tracker.artifact(uri)
    return tracker.uri


def _start_mlflow(uri: str, experiment: str, run_name: str, params: Mapping[str, Any]) -> Any:
    """An active MLflow run via Ray's ``setup_mlflow`` (a no-op module on Ray Train ranks other than 0)."""
    try:
        from ray.air.integrations.mlflow import setup_mlflow
    except ImportError as err:  # mlflow itself is imported inside setup_mlflow
        raise ValueError(
            f"tracking.mlflow_uri is set but Ray's MLflow integration is missing ({err})"
        ) from err
    if uri.startswith("file:") or "://" not in uri:
        # A local file store is what tracking.mlflow_uri documents for a single machine; MLflow 3 keeps it
        # in maintenance mode and refuses it unless this opt-in is set.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        return setup_mlflow(
            _flat_params(params),
            tracking_uri=uri,
            experiment_name=experiment,
            run_name=run_name,
            create_experiment_if_not_exists=True,
        )
    except RuntimeError as err:  # "mlflow was not found"
        raise ValueError(
            f"tracking.mlflow_uri={uri}: MLflow is not installed (pip install 'vidret[tracking]')"
        ) from err


def mlflow_tune_callbacks(mlflow_uri: str | None, experiment: str = "vidret") -> list[Any]:
    """``ray.tune.RunConfig(callbacks=...)`` entries: Ray's ``MLflowLoggerCallback`` (one MLflow run per
    trial, its config as params and every reported metric) when ``mlflow_uri`` is set, else none."""
    if not mlflow_uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=experiment, save_artifact=False)]


# ------------------------------------------------------------------------------------- end of a run
def write_summary(
    summary: Mapping[str, Any], out_uri: str, storage: Storage, filename: str = SUMMARY_FILE
) -> str:
    """Write ``summary`` as indented JSON to ``<out_uri>/<filename>`` (``summary.json``); returns its URI."""
    uri = join(out_uri, filename)
    storage.write_text(uri, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return uri


def format_ending(
    table: str | None, verdicts: Sequence[str], paths: Mapping[str, str | None], wall_s: float | None = None
) -> str:
    """The table, one verdict per line, then ``name: path`` lines (unset paths left out), then the time."""
    blocks = []
    if table:
        blocks.append(table.rstrip())
    if verdicts:
        blocks.append("\n".join(v.strip() for v in verdicts if v.strip()))
    shown = {k: v for k, v in paths.items() if v}
    if shown:
        width = max(len(k) for k in shown)
        blocks.append("\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in shown.items()))
    if wall_s is not None:
        blocks.append(f"done in {wall_s:.1f} s")
    return "\n\n".join(blocks)


def finish_run(
    summary: Mapping[str, Any],
    out_uri: str,
    storage: Storage,
    *,
    table: str | None = None,
    verdicts: Sequence[str] = (),
    paths: Mapping[str, str | None] | None = None,
    tensorboard: str | None = None,
    stream: TextIO | None = None,
    filename: str = SUMMARY_FILE,
) -> str:
    """Write ``<out_uri>/<filename>`` (``summary.json``) and print the short ending; returns its URI.

    ``paths`` are shown in order (e.g. ``{"report": ..., "metrics": ...}``); ``summary`` and, when given,
    ``tensorboard`` (the command from :func:`vidret.tracking.tensorboard_hint`) are added after them.
    """
    uri = write_summary(summary, out_uri, storage, filename)
    shown = {**(paths or {}), "summary": uri, "tensorboard": tensorboard}
    wall = summary.get("wall_s")
    text = format_ending(table, verdicts, shown, float(wall) if isinstance(wall, (int, float)) else None)
    print(text, file=sys.stdout if stream is None else stream, flush=True)
    return uri
