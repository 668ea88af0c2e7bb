"""The generated report renders in headless Chromium with all of its images.

Needs Debian's ``chromium``; ``tests/tools/ensure_chromium.sh`` installs it when possible (root + apt-get),
otherwise the tests skip saying why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidret.config import StorageConfig
from vidret.eval.metrics import dual_softmax, retrieval_metrics, retrieval_ranks
from vidret.eval.report import write_report
from vidret.storage import Storage

ENSURE = Path(__file__).resolve().parents[1] / "tools" / "ensure_chromium.sh"
HIT_RGB = (0x1A, 0x9E, 0x3A)  # figure.hit border colour in report.py
PLOT_RGB = (0x1F, 0x77, 0xB4)  # first series colour in plots.py

PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; });
  var pre = document.createElement("pre");
  pre.id = "img-check";
  pre.textContent = JSON.stringify({n: imgs.length, bad: bad});
  document.body.appendChild(pre);
});
</script>"""
BROKEN_CONTROL = '<img alt="broken-control" src="data:image/png;base64,AAAA">'


@pytest.fixture(scope="session")
def chromium() -> Iterator[str]:
    proc = subprocess.run(["bash", str(ENSURE)], capture_output=True, text=True, timeout=600)
    exe = shutil.which("chromium")
    if proc.returncode != 0 or exe is None:
        pytest.skip(f"chromium unavailable and could not be installed: {proc.stderr.strip()[-300:]}")
    return exe


def _run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    num = 30
    sim = rng.normal(size=(num, num)) + 2.0 * np.eye(num)
    sim2 = sim + 1.0 * np.eye(num)
    vids = [f"clip_{i:03d}" for i in range(num)]
    thumbs = {}
    for i, v in enumerate(vids):
        frames = np.zeros((8, 64, 64, 3), np.uint8)
        frames[..., 0] = (40 * i) % 256
        frames[..., 1] = np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :]
        frames[:, 16:40, 16:40, 2] = np.arange(8, dtype=np.uint8)[:, None, None] * 30
        thumbs[v] = frames
    samples = [
        {
            "caption": f"<i>query</i> {q} & a dog",
            "gt_video_id": vids[q],
            "before": [vids[j] for j in np.argsort(-sim[q])[:5]],
            "after": [vids[j] for j in np.argsort(-sim2[q])[:5]],
        }
        for q in range(4)
    ]
    metrics = {
        "stage 1": {"t2v": retrieval_metrics(sim), "v2t": retrieval_metrics(sim.T)},
        "stage 1 + diffusion re-rank": {"t2v": retrieval_metrics(sim2), "v2t": retrieval_metrics(sim2.T)},
        "dual softmax (test-time trick)": {"t2v": retrieval_metrics(dual_softmax(sim2))},
    }
    ranks = {
        "stage 1 / t2v": retrieval_ranks(sim),
        "re-ranked / t2v": retrieval_ranks(sim2),
        "stage 1 / v2t": retrieval_ranks(sim.T),
    }
    out = tmp_path_factory.mktemp("report")
    uri = write_report(
        str(out), Storage(StorageConfig()), metrics=metrics, ranks=ranks, samples=samples,
        thumbnails=thumbs, title="chromium check", config_yaml="eval:\n  rerank: true\n",
    )  # fmt: skip
    return Path(uri)


def test_dom_has_table_and_every_image_loads(chromium: str, report_html: Path, tmp_path: Path) -> None:
    page = report_html.read_text()
    n_img = len(re.findall(r"<img ", page))
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", BROKEN_CONTROL + PROBE + "</body>"))
    dom = _run_chromium(chromium, tmp_path, "--dump-dom", probe.as_uri()).stdout
    assert '<table class="metrics" id="metrics-results">' in dom
    assert dom.count('<div class="sample"') == 4
    assert "&lt;i&gt;query&lt;/i&gt; 0 &amp; a dog" in dom
    found = re.search(r'<pre id="img-check">([^<]*)</pre>', dom)
    assert found, "the load probe did not run"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["n"] == n_img + 1 == 2 + 4 * (1 + 2 * 5) + 1  # plots, (correct + top 5 twice) per sample
    assert result["bad"] == ["broken-control"]  # the probe catches a broken image, and only that one


def test_screenshot_is_not_blank(chromium: str, report_html: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _run_chromium(chromium, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", report_html.as_uri())
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert rgb.shape[:2] == (2400, 1280)
    assert rgb.std() > 20.0

    def coverage(colour: tuple[int, int, int]) -> float:
        return float((np.abs(rgb - np.array(colour)).max(axis=-1) <= 8).mean())

    assert coverage(HIT_RGB) > 1e-4  # the correct-video borders are drawn
    assert coverage(PLOT_RGB) > 1e-4  # the plots are drawn
    rows_with_content = (rgb.std(axis=(1, 2)) > 5).mean()
    assert rows_with_content > 0.3  # content spreads down the page, not just a header


# -- the full evaluation report: every split, intervals, outcome-chosen samples -----------------------------
@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from vidret.config import EvalConfig
    from vidret.eval.report import write_page
    from vidret.eval.report_data import outcome_samples, thumbnail_ids
    from vidret.eval.uncertainty import query_layout, split_intervals
    from vidret.features.scoring import EvalResult, direction_metrics
    from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures

    ecfg = EvalConfig(bootstrap_resamples=1000)
    labels = {"stage1": "stage 1", "rerank": "stage 1 + diffusion re-rank"}
    splits, thumbs = [], {}
    for name, (videos, per, seed) in {"test": (40, 1, 0), "ood": (24, 2, 1)}.items():
        rng = np.random.default_rng(seed)
        t2v = torch.arange(videos).repeat_interleave(per)
        fs = FeatureSet(
            text=TextFeatures(*[torch.zeros(t2v.shape[0], 1, 2)] * 3, eot=torch.zeros(t2v.shape[0], 2)),
            video=VideoFeatures(*[torch.zeros(videos, 1, 2)] * 3),
            text_to_video_T=t2v,
            video_ids=[f"{name}_{v:03d}" for v in range(videos)],
            captions=[f"{name} caption {i}" for i in range(t2v.shape[0])],
        )
        s1 = torch.from_numpy(rng.normal(size=(t2v.shape[0], videos))) + torch.nn.functional.one_hot(
            t2v, videos
        )
        s2 = s1 + torch.from_numpy(rng.normal(scale=0.7, size=s1.shape))
        sims = {
            "stage1": (s1.float(), s1.T.contiguous().float()),
            "rerank": (s2.float(), s2.T.contiguous().float()),
        }
        metrics, ranks = {}, {}
        for v, (a, b) in sims.items():
            metrics[v], ranks[v] = direction_metrics(a, b, fs, ecfg)
        res = EvalResult(metrics=metrics, ranks=ranks, sims=sims)
        samples = outcome_samples(fs, res, query_layout(fs, "correct"), 2, "correct")
        for i, vid in enumerate(thumbnail_ids(samples)):
            frames = np.zeros((4, 48, 48, 3), np.uint8)
            frames[..., 0], frames[..., 2] = (37 * i) % 256, 200
            thumbs[vid] = frames
        splits.append(
            {"name": name, "metrics": {labels[k]: m for k, m in metrics.items()},
             "intervals": split_intervals(res, fs, ecfg), "labels": labels,
             "ranks": {f"{labels[k]} / {d}": r[d] for k, r in ranks.items() for d in ("t2v", "v2t")},
             "samples": samples}
        )  # fmt: skip
    curves = {"discrimination": {"loss": [(s, 3.0 / s) for s in range(1, 20)],
                                 "val_model_t2v_R1": [(10, 20.0), (19, 30.0)],
                                 "val_ema_t2v_R1": [(10, 22.0), (19, 33.0)]}}  # fmt: skip
    out = tmp_path_factory.mktemp("full-report")
    uri = write_page(
        str(out), Storage(StorageConfig()), splits=splits, thumbnails=thumbs, title="full report",
        config_yaml="eval: {}\n", curves=curves, notes=["test: re-ranking changed t2v R@1 by +1.0"],
    )  # fmt: skip
    return Path(uri)


def test_full_report_renders_every_split_intervals_and_outcome_samples(
    chromium: str, full_report: Path, tmp_path: Path
) -> None:
    page = full_report.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _run_chromium(chromium, tmp_path, "--dump-dom", probe.as_uri()).stdout
    for split in ("test", "ood"):
        assert f'<section class="split" id="split-{split}">' in dom
        assert f'<table class="metrics" id="metrics-{split}">' in dom
        assert f'id="paired-{split}"' in dom
        assert re.search(rf'id="interval-bars-{split}-t2v"', dom)
        section = dom[dom.index(f'id="split-{split}"') :]
        assert re.search(r"<td class=\"iv\"[^>]*>\d+\.\d ±\d+\.\d</td>", section), "no interval cells"
        assert "chance R@1" in section
    for outcome in ("helped", "hurt", "both fail"):
        assert f'data-outcome="{outcome}"' in dom
    assert 'data-direction="v2t"' in dom
    outside = [int(r) for r in re.findall(r"correct item at rank (\d+)", dom)]
    assert any(r > 5 for r in outside), "a rank outside the top 5 is shown as a number"
    before_after = re.findall(
        r'class="rank-before">(\d+)</b> (?:&rarr;|\u2192) re-ranked <b class="rank-after">(\d+)<', dom
    )
    assert before_after
    assert all(int(a) >= 1 and int(b) >= 1 for a, b in before_after)
    assert 'id="curve-discrimination-val"' in dom
    found = re.search(r'<pre id="img-check">([^<]*)</pre>', dom)
    assert found, "the load probe did not run"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["n"] > 10
    assert result["bad"] == []  # every plot, curve and thumbnail decodes
