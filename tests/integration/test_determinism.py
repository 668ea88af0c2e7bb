"""The same command twice gives byte-identical ``metrics.json`` (and ``ranks.json``): a tiny pipeline
(generated corpus -> stage 1 on streamed video -> feature cache -> stage 2 -> evaluation with fusion chosen
on validation, intervals and report) run twice into two folders on a real local Ray instance.

Wall times live in ``timings.json``; paths under ``run.out`` are written relative to it, so the two
folders do not show up in the bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from train_helpers import make_corpus, small_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def _pipeline(out: Path, manifest: Path) -> Path:
    """Stage 1, stage 2 and the evaluation of ``test`` and ``ood`` into ``out``; returns the eval folder."""
    from vidret.config import replace
    from vidret.eval.job import run_evaluation
    from vidret.layout import stage_uri
    from vidret.train.trainer import run_training

    cfg = small_config(
        out, manifest, "eval.splits=[test, ood]", "eval.select_fusion=true", "eval.fusion_alphas=[0.5, 1.0]",
        "eval.fusion_temps=[1.0, 10.0]", "eval.bootstrap_resamples=1000", "data.decode_timeout_s=600",
        "data.extra_eval_splits=[ood]", steps=4,
    )  # fmt: skip
    # ood among the cached splits: stage 1's feature cache covers every split the evaluation reads, so the
    # evaluation reads the cache instead of starting another decode and encoder pass
    run_training(replace(cfg, train=replace(cfg.train, stage="discrimination")))
    s2 = replace(
        cfg, train=replace(cfg.train, stage="generation", init_checkpoint=stage_uri(cfg, "discrimination"))
    )
    run_training(s2)
    summary = run_evaluation(s2, stage_uri(cfg, "generation"))
    return Path(summary["out"])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    corpus = make_corpus(root, videos=40)
    return _pipeline(root / "run-a", corpus.manifest), _pipeline(root / "run-b", corpus.manifest)


def test_metrics_and_ranks_are_byte_identical(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    for name in ("metrics.json", "ranks.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two runs"
    metrics: dict[str, Any] = json.loads((a / "metrics.json").read_text())
    assert "wall_s" not in metrics
    assert set(metrics["intervals"]) == {"test", "ood"}
    assert metrics["fusion"]["chosen_on"] == "val"
    assert metrics["checkpoint"] == "checkpoints/generation"  # relative to run.out
    assert "wall_s" in json.loads((a / "timings.json").read_text())
    assert (a / "report.html").is_file()
