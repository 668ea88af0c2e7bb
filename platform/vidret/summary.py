"""The end of a run: a short console ending, and the long JSON in ``summary.json`` next to the outputs.

:func:`finish_run` writes the full summary to ``<out>/summary.json`` and prints, on stdout, the metrics table,
the plain-sentence verdicts and the paths (report, metrics, summary, TensorBoard) — a screenful instead of a
100-line JSON object that scrolls the table away. ``--json`` callers print the summary itself instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from vidret.storage import Storage, join

SUMMARY_FILE = "summary.json"


def write_summary(summary: Mapping[str, Any], out_uri: str, storage: Storage) -> str:
    """Write ``summary`` as indented JSON to ``<out_uri>/summary.json``; returns its URI."""
    uri = join(out_uri, SUMMARY_FILE)
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
) -> str:
    """Write ``summary.json`` and print the short ending; returns the summary's URI.

    ``paths`` are shown in order (e.g. ``{"report": ..., "metrics": ...}``); ``summary`` and, when given,
    ``tensorboard`` (the command from :func:`vidret.tracking.tensorboard_hint`) are added after them.
    """
    uri = write_summary(summary, out_uri, storage)
    shown = {**(paths or {}), "summary": uri, "tensorboard": tensorboard}
    wall = summary.get("wall_s")
    text = format_ending(table, verdicts, shown, float(wall) if isinstance(wall, (int, float)) else None)
    print(text, file=sys.stdout if stream is None else stream, flush=True)
    return uri
