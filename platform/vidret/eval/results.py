"""What an evaluation writes and prints: a reproducible ``metrics.json``, ``timings.json``, the console tables
with intervals and one sentence per split on re-ranking's effect.

Reproducibility: ``metrics.json`` holds only what the weights, data and config determine. Wall times go to
``timings.json`` next to it; paths under ``run.out`` are written relative to it (so two runs of the same
command into different folders write the same bytes); keys are sorted. Values are not rounded: on one
machine they repeat bit for bit; across machines the last digits can differ (CPU kernels).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from vidret.eval.metrics import metrics_table
from vidret.eval.uncertainty import query_layout, rerank_sentence
from vidret.features.scoring import EvalResult
from vidret.features.types import FeatureSet
from vidret.storage import Storage, join

VOLATILE = (
    "wall_s",
    "out",
    "report",
    "table",
    "sentences",
)  # not in metrics.json: timings.json / the returned summary


def _portable(x: Any, root: str) -> Any:
    if isinstance(x, Mapping):
        return {str(_portable(k, root)): _portable(v, root) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_portable(v, root) for v in x]
    if isinstance(x, str) and root and x.startswith(root.rstrip("/") + "/"):
        return x[len(root.rstrip("/")) + 1 :]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def metrics_document(summary: Mapping[str, Any], run_out: str) -> dict[str, Any]:
    """The metrics.json content: ``summary`` without volatile keys, paths relative to ``run_out``."""
    doc = {k: v for k, v in summary.items() if k not in VOLATILE}
    doc["paths_relative_to"] = "run.out"
    portable: dict[str, Any] = _portable(doc, run_out)  # a Mapping maps to a dict with str keys
    return portable


def ranks_document(inputs: Mapping[str, tuple[FeatureSet, EvalResult]], grouping: str) -> dict[str, Any]:
    """Per split: each direction's query keys, resampling units and 0-based ranks per variant (what
    ``vidret compare`` pairs runs by). A t2v query is keyed ``video_id|caption``, a v2t query by its
    video id."""
    out: dict[str, Any] = {}
    for split, (fs, res) in inputs.items():
        layout = query_layout(fs, grouping)
        vids = fs.video_ids or [str(v) for v in range(len(fs.video))]
        t2v = fs.text_to_video_T.tolist()
        keys = {
            "t2v": [f"{vids[t2v[q]]}|{fs.captions[q] if fs.captions else q}" for q in layout["t2v"]["rows"]],
            "v2t": [vids[int(v)] for v in layout["v2t"]["rows"]],
        }
        out[split] = {
            d: {
                "unit": layout[d]["unit"],
                "queries": keys[d],
                "units": [int(u) for u in layout[d]["units"]],
                "ranks": {v: [int(r) for r in by_dir[d]] for v, by_dir in res.ranks.items()},
            }
            for d in ("t2v", "v2t")
        }
    return out


def write_results(
    storage: Storage,
    out_dir: str,
    summary: Mapping[str, Any],
    run_out: str,
    inputs: Mapping[str, tuple[FeatureSet, EvalResult]] | None = None,
    grouping: str = "correct",
) -> None:
    """``metrics.json`` (see :func:`metrics_document`), ``timings.json`` (wall times) and, with ``inputs``,
    ``ranks.json`` (see :func:`ranks_document`) under ``out_dir``."""
    text = json.dumps(metrics_document(summary, run_out), indent=1, sort_keys=True) + "\n"
    storage.write_text(join(out_dir, "metrics.json"), text)
    if inputs is not None:
        ranks = json.dumps(ranks_document(inputs, grouping), sort_keys=True, separators=(",", ":")) + "\n"
        storage.write_text(join(out_dir, "ranks.json"), ranks)
    timings = {k: summary[k] for k in ("wall_s",) if k in summary}
    storage.write_text(join(out_dir, "timings.json"), json.dumps(timings, indent=1, sort_keys=True) + "\n")


def split_table(
    split: str, metrics: Mapping[str, Any], block: Mapping[str, Any], labels: Mapping[str, str]
) -> str:
    """The console table of a split, each cell ``value ±half-width``, headed by n and chance level."""
    ivs = {labels.get(v, v): by_dir for v, by_dir in block["variants"].items()}
    rows = {labels.get(k, k): v for k, v in metrics.items()}
    facts = "; ".join(
        f"{d} n = {block['n'][d]} ({block['unit'][d]} units), chance R@1 {block['chance'][d]['R1']:.2f}%"
        for d in ("t2v", "v2t")
    )
    level = round(100 * float(block["level"]))
    return (
        f"{split}: {facts}; ± = half the {level}% {block['method']} bootstrap interval "
        f"({block['resamples']} resamples)\n" + metrics_table(rows, ivs)
    )


def sentences(intervals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One sentence per split: re-ranking's paired t2v R@1 change with interval and p-value."""
    return [rerank_sentence(split, block) for split, block in intervals.items()]
