"""Unit tests run ``vidret.cli.main`` and ``setup_console`` in the pytest process: the console changes
process-wide state (the ``vidret`` logger stops propagating, library loggers are raised to WARNING, Ray's
quiet variables go into ``os.environ``, warning filters are added). Restore it after each test, or later
tests that read log records with ``caplog`` (storage retries, decoder fallbacks) would see none."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator

import pytest

from vidret.console import logs


@pytest.fixture(autouse=True)
def restore_console_state() -> Iterator[None]:
    names = ["", "vidret", *logs.NOISY_LOGGERS, *logs.ray_file_loggers()]  # "": the root logger
    loggers = {n: logging.getLogger(n) for n in names}
    saved = {n: (lg.level, list(lg.handlers), lg.propagate) for n, lg in loggers.items()}
    env = dict(os.environ)
    with warnings.catch_warnings():
        yield
    for n, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
    os.environ.clear()
    os.environ.update(env)
