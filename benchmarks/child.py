"""Run one measurement in a fresh spawned process (its own peak RSS, no state from earlier measurements)."""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Callable
from typing import Any


def run_in_child(target: Callable[..., None], args: tuple[Any, ...], what: str) -> Any:
    """Call ``target(*args, out)`` in a spawned process and return what it puts on the queue ``out``.

    A child that dies first (an exception, the OOM killer) never puts: that is an error naming ``what``,
    not a wait forever.
    """
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    while True:
        try:
            result = out.get(timeout=5)
            break
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{what}: the measuring process exited ({proc.exitcode}) first") from None
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{what}: the measuring process exited with {proc.exitcode}")
    return result
