"""ActivityNet at cluster scale: per-unit costs measured in one run, then projected to the whole corpus.

Prints one JSON object. ``python benchmarks/scale.py [--quick]``. Sections:

* ``decode``: 64 frames at 1 frame/s, 224 px (configs/activitynet.yaml) from a long raw video (ActivityNet
  shaped: 30 fps, 640x360, B-frames, scene-cut GOPs of up to 5 s, from ``vidret.data.synthetic.activitynet``)
  vs from its prepared form (3 fps, short side 224, 1 s GOP), in CPU seconds per video on one core; and the
  prepare transcode's throughput in video-seconds per core-second.
* ``streaming_rss``: peak private memory (USS) and PSS summed over this process and every Ray process below
  it while the streaming decode pipeline reads 1x, 4x and 16x the manifest rows; ``rss_growth_16x`` =
  peak USS(16x) / peak USS(1x).
* ``feature_cache``: bytes per video of the cache at 64 frames and 64 words (D = 512, ViT-B/32's joint
  width; one paragraph per video) and its write and read rates on local disk.
* ``evaluation``: ``evaluate_features`` (blocked WTI + re-ranking of both directions + metrics) at L = F = 64
  for N = 1,000 and 2,000 on CPU (tiny preset, D = 128), each in a fresh process: time, peak PSS above the
  start; a probe at D = 512 (ViT-B/32's width, N = 500) gives the re-ranking rate the projection uses; and
  ``wti_vs_matmul``: the WTI similarity's FLOP rate over a plain matmul's of the same width, the two
  interleaved chunk by chunk in the same process so that a shared machine's load hits both alike (the
  lowest of all runs).
* ``projection``: the whole of ActivityNet from those costs (see ``benchmarks/scale_projection.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import run_in_child
from scale_projection import project

FRAMES = WORDS = 64
OBJECT_STORE = 1 << 30  # bytes, of each streaming run's local Ray
# Allocators that keep freed frame buffers make private memory creep up with the number of batches:
# glibc raises its mmap threshold after each freed large block (up to 32 MiB), after which the ~10 MB frame
# arrays come from the heap and freed ones are kept; Arrow's default pool (jemalloc) keeps freed pages too
# (measured: the driver's steady state 695 MB with it, 520 MB with the system pool; 1.36x growth at 16x
# rows with jemalloc). A fixed threshold and the system pool return large buffers to the OS when freed.
# cluster.yaml starts every raylet (so every Ray worker) with the same variables.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "ARROW_DEFAULT_MEMORY_POOL": "system"}
PAIR_FLOP = 2  # one multiply-add


# -- memory ---------------------------------------------------------------------------------------------
def _status_kb(pid: int, fields: tuple[str, ...]) -> dict[str, int] | None:
    """``{field: kB}`` from ``/proc/<pid>/status`` (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in fields:
            out[name] = int(value.split()[0])
    return out


class TreeMemory(threading.Thread):
    """Samples the memory of this process and all its descendants, summed over the processes.

    * ``peak_anon_mb``: resident anonymous memory (``RssAnon``): each process's own heap, the memory a
      streaming pipeline must keep flat. It leaves out file-backed pages (code, libraries) and shared
      memory, i.e. Ray's object store: a fixed-size shared arena whose pages stay resident once touched.
    * ``peak_shmem_mb``: the largest resident shared memory (``RssShmem``) of one process: the object store's
      pages as one process sees them; bounded by the store's size, not by the rows.
    * ``peak_uss_mb`` / ``peak_mb`` (PSS), with ``detail``: private pages (an object-store page counts as one
      process's private page until a second process maps it) and the proportional share of everything.
    """

    def __init__(self, interval_s: float = 0.25, detail: bool = True) -> None:
        super().__init__(daemon=True)
        importlib.import_module("ray")  # psutil is vendored by Ray: importable only after it
        psutil = importlib.import_module("psutil")
        self.psutil, self.root, self.interval_s, self.detail = psutil, psutil.Process(), interval_s, detail
        self.peak_mb = self.peak_uss_mb = self.peak_anon_mb = self.peak_shmem_mb = 0.0
        self.stop_event = threading.Event()

    def sample(self) -> float:
        """Summed resident anonymous memory now (MiB); updates every peak."""
        anon = pss = uss = 0
        shmem = 0
        gone = (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess)
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except gone:
            procs = [self.root]
        for proc in procs:
            status = _status_kb(proc.pid, ("RssAnon", "RssShmem"))
            if status is None:
                continue
            anon += status.get("RssAnon", 0) << 10
            shmem = max(shmem, status.get("RssShmem", 0) << 10)
            if self.detail:
                try:
                    info = proc.memory_full_info()
                except gone:
                    continue
                pss += getattr(info, "pss", info.rss)
                uss += getattr(info, "uss", info.rss)
        self.peak_anon_mb = max(self.peak_anon_mb, anon / 2**20)
        self.peak_shmem_mb = max(self.peak_shmem_mb, shmem / 2**20)
        self.peak_mb = max(self.peak_mb, pss / 2**20)
        self.peak_uss_mb = max(self.peak_uss_mb, uss / 2**20)
        return anon / 2**20

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval_s)

    def __enter__(self) -> TreeMemory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.join()


# -- decode and prepare ---------------------------------------------------------------------------------
def make_videos(work: Path, count: int, seconds: float) -> list[tuple[Path, float]]:
    """``count`` ActivityNet-shaped raw videos under ``work/raw``; ``[(path, duration)]``."""
    from vidret.data.synthetic.activitynet import encode_long_video, plan_activitynet

    (work / "raw").mkdir(parents=True, exist_ok=True)
    out = []
    for plan in plan_activitynet(seed=3, videos=max(count, 2), seconds=seconds)[:count]:
        path = work / "raw" / f"{plan.video_id}.mp4"
        path.write_bytes(encode_long_video(plan, 360, 30))
        out.append((path, plan.duration))
    return out


def _cpu(fn: Any) -> tuple[float, Any]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def decode_and_prepare(videos: list[tuple[Path, float]], work: Path) -> dict[str, Any]:
    from vidret.data.video.local import decode_local
    from vidret.data.video.prepare import PrepareSettings, transcode

    torch.set_num_threads(1)
    settings = PrepareSettings()  # 3 fps, short side 224, 1 s GOP
    (work / "prepared").mkdir(exist_ok=True)
    raw_s, prep_s, transcode_s, video_s, frames = [], [], [], 0.0, []
    for path, duration in videos:
        out = work / "prepared" / path.name
        cpu, _ = _cpu(lambda p=path, o=out: transcode(str(p), str(o), settings))
        transcode_s.append(cpu)
        video_s += duration
        for src, acc in ((path, raw_s), (out, prep_s)):
            cpu, (_, mask) = _cpu(
                lambda s=src: decode_local(str(s), max_frames=FRAMES, framerate=1.0, size=224, decoder="pyav")
            )
            acc.append(cpu)
            frames.append(int(mask.sum()))
    raw, prep = float(np.mean(raw_s)), float(np.mean(prep_s))
    return {
        "videos": len(videos),
        "mean_video_s": round(video_s / len(videos), 1),
        "raw": "640x360 30 fps H.264, B-frames, GOP <= 5 s (scene cuts)",
        "prepared": "398x224 3 fps H.264, GOP 1 s (vidret prepare defaults)",
        "frames_decoded_per_video": frames[:2],
        "raw_s_per_video_per_core": round(raw, 3),
        "prepared_s_per_video_per_core": round(prep, 3),
        "raw_vs_prepared": round(raw / prep, 1),
        "prepare_core_s_per_video": round(float(np.mean(transcode_s)), 2),
        "prepare_video_s_per_core_s": round(video_s / sum(transcode_s), 2),
        "decoder": "pyav, one thread, CPU time of this process",
    }


# -- streaming pipeline memory ----------------------------------------------------------------------------
def _manifest(prepared: list[Path], rows: int, root: Path) -> str:
    import pyarrow as pa

    from vidret.data.annotations.manifest import MANIFEST_SCHEMA, write_manifest
    from vidret.storage import Storage

    uris = [str(prepared[i % len(prepared)]) for i in range(rows)]
    table = pa.table(
        {
            "video_id": [f"v{i:05d}" for i in range(rows)],
            "video_uri": uris,
            "captions": [[f"paragraph {i}"] for i in range(rows)],
            "start": [None] * rows,
            "end": [None] * rows,
            "split": ["bench"] * rows,
            "dataset": ["custom"] * rows,
        },
        schema=MANIFEST_SCHEMA,
    )
    prefix = root / f"manifest-{rows}"
    write_manifest(table, str(prefix / "bench.parquet"), Storage())
    return str(prefix)


def _stream_once(manifest: str) -> dict[str, Any]:
    import ray

    from vidret.config import DataConfig
    from vidret.data.pipeline import build_dataset, iter_numpy_batches, load_split
    from vidret.storage import Storage

    cfg = DataConfig(max_frames=FRAMES, framerate=1.0, size=224, decoder="pyav", rows_per_block=2)
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=1 << 30, log_to_driver=False
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = load_split(manifest, "bench", Storage(), pairs=False)
        with TreeMemory() as mem:
            t0 = time.perf_counter()
            ds, _ = build_dataset(rows, cfg, Storage(), tokenize=False)
            seen = sum(len(b["video_index"]) for b in iter_numpy_batches(ds, 4))
            wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {
        "rows": seen,
        "wall_s": round(wall, 1),
        "peak_anon_mb": round(mem.peak_anon_mb, 0),
        "peak_uss_mb": round(mem.peak_uss_mb, 0),
        "peak_pss_mb": round(mem.peak_mb, 0),
        "peak_store_shmem_mb": round(mem.peak_shmem_mb, 0),
    }


def _stream_child(manifest: str, out: Any) -> None:
    out.put(_stream_once(manifest))


def _stream_in_child(manifest: str) -> dict[str, Any]:
    """``_stream_once`` in a fresh interpreter whose allocators (and its Ray processes') read
    ``ALLOCATOR_ENV``."""
    saved = {k: os.environ.get(k) for k in ALLOCATOR_ENV}
    os.environ.update(ALLOCATOR_ENV)  # inherited by the child when it starts
    try:
        result: dict[str, Any] = run_in_child(_stream_child, (manifest,), f"streaming {manifest}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result


def streaming_rss(prepared: list[Path], base_rows: int, root: Path) -> dict[str, Any]:
    runs = {f"{k}x": _stream_in_child(_manifest(prepared, base_rows * k, root)) for k in (1, 4, 16)}

    def growth(key: str, k: str) -> float:
        return round(runs[k][key] / runs["1x"][key], 3)

    return {
        "runs": runs,
        "object_store_mb": OBJECT_STORE >> 20,
        "allocator_env": ALLOCATOR_ENV,
        "rss_growth_16x": growth("peak_anon_mb", "16x"),
        "rss_growth_4x": growth("peak_anon_mb", "4x"),
        "uss_growth_16x": growth("peak_uss_mb", "16x"),
        "pss_growth_16x": growth("peak_pss_mb", "16x"),
        "what": (
            "rss_growth: peak of the summed resident anonymous memory (RssAnon: each process's heap) of the "
            "driver and every Ray process below it (raylet, workers, decode actors), sampled every 0.25 s, "
            "16x (4x) rows over 1x rows. USS and PSS also hold the object store's arena: a fixed-size "
            "shared-memory file whose touched pages stay resident after their objects are freed (USS counts "
            "such a page as private while one process alone maps it), so that part climbs towards "
            "object_store_mb the longer a run lasts whatever the live data: bounded by that setting, not by "
            "the rows (peak_store_shmem_mb: the most of it one process had resident). A fresh local Ray (2 "
            "CPUs) per "
            "size, its processes started with allocator_env; rows of 64 frames at 224 px from prepared "
            "~2-minute videos, 2 decode actors, read in batches of 4. 1x is long enough (16 batches) for "
            "the driver's batch iterator and both actors to reach their steady working set: a shorter base "
            "ends during warm-up, and the ratio would measure warm-up, not growth with the rows"
        ),
    }


# -- feature cache ---------------------------------------------------------------------------------------
def feature_cache(videos: int, root: Path, dim: int = 512) -> dict[str, Any]:
    from vidret.features.store import load_split, write_split
    from vidret.storage import Storage

    g = np.random.default_rng(0)
    f32 = np.float32
    texts = {
        "text": g.standard_normal((videos, WORDS, dim), f32),
        "text_mask": np.ones((videos, WORDS), np.int64),
        "text_weight": np.full((videos, WORDS), 1 / WORDS, f32),
        "text_eot": g.standard_normal((videos, dim), f32),
        "video_index": np.arange(videos),
        "caption_index": np.zeros(videos, np.int64),
        "caption_row": np.arange(videos),
    }
    vids = {
        "video": g.standard_normal((videos, FRAMES, dim), f32),
        "video_mask": np.ones((videos, FRAMES), np.int64),
        "video_weight": np.full((videos, FRAMES), 1 / FRAMES, f32),
        "video_index": np.arange(videos),
        "ok": np.ones(videos, bool),
    }
    storage, uri = Storage(), str(root / "cache" / "val_1")
    info = {"video_ids": [f"v{i}" for i in range(videos)], "captions": ["p"] * videos}
    t0 = time.perf_counter()
    index = write_split(storage, uri, [texts], [vids], info)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = load_split(storage, uri)
    read_s = time.perf_counter() - t0
    assert loaded.video.frames.shape == (videos, FRAMES, dim)
    total = sum(s["bytes"] for s in [*index["texts"], *index["videos"]])
    return {
        "videos": videos,
        "dim": dim,
        "bytes_per_video": round(total / videos),
        "write_mb_per_s": round(total / 2**20 / write_s, 1),
        "read_mb_per_s": round(total / 2**20 / read_s, 1),
        "write_videos_per_s": round(videos / write_s, 1),
        "read_videos_per_s": round(videos / read_s, 1),
        "what": "npz shards (fp32 features, int64 masks) on local disk; one 64-word paragraph per video",
    }


# -- evaluation -------------------------------------------------------------------------------------------
def _features(n: int, model: Any) -> Any:
    from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures

    g = torch.Generator().manual_seed(n)
    d = model.backbone.embed_dim
    text_mask = (torch.arange(WORDS) < torch.randint(24, WORDS + 1, (n, 1), generator=g)).long()
    video_mask = (torch.arange(FRAMES) < torch.randint(40, FRAMES + 1, (n, 1), generator=g)).long()
    text, video = torch.randn(n, WORDS, d, generator=g), torch.randn(n, FRAMES, d, generator=g)
    with torch.no_grad():
        text_w, video_w = model.wti(text, text_mask, video, video_mask)
    return FeatureSet(
        text=TextFeatures(text, text_mask, text_w, torch.randn(n, d, generator=g)),
        video=VideoFeatures(video, video_mask, video_w),
        text_to_video_T=torch.arange(n),
    )


def wti_vs_matmul(fs: Any, queries: int, chunk: int = 16) -> dict[str, Any]:
    """WTI FLOP rate / plain-matmul FLOP rate; each chunk of ``chunk`` queries against the whole gallery is
    followed by (1024 x D) @ (D x 1024) matmuls of about the same FLOPs, so load on a shared machine falls on
    both alike, and both are timed in CPU seconds of this process (time slices lost to other processes do
    not count). WTI FLOPs: the 2 L F D multiply-adds of every pair (maxima and weighting not counted)."""
    from vidret.model.similarity import wti_blocked

    t, v = fs.text, fs.video
    n, d = v.frames.shape[0], v.frames.shape[-1]
    a, b = torch.randn(1024, d), torch.randn(d, 1024)
    gemm_flop = PAIR_FLOP * 1024 * 1024 * d
    wti_s = mm_s = 0.0
    wti_flop = mm_flop = 0
    with torch.no_grad():
        for q0 in range(0, queries, chunk):
            q = slice(q0, min(q0 + chunk, queries))
            t0 = time.process_time()
            wti_blocked(t.tokens[q], t.mask[q], v.frames, v.mask, t.weight[q], v.weight)
            wti_s += time.process_time() - t0
            flop = PAIR_FLOP * (q.stop - q.start) * n * WORDS * FRAMES * d
            wti_flop += flop
            reps = max(1, round(flop / gemm_flop))
            t0 = time.process_time()
            for _ in range(reps):
                torch.mm(a, b)
            mm_s += time.process_time() - t0
            mm_flop += reps * gemm_flop
    wti_rate, mm_rate = wti_flop / wti_s, mm_flop / mm_s
    return {
        "queries": queries,
        "wti_gflop_per_s": round(wti_rate / 1e9, 2),
        "matmul_gflop_per_s": round(mm_rate / 1e9, 2),
        "wti_vs_matmul": round(wti_rate / mm_rate, 3),
        "clock": "process CPU time",
    }


def _gallery_run(n: int, dim_preset: str, threads: int, block: int, out: Any) -> None:
    torch.set_num_threads(threads)
    from vidret.config import Config, DiffusionConfig, EvalConfig, ModelConfig
    from vidret.eval.retrieval import rerank_distributed
    from vidret.features.scoring import evaluate_features
    from vidret.model.retrieval import RetrievalModel

    cfg = Config(
        model=ModelConfig(preset=dim_preset, temporal_layers=1),
        diffusion=DiffusionConfig(steps=50, t2v_k=32, v2t_k=32),
        eval=EvalConfig(block_size=block, rerank=True, report=False),
    )
    torch.manual_seed(0)
    model = RetrievalModel.build(cfg.model, cfg.diffusion).eval()
    fs = _features(n, model)
    times: dict[str, float] = {}

    def rerank(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        res = rerank_distributed(model, model.state_dict(), cfg, sim, fs, 1)
        times["rerank_s"] = time.perf_counter() - t0
        return res

    mem = TreeMemory(interval_s=0.02, detail=False)  # one process: its heap, read cheaply
    before, mem.peak_anon_mb = mem.sample(), 0.0
    with mem:
        t0, c0 = time.perf_counter(), time.process_time()
        evaluate_features(model, fs, cfg.eval, rerank=True, rerank_fn=rerank)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ratio = wti_vs_matmul(fs, queries=min(n, 128))
    d = model.backbone.embed_dim
    out.put(
        {
            "n": n,
            "dim": d,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "similarity_s": round(wall - times["rerank_s"], 1),
            "rerank_both_directions_s": round(times["rerank_s"], 1),
            "peak_extra_mb": round(mem.peak_anon_mb - before, 0),
            "inputs_mb": round(2 * n * 64 * d * 4 / 2**20, 0),
            "n2_matrix_mb": round(n * n * 4 / 2**20, 1),
            "unblocked_scores_mb": round(n * n * WORDS * FRAMES * 4 / 2**20, 0),
            **ratio,
        }
    )


def _gallery_in_child(n: int, preset: str, threads: int, block: int) -> dict[str, Any]:
    result: dict[str, Any] = run_in_child(_gallery_run, (n, preset, threads, block), f"evaluation N={n}")
    return result


def evaluation(
    sizes: list[int], preset: str, threads: int, block: int, probe: tuple[int, str]
) -> dict[str, Any]:
    """The gallery sizes at ``preset``'s width, then ``probe`` = (N, preset): the same at ViT-B/32's D = 512,
    a smaller N, for the re-ranking rate and the WTI efficiency at the width ActivityNet trains with."""
    runs = [_gallery_in_child(n, preset, threads, block) for n in sizes]
    probe_run = _gallery_in_child(probe[0], probe[1], threads, block)
    per_1000 = probe_run["rerank_both_directions_s"] * 1000 / probe_run["n"]
    return {
        "runs": runs,
        "probe_d512": probe_run,
        "wti_vs_matmul": min(r["wti_vs_matmul"] for r in [*runs, probe_run]),
        "rerank_s_per_1000_queries_both_directions_cpu": round(per_1000, 1),
        "rerank_s_per_1000_queries_at": f"D = {probe_run['dim']} ({probe[1]} preset, N = {probe[0]})",
        "what": f"evaluate_features on N texts x N videos, L = F = 64, {preset} preset (and the probe at "
        f"{probe[1]}), {threads} thread(s), eval.block_size {block}, top-32 re-ranking with 50 DDIM steps; "
        "similarity_s includes the metrics; cpu_s: the process's CPU seconds (wall_s includes time lost to "
        "other processes on a shared machine); peak_extra_mb is the process's resident heap (RssAnon) above "
        "its start",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    p.add_argument("--videos", type=int, default=3, help="long videos decoded and prepared")
    p.add_argument("--seconds", type=float, default=120.0, help="longest video duration")
    p.add_argument(
        "--rss-rows",
        type=int,
        default=64,
        help="manifest rows of the 1x streaming run (16 batches: past the pipeline's warm-up)",
    )
    p.add_argument("--cache-videos", type=int, default=512)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000], help="evaluation gallery sizes")
    p.add_argument("--preset", default="tiny", help="model preset of the evaluation (tiny: D = 128)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block", type=int, default=256, help="eval.block_size")
    p.add_argument("--probe-n", type=int, default=500, help="gallery size of the D = 512 probe")
    p.add_argument("--probe-preset", default="ViT-B-32", help="model preset of the probe")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.seconds, args.rss_rows, args.cache_videos, args.sizes = 1, 16.0, 2, 32, [200, 400]
        args.probe_n = 64
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vidret-scale-") as tmp:
        work = Path(tmp)
        videos = make_videos(work, args.videos, args.seconds)
        report: dict[str, Any] = {"quick": args.quick, "decode": decode_and_prepare(videos, work)}
        prepared = sorted((work / "prepared").glob("*.mp4"))
        report["streaming_rss"] = streaming_rss(prepared, args.rss_rows, work)
        report["rss_growth_16x"] = report["streaming_rss"]["rss_growth_16x"]
        report["feature_cache"] = feature_cache(args.cache_videos, work)
    report["evaluation"] = evaluation(
        args.sizes, args.preset, args.threads, args.block, (args.probe_n, args.probe_preset)
    )
    report["wti_vs_matmul"] = report["evaluation"]["wti_vs_matmul"]
    report["projection"] = project(report)
    report["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
    report["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__, "load_avg": os.getloadavg()}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
