"""HTML fragments of the report: metric tables with intervals, the paired differences, sample queries,
training curves and the fusion selection. Every piece of text is escaped; images are data URIs."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from vidret.eval.metrics import DIRECTIONS, table_rows
from vidret.eval.plots import line_plot_svg, svg_data_uri

COLS = ("R@1", "R@5", "R@10", "MdR", "MnR")
_KEYS = ("R1", "R5", "R10", "MdR", "MnR")
DIRECTION_NAMES = {"t2v": "text &rarr; video", "v2t": "video &rarr; text"}
OUTCOME_TEXT = {
    "helped": "re-ranking helped",
    "hurt": "re-ranking hurt",
    "both fail": "both fail (correct item not first)",
    "sample": "sample",
}


def metrics_html(metrics: Mapping[str, Any], intervals: Mapping[str, Any] | None, table_id: str) -> str:
    """The metrics table; with intervals each cell reads ``40.0 ±4.8`` and its title holds the interval."""
    rows = table_rows(metrics, intervals)
    head1 = '<tr><th class="label" rowspan="2">run</th>' + "".join(
        f'<th colspan="{len(COLS)}">{DIRECTION_NAMES[d]} ({d})</th>' for d in DIRECTIONS
    )
    head2 = "<tr>" + "".join(f"<th>{c}</th>" for c in COLS * len(DIRECTIONS)) + "</tr>"
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r[1:]):
            d, key = DIRECTIONS[i // len(_KEYS)], _KEYS[i % len(_KEYS)]
            iv = ((intervals or {}).get(r[0]) or {}).get(d, {}).get(key)
            title = f' title="95% interval [{iv["lo"]:.1f}, {iv["hi"]:.1f}]"' if iv else ""
            cells.append(f'<td class="{"iv" if iv else "v"}"{title}>{html.escape(c)}</td>')
        body.append(f'<tr><td class="label">{html.escape(r[0])}</td>{"".join(cells)}</tr>')
    return (
        f'<table class="metrics" id="{html.escape(table_id)}"><thead>{head1}</tr>{head2}</thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def split_facts_html(block: Mapping[str, Any]) -> str:
    """n, gallery size, chance level and resampling unit per direction."""
    items = []
    for d in DIRECTIONS:
        ch = block["chance"][d]
        items.append(
            f"<li><b>{d}</b>: n = {block['n'][d]} queries against {block['gallery'][d]} items; chance R@1 "
            f"{ch['R1']:.2f}%, R@5 {ch['R5']:.2f}%, R@10 {ch['R10']:.2f}%, MdR {ch['MdR']:.1f}; resampling "
            f"unit: {html.escape(block['unit'][d])}</li>"
        )
    return f'<ul class="facts">{"".join(items)}</ul>'


def paired_html(block: Mapping[str, Any], labels: Mapping[str, str], split: str) -> str:
    """Paired differences (variant minus stage 1) with interval and p-value per direction and metric."""
    if not block.get("paired"):
        return '<p class="meta">No re-ranked variant: no paired comparison.</p>'
    level = round(100 * float(block["level"]))
    rows = []
    for key, by_dir in block["paired"].items():
        variant, base = key.split(" - ")
        name = f"{labels.get(variant, variant)} &minus; {labels.get(base, base)}"
        for d in DIRECTIONS:
            cells = "".join(
                f'<td>{m["diff"]:+.1f} [{m["lo"]:+.1f}, {m["hi"]:+.1f}]<br><span class="meta">p = '
                f"{m['p']:.3f}</span></td>"
                for m in (by_dir[d][k] for k in _KEYS)
            )
            rows.append(f'<tr><td class="label">{name}</td><td class="label">{d}</td>{cells}</tr>')
    head = "".join(f"<th>{c}</th>" for c in COLS)
    return (
        f'<table class="metrics paired" id="paired-{html.escape(split)}"><thead><tr><th class="label">'
        f'difference</th><th class="label">dir</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f'<p class="meta">Paired {block["method"]} bootstrap, {block["resamples"]} resamples (seed '
        f"{block['seed']}): the same resampled units for both variants; {level}% interval and "
        "two-sided p.</p>"
    )


def _item_fig(it: Mapping[str, Any], hit: bool, pos: str, thumbs: Mapping[str, str]) -> str:
    vid = it.get("video_id")
    if vid:
        uri = thumbs.get(vid)
        pic = (
            f'<img src="{uri}" alt="{html.escape(vid)}">'
            if uri
            else '<span class="nothumb">no thumbnail</span>'
        )
        attr = f' data-video-id="{html.escape(vid)}"'
    else:
        pic, attr = f'<span class="cap">{html.escape(it["label"])}</span>', ""
    mark = " &#10003; correct" if hit else ""
    label = html.escape(it["label"]) if vid else ""
    return (
        f'<figure class="{"hit" if hit else "miss"}"{attr} data-item-id="{html.escape(it["id"])}">{pic}'
        f"<figcaption>{pos} {label}{mark}</figcaption></figure>"
    )


def _rank_text(rank: Any) -> str:
    return "?" if rank is None else str(int(rank))


def sample_html(i: int, s: Mapping[str, Any], thumbs: Mapping[str, str]) -> str:
    """One sample query: the query, the correct item with its rank before and after, both top 5 lists."""
    gt = s["gt"]
    q = s["query"]
    qpic = _item_fig(q, False, "query", thumbs) if q.get("video_id") else ""
    qtext = "" if q.get("video_id") else f'<div class="caption">{html.escape(q["label"])}</div>'
    rb, ra = _rank_text(s.get("rank_before")), _rank_text(s.get("rank_after"))
    ranks = (
        f'<div class="ranks">correct item rank: stage 1 <b class="rank-before">{rb}</b> &rarr; re-ranked '
        f'<b class="rank-after">{ra}</b></div>'
    )
    correct = _item_fig(gt, True, "correct:", thumbs)
    rows = []
    for key, stage in (("before", "stage 1 (before re-ranking)"), ("after", "after diffusion re-ranking")):
        figs = [_item_fig(it, it["id"] == gt["id"], f"#{p + 1}", thumbs) for p, it in enumerate(s[key][:5])]
        rank = s.get(f"rank_{key}")
        if not any(it["id"] == gt["id"] for it in s[key][:5]):
            figs.append(f'<span class="meta outside">correct item at rank {_rank_text(rank)}</span>')
        rows.append(f'<div class="row {key}"><div class="stage">{stage}</div>{"".join(figs)}</div>')
    outcome = OUTCOME_TEXT.get(s.get("outcome", "sample"), s.get("outcome", ""))
    return (
        f'<div class="sample" id="sample-{i}" data-direction="{s.get("direction", "t2v")}" '
        f'data-outcome="{html.escape(str(s.get("outcome", "sample")))}">'
        f'<div class="meta">{s.get("direction", "t2v")} &middot; {html.escape(outcome)}</div>'
        f'{qtext}<div class="row query">{qpic}{correct}</div>{ranks}{"".join(rows)}</div>'
    )


def samples_html(
    split: str, samples: Sequence[Mapping[str, Any]], thumbs: Mapping[str, str], start: int
) -> str:
    """The samples of a split grouped by direction and outcome."""
    parts = [f"<h3>Sample queries ({len(samples)}), chosen by outcome</h3>"]
    i = start
    for d in DIRECTIONS:
        group = [s for s in samples if s.get("direction", "t2v") == d]
        if not group:
            continue
        parts.append(f'<h4 id="samples-{html.escape(split)}-{d}">{DIRECTION_NAMES[d]}</h4>')
        for s in group:
            parts.append(sample_html(i, s, thumbs))
            i += 1
    return "".join(parts)


def curves_html(curves: Mapping[str, Mapping[str, list[tuple[int, float]]]]) -> str:
    """Training loss and validation R@1 (model vs EMA) per stage, from the run's logged scalars."""
    if not curves:
        return '<p class="meta">No logged training scalars found for this run.</p>'
    imgs = []
    for stage, c in curves.items():
        if "loss" in c:
            svg = line_plot_svg(
                {"loss": c["loss"]}, title=f"{stage}: training loss", xlabel="step", ylabel="loss"
            )
            imgs.append(
                f'<img class="curve" id="curve-{stage}-loss" alt="{stage} loss" src="{svg_data_uri(svg)}">'
            )
        val = {
            name: c[key]
            for name, key in (("model", "val_model_t2v_R1"), ("EMA", "val_ema_t2v_R1"))
            if key in c
        }
        if val:
            svg = line_plot_svg(
                val, title=f"{stage}: val t2v R@1, model vs EMA", xlabel="step", ylabel="R@1 (%)"
            )
            imgs.append(
                f'<img class="curve" id="curve-{stage}-val" alt="{stage} val R@1" src="{svg_data_uri(svg)}">'
            )
    return f'<div class="plots">{"".join(imgs)}</div>'


def _is_chosen(g: Mapping[str, Any], fusion: Mapping[str, Any]) -> bool:
    best = fusion[g["direction"]]
    return bool(g["alpha"] == best["alpha"] and g["temp"] == best["temp"])


def fusion_html(fusion: Mapping[str, Any] | None) -> str:
    """The fusion weight and temperature chosen on validation, with the grid."""
    if not fusion:
        return '<p class="meta">Fusion weight and temperature: from the config (not selected).</p>'
    rows = "".join(
        f"<tr{' class=chosen' if _is_chosen(g, fusion) else ''}>"
        f"<td>{g['direction']}</td><td>{g['alpha']:g}</td><td>{g['temp']:g}</td><td>{g['R1']:.1f}</td>"
        f"<td>{g['R5']:.1f}</td><td>{g['MnR']:.2f}</td></tr>"
        for g in fusion["grid"]
    )
    return (
        f"<p>Chosen on <b>{html.escape(str(fusion.get('chosen_on', 'val')))}</b> (never on test): t2v alpha "
        f"{fusion['t2v']['alpha']:g}, temp {fusion['t2v']['temp']:g}; v2t alpha {fusion['v2t']['alpha']:g}, "
        f"temp {fusion['v2t']['temp']:g}.</p><details><summary>validation grid</summary>"
        '<table class="metrics" '
        'id="fusion-grid"><thead><tr><th>dir</th><th>alpha</th><th>temp</th><th>val R@1</th><th>val R@5</th>'
        f"<th>val MnR</th></tr></thead><tbody>{rows}</tbody></table></details>"
    )
