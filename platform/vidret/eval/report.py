"""The evaluation report: ``metrics.json`` and a self-contained ``report.html`` (no external resources).

The HTML holds the metrics table (one row per result, both directions), a rank histogram and a recall-at-K
curve (inline SVG), the top-5 videos for a sample of queries before and after re-ranking as frame strips
(base64 JPEG), the correct video marked, and the resolved config.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from vidret.eval.metrics import DIRECTIONS, table_rows
from vidret.eval.plots import rank_histogram_svg, recall_curve_svg, svg_data_uri
from vidret.storage import Storage, join

STRIP_FRAMES = 3  # frames per video strip
STRIP_HEIGHT = 56  # pixels
_COLS = ("R@1", "R@5", "R@10", "MdR", "MnR")

_CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table.metrics { border-collapse: collapse; background: #fff; }
table.metrics th, table.metrics td { border: 1px solid #bbb; padding: 4px 10px; text-align: right; }
table.metrics td.label, table.metrics th.label { text-align: left; }
table.metrics th[colspan] { text-align: center; }
.plots img { margin: 6px 12px 6px 0; border: 1px solid #ddd; background: #fff; }
.sample { background: #fff; border: 1px solid #ddd; padding: 8px 12px; margin: 12px 0; }
.caption { font-size: 15px; font-weight: bold; } .meta { color: #666; font-size: 12px; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px; margin: 6px 0; }
.row .stage { width: 150px; flex: none; font-size: 12px; color: #444; padding-top: 4px; }
figure { margin: 0; padding: 3px; border: 4px solid #ccc; border-radius: 3px; font-size: 11px; }
figure.hit { border-color: #1a9e3a; background: #e6f6e9; }
figure figcaption { max-width: 320px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
figure.hit figcaption { color: #0d6b25; font-weight: bold; }
.nothumb { display: inline-block; width: 120px; height: 56px; background: #eee; color: #888;
  text-align: center; line-height: 56px; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; overflow-x: auto; }
"""


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None  # JSON has no NaN/inf
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise TypeError(f"metrics: value {x!r} of type {type(x).__name__} cannot be written to metrics.json")


def _check_frames(frames: Any, video_id: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(
            f"thumbnails[{video_id!r}]: expected uint8 (H, W, 3) or (F, H, W, 3), got {arr.dtype} {arr.shape}"
        )
    return arr


def frame_strip(
    frames: Any, video_id: str, *, num_frames: int = STRIP_FRAMES, height: int = STRIP_HEIGHT
) -> bytes:
    """JPEG bytes of a horizontal strip of up to ``num_frames`` evenly spaced frames, each ``height`` px tall.

    frames: uint8 (H, W, 3) or (F, H, W, 3).
    """
    arr = _check_frames(frames, video_id)
    if arr.ndim == 3:
        arr = arr[None]
    pick = np.unique(np.linspace(0, arr.shape[0] - 1, min(num_frames, arr.shape[0])).round().astype(int))
    width = max(1, round(arr.shape[2] * height / arr.shape[1]))
    tiles = [Image.fromarray(arr[i]).resize((width, height), Image.BILINEAR) for i in pick]
    strip = Image.new("RGB", (width * len(tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (width + 2), 0))
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    rows = table_rows(metrics)
    head1 = '<tr><th class="label" rowspan="2">run</th>' + "".join(
        f'<th colspan="{len(_COLS)}">{"text &rarr; video" if d == "t2v" else "video &rarr; text"} ({d})</th>'
        for d in DIRECTIONS
    )
    head2 = "<tr>" + "".join(f"<th>{c}</th>" for c in _COLS * len(DIRECTIONS)) + "</tr>"
    body = "".join(
        f'<tr><td class="label">{html.escape(r[0])}</td>' + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>"
        for r in rows
    )
    return f'<table class="metrics" id="metrics-table"><thead>{head1}</tr>{head2}</thead><tbody>{body}</tbody></table>'


def _check_sample(i: int, s: Any) -> None:
    if not isinstance(s, Mapping):
        raise TypeError(f"samples[{i}]: expected a dict with caption, gt_video_id, before, after; got {s!r}")
    for key in ("caption", "gt_video_id", "before", "after"):
        if key not in s:
            raise ValueError(f"samples[{i}]: missing field {key!r}")
    if not isinstance(s["caption"], str) or not isinstance(s["gt_video_id"], str):
        raise TypeError(f"samples[{i}]: 'caption' and 'gt_video_id' must be str")
    for key in ("before", "after"):
        ids = s[key]
        if isinstance(ids, str) or not isinstance(ids, Sequence) or not all(isinstance(v, str) for v in ids):
            raise TypeError(f"samples[{i}][{key!r}]: expected a list of video id strings, got {ids!r}")


def _sample_html(i: int, s: Mapping[str, Any], thumbs: Mapping[str, str]) -> str:
    gt = s["gt_video_id"]
    rows = []
    for key, stage in (("before", "stage 1 (before re-ranking)"), ("after", "after diffusion re-ranking")):
        figs = []
        for pos, vid in enumerate(s[key][:5]):
            hit = vid == gt
            uri = thumbs.get(vid)
            pic = (
                f'<img src="{uri}" alt="{html.escape(vid)}">'
                if uri
                else '<span class="nothumb">no thumbnail</span>'
            )
            mark = " &#10003; correct" if hit else ""
            figs.append(
                f'<figure class="{"hit" if hit else "miss"}" data-video-id="{html.escape(vid)}">{pic}'
                f"<figcaption>#{pos + 1} {html.escape(vid)}{mark}</figcaption></figure>"
            )
        rank = s.get(f"rank_{key}")
        if gt not in s[key][:5]:
            note = (
                f"correct video at rank {int(rank)}" if rank is not None else "correct video not in the top 5"
            )
            figs.append(f'<span class="meta">{note}</span>')
        rows.append(f'<div class="row {key}"><div class="stage">{stage}</div>{"".join(figs)}</div>')
    return (
        f'<div class="sample" id="sample-{i}"><div class="caption">{html.escape(s["caption"])}</div>'
        f'<div class="meta">correct video: {html.escape(gt)}</div>{"".join(rows)}</div>'
    )


def render_html(
    *,
    metrics: Mapping[str, Any],
    ranks: Mapping[str, np.ndarray],
    samples: Sequence[Mapping[str, Any]],
    thumbnails: Mapping[str, Any],
    title: str,
    config_yaml: str,
) -> str:
    """The report page as one string (see :func:`write_report` for the arguments)."""
    for i, s in enumerate(samples):
        _check_sample(i, s)
    for vid, frames in thumbnails.items():
        _check_frames(frames, vid)
    needed = sorted({v for s in samples for key in ("before", "after") for v in s[key][:5]})
    thumbs = {
        vid: "data:image/jpeg;base64," + base64.b64encode(frame_strip(thumbnails[vid], vid)).decode("ascii")
        for vid in needed
        if vid in thumbnails
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Metrics</h2>",
        _metrics_html(metrics),
        '<p class="meta">R@K in percent; MdR / MnR are the median / mean rank (1 = first). Rows labelled '
        "as test-time tricks use the whole test query set and are not comparable to plain retrieval.</p>",
    ]
    if ranks:
        parts += [
            '<h2>Ranks</h2><div class="plots">',
            f'<img id="rank-histogram" alt="rank histogram" src="{svg_data_uri(rank_histogram_svg(ranks))}">',
            f'<img id="recall-curve" alt="recall at K" src="{svg_data_uri(recall_curve_svg(ranks))}">',
            "</div>",
        ]
    if samples:
        parts.append(f"<h2>Sample queries ({len(samples)})</h2>")
        parts += [_sample_html(i, s, thumbs) for i, s in enumerate(samples)]
    parts += [
        "<h2>Config</h2>",
        f"<details><summary>resolved config</summary><pre>{html.escape(config_yaml)}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(
    out_dir_uri: str,
    storage: Storage,
    *,
    metrics: Mapping[str, Any],
    ranks: Mapping[str, np.ndarray],
    samples: Sequence[Mapping[str, Any]],
    thumbnails: Mapping[str, Any],
    title: str,
    config_yaml: str,
) -> str:
    """Write ``<out_dir_uri>/metrics.json`` and ``<out_dir_uri>/report.html``; returns the report's URI.

    metrics: {row label: {"t2v": {"R1", "R5", "R10", "MdR", "MnR", ...}, "v2t": {...}}}, e.g. rows "stage 1",
      "stage 1 + diffusion re-rank", "dual softmax (test-time trick)"; written to metrics.json as given.
    ranks: {series name: (H,) 0-based ranks}, e.g. "stage 1 / t2v"; empty skips the plots.
    samples: [{"caption", "gt_video_id", "before": [5 video ids], "after": [5 video ids]}], optionally
      "rank_before" / "rank_after" (1-based rank of the correct video, shown when it is outside the top 5).
    thumbnails: {video_id: uint8 (H, W, 3) or (F, H, W, 3)}; a video without one shows a "no thumbnail" box.
    Both files are written atomically through ``storage``; metrics.json first.
    """
    page = render_html(
        metrics=metrics,
        ranks=ranks,
        samples=samples,
        thumbnails=thumbnails,
        title=title,
        config_yaml=config_yaml,
    )
    storage.write_text(join(out_dir_uri, "metrics.json"), json.dumps(_jsonable(metrics), indent=2) + "\n")
    report_uri = join(out_dir_uri, "report.html")
    storage.write_text(report_uri, page)
    return report_uri
