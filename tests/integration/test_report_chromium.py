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
    yield exe


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
    assert '<table class="metrics" id="metrics-table">' in dom
    assert dom.count('<div class="sample"') == 4
    assert "&lt;i&gt;query&lt;/i&gt; 0 &amp; a dog" in dom
    found = re.search(r'<pre id="img-check">([^<]*)</pre>', dom)
    assert found, "the load probe did not run"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["n"] == n_img + 1 == 2 + 4 * 2 * 5 + 1
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
