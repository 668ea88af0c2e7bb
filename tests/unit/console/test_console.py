"""The console: product lines, one-line warnings, no ANSI off a terminal, quiet libraries, verbose mode."""

from __future__ import annotations

import io
import logging
import warnings

import pytest

from vidret.console import logs as console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging():
    names = ["vidret", *console.NOISY_LOGGERS]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    with warnings.catch_warnings():
        yield
    for n, (level, handlers) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.handlers[:] = handlers


def test_product_lines_plain_and_errors_on_one_line(restore_logging, monkeypatch) -> None:
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    stream = io.StringIO()
    log = console.setup_console(stream=stream)
    log.info("[train] step 1/2")
    logging.getLogger("vidret.train").error("bad\nthing   happened")
    logging.getLogger("vidret.train").debug("hidden")
    assert stream.getvalue().splitlines() == ["[train] step 1/2", "vidret: error: bad thing happened"]
    assert "\x1b[" not in stream.getvalue()  # not a terminal: no ANSI codes


def test_colour_only_on_a_terminal(restore_logging, monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    tty = _Tty()
    console.setup_console(stream=tty)
    logging.getLogger("vidret").warning("careful")
    assert tty.getvalue().startswith("\x1b[33mvidret: warning: careful")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not console.use_color(tty)


def test_library_loggers_quiet_by_default_and_loud_when_verbose(restore_logging, monkeypatch) -> None:
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    console.setup_console(stream=io.StringIO())
    assert logging.getLogger("ray.data").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("ray.train").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("filelock").getEffectiveLevel() >= logging.WARNING
    with pytest.warns(UserWarning, match="still shown"):  # an unknown warning still shows
        warnings.warn("still shown", UserWarning, stacklevel=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        console.quiet_warnings()
        warnings.warn("TypedStorage is deprecated. It will be removed ...", UserWarning, stacklevel=1)
    assert seen == []
    monkeypatch.setenv(console.VERBOSE_ENV, "debug")
    assert console.verbose_requested()
    stream = io.StringIO()
    console.setup_console(stream=stream)
    logging.getLogger("vidret.data").debug("now visible")
    assert "[vidret.data] now visible" in stream.getvalue()


def test_quiet_environment_never_overrides_the_user() -> None:
    env = {"RAY_DATA_LOG_LEVEL": "DEBUG"}
    added = console.quiet_environment(env)
    assert env["RAY_DATA_LOG_LEVEL"] == "DEBUG"
    assert "RAY_DATA_LOG_LEVEL" not in added
    assert "worker processes have been started" in env["RAY_DEDUP_LOGS_SKIP_REGEX"]


def test_worker_runtime_env_carries_the_quiet_settings_to_cluster_workers(monkeypatch) -> None:
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    env = console.worker_runtime_env(base={"env_vars": {"RAY_DATA_LOG_LEVEL": "INFO"}, "pip": ["x"]})
    assert env["worker_process_setup_hook"] == "vidret.console.logs.quiet_worker"
    assert env["env_vars"]["RAY_DATA_LOG_LEVEL"] == "INFO"  # the caller's value wins
    assert env["env_vars"]["RAY_DEDUP_LOGS_SKIP_REGEX"]
    assert env["pip"] == ["x"]
    loud = console.worker_runtime_env(verbose=True)
    assert "worker_process_setup_hook" not in loud
    assert loud["env_vars"] == {console.VERBOSE_ENV: "debug"}
    assert console.ray_init_kwargs()["logging_level"] == logging.WARNING
    assert console.train_log_level() == "WARNING"
    assert console.train_log_level(verbose=True) == "INFO"


def test_quiet_worker_silences_ffmpeg(restore_logging, monkeypatch) -> None:
    import av.logging

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    console.quiet_worker()
    assert logging.getLogger("ray.data").level == logging.WARNING
    assert av.logging.get_level() is None  # nothing forwarded to Python logging ...
    av.logging.set_libav_level(av.logging.INFO)  # (restore FFmpeg's default for other tests)


def test_quiet_data_context_sets_ray_datas_knobs() -> None:
    class Ctx:
        print_on_execution_start = True
        enable_progress_bars = True
        enable_operator_progress_bars = True
        verbose_stats_logs = True

    ctx = Ctx()
    console.quiet_data_context(ctx)
    assert not (ctx.print_on_execution_start or ctx.enable_progress_bars or ctx.verbose_stats_logs)
    assert not ctx.enable_operator_progress_bars


_RAYLET_SCRIPT = """
import contextlib, io, json, sys
from vidret.console.logs import quiet_environment
quiet_environment()
import ray._private.worker as w
out = io.StringIO()
with contextlib.redirect_stdout(out):
    for line in ("8 PYTHON worker processes have been started on node: abc with address: 127.0.0.1", "kept"):
        w.print_to_stdstream({"lines": [line], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    for leftover in w.stdout_deduplicator.flush():
        w.print_worker_logs(leftover, sys.stdout)
sys.__stdout__.write(json.dumps(out.getvalue()))
"""


def test_the_raylet_worker_count_warning_never_reaches_stdout() -> None:
    """Ray's driver prints raylet messages on stdout (its error-listener thread, whatever log_to_driver says);
    the quiet environment, set before Ray is imported, drops this one there."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    platform = Path(__file__).resolve().parents[3] / "platform"
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS_SKIP_REGEX"}
    proc = subprocess.run(
        [sys.executable, "-c", _RAYLET_SCRIPT],
        env={**env, "PYTHONPATH": str(platform)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = json.loads(proc.stdout)
    assert "worker processes have been started" not in printed
    assert "kept" in printed
