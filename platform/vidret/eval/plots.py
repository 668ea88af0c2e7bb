"""Dependency-free SVG plots for the report: a rank histogram and a recall-at-K curve.

Inputs are 0-based ranks, one (H,) array per series (e.g. "stage 1 / t2v"); plots show 1-based ranks.
The SVGs are standalone (``xmlns`` set), so they render as ``<img src="data:image/svg+xml;base64,...">``.
"""

from __future__ import annotations

import base64
import html
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#17becf",
    "#7f7f7f",
)
DASHES: tuple[str, ...] = ("", "6,3", "2,2", "8,3,2,3", "1,3", "10,4")  # told apart without colour too
MARKERS: tuple[str, ...] = ("circle", "square", "diamond", "triangle")
# 1-based rank bins: [1], [2], [3-5], [6-10], [11-20], [21-50], ...
_BIN_EDGES: tuple[int, ...] = (1, 2, 3, 6, 11, 21, 51, 101, 201, 501, 1001, 2001, 5001, 10001)

_MARGIN_L, _MARGIN_R, _MARGIN_T, _MARGIN_B = 56, 16, 34, 64


def _check_series(ranks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(ranks, Mapping) or not ranks:
        raise ValueError("ranks: expected a non-empty mapping of series name -> 1-D array of 0-based ranks")
    out = {}
    for name, r in ranks.items():
        arr = np.asarray(r)
        if arr.ndim != 1 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(
                f"ranks[{name!r}]: expected a non-empty 1-D numeric array, got shape {arr.shape}"
            )
        if not np.isfinite(arr).all() or arr.min() < 0:
            raise ValueError(f"ranks[{name!r}]: expected finite 0-based ranks >= 0")
        out[str(name)] = arr.astype(np.int64)
    return out


def svg_data_uri(svg: str) -> str:
    """``data:image/svg+xml;base64,...`` for an SVG document."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" font-weight="bold">'
        f"{html.escape(title)}</text>",
    ]


def _legend(names: list[str], x: float, y: float, *, lines: bool = False) -> list[str]:
    out = []
    for i, name in enumerate(names):
        yy = y + 15 * i
        color = PALETTE[i % len(PALETTE)]
        if lines:
            dash = DASHES[i % len(DASHES)]
            out.append(
                f'<line x1="{x - 8:.1f}" y1="{yy - 4:.1f}" x2="{x + 10:.1f}" y2="{yy - 4:.1f}" '
                f'stroke="{color}" '
                f'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>"
            )
        else:
            out.append(f'<rect x="{x:.1f}" y="{yy - 9:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14:.1f}" y="{yy:.1f}">{html.escape(name)}</text>')
    return out


def rank_histogram_svg(ranks: Mapping[str, np.ndarray], *, width: int = 640, height: int = 320) -> str:
    """Grouped bars: percent of queries whose correct item lands in each 1-based rank bin, per series."""
    series = _check_series(ranks)
    top = max(int(r.max()) + 1 for r in series.values())  # largest 1-based rank
    edges = [e for e in _BIN_EDGES if e <= top] + [top + 1]  # the last bin ends at the largest rank
    labels = [str(a) if b - a == 1 else f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    names = list(series)
    pct = np.array([np.histogram(r + 1, bins=edges)[0] * 100.0 / r.shape[0] for r in series.values()])
    step = 10.0 if pct.max() <= 60.0 else 20.0
    ymax = max(step, math.ceil(pct.max() / step) * step)

    x0, x1, y0, y1 = _MARGIN_L, width - _MARGIN_R, height - _MARGIN_B, _MARGIN_T
    out = _svg_open(width, height, "Rank of the correct item (histogram)")
    for tick in np.arange(0.0, ymax + step / 2, step):
        y = y0 - (y0 - y1) * tick / ymax
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.0f}%</text>')
    slot = (x1 - x0) / len(labels)
    bar = slot * 0.8 / len(names)
    for b, label in enumerate(labels):
        for s in range(len(names)):
            h = (y0 - y1) * pct[s, b] / ymax
            x = x0 + slot * b + slot * 0.1 + bar * s
            out.append(
                f'<rect x="{x:.1f}" y="{y0 - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{html.escape(names[s])} rank {label}: '
                f"{pct[s, b]:.1f}%</title></rect>"
            )
        out.append(f'<text x="{x0 + slot * (b + 0.5):.1f}" y="{y0 + 14}" text-anchor="middle">{label}</text>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>')
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + 32}" text-anchor="middle">rank (1 = first)</text>')
    out += _legend(names, x1 - 200, y1 + 12)
    out.append("</svg>")
    return "\n".join(out)


def recall_curve(ranks_H: np.ndarray, ks: np.ndarray) -> npt.NDArray[np.float64]:
    """R@K in percent for each K in ``ks``: 100 * mean(rank < K) over (H,) 0-based ranks."""
    sorted_H = np.sort(np.asarray(ranks_H))
    below_K: npt.NDArray[np.intp] = np.searchsorted(sorted_H, np.asarray(ks), side="left")
    recall_K: npt.NDArray[np.float64] = 100.0 * below_K / sorted_H.shape[0]
    return recall_K


def recall_curve_svg(ranks: Mapping[str, np.ndarray], *, width: int = 640, height: int = 320) -> str:
    """R@K against K (log axis, 1 .. largest rank), one line per series."""
    series = _check_series(ranks)
    kmax = max(10, *(int(r.max()) + 1 for r in series.values()))
    ks = np.unique(np.round(np.geomspace(1, kmax, 200)).astype(np.int64))
    x0, x1, y0, y1 = _MARGIN_L, width - _MARGIN_R, height - _MARGIN_B, _MARGIN_T

    def xpos(k: float) -> float:
        return x0 + (x1 - x0) * math.log(k) / math.log(kmax)

    out = _svg_open(width, height, "Recall at K")
    for tick in range(0, 101, 20):
        y = y0 - (y0 - y1) * tick / 100
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}%</text>')
    decade = 1
    while decade <= kmax:
        for m in (1, 2, 5):
            k = decade * m
            if k <= kmax:
                x = xpos(k)
                out.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y0}" stroke="#eeeeee"/>')
                out.append(f'<text x="{x:.1f}" y="{y0 + 14}" text-anchor="middle">{k}</text>')
        decade *= 10
    for s, (name, r) in enumerate(series.items()):
        rec = recall_curve(r, ks)
        pts = " ".join(f"{xpos(k):.1f},{y0 - (y0 - y1) * v / 100:.1f}" for k, v in zip(ks, rec, strict=True))
        color = PALETTE[s % len(PALETTE)]
        dash = DASHES[s % len(DASHES)]
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"'
            + (f' stroke-dasharray="{dash}"' if dash else "")
            + f"><title>{html.escape(name)}</title></polyline>"
        )
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + 32}" text-anchor="middle">K (log scale)</text>')
    out += _legend(list(series), x1 - 200, y0 - 15 * len(series), lines=True)
    out.append("</svg>")
    return "\n".join(out)


def interval_bars_svg(
    intervals: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    metrics: tuple[str, ...] = ("R1", "R5", "R10"),
    title: str = "Recall with 95% intervals",
    width: int = 640,
    height: int = 300,
) -> str:
    """Grouped bars of each series' recall metrics with interval whiskers.

    intervals: {series name (e.g. "stage 1 / t2v"): {metric: {"estimate", "lo", "hi"}}}, percent values.
    """
    if not intervals:
        raise ValueError("intervals: expected at least one series")
    names = list(intervals)
    x0, x1, y0, y1 = _MARGIN_L, width - _MARGIN_R, height - _MARGIN_B, _MARGIN_T
    out = _svg_open(width, height, title)
    for tick in range(0, 101, 20):
        y = y0 - (y0 - y1) * tick / 100
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}%</text>')
    slot = (x1 - x0) / len(metrics)
    bar = slot * 0.8 / len(names)
    for b, metric in enumerate(metrics):
        for s, name in enumerate(names):
            iv = intervals[name][metric]
            est, lo, hi = (float(iv[k]) for k in ("estimate", "lo", "hi"))
            x = x0 + slot * b + slot * 0.1 + bar * s
            ypos = [y0 - (y0 - y1) * v / 100 for v in (est, lo, hi)]
            cx = x + bar / 2
            out.append(
                f'<rect x="{x:.1f}" y="{ypos[0]:.1f}" width="{bar:.1f}" height="{y0 - ypos[0]:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}" fill-opacity="0.75">'
                f"<title>{html.escape(name)} {metric}: "
                f"{est:.1f} [{lo:.1f}, {hi:.1f}]</title></rect>"
            )
            out.append(
                f'<path class="whisker" d="M{cx:.1f},{ypos[1]:.1f} V{ypos[2]:.1f} '
                f"M{cx - 4:.1f},{ypos[1]:.1f} "
                f'H{cx + 4:.1f} M{cx - 4:.1f},{ypos[2]:.1f} H{cx + 4:.1f}" stroke="#111" stroke-width="1.5"/>'
            )
        label = {"R1": "R@1", "R5": "R@5", "R10": "R@10"}.get(metric, metric)
        out.append(f'<text x="{x0 + slot * (b + 0.5):.1f}" y="{y0 + 14}" text-anchor="middle">{label}</text>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>')
    out += _legend(names, x0 + 10, y0 + 26)
    out.append("</svg>")
    return "\n".join(out)


def line_plot_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 480,
    height: int = 280,
) -> str:
    """Lines of (x, y) points, one per series, each with its own colour, dash pattern and point markers."""
    pts_all = [p for pts in series.values() for p in pts]
    if not pts_all:
        raise ValueError("series: expected at least one point")
    xs, ys = [p[0] for p in pts_all], [p[1] for p in pts_all]
    xlo, xhi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    ylo, yhi = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    x0, x1, y0, y1 = _MARGIN_L, width - _MARGIN_R, height - _MARGIN_B, _MARGIN_T

    def at(x: float, y: float) -> str:
        return (
            f"{x0 + (x1 - x0) * (x - xlo) / (xhi - xlo):.1f},{y0 - (y0 - y1) * (y - ylo) / (yhi - ylo):.1f}"
        )

    out = _svg_open(width, height, title)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y, v = y0 - (y0 - y1) * frac, ylo + (yhi - ylo) * frac
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        x = x0 + (x1 - x0) * frac
        out.append(
            f'<text x="{x:.1f}" y="{y0 + 14}" text-anchor="middle">{xlo + (xhi - xlo) * frac:.0f}</text>'
        )
    for s, (name, pts) in enumerate(series.items()):
        color, dash = PALETTE[s % len(PALETTE)], DASHES[s % len(DASHES)]
        out.append(
            f'<polyline points="{" ".join(at(x, y) for x, y in pts)}" fill="none" stroke="{color}" '
            f'stroke-width="2"'
            + (f' stroke-dasharray="{dash}"' if dash else "")
            + f"><title>{html.escape(name)}"
            "</title></polyline>"
        )
        if len(pts) <= 40:  # markers where the points are few (per-epoch validation)
            for x, y in pts:
                cx, cy = at(x, y).split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="{2.5 + s}" fill="none" stroke="{color}"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
    out.append(
        f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + 30}" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    out.append(
        f'<text x="14" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(y0 + y1) / 2:.1f})">'
        f"{html.escape(ylabel)}</text>"
    )
    out += _legend(list(series), x0 + 20, y0 + 46, lines=True)[:4]
    out.append("</svg>")
    return "\n".join(out)
