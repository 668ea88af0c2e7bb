"""The evaluation report: one self-contained ``report.html`` (no external resources, opens from ``file://``
and from object storage).

One section per evaluated split, each with n, the gallery size and chance level, the metrics with bootstrap
intervals (``40.0 ±4.8``), the paired re-ranked minus stage-1 differences (interval and p-value), recall
bars with interval whiskers, a rank histogram and a recall-at-K curve (inline SVG, series told apart by
colour and dash), and sample queries chosen by outcome (re-ranking helped / hurt / both fail) in both
directions, each with the correct item's rank before and after and its thumbnail (base64 JPEG strips).
Then the training curves from the run's logged scalars, the fusion selection and the resolved config.
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

from vidret.eval import report_parts as parts
from vidret.eval.plots import interval_bars_svg, rank_histogram_svg, recall_curve_svg, svg_data_uri
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
nav a { margin-right: 14px; } section.split { border-top: 3px solid #1f77b4; margin-top: 30px; }
td.iv { white-space: nowrap; } tr.chosen td { font-weight: bold; background: #eef6ee; }
.ranks { font-size: 13px; margin: 4px 0; } .cap { display: inline-block; max-width: 220px; font-size: 12px; }
.outside { align-self: center; font-weight: bold; color: #a33; }
"""

CSS = _CSS  # shared with the compare page


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
    tiles = [Image.fromarray(arr[i]).resize((width, height), Image.Resampling.BILINEAR) for i in pick]
    strip = Image.new("RGB", (width * len(tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (width + 2), 0))
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


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


def _video(vid: str) -> dict[str, Any]:
    return {"id": vid, "label": vid, "video_id": vid}


def t2v_sample(s: Mapping[str, Any]) -> dict[str, Any]:
    """A text-to-video sample in the report's item form from {"caption", "gt_video_id", "before", "after",
    optional "rank_before"/"rank_after" (1-based)}."""
    return {
        "direction": "t2v",
        "outcome": s.get("outcome", "sample"),
        "query": {"id": "query", "label": s["caption"], "video_id": None},
        "gt": _video(s["gt_video_id"]),
        "before": [_video(v) for v in s["before"]],
        "after": [_video(v) for v in s["after"]],
        "rank_before": s.get("rank_before"),
        "rank_after": s.get("rank_after"),
    }


def _thumb_uris(splits: Sequence[Mapping[str, Any]], thumbnails: Mapping[str, Any]) -> dict[str, str]:
    for vid, frames in thumbnails.items():
        _check_frames(frames, vid)
    needed = set()
    for sp in splits:
        for s in sp.get("samples", []):
            for it in (s["query"], s["gt"], *s["before"][:5], *s["after"][:5]):
                if it.get("video_id"):
                    needed.add(it["video_id"])
    return {
        vid: "data:image/jpeg;base64," + base64.b64encode(frame_strip(thumbnails[vid], vid)).decode("ascii")
        for vid in sorted(needed)
        if vid in thumbnails
    }


def _split_section(sp: Mapping[str, Any], thumbs: Mapping[str, str], start: int) -> str:
    name = str(sp["name"])
    block = sp.get("intervals")
    labels = sp.get("labels", {})
    ivs = {labels.get(v, v): by_dir for v, by_dir in block["variants"].items()} if block else None
    out = [f'<section class="split" id="split-{html.escape(name)}"><h2>Split: {html.escape(name)}</h2>']
    if block:
        out.append(parts.split_facts_html(block))
    out.append(parts.metrics_html(sp["metrics"], ivs, f"metrics-{name}"))
    out.append(
        '<p class="meta">R@K in percent; MdR / MnR are the median / mean rank (1 = first). '
        + (
            f"&plusmn; is half the {round(100 * block['level'])}% {block['method']} bootstrap interval "
            f"({block['resamples']} resamples); hover a cell for the interval. "
            if block
            else ""
        )
        + "Rows labelled as test-time tricks use the whole test query set.</p>"
    )
    if block:
        out.append(f"<h3>Re-ranked minus stage 1</h3>{parts.paired_html(block, labels, name)}")
    imgs = []
    if block:
        for d in ("t2v", "v2t"):
            series = {f"{labels.get(v, v)} / {d}": by_dir[d] for v, by_dir in block["variants"].items()}
            svg = interval_bars_svg(
                series, title=f"{name}: {d} recall with {round(100 * block['level'])}% intervals"
            )
            imgs.append(
                f'<img id="interval-bars-{html.escape(name)}-{d}" alt="{d} intervals" '
                f'src="{svg_data_uri(svg)}">'
            )
    if sp.get("ranks"):
        hist, curve = rank_histogram_svg(sp["ranks"]), recall_curve_svg(sp["ranks"])
        imgs.append(
            f'<img id="rank-histogram-{html.escape(name)}" alt="rank histogram" src="{svg_data_uri(hist)}">'
        )
        imgs.append(
            f'<img id="recall-curve-{html.escape(name)}" alt="recall at K" src="{svg_data_uri(curve)}">'
        )
    if imgs:
        out.append(f'<h3>Ranks</h3><div class="plots">{"".join(imgs)}</div>')
    if sp.get("samples"):
        out.append(parts.samples_html(name, sp["samples"], thumbs, start))
    out.append("</section>")
    return "\n".join(out)


def render_page(
    *,
    splits: Sequence[Mapping[str, Any]],
    thumbnails: Mapping[str, Any],
    title: str,
    config_yaml: str,
    curves: Mapping[str, Any] | None = None,
    fusion: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report page as one string.

    splits: [{"name", "metrics": {row label: {direction: metrics}}, "intervals": the split's intervals block
    or None, "labels": {variant: row label}, "ranks": {series: (H,) 0-based ranks}, "samples": [sample]}];
    a sample is {"direction", "outcome", "query", "gt", "before", "after", "rank_before", "rank_after"} with
    items {"id", "label", "video_id" (None: no thumbnail)} (see ``vidret.eval.report_data``).
    thumbnails: {video_id: uint8 (H, W, 3) or (F, H, W, 3)}. notes: sentences shown under the title.
    """
    thumbs = _thumb_uris(splits, thumbnails)
    nav = " ".join(
        f'<a href="#split-{html.escape(str(sp["name"]))}">{html.escape(str(sp["name"]))}</a>' for sp in splits
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<nav>splits: {nav} <a href='#training'>training</a> <a href='#config'>config</a></nav>",
        *(f'<p class="note">{html.escape(n)}</p>' for n in notes),
    ]
    start = 0
    for sp in splits:
        out.append(_split_section(sp, thumbs, start))
        start += len(sp.get("samples", []))
    out += [
        '<h2 id="training">Training curves</h2>',
        parts.curves_html(curves or {}),
        "<h2>Fusion weight and temperature</h2>",
        parts.fusion_html(fusion),
        '<h2 id="config">Config</h2>',
        f"<details><summary>resolved config</summary><pre>{html.escape(config_yaml)}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def write_page(out_dir_uri: str, storage: Storage, **page: Any) -> str:
    """Render (see :func:`render_page`) and write ``<out_dir_uri>/report.html`` atomically; returns its
    URI."""
    text = render_page(**page)
    report_uri = join(out_dir_uri, "report.html")
    storage.write_text(report_uri, text)
    return report_uri


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
    """A one-split report without intervals: ``<out_dir_uri>/metrics.json`` then ``report.html``.

    metrics: {row label: {"t2v": {...}, "v2t": {...}}}, written to metrics.json as given.
    ranks: {series name: (H,) 0-based ranks}; empty skips the plots.
    samples: [{"caption", "gt_video_id", "before": [5 video ids], "after": [5 video ids]}], optionally
      "rank_before" / "rank_after" (1-based rank of the correct video, shown when it is outside the top 5).
    thumbnails: {video_id: uint8 (H, W, 3) or (F, H, W, 3)}. Both files are written atomically, metrics first.
    """
    for i, s in enumerate(samples):
        _check_sample(i, s)
    split = {"name": "results", "metrics": metrics, "intervals": None, "ranks": ranks,
             "samples": [t2v_sample(s) for s in samples]}  # fmt: skip
    page = render_page(splits=[split], thumbnails=thumbnails, title=title, config_yaml=config_yaml)
    storage.write_text(join(out_dir_uri, "metrics.json"), json.dumps(_jsonable(metrics), indent=2) + "\n")
    report_uri = join(out_dir_uri, "report.html")
    storage.write_text(report_uri, page)
    return report_uri
