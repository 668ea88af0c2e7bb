"""Decode throughput and memory of the data pipeline; prints one JSON object.

Compares, on MSR-VTT-like "raw" clips (320x240, 30 fps, 10-15 s H.264, generated here with PyAV) and on the
same clips after `vidret prepare` (short side 224, 3 fps, 1 s GOP), sampling data.framerate=1 and
data.max_frames=12 at data.size=224:

  (a) the Ray Data pipeline (vidret.data.pipeline.build_dataset: decode actors, tokenised captions),
  (b) a bare sequential decord loop on one core doing the same sampling and resize/crop,
  (c) the upstream's OpenCV loop on one core: seek (CAP_PROP_POS_FRAMES) to the first frame of every
      second, read, PIL bicubic short-side resize + centre crop, then uniform subsampling to 12 frames
      (method 5.1; the upstream's float64 ToTensor/Normalize is left out, which flatters it),

and the peak memory (PSS and RSS summed over the driver and every Ray process, sampled in a thread) of the
pipeline over N and 4N raw videos. Keys compared against targets: pipeline_vs_bare_per_core (>= 0.8),
pipeline_vs_opencv (>= 2), rss_growth_4x (<= 1.25), prepared_vs_raw.

    python benchmarks/decode.py --n 24            # ~4-5 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SIZE, MAX_FRAMES, FRAMERATE = 224, 12, 1.0


# ------------------------------------------------------------------------------------------------ media
def make_clip(path: Path, seconds: float, seed: int, fps: int = 30, w: int = 320, h: int = 240) -> None:
    """A panning 320x240 H.264 clip with smooth, natural-looking texture, a moving object and a little grain
    (x264 defaults: GOP 250, like many web videos; ~0.5-1 Mbit/s, the bit rate of MSR-VTT clips)."""
    import av
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((w * 2, h * 2), Image.Resampling.BICUBIC))
    vx, vy = rng.integers(1, 4, 2)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(int(seconds * fps)):
            y, x = (i * vy) % h, (i * vx) % w
            img = texture[y : y + h, x : x + w].copy()
            img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)  # sensor grain
            img[(i * 2) % h : (i * 2) % h + 30, 40:120] = (255, 60, 30)  # a moving object
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def manifest(paths: list[str], split: str) -> pa.Table:
    from vidret.data.annotations.manifest import MANIFEST_SCHEMA

    n = len(paths)
    return pa.table(
        {
            "video_id": [Path(p).stem for p in paths],
            "video_uri": paths,
            "captions": [[f"a clip number {i} of a red object moving over a texture"] for i in range(n)],
            "start": [None] * n,
            "end": [None] * n,
            "split": [split] * n,
            "dataset": ["custom"] * n,
        },
        schema=MANIFEST_SCHEMA,
    )


# ------------------------------------------------------------------------------------------ bare loops
def bare_decord(paths: list[str]) -> dict[str, float]:
    """(b): decord on one core, the pipeline's sampling rule and resize/crop."""
    import decord

    from vidret.data.video import sample_indices
    from vidret.data.video.transforms import frame_to_square

    frames = 0
    t, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        vr = decord.VideoReader(p, num_threads=1)
        idx = sample_indices(len(vr), vr.get_avg_fps(), framerate=FRAMERATE, max_frames=MAX_FRAMES)
        batch = vr.get_batch(idx.tolist()).asnumpy()
        out = np.stack([frame_to_square(f, SIZE) for f in batch])
        frames += out.shape[0]
    return {
        **_rate(len(paths), frames, time.perf_counter() - t),
        "cpu_s_per_video": round((time.process_time() - cpu) / len(paths), 4),
    }


def bare_vidret(paths: list[str]) -> dict[str, float]:
    """The pipeline's own decoder (``decode_local``, data.decoder="auto") in a plain loop on one core."""
    from vidret.data.video.local import decode_local

    t, cpu = time.perf_counter(), time.process_time()
    frames = sum(
        int(decode_local(p, max_frames=MAX_FRAMES, framerate=FRAMERATE, size=SIZE)[1].sum()) for p in paths
    )
    return {
        **_rate(len(paths), frames, time.perf_counter() - t),
        "cpu_s_per_video": round((time.process_time() - cpu) / len(paths), 4),
    }


def bare_decord_pool(paths: list[str], processes: int = 2) -> dict[str, float]:
    """(b) on ``processes`` cores at once (a plain process pool): the no-Ray reference under the same load."""
    from concurrent.futures import ProcessPoolExecutor

    chunks = [paths[i::processes] for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(bare_decord, [paths[:1]] * processes))  # start and import first
        t = time.perf_counter()
        parts = list(pool.map(bare_decord, chunks))
        seconds = time.perf_counter() - t
    return _rate(len(paths), int(sum(p["frames_per_s"] * p["seconds"] for p in parts)), seconds)


def opencv_upstream(paths: list[str]) -> dict[str, float]:
    """(c): the upstream's rawvideo_util rule with OpenCV, one seek per sampled second, one core."""
    import cv2

    from vidret.data.video.transforms import frame_to_square

    cv2.setNumThreads(1)
    frames = 0
    t = time.perf_counter()
    for p in paths:
        cap = cv2.VideoCapture(p, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FPS))
        seconds = (count + fps - 1) // fps
        step = max(fps // int(FRAMERATE), 1)
        offsets = list(range(0, fps, step))[: int(FRAMERATE)]
        images, ok = [], True
        for sec in range(0, seconds + 1):
            for off in offsets:
                cap.set(cv2.CAP_PROP_POS_FRAMES, sec * fps + off)
                ok, bgr = cap.read()
                if not ok:
                    break
                images.append(frame_to_square(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), SIZE))
            if not ok:
                break
        cap.release()
        keep = (
            np.linspace(0, len(images) - 1, MAX_FRAMES, dtype=int)
            if len(images) > MAX_FRAMES
            else range(len(images))
        )
        frames += len(np.stack([images[i] for i in keep]))
    return _rate(len(paths), frames, time.perf_counter() - t)


def _rate(videos: int, frames: int, seconds: float) -> dict[str, float]:
    return {
        "videos": videos,
        "seconds": round(seconds, 3),
        "videos_per_s": round(videos / seconds, 3),
        "frames_per_s": round(frames / seconds, 2),
    }


def one_core(fn: Any, *args: Any) -> dict[str, float]:
    """Run ``fn`` pinned to one CPU (the bare loops are single-threaded; this makes it explicit)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(allowed)})
    try:
        return fn(*args)
    finally:
        os.sched_setaffinity(0, allowed)


# ------------------------------------------------------------------------------------------- pipeline
class PeakMemory(threading.Thread):
    """Samples the summed PSS and RSS of this process and all its descendants (Ray's too)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        import psutil  # vendored by Ray: importable only after `import ray` (docs/stack-notes.md P16)

        self.psutil, self.root, self.interval_s = psutil, psutil.Process(), interval_s
        self.peak_pss = self.peak_rss = 0
        self.cpu_s: dict[int, float] = {}  # latest user+system seconds of every process seen
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.own_cpu_s = 0.0

    def sample(self) -> None:
        pss = rss = 0
        with self.lock:
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                    cpu = proc.cpu_times()
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                    continue
                pss += getattr(info, "pss", info.rss)
                rss += info.rss
                self.cpu_s[proc.pid] = cpu.user + cpu.system
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)

    def cpu_total(self) -> float:
        """CPU seconds used so far by the tree (processes that exited count up to their last sample)."""
        self.sample()
        return sum(self.cpu_s.values()) - self.own_cpu_s

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.own_cpu_s = time.thread_time()  # the sampler's cost, taken out of the pipeline's CPU
            self.stop_event.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.join()


def run_pipeline(paths: list[str], cfg: Any) -> dict[str, float]:
    """(a): build the dataset, stream it to the end; throughput after the first batch and peak memory."""
    from vidret.data.batches import split_rows
    from vidret.data.pipeline import build_dataset, iter_numpy_batches
    from vidret.storage import Storage

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        rows_in = split_rows(manifest(paths, "bench"), "bench", pairs=False)
        ds, log = build_dataset(rows_in, cfg, Storage())
        rows = frames = first_rows = 0
        t_first = cpu_first = 0.0
        for batch in iter_numpy_batches(ds, 8, log=log, total=rows_in.num_videos, cfg=cfg):
            rows += len(batch["video_index"])
            frames += int(batch["video_mask"].sum())
            if not t_first:
                t_first, first_rows, cpu_first = time.perf_counter(), rows, mem.cpu_total()
        t_end, cpu_end = time.perf_counter(), mem.cpu_total()
    if rows != len(paths):
        raise RuntimeError(f"pipeline returned {rows} rows for {len(paths)} videos")
    out = _rate(rows, frames, t_end - t0)
    steady = t_end - t_first
    out.update(
        first_batch_s=round(t_first - t0, 3),
        steady_videos_per_s=round((rows - first_rows) / steady, 3) if steady > 0 else None,
        steady_frames_per_s=round(frames * (rows - first_rows) / rows / steady, 2) if steady > 0 else None,
        peak_pss_mib=round(mem.peak_pss / 2**20, 1),
        peak_rss_mib=round(mem.peak_rss / 2**20, 1),
        steady_cpu_s_per_video=round((cpu_end - cpu_first) / max(rows - first_rows, 1), 4),
    )
    return out


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n", type=int, default=24, help="N: videos in the small pipeline run (4N in the big one)"
    )
    parser.add_argument("--pool", type=int, default=8, help="distinct clips generated (cycled to 4N files)")
    parser.add_argument("--bare", type=int, default=0, help="videos in the single-core loops (default N)")
    parser.add_argument("--work", default="", help="working folder (default: a temporary one, removed)")
    parser.add_argument(
        "--seconds",
        type=float,
        nargs=2,
        default=(10.0, 15.0),
        metavar=("MIN", "MAX"),
        help="clip length range in seconds (MSR-VTT: 10-30 s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved runs of each side at 4N (best kept)"
    )
    args = parser.parse_args()
    if not 0 < args.seconds[0] <= args.seconds[1]:
        parser.error(f"--seconds: expected 0 < MIN <= MAX, got {args.seconds[0]} {args.seconds[1]}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1, got {args.repeats}")
    from vidret.console.logs import quiet_environment

    quiet_environment()  # before Ray is imported (it reads its log settings then): stdout stays pure JSON
    import ray  # before psutil (docs/stack-notes.md P16)

    from vidret.config import Config, DataConfig, RunConfig
    from vidret.data.annotations.manifest import write_manifest
    from vidret.data.executors import run_prepare

    n, bare_n = args.n, args.bare or args.n
    work = Path(args.work or tempfile.mkdtemp(prefix="vidret-bench-"))
    (work / "pool").mkdir(parents=True, exist_ok=True)
    (work / "raw").mkdir(exist_ok=True)
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    pool = []
    for i in range(args.pool):
        path = work / "pool" / f"clip{i}.mp4"
        if not path.exists():
            make_clip(path, seconds=float(rng.uniform(*args.seconds)), seed=i)
        pool.append(path)
    raw = []
    for i in range(4 * n):
        dst = work / "raw" / f"video{i}.mp4"
        if not dst.exists():
            shutil.copyfile(pool[i % len(pool)], dst)
        raw.append(str(dst))
    result["media"] = {
        "clips": len(pool),
        "files": len(raw),
        "generate_s": round(time.perf_counter() - t, 1),
        "mean_raw_bytes": int(np.mean([p.stat().st_size for p in pool])),
    }

    data = DataConfig(
        size=SIZE,
        max_frames=MAX_FRAMES,
        framerate=FRAMERATE,
        rows_per_block=4,
        decode_concurrency=2,
        decode_cpus=0.5,
        manifest=str(work / "manifest"),
        prepare_out=str(work / "prepared"),
        max_bad_fraction=0.0,
    )
    cfg = Config(data=data, run=RunConfig(num_cpus=2))
    result["setup"] = {
        "n": n,
        "size": SIZE,
        "max_frames": MAX_FRAMES,
        "framerate": FRAMERATE,
        "decoder": data.decoder,
        "decode_concurrency": data.decode_concurrency,
        "decode_cpus": data.decode_cpus,
        "ray_cpus": 2,
        "clip_seconds": list(args.seconds),
        "repeats": args.repeats,
    }

    result["raw_bare_decord"] = one_core(bare_decord, raw[:bare_n])
    result["raw_opencv_upstream"] = one_core(opencv_upstream, raw[:bare_n])

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=512 << 20,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    write_manifest(manifest(raw, "train"), str(work / "manifest" / "train.parquet"), _storage())
    shutil.rmtree(work / "prepared", ignore_errors=True)
    for label in ("prepare_job", "prepare_job_rerun"):  # the rerun finds every output done
        t = time.perf_counter()
        prep = run_prepare(cfg, splits=["train"])
        seconds = time.perf_counter() - t
        result[label] = {
            "videos": len(raw),
            "transcoded": prep["transcoded"],
            "skipped": prep["skipped"],
            "seconds": round(seconds, 2),
            "videos_per_s": round(len(raw) / seconds, 3),
        }
    prepared = [str(work / "prepared" / "videos" / Path(p).name) for p in raw]
    result["prepared_bare_decord"] = one_core(bare_decord, prepared[:bare_n])
    result["prepared_opencv_upstream"] = one_core(opencv_upstream, prepared[:bare_n])

    run_pipeline(raw[: max(4, n // 4)], data)  # warm-up: first actor start, imports, page cache
    with PeakMemory() as idle:  # what an idle Ray instance costs (raylet, GCS, driver threads)
        cpu0 = idle.cpu_total()
        time.sleep(5.0)
        result["ray_idle"] = {
            "cpu_cores": round((idle.cpu_total() - cpu0) / 5.0, 3),
            "pss_mib": round(idle.peak_pss / 2**20, 1),
        }
    result["raw_pipeline_N"] = run_pipeline(raw[:n], data)
    # Other jobs share this machine: each side gets its best of several runs, interleaved in time.
    bare_runs, pipe_runs = [result["raw_bare_decord"]], []
    for _ in range(args.repeats):
        bare_runs.append(one_core(bare_decord, raw[:bare_n]))
        pipe_runs.append(run_pipeline(raw, data))
    result["raw_bare_decord_runs_vps"] = [r["videos_per_s"] for r in bare_runs]
    result["raw_pipeline_4N_runs_steady_vps"] = [r["steady_videos_per_s"] for r in pipe_runs]
    result["raw_bare_decord"] = max(bare_runs, key=lambda r: r["videos_per_s"])
    result["raw_pipeline_4N"] = max(pipe_runs, key=lambda r: r["steady_videos_per_s"])
    peak_4n = {k: max(r[k] for r in pipe_runs) for k in ("peak_pss_mib", "peak_rss_mib")}  # worst run
    result["raw_bare_vidret_decoder"] = one_core(bare_vidret, raw[:bare_n])
    result["raw_bare_decord_2proc"] = bare_decord_pool(raw)
    result["prepared_pipeline_4N"] = run_pipeline(prepared, data)
    ray.shutdown()
    result["machine"]["loadavg_end"] = os.getloadavg()

    cpus = min(result["setup"]["ray_cpus"], data.decode_concurrency)
    pipe = result["raw_pipeline_4N"]["steady_videos_per_s"]
    bare = result["raw_bare_decord"]["videos_per_s"]
    cv = result["raw_opencv_upstream"]["videos_per_s"]
    result["pipeline_cpus"] = cpus
    result["pipeline_vs_bare_per_core"] = round(pipe / cpus / bare, 3)
    result["pipeline_vs_opencv"] = round(pipe / cv, 3)
    result["pipeline_vs_same_decoder_per_core"] = round(
        pipe / cpus / result["raw_bare_vidret_decoder"]["videos_per_s"], 3
    )
    result["pipeline_vs_bare_2proc"] = round(pipe / result["raw_bare_decord_2proc"]["videos_per_s"], 3)
    result["pipeline_vs_bare_cpu"] = round(
        result["raw_bare_decord"]["cpu_s_per_video"] / result["raw_pipeline_4N"]["steady_cpu_s_per_video"], 3
    )
    result["pipeline_vs_opencv_per_core"] = round(pipe / cpus / cv, 3)
    result["prepared_vs_raw"] = round(result["prepared_pipeline_4N"]["steady_videos_per_s"] / pipe, 3)
    result["prepared_vs_raw_bare_decord"] = round(result["prepared_bare_decord"]["videos_per_s"] / bare, 3)
    result["rss_growth_4x"] = round(peak_4n["peak_pss_mib"] / result["raw_pipeline_N"]["peak_pss_mib"], 3)
    result["rss_growth_4x_rss"] = round(peak_4n["peak_rss_mib"] / result["raw_pipeline_N"]["peak_rss_mib"], 3)
    targets = {
        "pipeline_vs_bare_per_core": (">=", 0.8),
        "pipeline_vs_opencv": (">=", 2.0),
        "rss_growth_4x": ("<=", 1.25),
    }
    result["targets_met"] = {
        k: (result[k] >= v if op == ">=" else result[k] <= v) for k, (op, v) in targets.items()
    }
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


def _storage() -> Any:
    from vidret.storage import Storage

    return Storage()


if __name__ == "__main__":
    main()
