"""The HTML report and metrics.json: files, escaping, embedded images, correct-video marks, plots."""

from __future__ import annotations

import base64
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vidret.config import StorageConfig
from vidret.eval.metrics import retrieval_metrics, retrieval_ranks
from vidret.eval.plots import rank_histogram_svg, recall_curve, recall_curve_svg
from vidret.eval.report import STRIP_HEIGHT, frame_strip, write_report
from vidret.storage import Storage, join

CAPTION = 'a <b>man</b> & "dog" <script>alert(1)</script>'


def make_inputs(num: int = 12, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(num, num)) + 1.5 * np.eye(num)
    sim2 = sim + 1.0 * np.eye(num)
    vids = [f"video{i}" for i in range(num)]
    thumbs = {v: rng.integers(0, 256, size=(5, 24, 32, 3), dtype=np.uint8) for v in vids[1:]}  # video0: none
    thumbs[vids[1]] = thumbs[vids[1]][0]  # a single (H, W, 3) frame
    samples = [
        {
            "caption": CAPTION if q == 0 else f"query {q}",
            "gt_video_id": vids[q],
            "before": [vids[j] for j in np.argsort(-sim[q])[:5]],
            "after": [vids[j] for j in np.argsort(-sim2[q])[:5]],
            "rank_before": int(retrieval_ranks(sim)[q]) + 1,
        }
        for q in range(3)
    ]
    return {
        "metrics": {
            "stage 1": {"t2v": retrieval_metrics(sim), "v2t": retrieval_metrics(sim.T)},
            "stage 1 + diffusion re-rank": {"t2v": retrieval_metrics(sim2), "v2t": retrieval_metrics(sim2.T)},
        },
        "ranks": {"stage 1 / t2v": retrieval_ranks(sim), "re-ranked / t2v": retrieval_ranks(sim2)},
        "samples": samples,
        "thumbnails": thumbs,
        "title": "eval <test>",
        "config_yaml": "eval:\n  rerank: true  # <not a tag>\n",
    }


@pytest.fixture
def report(tmp_path: Path) -> tuple[str, dict[str, Any], Path]:
    inputs = make_inputs()
    out = tmp_path / "run" / "report"
    uri = write_report(str(out), Storage(StorageConfig()), **inputs)
    return uri, inputs, out


def test_writes_both_files_and_metrics_json(report: tuple[str, dict[str, Any], Path]) -> None:
    uri, inputs, out = report
    assert uri == join(str(out), "report.html")
    assert Path(uri).is_file()
    loaded = json.loads((out / "metrics.json").read_text())
    assert list(loaded) == list(inputs["metrics"])
    for row, by_dir in inputs["metrics"].items():
        for d, m in by_dir.items():
            assert loaded[row][d] == pytest.approx(m)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html"]  # no temp files left


def test_html_escapes_captions_title_and_config(report: tuple[str, dict[str, Any], Path]) -> None:
    page = Path(report[0]).read_text()
    assert "a &lt;b&gt;man&lt;/b&gt; &amp; &quot;dog&quot; &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>man</b>" not in page
    assert "<script" not in page
    assert "<title>eval &lt;test&gt;</title>" in page
    assert "# &lt;not a tag&gt;" in page


def test_html_is_self_contained_with_expected_images(report: tuple[str, dict[str, Any], Path]) -> None:
    _, inputs, _ = report
    page = Path(report[0]).read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    shown = [v for s in inputs["samples"] for v in (s["gt_video_id"], *s["before"][:5], *s["after"][:5])]
    with_thumb = [v for v in shown if v in inputs["thumbnails"]]
    assert len(srcs) == 2 + len(with_thumb)  # two plots + one strip per shown video (correct one too)
    assert all(s.startswith("data:image/") for s in srcs)
    assert page.count("no thumbnail") == len(shown) - len(with_thumb)
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    assert "<link" not in page
    jpeg = next(s for s in srcs if s.startswith("data:image/jpeg;base64,"))
    img = Image.open(io.BytesIO(base64.b64decode(jpeg.split(",", 1)[1])))
    assert img.format == "JPEG"
    assert img.height == STRIP_HEIGHT


def test_correct_video_is_marked_before_and_after(report: tuple[str, dict[str, Any], Path]) -> None:
    _, inputs, _ = report
    page = Path(report[0]).read_text()
    hits = sum(s["gt_video_id"] in s[k][:5] for s in inputs["samples"] for k in ("before", "after"))
    assert hits > 0
    hits += len(inputs["samples"])  # each sample also shows the correct video on its own
    assert page.count('<figure class="hit"') == hits
    assert page.count("&#10003; correct") == hits
    blocks = page.split('<div class="sample"')[1:]
    assert len(blocks) == len(inputs["samples"])
    for block, sample in zip(blocks, inputs["samples"], strict=True):
        figs = re.findall(r'<figure class="(hit|miss)" data-video-id="([^"]+)"', block)
        assert [vid for _, vid in figs] == [
            sample["gt_video_id"],
            *sample["before"][:5],
            *sample["after"][:5],
        ]
        assert all((cls == "hit") == (vid == sample["gt_video_id"]) for cls, vid in figs)


def test_metrics_table_in_html(report: tuple[str, dict[str, Any], Path]) -> None:
    _, inputs, _ = report
    page = Path(report[0]).read_text()
    table = page[page.index('<table class="metrics"') : page.index("</table>")]
    assert table.count("<tr>") + table.count("<tr ") == 2 + len(inputs["metrics"])
    r1 = inputs["metrics"]["stage 1 + diffusion re-rank"]["t2v"]["R1"]
    assert f'<td class="v">{r1:.1f}</td>' in table
    assert "stage 1 + diffusion re-rank" in table


def test_invalid_inputs_raise(tmp_path: Path) -> None:
    st = Storage(StorageConfig())
    inputs = make_inputs()
    bad = dict(inputs, thumbnails={**inputs["thumbnails"], "video3": np.zeros((8, 8, 3), np.float32)})
    with pytest.raises(ValueError, match="video3"):
        write_report(str(tmp_path), st, **bad)
    bad = dict(inputs, samples=[{"caption": "x", "before": [], "after": []}])
    with pytest.raises(ValueError, match=r"samples\[0\].*gt_video_id"):
        write_report(str(tmp_path), st, **bad)
    bad = dict(inputs, metrics={"stage 1": {"t2v": {"R1": object()}}})
    with pytest.raises(TypeError):
        write_report(str(tmp_path), st, **bad)
    assert not any(tmp_path.iterdir())  # nothing written when the inputs are invalid


def test_frame_strip_picks_evenly_spaced_frames() -> None:
    frames = np.zeros((7, 20, 40, 3), np.uint8)
    for i in range(7):
        frames[i] = i * 30
    img = Image.open(io.BytesIO(frame_strip(frames, "v", num_frames=3, height=10)))
    assert img.size == (3 * 20 + 2 * 2, 10)
    centres = [np.asarray(img)[5, x, 0] for x in (10, 32, 54)]
    assert centres == pytest.approx([0, 90, 180], abs=6)  # frames 0, 3, 6 (JPEG tolerance)


def test_plots_are_valid_svg_with_one_series_each() -> None:
    ranks = {"a": np.array([0, 1, 1, 3, 30]), "b <x>": np.array([0, 0, 2])}
    np.testing.assert_allclose(recall_curve(ranks["a"], np.array([1, 2, 4, 31])), [20, 60, 80, 100])
    hist = ET.fromstring(rank_histogram_svg(ranks))
    curve = ET.fromstring(recall_curve_svg(ranks))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(curve.findall(f"{ns}polyline")) == 2
    labels = [t.text for t in hist.findall(f"{ns}text")]
    assert {"1", "2", "3-5", "6-10", "11-20", "21-31"} <= set(labels)
    assert "b <x>" in labels
    with pytest.raises(ValueError, match="non-empty"):
        recall_curve_svg({"a": np.array([], dtype=np.int64)})


@pytest.mark.s3
def test_write_report_to_s3(s3_bucket: tuple[StorageConfig, str]) -> None:
    cfg, bucket = s3_bucket
    st = Storage(cfg)
    uri = write_report(join(bucket, "runs", "r1"), st, **make_inputs(num=6))
    assert uri == f"{bucket}/runs/r1/report.html"
    assert st.read_text(uri).startswith("<!DOCTYPE html>")
    assert "stage 1" in json.loads(st.read_text(f"{bucket}/runs/r1/metrics.json"))
