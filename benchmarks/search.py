"""Search benchmark: the ANN prefilter, prefiltered vs exhaustive WTI, re-ranking, and HTTP through Ray Serve.

Prints one JSON object. ``python benchmarks/search.py [--quick] --checkpoint URI [--config FILE]``; the
checkpoint is the quickstart model (``make demo`` writes ``runs/quickstart/checkpoints/generation``).

* ``random``: galleries of 10k and 100k videos (``--quick``: 2k and 10k) with random frame features of the
  model's shapes (F frames, D width), drawn around 1 cluster centre per 50 videos so that the ANN sees
  structure as it would in a real library. ``ann_recall_at_100``: recall of the prefilter's top 100 against
  an exact pooled search, for queries that are noisy copies of gallery videos' pooled vectors, at the largest
  size (IVF with ``search.nprobe`` above ``search.flat_max``). Latency per query (real text queries, the
  model's text encoder excluded since every path needs it): prefilter + exact WTI on ``prefilter_m``
  candidates, the same plus diffusion re-ranking, and exhaustive WTI over the whole gallery;
  ``prefiltered_vs_exhaustive`` is the ratio of their p50s at the largest size. ``index_mb_100k``: RAM of
  the loaded index (frame features fp16, masks, weights, the faiss index, JPEG thumbnails at the real
  gallery's mean size) at 100k videos.
* ``real``: a generated corpus of ``--videos`` clips (default 5,000; 64 px, 2 s at 8 fps: shorter than the
  quickstart's 3 s so that decoding fits 2 cores) indexed by `vidret index` with the quickstart model.
  ``e2e_recall_at_10``: overlap of the top 10 of prefilter + exact WTI with the top 10 of exhaustive WTI,
  over ``--queries`` captions of the corpus (re-ranking off in both).
* ``http``: the Ray Serve application over the real index on 127.0.0.1, 8 client threads for
  ``--http-seconds``, random captions, default parameters (re-ranking on): ``http_qps``, p50/p99,
  ``http_errors`` (any non-200 answer or failed request).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidret.config import Config, load_config, replace, with_absolute_paths
from vidret.search import ann
from vidret.search.model_io import load_model, rerank_scores, wti_scores
from vidret.search.query import Gallery, SearchEngine
from vidret.storage import Storage

CAPTIONS = (
    "a red circle moves left",
    "a blue square grows and a green triangle moves up",
    "a yellow ball shrinks",
    "a white box slides to the right, then a red triangle moves down",
)


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3) if xs else float("nan")


def _random_gallery(n: int, frames: int, dim: int, seed: int) -> Gallery:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), dim)).astype(np.float32)
    which = rng.integers(0, len(centres), n)
    video = np.empty((n, frames, dim), np.float16)
    for s in range(0, n, 8192):
        e = min(s + 8192, n)
        noise = rng.normal(scale=0.6, size=(e - s, frames, dim)).astype(np.float32)
        video[s:e] = centres[which[s:e], None, :] + noise
    weight = np.full((n, frames), 1.0 / frames, np.float32)
    return Gallery(
        video_NFD=video,
        video_mask_NF=np.ones((n, frames), np.uint8),
        video_weight_NF=weight,
        video_ids=[f"r{i}" for i in range(n)],
        video_uris=[f"/random/r{i}.mp4" for i in range(n)],
        thumb_offsets=np.zeros(n + 1, np.int64),
        thumbs=np.zeros(0, np.uint8),
    )


def _pooled(g: Gallery) -> np.ndarray:
    out = np.empty((g.size, g.video_NFD.shape[2]), np.float32)
    for s in range(0, g.size, 8192):
        e = min(s + 8192, g.size)
        out[s:e] = ann.pooled(g.video_NFD[s:e], g.video_weight_NF[s:e], g.video_mask_NF[s:e])
    return out


def _ann_recall(index: Any, pooled: np.ndarray, queries: int, m: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    q = pooled[rng.choice(len(pooled), queries, replace=False)] + rng.normal(
        scale=0.05, size=(queries, pooled.shape[1])
    )
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    _, got = ann.ann_search(index, q, m)
    exact = np.argsort(-(q @ pooled.T), axis=1)[:, :m]
    return float(np.mean([len(set(a) & set(b)) / m for a, b in zip(got, exact, strict=True)]))


def _timed_ms(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000.0, out


def random_gallery(cfg: Config, loaded: Any, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """ANN build/recall and per-query latencies on a random gallery of ``n`` videos."""
    frames, dim = cfg.data.max_frames, loaded.model.backbone.embed_dim
    g = _random_gallery(n, frames, dim, seed=n)
    pooled = _pooled(g)
    build_ms, (index, spec) = _timed_ms(lambda: ann.build_ann(pooled, cfg.search, seed=0))
    ann.set_search_params(index, cfg.search)
    engine = SearchEngine(cfg, loaded, g, index, {"ann": spec.to_dict()}, f"random-{n}")
    texts = [engine.encode(c) for c in CAPTIONS]
    pre, pre_rr, exh = [], [], []
    m, rk = cfg.search.prefilter_m, cfg.search.rerank_k or cfg.diffusion.t2v_k
    for i in range(args.latency_queries):
        text = texts[i % len(texts)]
        qvec = ann.query_vector(
            text["text"].numpy(),
            text["text_weight"].numpy(),
            text["text_mask"].numpy(),
            text["text_eot"].numpy(),
        )
        t0 = time.perf_counter()
        _, cand = ann.ann_search(index, qvec, m)
        video = g.rows(cand[0])
        sim = wti_scores(loaded.model, text, video)
        pre.append((time.perf_counter() - t0) * 1000.0)
        t_rr, _ = _timed_ms(
            lambda sim=sim, video=video, text=text: rerank_scores(
                loaded.model, sim, text["text_eot"], video["video"], video["video_mask"], cfg.diffusion, rk
            )
        )
        pre_rr.append(pre[-1] + t_rr)
    for i in range(args.exhaustive_queries):
        t_exh, _ = _timed_ms(lambda i=i: _exhaustive(loaded, texts[i % len(texts)], g))
        exh.append(t_exh)
    thumb_mb = n * args.thumb_bytes / 2**20
    return {
        "videos": n,
        "ann": spec.to_dict(),
        "ann_build_s": round(build_ms / 1000.0, 2),
        "ann_recall_at_100": round(_ann_recall(index, pooled, args.recall_queries, 100, seed=1), 4),
        "prefiltered_ms": {"p50": _pct(pre, 50), "p99": _pct(pre, 99)},
        "prefiltered_rerank_ms": {"p50": _pct(pre_rr, 50), "p99": _pct(pre_rr, 99)},
        "exhaustive_ms": {"p50": _pct(exh, 50), "p99": _pct(exh, 99)},
        "prefiltered_vs_exhaustive": round(_pct(exh, 50) / _pct(pre, 50), 1),
        "index_mb": round((g.nbytes() + len(ann.to_bytes(index))) / 2**20 + thumb_mb, 1),
    }


def _exhaustive(loaded: Any, text: dict[str, torch.Tensor], g: Gallery, block: int = 4096) -> np.ndarray:
    out = np.empty(g.size, np.float32)
    for s in range(0, g.size, block):
        rows = np.arange(s, min(s + block, g.size))
        out[rows] = wti_scores(loaded.model, text, g.rows(rows), block=256)[0].numpy()
    return out


def _real_index(cfg: Config, args: argparse.Namespace) -> tuple[str, list[str], dict[str, Any]]:
    """Generate the corpus (once), write one manifest of every split, index it (resumable)."""
    import pyarrow as pa

    from vidret.config import SynthConfig
    from vidret.data.annotations.manifest import build_manifest, read_manifest, write_manifest
    from vidret.data.synthetic import generate_corpus
    from vidret.search.build import run_index

    storage, work = Storage(), Path(args.work)
    corpus, manifest, index = work / "corpus", work / f"all-{args.videos}.parquet", str(work / "index")
    t0 = time.perf_counter()
    if not (corpus / "summary.json").exists():
        synth = SynthConfig(
            out=str(corpus), videos=args.videos, seed=123, size=64, seconds=2.0, fps=8, workers=2
        )
        generate_corpus(synth, storage)
    gen_s = time.perf_counter() - t0
    if not manifest.exists():
        tables = [
            build_manifest("synthetic", str(corpus / "anns"), str(corpus / "videos"), s, storage).table
            for s in ("train", "val", "test", "ood")
        ]
        write_manifest(pa.concat_tables(tables).slice(0, args.videos), str(manifest), storage)
    summary = run_index(
        cfg, args.checkpoint, str(manifest), index, say=lambda line: print(line, file=sys.stderr)
    )
    captions = [
        c for caps in read_manifest(str(manifest), storage).column("captions").to_pylist() for c in caps
    ]
    return index, captions, {"generate_s": round(gen_s, 1), "index": summary}


def real_gallery(cfg: Config, args: argparse.Namespace) -> tuple[dict[str, Any], str, list[str]]:
    """End-to-end recall of prefilter + exact WTI against exhaustive WTI on the real gallery."""
    index_uri, captions, info = _real_index(cfg, args)
    engine = SearchEngine.open(index_uri, cfg)
    rng = np.random.default_rng(0)
    picked = [captions[i] for i in rng.choice(len(captions), min(args.queries, len(captions)), replace=False)]
    overlaps, lat = [], []
    for cap in picked:
        res = engine.search(cap, k=10, rerank=False)
        lat.append(res["timings"]["total_ms"])
        exh = engine.exhaustive_wti(cap)
        want = set(np.lexsort((np.arange(len(exh)), -exh.astype(np.float64)))[:10].tolist())
        overlaps.append(len(want & {r["row"] for r in res["results"]}) / 10)
    thumbs = engine.gallery.thumb_offsets
    out = {
        **info,
        "videos": engine.gallery.size,
        "ann": engine.meta["ann"]["kind"],
        "queries": len(picked),
        "e2e_recall_at_10": round(float(np.mean(overlaps)), 4),
        "query_total_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99)},
        "thumb_bytes_mean": round(float(thumbs[-1]) / max(1, len(thumbs) - 1), 1),
    }
    return out, index_uri, picked


def http_load(cfg: Config, index_uri: str, captions: list[str], seconds: float) -> dict[str, Any]:
    """8 concurrent clients against the Serve application for ``seconds``."""
    import socket

    import requests

    from vidret.search.service import start_service, stop_service

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = replace(cfg, search=replace(cfg.search, port=port, replica_cpus=1.0))
    base = start_service(cfg, index_uri)
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        session, n = requests.Session(), i
        while time.monotonic() < deadline:
            n += 8
            t0 = time.perf_counter()
            try:
                ok = session.get(f"{base}search", params={"q": captions[n % len(captions)]}, timeout=60).ok
            except requests.RequestException:
                ok = False
            with lock:
                lat.append((time.perf_counter() - t0) * 1000.0) if ok else None
                errors[0] += 0 if ok else 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop_service()
    return {
        "clients": 8,
        "seconds": round(wall, 1),
        "requests": len(lat) + errors[0],
        "http_qps": round(len(lat) / wall, 2),
        "http_p50_ms": _pct(lat, 50),
        "http_p99_ms": _pct(lat, 99),
        "http_errors": errors[0],
    }


def main() -> None:
    """Run everything with fd 1 pointed at stderr (Ray and its workers log there), then print the JSON."""
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        result = run()
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
    print(json.dumps(result, indent=2), flush=True)


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="runs/quickstart/checkpoints/generation")
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--work", default="runs/bench-search", help="corpus and index of the real gallery")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--exhaustive-queries", type=int, default=10)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--http-seconds", type=float, default=30.0)
    parser.add_argument("--thumb-bytes", type=float, default=0.0, help="0 = the real gallery's mean")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.videos, args.queries, args.latency_queries = min(args.videos, 300), 30, 20
        args.exhaustive_queries, args.recall_queries, args.http_seconds = 3, 50, 8.0
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    cfg = with_absolute_paths(load_config(args.config))
    if not Storage().exists(f"{args.checkpoint}/meta.json"):
        raise SystemExit(
            f"{args.checkpoint}: no exported weights; run `make demo` first or pass --checkpoint"
        )
    from vidret.runtime import ensure_ray

    ensure_ray(cfg.run)
    real, index_uri, picked = real_gallery(cfg, args)
    args.thumb_bytes = args.thumb_bytes or real["thumb_bytes_mean"]
    loaded = load_model(cfg, args.checkpoint, Storage())
    sizes = (2_000, 10_000) if args.quick else (10_000, 100_000)
    rand = {str(n): random_gallery(cfg, loaded, n, args) for n in sizes}
    http = http_load(cfg, index_uri, picked, args.http_seconds)
    big = rand[str(sizes[-1])]
    result = {
        "ann_recall_at_100": big["ann_recall_at_100"],
        "e2e_recall_at_10": real["e2e_recall_at_10"],
        "prefiltered_vs_exhaustive": big["prefiltered_vs_exhaustive"],
        "http_qps": http["http_qps"],
        "http_p99_ms": http["http_p99_ms"],
        "http_errors": http["http_errors"],
        "index_mb_100k": big["index_mb"] if sizes[-1] == 100_000 else None,
        "quick": args.quick,
        "threads": args.threads,
        "random": rand,
        "real": real,
        "http": http,
    }
    return result


if __name__ == "__main__":
    main()
