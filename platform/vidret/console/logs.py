"""vidret's console: its own short lines on stderr, and libraries quieted at their source.

By default the console shows vidret's product lines only (``vidret.*`` loggers: progress, verdicts, paths; a
warning or error on one line). The chatter of Ray, Ray Data, Ray Train, Ray Tune, torch and FFmpeg is
silenced where it is produced, in this process and in every Ray worker (local or on a cluster):

* logger levels (:data:`NOISY_LOGGERS`), set here and by :func:`quiet_worker`, the runtime environment's
  ``worker_process_setup_hook`` (:func:`worker_runtime_env`);
* Ray's own environment knobs (:data:`QUIET_ENV`), set before ``ray`` is imported (they are read at import)
  and passed to the workers through the runtime environment's ``env_vars``;
* Ray Data's execution banners and progress bars (:func:`quiet_data_context`), Ray Train's internal log
  level (:func:`train_log_level`, for ``ray.train.RunConfig(logging_config=...)``);
* FFmpeg's log level in decode processes (:func:`quiet_ffmpeg`) and filters for known noisy warnings.

Warnings and errors of the libraries still show. ``--verbose`` (or ``VIDRET_LOG=debug``) restores everything:
none of the above is applied and vidret logs at DEBUG. ANSI colours are used only when stderr is a terminal
(and ``NO_COLOR`` is unset). This module never imports ``ray``: the Ray objects it configures are passed in.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

LOGGER_NAME = "vidret"
VERBOSE_ENV = "VIDRET_LOG"  # "debug" (or "verbose") restores every library's output

# Loggers quieted to the given level unless verbose. Their warnings (or errors) still show.
NOISY_LOGGERS: dict[str, int] = {
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,
    # "Token authentication is enabled for this Ray cluster": a notice on every local start (auth stays on)
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    # "Progress bars disabled. To enable, set ...": vidret prints its own progress lines instead.
    "ray.data._internal.progress": logging.ERROR,
    "ray.train": logging.WARNING,
    "ray.tune": logging.WARNING,
    "ray.serve": logging.WARNING,
    "ray.air": logging.WARNING,
    # Asks the state API (served by the dashboard, which a local instance does not start) every second.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "torch": logging.WARNING,
    "torch.distributed": logging.WARNING,
    "torch.nn.parallel.distributed": logging.WARNING,
    "filelock": logging.WARNING,
    "urllib3": logging.WARNING,
    "fsspec": logging.WARNING,
    "s3fs": logging.WARNING,
    "botocore": logging.WARNING,
    "aiobotocore": logging.WARNING,
    "asyncio": logging.WARNING,
    "werkzeug": logging.WARNING,
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,
    "libav": logging.ERROR,
}

# Loggers Ray names after their file (``logging.getLogger(__file__)``), so neither the ``ray.train`` level
# nor Ray Train's LoggingConfig reaches them; paths relative to the ``ray`` package folder. context.py logs
# "Reporting training result N: TrainingReport(...)" (up to 600 characters) for every report.
RAY_FILE_LOGGERS: dict[str, int] = {
    os.path.join("train", "v2", "_internal", "execution", "context.py"): logging.WARNING,
}

# Lines the driver's printer drops (Ray reads RAY_DEDUP_LOGS_SKIP_REGEX at import), whatever process they
# came from:
# * the raylet's "N PYTHON worker processes have been started on node ..." goes to *stdout* (it would corrupt
#   JSON output);
# * Ray's core worker logs at error level, for every restartable actor whose constructor arguments live in
#   the object store (every Ray Data actor pool; Ray Train's own actors), an advice that a restart *could*
#   fail: nothing has failed. The driver's own core worker writes it to fd 2 directly: ``native.py`` drops
#   these lines there (in the ``vidret`` command and the job entrypoints).
RAY_DRIVER_SKIP = (
    "worker processes have been started on node",
    "has constructor arguments in the object store and max_restarts > 0",
)

QUIET_ENV: dict[str, str] = {
    "RAY_DATA_LOG_LEVEL": "WARNING",  # Ray Data's "Starting execution / Execution plan / finished" lines
    "RAY_DEDUP_LOGS_SKIP_REGEX": "|".join(RAY_DRIVER_SKIP),  # plain text: no regex metacharacters
    # vidret's lines from Ray workers (training progress on rank 0) without "(RayTrainWorker pid=..)"
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
}

# (action, message regex, category name): warnings that say nothing actionable to a vidret user, raised
# inside the libraries. Warnings our own code caused (Ray Data's deprecated ``concurrency`` argument, torch's
# read-only NumPy arrays) are fixed where they were raised, not filtered: a test catches their return.
WARNING_FILTERS: tuple[tuple[str, str, str], ...] = (
    ("ignore", r".*exclude_resources.*", "Warning"),
    ("ignore", r".*TypedStorage is deprecated.*", "UserWarning"),
    ("ignore", r".*pkg_resources is deprecated.*", "Warning"),
)


def verbose_requested(flag: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """Whether everything should be shown: ``--verbose``/``--debug`` or ``VIDRET_LOG=debug``."""
    value = (os.environ if env is None else env).get(VERBOSE_ENV, "").strip().lower()
    return flag or value in ("debug", "verbose", "all")


def use_color(stream: TextIO | None = None) -> bool:
    """ANSI colours only on a terminal, and never with ``NO_COLOR`` set or ``TERM=dumb``."""
    stream = sys.stderr if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


_COLORS = {logging.WARNING: "\x1b[33m", logging.ERROR: "\x1b[31m", logging.CRITICAL: "\x1b[31m"}
_RESET = "\x1b[0m"


def one_line(text: str) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(text).split())


class ConsoleFormatter(logging.Formatter):
    """Product lines as they are; warnings and errors as ``vidret: warning: ...`` on one line."""

    def __init__(self, color: bool = False, verbose: bool = False) -> None:
        super().__init__()
        self.color, self.verbose = color, verbose

    def format(self, record: logging.LogRecord) -> str:
        """The message; a level prefix from WARNING up; the logger name when verbose."""
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"vidret: {record.levelname.lower()}: {one_line(message)}"
        elif self.verbose and record.name != LOGGER_NAME:
            message = f"[{record.name}] {message}"
        if self.verbose and record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.color and record.levelno in _COLORS:
            message = f"{_COLORS[record.levelno]}{message}{_RESET}"
        return message


def setup_console(verbose: bool = False, stream: TextIO | None = None) -> logging.Logger:
    """Configure the ``vidret`` logger (stderr, one handler) and, unless verbose, quiet the libraries.

    Call first thing in a command, before ``ray`` is imported (see :func:`quiet_environment`). Returns the
    ``vidret`` logger. Idempotent.
    """
    verbose = verbose_requested(verbose)
    stream = sys.stderr if stream is None else stream
    log = logging.getLogger(LOGGER_NAME)
    for handler in list(log.handlers):
        if getattr(handler, "_vidret_console", False):
            log.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter(color=use_color(stream), verbose=verbose))
    handler._vidret_console = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not use_color(stream):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray colours forwarded worker lines' prefixes
    if verbose:
        os.environ[VERBOSE_ENV] = "debug"  # so Ray workers started from here are verbose too
        logging.basicConfig(level=logging.DEBUG, stream=stream)
        return log
    quiet_environment()
    quiet_loggers()
    quiet_warnings()
    return log


def quiet_environment(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`QUIET_ENV` where the user has not set the variable; returns what was set.

    Ray reads these at import, so this must run before ``import ray`` in the driver (the CLI's commands import
    it lazily). Workers get them through :func:`worker_runtime_env`.
    """
    env = os.environ if env is None else env
    added = {k: v for k, v in QUIET_ENV.items() if k not in env}
    env.update(added)
    return added


def ray_file_loggers() -> dict[str, int]:
    """:data:`RAY_FILE_LOGGERS` by their full names (where ``ray`` is installed; found without importing
    it)."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = next(iter(spec.submodule_search_locations))
    return {os.path.join(root, rel): level for rel, level in RAY_FILE_LOGGERS.items()}


def quiet_loggers(levels: Mapping[str, int] | None = None) -> None:
    """Raise the level of each noisy library logger (never lowers one the user raised further)."""
    for name, level in ({**NOISY_LOGGERS, **ray_file_loggers()} if levels is None else levels).items():
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)


def quiet_warnings() -> None:
    """Ignore the known warnings of :data:`WARNING_FILTERS` in this process."""
    import builtins

    for action, message, category in WARNING_FILTERS:
        cls = getattr(builtins, category, Warning)
        warnings.filterwarnings(action, message=message, category=cls)  # type: ignore[arg-type]


def quiet_ffmpeg() -> None:
    """FFmpeg (PyAV's and decord's builds) prints only fatal errors: a broken video is reported by vidret's
    own decode errors (reason per video), not by lines like ``[vp9 @ 0x..] Invalid sync code``."""
    try:
        import av.logging
    except ImportError:  # PyAV is a dependency; an environment without it has nothing to quiet
        pass
    else:
        av.logging.set_level(None)  # PyAV forwards nothing to Python logging ...
        av.logging.set_libav_level(av.logging.FATAL)  # ... and FFmpeg prints only fatal errors
    try:
        import decord.logging
    except ImportError:  # decord is optional on some platforms
        return
    decord.logging.set_level(decord.logging.QUIET)


def quiet_worker() -> None:
    """``worker_process_setup_hook`` of vidret's Ray jobs: the quiet defaults in every worker process, on a
    cluster too. Does nothing when the driver was verbose (``VIDRET_LOG=debug`` travels in ``env_vars``)."""
    if verbose_requested():
        return
    quiet_loggers()
    quiet_warnings()
    quiet_ffmpeg()


WORKER_SETUP_HOOK = f"{__name__}.quiet_worker"


def worker_runtime_env(verbose: bool = False, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``runtime_env`` of ``ray.init`` (or of a submitted job) that makes workers as quiet as the driver.

    ``base`` is merged: its ``env_vars`` win over :data:`QUIET_ENV`; its setup hook is kept when verbose.
    """
    out: dict[str, Any] = dict(base or {})
    env_vars = dict(out.get("env_vars") or {})
    if verbose_requested(verbose):
        env_vars.setdefault(VERBOSE_ENV, "debug")
    else:
        env_vars = {**QUIET_ENV, **env_vars}
        out["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    out["env_vars"] = env_vars
    return out


def ray_init_kwargs(verbose: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``ray.init``: the driver's Ray logger level and the quiet runtime environment."""
    quiet = not verbose_requested(verbose)
    return {
        "logging_level": logging.WARNING if quiet else logging.INFO,
        "runtime_env": worker_runtime_env(verbose),
    }


def quiet_data_context(ctx: Any, verbose: bool = False) -> None:
    """Ray Data's ``DataContext``: no execution banners; progress bars only when verbose on a terminal.

    vidret's own progress lines (:mod:`vidret.console.progress`) report the long steps, not per-operator
    bars.
    """
    quiet = not verbose_requested(verbose)
    ctx.print_on_execution_start = not quiet
    ctx.enable_progress_bars = not quiet and use_color()
    ctx.enable_operator_progress_bars = ctx.enable_progress_bars
    if hasattr(ctx, "verbose_stats_logs"):
        ctx.verbose_stats_logs = False


def train_log_level(verbose: bool = False) -> str:
    """Level for ``ray.train.LoggingConfig(log_level=...)`` in ``ray.train.RunConfig(logging_config=...)``:
    WARNING hides Ray Train's ``Reporting training result``, ``Checkpoint successfully created`` and
    worker-group set-up lines (Ray Train configures its loggers itself, after the setup hook has run)."""
    return "INFO" if verbose_requested(verbose) else "WARNING"


def tune_verbosity(verbose: bool = False) -> int:
    """``verbose`` of ``ray.tune.RunConfig``: 0 (silent; vidret prints the trials' table) unless verbose."""
    return 1 if verbose_requested(verbose) else 0
