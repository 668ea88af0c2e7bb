"""``vidret compare RUN_A RUN_B [...]``: runs side by side, with paired intervals of their differences.

A run is a ``run.out`` folder (local or ``s3://``) holding ``eval/<stage>/{metrics.json, ranks.json,
config.yaml}`` (the stage-2 evaluation when present, else stage 1), or such an evaluation folder itself.
On every split the runs share: a table of each run's metrics with their intervals, and for each later run
the paired bootstrap of ``run - RUN_A`` on the headline variant (re-ranked when evaluated, else stage 1):
the same resampled units for both runs, so it needs the same queries in the same order; where they differ
it refuses, naming the split, direction and first differing query. Then the config keys whose values differ.
Writes ``compare.json`` and ``compare.html`` (the report's style) to ``out``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from vidret.eval.intervals import BootstrapSpec, paired_difference
from vidret.eval.metrics import metrics_table
from vidret.eval.report import CSS
from vidret.eval.report_parts import metrics_html
from vidret.storage import Storage, join

STAGES = ("generation", "discrimination")
LABELS = {"stage1": "stage 1", "rerank": "re-ranked", "dual_softmax": "dual softmax"}


def _eval_dir(storage: Storage, run: str) -> str:
    for candidate in (*(join(run, "eval", s) for s in STAGES), run):
        if storage.exists(join(candidate, "metrics.json")):
            return candidate
    raise ValueError(
        f"{run}: no evaluation found (expected {run}/eval/generation/metrics.json, "
        f"{run}/eval/discrimination/metrics.json or {run}/metrics.json; run `vidret evaluate` first)"
    )


def load_run(storage: Storage, run: str) -> dict[str, Any]:
    """{"run", "dir", "metrics", "ranks", "config"} of one run (see the module docstring)."""
    d = _eval_dir(storage, run)
    ranks_uri = join(d, "ranks.json")
    if not storage.exists(ranks_uri):
        raise ValueError(f"{d}: no ranks.json (evaluated before per-query ranks were saved; re-run evaluate)")
    cfg_uri = join(d, "config.yaml")
    return {
        "run": run,
        "dir": d,
        "metrics": json.loads(storage.read_text(join(d, "metrics.json"))),
        "ranks": json.loads(storage.read_text(ranks_uri)),
        "config": yaml.safe_load(storage.read_text(cfg_uri)) if storage.exists(cfg_uri) else {},
    }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(configs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """{dotted key: [value per run]} for the keys whose values are not all equal (missing = None)."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1}


def _headline(ranks_split: Mapping[str, Any]) -> str:
    return "rerank" if "rerank" in ranks_split["t2v"]["ranks"] else "stage1"


def _check_same_queries(a: Mapping[str, Any], b: Mapping[str, Any], split: str, d: str) -> None:
    qa, qb = a["queries"], b["queries"]
    if qa == qb:
        return
    first = next((i for i, (x, y) in enumerate(zip(qa, qb, strict=False)) if x != y), min(len(qa), len(qb)))
    raise ValueError(
        f"compare: split {split!r} ({d}) has different query sets in the two runs ({len(qa)} vs {len(qb)} "
        f"queries; first difference at query {first}: {qa[first] if first < len(qa) else '<none>'!r} vs "
        f"{qb[first] if first < len(qb) else '<none>'!r}); a paired comparison needs the same queries"
    )


def paired_between(runs: Sequence[Mapping[str, Any]], spec: BootstrapSpec) -> dict[str, Any]:
    """{split: {"<run> - <RUN_A>": {direction: {metric: {"diff", "lo", "hi", "p"}}}}} on shared splits."""
    base = runs[0]
    shared = [s for s in base["ranks"] if all(s in r["ranks"] for r in runs[1:])]
    out: dict[str, Any] = {}
    for split in shared:
        out[split] = {}
        for run in runs[1:]:
            by_dir = {}
            for d in ("t2v", "v2t"):
                a, b = base["ranks"][split][d], run["ranks"][split][d]
                _check_same_queries(a, b, split, d)
                ra, rb = (
                    a["ranks"][_headline(base["ranks"][split])],
                    b["ranks"][_headline(run["ranks"][split])],
                )
                by_dir[d] = paired_difference(ra, rb, a["units"], spec, median="midpoint")
            out[split][f"{run['run']} - {base['run']}"] = by_dir
    return out


def _side_by_side(runs: Sequence[Mapping[str, Any]], split: str) -> tuple[dict[str, Any], dict[str, Any]]:
    rows, ivs = {}, {}
    for i, run in enumerate(runs):
        m = run["metrics"]
        for variant, by_dir in m.get("splits", {}).get(split, {}).items():
            label = f"[{chr(65 + i)}] {LABELS.get(variant, variant)}"
            rows[label] = by_dir
            block = m.get("intervals", {}).get(split)
            if block and variant in block.get("variants", {}):
                ivs[label] = block["variants"][variant]
    return rows, ivs


def run_compare(storage: Storage, run_uris: Sequence[str], out: str, spec: BootstrapSpec) -> dict[str, Any]:
    """Compare the runs; write ``compare.json`` and ``compare.html`` to ``out``; returns the summary
    (with a printable ``table``)."""
    if len(run_uris) < 2:
        raise ValueError("compare: expected at least two runs")
    runs = [load_run(storage, u) for u in run_uris]
    paired = paired_between(runs, spec)
    diff = config_diff([r["config"] for r in runs])
    names = {f"[{chr(65 + i)}]": r["run"] for i, r in enumerate(runs)}
    tables, sections = [], []
    for split in paired:
        rows, ivs = _side_by_side(runs, split)
        tables.append(f"{split}:\n" + metrics_table(rows, ivs))
        for key, by_dir in paired[split].items():
            for d in ("t2v", "v2t"):
                r1 = by_dir[d]["R1"]
                tables.append(
                    f"  {split} {d} R@1, {key}: {r1['diff']:+.1f} "
                    f"(95% CI [{r1['lo']:+.1f}, {r1['hi']:+.1f}], "
                    f"p = {r1['p']:.3f})"
                )
        sections.append(_section_html(split, rows, ivs, paired[split]))
    summary = {"runs": names, "paired": paired, "config_diff": diff, **spec.describe()}
    storage.write_text(join(out, "compare.json"), json.dumps(summary, indent=1, sort_keys=True) + "\n")
    page = _page(names, sections, diff, spec)
    storage.write_text(join(out, "compare.html"), page)
    summary["html"] = join(out, "compare.html")
    summary["table"] = "\n".join(tables)
    return summary


def _section_html(
    split: str, rows: Mapping[str, Any], ivs: Mapping[str, Any], paired: Mapping[str, Any]
) -> str:
    body = []
    for key, by_dir in paired.items():
        for d in ("t2v", "v2t"):
            cells = "".join(
                f"<td>{m['diff']:+.1f} [{m['lo']:+.1f}, {m['hi']:+.1f}]<br>"
                f"<span class='meta'>p = {m['p']:.3f}"
                "</span></td>"
                for m in (by_dir[d][k] for k in ("R1", "R5", "R10", "MdR", "MnR"))
            )
            body.append(
                f'<tr><td class="label">{html.escape(key)}</td><td class="label">{d}</td>{cells}</tr>'
            )
    head = "".join(f"<th>{c}</th>" for c in ("R@1", "R@5", "R@10", "MdR", "MnR"))
    return (
        f'<section class="split" id="split-{html.escape(split)}"><h2>Split: {html.escape(split)}</h2>'
        + metrics_html(rows, ivs, f"metrics-{split}")
        + '<h3>Paired differences</h3><table class="metrics paired" '
        f'id="paired-{html.escape(split)}"><thead><tr><th class="label">difference</th>'
        f'<th class="label">dir</th>{head}</tr></thead><tbody>{"".join(body)}'
        "</tbody></table></section>"
    )


def _page(
    names: Mapping[str, str], sections: Sequence[str], diff: Mapping[str, list[Any]], spec: BootstrapSpec
) -> str:
    runs = "".join(f"<li><b>{html.escape(k)}</b> {html.escape(v)}</li>" for k, v in names.items())
    diff_rows = "".join(
        f'<tr><td class="label">{html.escape(k)}</td>'
        + "".join(f"<td>{html.escape(json.dumps(v))}</td>" for v in vals)
        + "</tr>"
        for k, vals in diff.items()
    )
    heads = "".join(f"<th>{html.escape(k)}</th>" for k in names)
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f"<title>vidret compare</title><style>{CSS}</style></head><body>",
                "<h1>vidret compare</h1>",
                f"<ul>{runs}</ul>",
                '<p class="meta">Cells: value &plusmn; half the 95% interval of each run. Paired '
                f"differences: {spec.describe()['method']} bootstrap, {spec.resamples} resamples "
                f"(seed {spec.seed}), the same "
                "resampled units for both runs, headline variant of each (re-ranked when evaluated).</p>",
                *sections,
                '<h2 id="config-diff">Config differences</h2>',
                f'<table class="metrics" id="config-diff-table"><thead><tr><th class="label">key</th>'
                f"{heads}</tr>"
                f"</thead><tbody>{diff_rows}</tbody></table>"
                if diff
                else "<p>The configs are identical.</p>",
                "</body></html>",
            ]
        )
        + "\n"
    )
