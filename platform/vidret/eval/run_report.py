"""The evaluation job's report: every evaluated split, its intervals and outcome samples, thumbnails, the
training curves of the run and the fusion selection, written as one ``report.html`` (see ``report.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vidret.config import Config, dump_yaml
from vidret.eval.report import write_page
from vidret.eval.report_data import outcome_samples, thumbnail_ids
from vidret.eval.scalars import training_curves
from vidret.eval.thumbnails import thumbnails_for
from vidret.eval.uncertainty import query_layout
from vidret.features.scoring import EvalResult
from vidret.features.types import FeatureSet
from vidret.storage import Storage


def write_run_report(
    cfg: Config,
    storage: Storage,
    out_dir: str,
    inputs: Mapping[str, tuple[FeatureSet, EvalResult]],
    intervals: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, str],
    *,
    fusion: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Write ``<out_dir>/report.html`` for ``inputs`` ({split: (features, result)}); returns its URI."""
    splits, thumbs = [], {}
    for split, (fs, res) in inputs.items():
        layout = query_layout(fs, cfg.eval.multi_caption_grouping)
        samples = outcome_samples(
            fs, res, layout, cfg.eval.report_per_outcome, cfg.eval.multi_caption_grouping
        )
        thumbs.update(thumbnails_for(cfg, storage, split, thumbnail_ids(samples)))
        splits.append(
            {
                "name": split,
                "metrics": {labels.get(k, k): v for k, v in res.metrics.items()},
                "intervals": intervals.get(split),
                "labels": labels,
                "ranks": {
                    f"{labels.get(v, v)} / {d}": r for v, dirs in res.ranks.items() for d, r in dirs.items()
                },
                "samples": samples,
            }
        )
    return write_page(
        out_dir,
        storage,
        splits=splits,
        thumbnails=thumbs,
        title=f"vidret evaluation: {', '.join(inputs)}",
        config_yaml=dump_yaml(cfg),
        curves=training_curves(cfg.run.out),
        fusion=fusion,
        notes=notes,
    )
