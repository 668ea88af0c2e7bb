"""The whole of ActivityNet Captions projected from per-unit costs that ``benchmarks/scale.py`` measured.

Every projected number comes with its formula (``"how"``), so the README table can show the arithmetic. What
could not be measured on this CPU-only machine (GPU throughput) is derived from FLOP counts at two model-FLOP
utilisations (MFU), listed under ``assumptions``: ``upstream``, the utilisation the method's released recipe
reaches (~96 samples/s on 4 V100 at 12 frames, docs/method.md), and ``optimistic`` (30 %, a well-fed bf16
ViT). ``benchmarks/gpu.py`` measures the real rate on a GPU; put it in place of these.
"""

from __future__ import annotations

from typing import Any

# ActivityNet Captions (Krishna et al. 2017): 20k videos, ~120 s on average; the paragraph splits.
ACTIVITYNET = {"videos": 19_994, "mean_seconds": 120.0, "train": 10_009, "val_1": 4_917, "val_2": 4_885}
RECIPE = {"epochs": 5, "frames": 64, "words": 64, "stage2_epochs": 5}  # configs/activitynet.yaml
# Forward FLOPs, ViT-B/32 at 224 px: 8.8 GFLOP per frame (4.4 G multiply-adds: 50 tokens through 12 blocks of
# width 768); the text tower: 2 x 38 M weights per token (12 blocks of width 512); the 4-block temporal
# transformer: 2 x 12.6 M weights per frame. Backward = 2 x forward.
FRAME_GFLOP = 8.8
TEXT_GFLOP_PER_TOKEN = 2 * 38e6 / 1e9
TEMPORAL_GFLOP_PER_FRAME = 2 * 12.6e6 / 1e9
TRAIN_FACTOR = 3.0  # forward + backward
# The method's recipe (MSR-VTT: 12 frames, 32 words): ~96 samples/s in all on 4 V100 (125 TFLOP/s fp16 peak).
UPSTREAM = {"samples_per_s": 96.0, "gpus": 4, "peak_tflops": 125.0, "frames": 12, "words": 32}
OPTIMISTIC_MFU = 0.30
STAGE2_SAMPLES_PER_GPU_S = 2000.0  # denoisers on cached features (two small nets): not the bottleneck
# Dense bf16 tensor peaks, TFLOP/s. A10G: NVIDIA's A10 datasheet figure; some sources give ~70 for the A10G
# (lower clocks): the A10G hours would then be 125 / 70 = 1.8x those below.
GPU_PEAK_TFLOPS = {"A10G": 125.0, "A100-40GB": 312.0}
NODE_GPUS = {"g5.12xlarge": ("A10G", 4), "p4d.24xlarge": ("A100-40GB", 8), "g5.2xlarge": ("A10G", 1)}
# On-demand Linux prices in us-west-2 (USD per hour), AWS's public price list as last seen in 2024 (g5.xlarge
# at $1.006/h in a June 2026 third-party listing, unchanged); not re-checked against AWS in this session (no
# network): check https://aws.amazon.com/ec2/pricing/on-demand/ before use.
PRICES_USD_PER_H = {
    "m6i.2xlarge": 0.384,
    "c7i.8xlarge": 1.428,
    "g5.2xlarge": 1.212,
    "g5.12xlarge": 5.672,
    "p4d.24xlarge": 32.773,
}
PRICE_DATE = "AWS on-demand list prices, Linux, us-west-2, as of 2024 (not re-checked in this session)"
CPU_NODE_CORES = 16  # c7i.8xlarge: 32 vCPUs = 16 cores; x264 runs one transcode per core
PREPARE_NODES = 8  # cluster.yaml's cpu-decode max_workers
MIN_BILLED_H = 0.25  # a GPU node's start-up, setup and idle timeout: no job costs less than this


def _n(value: float, how: str, digits: int = 2) -> dict[str, Any]:
    return {"value": round(value, digits), "how": how}


def forward_gflop(frames: int, words: int) -> float:
    """Forward GFLOPs of one (video, paragraph) sample: ViT-B/32 frames, text tower, temporal module."""
    return frames * (FRAME_GFLOP + TEMPORAL_GFLOP_PER_FRAME) + words * TEXT_GFLOP_PER_TOKEN


def mfus() -> dict[str, dict[str, Any]]:
    """The two utilisations, the upstream one derived from the recipe's measured rate."""
    u = UPSTREAM
    per_sample = TRAIN_FACTOR * forward_gflop(u["frames"], u["words"])
    upstream = u["samples_per_s"] * per_sample / (u["gpus"] * u["peak_tflops"] * 1e3)
    return {
        "upstream": _n(
            upstream,
            f"{u['samples_per_s']:g} samples/s x {per_sample:.0f} GFLOP / ({u['gpus']} V100 x "
            f"{u['peak_tflops']:g} TFLOP/s)",
            3,
        ),
        "optimistic": _n(OPTIMISTIC_MFU, "assumed: a well-fed bf16 ViT-B/32", 3),
    }


def _gpu_hours(gflop: float, count: float, what: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{gpu: {mfu name: hours}}`` to run ``count`` items of ``gflop`` each."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for gpu, peak in GPU_PEAK_TFLOPS.items():
        out[gpu] = {}
        for name, mfu in mfus().items():
            rate = peak * 1e3 * mfu["value"] / gflop
            out[gpu][name] = _n(
                count / rate / 3600,
                f"{count:,.0f} {what} / ({peak:g} TFLOP/s x {mfu['value']:.3f} / {gflop:.0f} GFLOP "
                f"= {rate:.1f} per s) / 3600",
                2,
            )
    return out


def _stage1() -> dict[str, Any]:
    gflop = TRAIN_FACTOR * forward_gflop(RECIPE["frames"], RECIPE["words"])
    samples = ACTIVITYNET["train"] * RECIPE["epochs"]
    return {
        "train_gflop_per_sample": _n(gflop, "3 x (64 x (8.8 + 0.025) + 64 x 0.076)", 0),
        "samples": _n(samples, "10,009 train paragraphs x 5 epochs", 0),
        "gpu_hours": _gpu_hours(gflop, samples, "samples"),
    }


def _cache(measured: dict[str, Any]) -> dict[str, Any]:
    videos = ACTIVITYNET["train"] + ACTIVITYNET["val_1"]  # val and test are both val_1: one cache split
    gflop = forward_gflop(RECIPE["frames"], RECIPE["words"])
    mm = measured["evaluation"]["probe_d512"]["matmul_gflop_per_s"]
    return {
        "videos": _n(videos, "train 10,009 + val_1 4,917 (val = test = val_1)", 0),
        "forward_gflop_per_video": _n(gflop, "64 x (8.8 + 0.025) + 64 x 0.076", 0),
        "gpu_hours": _gpu_hours(gflop, videos, "videos"),
        "as_coded_cpu_hours": _n(
            videos * gflop / mm / 3600,
            f"{videos:,} x {gflop:.0f} GFLOP / {mm:g} GFLOP/s (one thread's matmul rate, measured) / 3600: "
            "the cache encoder is one CPU actor with one thread today (features/build.py)",
            0,
        ),
    }


def _decode_feed(measured: dict[str, Any]) -> dict[str, Any]:
    """Can the node's vCPUs decode 64 prepared frames as fast as its GPUs train on them?"""
    s = measured["decode"]["prepared_s_per_video_per_core"]
    return {
        "prepared_videos_per_s_per_core": _n(1 / s, f"1 / {s:.3f} s", 2),
        "g5.12xlarge_decode_videos_per_s": _n(24 / s, f"24 cores (48 vCPU) / {s:.3f} s", 0),
    }


def _eval(measured: dict[str, Any]) -> dict[str, Any]:
    """val_1 as the evaluation job runs it: the similarity on the driver (head node, 4 cores), the
    re-ranking in Ray tasks on worker CPUs (one c7i.8xlarge, 16 cores); and the similarity on a GPU."""
    n, lf, d = ACTIVITYNET["val_1"], RECIPE["frames"] * RECIPE["words"], 512
    flops = 2 * n * n * lf * d
    probe = measured["evaluation"]["probe_d512"]
    eff, wti = measured["evaluation"]["wti_vs_matmul"], probe["wti_gflop_per_s"]
    rerank_s = measured["evaluation"]["rerank_s_per_1000_queries_both_directions_cpu"]
    core_h = rerank_s * n / 1000 / 3600
    out = {
        "wti_tflop": _n(flops / 1e12, f"2 x {n:,}^2 x 64 x 64 x 512 / 1e12", 1),
        "similarity_on_head_h": _n(
            flops / 1e9 / (wti * 4) / 3600,
            f"{flops / 1e12:.0f} TFLOP / ({wti:g} GFLOP/s per core (measured, D = 512) x 4 cores) / 3600",
            2,
        ),
        "rerank_cpu_core_hours": _n(
            core_h, f"{rerank_s:g} s per 1,000 queries (both directions, D = 512) x {n:,} / 1000 / 3600", 2
        ),
        "rerank_on_c7i.8xlarge_h": _n(core_h / CPU_NODE_CORES, f"{core_h:.2f} core-h / 16 cores", 2),
    }
    for gpu, peak in GPU_PEAK_TFLOPS.items():
        secs = flops / (peak * 1e12 * 0.5 * eff)
        out[f"{gpu}_similarity_s"] = _n(
            secs, f"{flops / 1e12:.0f} TFLOP / ({peak:g} x 0.5 x {eff:.2f}) TFLOP/s", 1
        )
    return out


def _billed(hours: float) -> float:
    return max(hours, MIN_BILLED_H)


def _cost(prep_core_h: float, stage1: Any, cache: Any, ev: Any) -> dict[str, Any]:
    """USD per job on cluster.yaml's node types, and the end-to-end total per MFU (stage 1 on one
    g5.12xlarge, cache + stage 2 on one g5.2xlarge, the head up for the whole wall time)."""
    p = PRICES_USD_PER_H
    prep_h = prep_core_h / CPU_NODE_CORES
    prep_billed = max(prep_h, PREPARE_NODES * MIN_BILLED_H)
    cost: dict[str, Any] = {
        "prepare_on_c7i.8xlarge": _n(
            prep_billed * p["c7i.8xlarge"],
            f"max({prep_core_h:.1f} core-h / {CPU_NODE_CORES} cores, {PREPARE_NODES} nodes x "
            f"{MIN_BILLED_H} h) x ${p['c7i.8xlarge']}/h",
        ),
        "val_1_eval_rerank_on_c7i.8xlarge": _n(
            _billed(ev["rerank_on_c7i.8xlarge_h"]["value"]) * p["c7i.8xlarge"],
            f"max({ev['rerank_on_c7i.8xlarge_h']['value']:.2f} h, {MIN_BILLED_H} h) x ${p['c7i.8xlarge']}/h",
        ),
    }
    stage2_h = ACTIVITYNET["train"] * RECIPE["stage2_epochs"] / (STAGE2_SAMPLES_PER_GPU_S * 3600)
    for name in ("upstream", "optimistic"):
        for node in ("g5.12xlarge", "p4d.24xlarge"):
            gpu, count = NODE_GPUS[node]
            h = stage1["gpu_hours"][gpu][name]["value"] / count
            cost[f"stage1_on_{node}_{name}_mfu"] = _n(
                _billed(h) * p[node],
                f"max({h:.2f} h = {gpu}-h / {count} GPUs, {MIN_BILLED_H} h) x ${p[node]}/h",
            )
        h = cache["gpu_hours"]["A10G"][name]["value"] + stage2_h
        cost[f"cache_and_stage2_on_g5.2xlarge_{name}_mfu"] = _n(
            _billed(h) * p["g5.2xlarge"],
            f"max({h:.2f} h (cache encode on the GPU + stage 2), {MIN_BILLED_H} h) x ${p['g5.2xlarge']}/h",
        )
        s1_h = stage1["gpu_hours"]["A10G"][name]["value"] / 4
        wall = (
            prep_h / 8
            + s1_h
            + h
            + ev["similarity_on_head_h"]["value"]
            + ev["rerank_on_c7i.8xlarge_h"]["value"]
        )
        jobs = (
            cost["prepare_on_c7i.8xlarge"]["value"]
            + cost[f"stage1_on_g5.12xlarge_{name}_mfu"]["value"]
            + cost[f"cache_and_stage2_on_g5.2xlarge_{name}_mfu"]["value"]
            + cost["val_1_eval_rerank_on_c7i.8xlarge"]["value"]
        )
        cost[f"total_{name}_mfu"] = _n(
            jobs + wall * p["m6i.2xlarge"],
            f"jobs ${jobs:.2f} + head {wall:.2f} h wall (prepare on 8 c7i, stage 1 on 1 g5.12xlarge, cache + "
            f"stage 2, evaluation) x ${p['m6i.2xlarge']}/h",
        )
    return cost


def project(measured: dict[str, Any]) -> dict[str, Any]:
    """The ActivityNet projection from ``measured`` (the other sections of ``scale.py``'s report)."""
    an = ACTIVITYNET
    video_s = an["videos"] * an["mean_seconds"]
    rate = measured["decode"]["prepare_video_s_per_core_s"]
    prep_core_h = video_s / rate / 3600
    cache_gb = an["videos"] * measured["feature_cache"]["bytes_per_video"] / 1e9
    stage1, cache, ev = _stage1(), _cache(measured), _eval(measured)
    return {
        "corpus": {
            **an,
            "video_hours": _n(video_s / 3600, f"{an['videos']:,} x {an['mean_seconds']:.0f} s / 3600", 0),
        },
        "prepare_cpu_core_hours": _n(
            prep_core_h, f"{video_s:,.0f} video-s / {rate:.2f} video-s per core-s / 3600", 1
        ),
        "prepared_decode_feed": _decode_feed(measured),
        "feature_cache_gb": _n(
            cache_gb, f"{an['videos']:,} x {measured['feature_cache']['bytes_per_video']:,.0f} B", 1
        ),
        "mfu": mfus(),
        "stage1": stage1,
        "feature_cache_encode": cache,
        "stage2_gpu_hours": _n(
            an["train"] * RECIPE["stage2_epochs"] / STAGE2_SAMPLES_PER_GPU_S / 3600,
            f"10,009 x 5 epochs / {STAGE2_SAMPLES_PER_GPU_S:.0f} samples/s (assumed) / 3600",
            3,
        ),
        "val_1_evaluation": ev,
        "cost_usd": _cost(prep_core_h, stage1, cache, ev),
        "prices": {"usd_per_hour": PRICES_USD_PER_H, "source": PRICE_DATE},
        "assumptions": ASSUMPTIONS,
    }


ASSUMPTIONS = [
    "ActivityNet Captions: 19,994 videos of 120 s on average (train 10,009 / val_1 4,917 / val_2 4,885); "
    "configs/activitynet.yaml: 5 epochs per stage, 64 frames at 1 frame/s, 64 words, ViT-B/32 at 224 px.",
    "prepare: one x264 transcode per core at the rate measured here; a c7i.8xlarge's 32 vCPUs count as 16 "
    "cores. The generated videos (flat colours on a panned texture) carry fewer bits per frame than real "
    "uploads, which decode slower: the prepare hours are a lower bound; time a sample of the real corpus.",
    "GPU work is not measured here (no GPU): hours are FLOPs / (dense bf16 peak x MFU) at two MFUs, "
    "'upstream' (what the method's recipe reaches: 96 samples/s on 4 V100 at 12 frames) and 'optimistic' "
    "(30 %). Peaks: A10G 125 TFLOP/s (the A10 datasheet; ~70 in some sources, which would make the A10G "
    "hours 1.8x), A100 312. benchmarks/gpu.py measures the real stage-1 and stage-2 rates.",
    "stage 1 is fed by the GPU node's own CPUs decoding prepared files: prepared_decode_feed shows a "
    "g5.12xlarge decodes far more samples per second than its 4 GPUs train on at either MFU.",
    "the feature cache encodes train and val_1 once (forward only) with the stage-1 weights; costed on a "
    "GPU. As coded today its encoder is one Ray Data actor on one CPU thread (features/build.py): "
    "as_coded_cpu_hours is what that takes, so the cache needs a GPU encoder before an ActivityNet run. "
    f"Stage 2 trains only the denoisers, at an assumed {STAGE2_SAMPLES_PER_GPU_S:.0f} samples/s.",
    "evaluation as the job runs it: the WTI similarity on the driver (the head's 4 cores, at the per-core "
    "WTI rate measured at D = 512), the re-ranking in Ray tasks on worker CPUs at the rate measured here "
    "(D = 512; one c7i.8xlarge). The GPU similarity seconds (half the bf16 peak x wti_vs_matmul) are what "
    "moving it to a GPU would give.",
    "total: prepare spread over 8 c7i.8xlarge (cluster.yaml's max), stage 1 on one g5.12xlarge, cache "
    "and stage 2 on one g5.2xlarge, jobs back to back; the head bills for that wall time.",
    f"every GPU job is billed at least {MIN_BILLED_H} h (node start, setup_commands, idle timeout); the "
    "head node (m6i.2xlarge) bills for as long as the cluster is up.",
    "prices: " + PRICE_DATE + "; spot (the cpu-decode type in cluster.yaml) is typically 60-70 % less.",
]
