"""The search service's web page: one self-contained HTML document (inline CSS and JavaScript, no CDN).

It calls ``/search`` with the box's text, the re-rank toggle and k, then draws a grid of results
(thumbnail from ``/thumb/<row>``, video id, stage-1 and fused scores) and the per-stage timings. Text from
the index or the query is inserted with ``textContent`` only, never as HTML.
"""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d3557;color:#fff;padding:14px 22px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:13px;opacity:.85}
form{display:flex;gap:10px;align-items:center;padding:16px 22px;flex-wrap:wrap}
#q{flex:1;min-width:260px;font-size:16px;padding:8px 10px;border:1px solid #9aa3b2;border-radius:6px}
button{font-size:15px;padding:8px 16px;border:0;border-radius:6px;background:#e63946;color:#fff}
label{font-size:14px}
#status{padding:0 22px;font-size:13px;color:#4a5568;min-height:18px}
#timings{padding:0 22px;font-size:13px;color:#1d3557;font-family:monospace}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:14px;padding:16px 22px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.15);padding:8px;font-size:12px}
.card img{width:100%;aspect-ratio:1/1;object-fit:cover;border-radius:4px;background:#ccd;display:block}
.card .id{font-weight:600;margin:6px 0 2px;word-break:break-all}
.card .s{color:#4a5568}
.error{color:#b00020}
</style></head>
<body>
<header><h1>__TITLE__</h1><p>__SUBTITLE__</p></header>
<form id="f">
<input id="q" name="q" type="search" placeholder="describe a video, e.g. a red circle moves left" autofocus>
<label>k <input id="k" type="number" min="1" max="__MAXK__" value="__K__" style="width:60px"></label>
<label><input id="rerank" type="checkbox" __RERANK__> diffusion re-rank</label>
<button type="submit">Search</button>
</form>
<div id="status"></div>
<div id="timings"></div>
<div id="grid"></div>
<script>
(function () {
  var form = document.getElementById("f"), grid = document.getElementById("grid");
  var status = document.getElementById("status"), timings = document.getElementById("timings");
  function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toFixed(4); }
  function card(r) {
    var div = document.createElement("div"); div.className = "card"; div.dataset.videoId = r.video_id;
    var img = document.createElement("img"); img.src = r.thumbnail_url; img.alt = r.video_id;
    var id = document.createElement("div"); id.className = "id"; id.textContent = r.rank + ". " + r.video_id;
    var s = document.createElement("div"); s.className = "s";
    s.textContent = "stage 1 " + fmt(r.stage1_score) + " | fused " + fmt(r.fused_score);
    div.appendChild(img); div.appendChild(id); div.appendChild(s); return div;
  }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var params = new URLSearchParams({q: document.getElementById("q").value,
      k: document.getElementById("k").value, rerank: document.getElementById("rerank").checked});
    status.textContent = "searching..."; status.className = "";
    fetch("search?" + params.toString()).then(function (resp) {
      return resp.json().then(function (body) { return {ok: resp.ok, body: body}; });
    }).then(function (r) {
      grid.textContent = ""; timings.textContent = "";
      if (!r.ok) { status.textContent = r.body.error || "error"; status.className = "error"; return; }
      var b = r.body;
      status.textContent = b.results.length + " results of " + b.gallery + " videos" +
        (b.rerank ? " (re-ranked)" : " (stage 1)") + (b.warnings.length ? " - " + b.warnings.join("; ") : "");
      timings.textContent = Object.keys(b.timings).map(function (k) {
        return k.replace("_ms", "") + " " + b.timings[k].toFixed(1) + " ms"; }).join(" | ");
      b.results.forEach(function (res) { grid.appendChild(card(res)); });
      document.body.dataset.done = String(b.results.length);
    }).catch(function (e) { status.textContent = "request failed: " + e; status.className = "error"; });
  });
})();
</script>
</body></html>
"""


def page_html(title: str, subtitle: str, k: int, max_k: int, rerank: bool) -> str:
    """The search page; ``title`` and ``subtitle`` are escaped."""
    return (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__SUBTITLE__", html.escape(subtitle))
        .replace("__MAXK__", str(int(max_k)))
        .replace("__K__", str(int(k)))
        .replace("__RERANK__", "checked" if rerank else "")
    )
