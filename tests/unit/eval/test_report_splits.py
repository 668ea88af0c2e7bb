"""The full evaluation report: every split, intervals, outcome-chosen samples with ranks, training curves;
plus the console table with intervals, the reproducible metrics.json and the logged-scalars reader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vidret.config import EvalConfig
from vidret.eval.metrics import metrics_table
from vidret.eval.report import render_page
from vidret.eval.report_data import outcome_samples, thumbnail_ids
from vidret.eval.results import metrics_document, sentences, split_table
from vidret.eval.scalars import training_curves
from vidret.eval.uncertainty import query_layout, split_intervals
from vidret.features.scoring import EvalResult, direction_metrics
from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures

LABELS = {"stage1": "stage 1", "rerank": "stage 1 + diffusion re-rank"}


def make_split(num_videos: int, captions_per_video: int, seed: int) -> tuple[FeatureSet, EvalResult]:
    """Features (only shapes matter here) and an EvalResult from random stage-1 / re-ranked matrices."""
    rng = np.random.default_rng(seed)
    t2v = torch.arange(num_videos).repeat_interleave(captions_per_video)
    t = t2v.shape[0]
    fs = FeatureSet(
        text=TextFeatures(*[torch.zeros(t, 2, 4)] * 3, eot=torch.zeros(t, 4)),
        video=VideoFeatures(*[torch.zeros(num_videos, 2, 4)] * 3),
        text_to_video_T=t2v,
        video_ids=[f"vid{v:03d}" for v in range(num_videos)],
        captions=[f"caption {i} of vid{int(v):03d}" for i, v in enumerate(t2v)],
    )
    onehot = torch.nn.functional.one_hot(t2v, num_videos).double()
    s1 = torch.from_numpy(rng.normal(size=(t, num_videos))) + 1.2 * onehot
    s2 = s1 + torch.from_numpy(rng.normal(scale=0.6, size=(t, num_videos)))
    ecfg = EvalConfig(bootstrap_resamples=1000)
    sims = {
        "stage1": (s1.float(), s1.T.contiguous().float()),
        "rerank": (s2.float(), s2.T.contiguous().float()),
    }
    metrics, ranks = {}, {}
    for name, (a, b) in sims.items():
        metrics[name], ranks[name] = direction_metrics(a, b, fs, ecfg)
    return fs, EvalResult(metrics=metrics, ranks=ranks, sims=sims)


@pytest.fixture(scope="module")
def two_splits() -> dict[str, Any]:
    ecfg = EvalConfig(bootstrap_resamples=1000)
    out = {}
    for name, (v, c, seed) in {"test": (40, 1, 0), "ood": (20, 3, 1)}.items():
        fs, res = make_split(v, c, seed)
        out[name] = (fs, res, split_intervals(res, fs, ecfg))
    return out


def test_layout_and_intervals_state_the_unit(two_splits: dict[str, Any]) -> None:
    _, _, single = two_splits["test"]
    fs, res, multi = two_splits["ood"]
    assert single["unit"] == {"t2v": "query", "v2t": "query"}
    assert multi["unit"] == {"t2v": "video", "v2t": "video"}
    assert multi["n"] == {"t2v": 60, "v2t": 20}
    assert multi["method"] == "percentile"
    assert multi["resamples"] == 1000
    assert multi["chance"]["t2v"]["R1"] == pytest.approx(5.0)
    for d in ("t2v", "v2t"):
        iv = multi["variants"]["rerank"][d]["R1"]
        assert iv["lo"] <= iv["estimate"] <= iv["hi"]
        assert iv["estimate"] == pytest.approx(res.metrics["rerank"][d]["R1"])
        p = multi["paired"]["rerank - stage1"][d]["R1"]
        assert 0 < p["p"] <= 1
        assert p["lo"] <= p["diff"] <= p["hi"]
    assert query_layout(fs, "correct")["t2v"]["units"].tolist() == fs.text_to_video_T.tolist()


def test_outcome_samples_both_directions_with_true_ranks(two_splits: dict[str, Any]) -> None:
    for fs, res, _ in two_splits.values():
        layout = query_layout(fs, "correct")
        samples = outcome_samples(fs, res, layout, 2, "correct")
        got = {(s["direction"], s["outcome"]) for s in samples}
        assert {("t2v", "helped"), ("t2v", "hurt"), ("t2v", "both fail"), ("v2t", "both fail")} <= got
        for s in samples:
            ranks = res.ranks
            d = s["direction"]
            i = int(np.flatnonzero(np.asarray(layout[d]["rows"]) == _query_row(s, fs))[0])
            assert s["rank_before"] == ranks["stage1"][d][i] + 1
            assert s["rank_after"] == ranks["rerank"][d][i] + 1
            if s["outcome"] == "helped":
                assert s["rank_after"] < s["rank_before"]
            if s["outcome"] == "hurt":
                assert s["rank_after"] > s["rank_before"]
            if s["outcome"] == "both fail":
                assert min(s["rank_before"], s["rank_after"]) > 1
            in_top = [it["id"] == s["gt"]["id"] for it in s["after"]]
            assert any(in_top) == (s["rank_after"] <= 5)
            if any(in_top):
                assert in_top.index(True) + 1 == s["rank_after"]
        assert thumbnail_ids(samples)


def _query_row(s: dict[str, Any], fs: FeatureSet) -> int:
    _, row = s["query"]["id"].split(":")
    return int(row)


def test_page_has_every_split_intervals_samples_and_ranks_outside_top5(
    two_splits: dict[str, Any], tmp_path: Path
) -> None:
    splits = []
    for name, (fs, res, block) in two_splits.items():
        samples = outcome_samples(fs, res, query_layout(fs, "correct"), 2, "correct")
        splits.append(
            {"name": name, "metrics": {LABELS[k]: v for k, v in res.metrics.items()}, "intervals": block,
             "labels": LABELS, "ranks": {f"{k} / t2v": r["t2v"] for k, r in res.ranks.items()},
             "samples": samples}
        )  # fmt: skip
    curves = {"discrimination": {"loss": [(1, 2.0), (2, 1.5)], "val_model_t2v_R1": [(2, 10.0)],
                                 "val_ema_t2v_R1": [(2, 12.0)]}}  # fmt: skip
    page = render_page(splits=splits, thumbnails={}, title="t", config_yaml="x: 1", curves=curves)
    for name in ("test", "ood"):
        assert f'<section class="split" id="split-{name}">' in page
        assert f'id="metrics-{name}"' in page
        assert f'id="paired-{name}"' in page
        assert f'id="interval-bars-{name}-t2v"' in page
    assert re.search(r"\d+\.\d ±\d+\.\d", page)  # cells with intervals
    assert "chance R@1 2.50%" in page
    assert "resampling unit: video" in page
    outside = [int(x) for x in re.findall(r"correct item at rank (\d+)", page)]
    assert any(r > 5 for r in outside)
    assert 'data-outcome="helped"' in page
    assert 'data-outcome="hurt"' in page
    assert 'data-direction="v2t"' in page
    assert 'id="curve-discrimination-val"' in page


def test_console_table_sentence_and_metrics_document(two_splits: dict[str, Any]) -> None:
    _, res, block = two_splits["test"]
    table = split_table("test", res.metrics, block, LABELS)
    assert "test: t2v n = 40 (query units), chance R@1 2.50%" in table
    assert re.search(r"stage 1 \+ diffusion re-rank \|\s+\d+\.\d ±\d+\.\d", table)
    (sentence,) = sentences({"test": block})
    d = block["paired"]["rerank - stage1"]["t2v"]["R1"]
    assert sentence.startswith(f"test: re-ranking changed t2v R@1 by {d['diff']:+.1f} (95% CI [")
    assert "p = " in sentence
    doc = metrics_document(
        {
            "checkpoint": "/r/run/checkpoints/generation",
            "wall_s": 3.2,
            "out": "/r/run/eval",
            "x": float("nan"),
        },
        "/r/run",
    )
    assert doc == {"checkpoint": "checkpoints/generation", "x": None, "paths_relative_to": "run.out"}


def test_metrics_table_with_intervals() -> None:
    rows = {"a": {"t2v": {"R1": 40.0, "MnR": 3.0}}}
    ivs = {"a": {"t2v": {"R1": {"lo": 35.2, "hi": 44.8}}}}
    table = metrics_table(rows, ivs)
    assert "40.0 ±4.8" in table
    assert "3.0" in table
    assert "±" not in metrics_table(rows)


def test_training_curves_read_back_from_event_files(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tensorboard" / "discrimination"))
    for step in (1, 2, 3):
        writer.add_scalar("discrimination/loss", 3.0 - step, step)
    writer.add_scalar("discrimination/val_model_t2v_R1", 20.0, 3)
    writer.add_scalar("discrimination/val_ema_t2v_R1", 25.0, 3)
    writer.add_scalar("discrimination/lr", 1e-3, 3)
    writer.close()
    curves = training_curves(str(tmp_path))
    assert curves == {
        "discrimination": {
            "loss": [(1, 2.0), (2, 1.0), (3, 0.0)],
            "val_model_t2v_R1": [(3, 20.0)],
            "val_ema_t2v_R1": [(3, 25.0)],
        }
    }
    assert training_curves(str(tmp_path / "nothing")) == {}
    assert json.dumps(curves)
