"""Evaluation benchmark: wall time and sampled peak RSS of a whole evaluation (blocked WTI similarity +
diffusion re-ranking of both directions + metrics) for N = 1,000 and N = 5,000 galleries, and the vectorised
evaluation re-ranking against an upstream-style loop on the same queries.

Prints one JSON object. CPU, one thread by default. ``python benchmarks/evaluate.py [--quick] [--threads N]``.

Features are random tensors of the cache's shapes (text (N, L, D) + masks + WTI weights from the model's WTI
head, EOT (N, D), video (N, F, D) + masks + weights) for the ``tiny`` preset (D = 128); the evaluation compute
does not depend on where they came from. Each gallery size runs in a fresh spawned process so its peak RSS is
its own; a thread samples ``VmRSS`` every 5 ms, and ``VmHWM`` (reset first where the kernel allows) is kept
as a cross-check. The timed path is the job's: ``evaluate_features`` with ``rerank_distributed`` (one worker,
in process) as its re-ranking, stage-1 and re-ranked metrics of both directions.

``rerank_vs_loop``: the job's vectorised re-ranking (the functions ``rerank_distributed`` runs: ``topk``
candidates, conditioning and sampling tables once per 256-query chunk, DDIM steps of
``CandidateDenoiser.sample_step``, one ``scatter_add_`` fusion) against the released code's structure
(docs/method.md §4):
per 32 queries, per-query ``topk`` and a Python gather of every candidate's features, ``ddim_sample`` calling
the denoiser module's full forward (frame attention + every projection) at each step, and one scalar ``+=``
per (query, candidate). Both directions, at the method's width D = 512 (headline) and the tiny D = 128. The
loop uses the same per-query seeded start noise (the upstream draws it from the global RNG) so both sides
must give the same matrices, which is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from child import run_in_child
from vidret.config import Config, DiffusionConfig, EvalConfig, ModelConfig
from vidret.diffusion.process import seeded_noise

UPSTREAM_CHUNK = 32  # queries per DDIM call in the released code


# -- memory -----------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak of this address space) from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"/proc/self/status has no field {field}")


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples this process's RSS every ``period_s`` in a daemon thread; ``peak_mb`` is the largest seen."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s, self.peak_mb, self.samples = period_s, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _status_mb("VmRSS"))
            self.samples += 1
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("VmRSS"))


# -- inputs ---------------------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> Config:
    return Config(
        model=ModelConfig(preset="tiny", temporal_layers=2),
        diffusion=DiffusionConfig(steps=args.steps, t2v_k=args.k, v2t_k=args.k),
        eval=EvalConfig(block_size=args.block, rerank=True, report=False),
    )


def _setup(args: argparse.Namespace, n: int) -> tuple[Any, Config, Any]:
    """(model, config, FeatureSet) with N captions and N videos of random features (single caption)."""
    from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures
    from vidret.model.retrieval import RetrievalModel

    cfg = _config(args)
    torch.manual_seed(0)
    model = RetrievalModel.build(cfg.model, cfg.diffusion).eval()
    d = model.backbone.embed_dim
    g = torch.Generator().manual_seed(n)
    words, frames = args.words, args.frames
    text_mask = (torch.arange(words) < torch.randint(6, words + 1, (n, 1), generator=g)).long()
    video_mask = (torch.arange(frames) < torch.randint(frames // 2, frames + 1, (n, 1), generator=g)).long()
    text = torch.randn(n, words, d, generator=g)
    video = torch.randn(n, frames, d, generator=g)
    with torch.no_grad():
        text_w, video_w = model.wti(text, text_mask, video, video_mask)
    fs = FeatureSet(
        text=TextFeatures(text, text_mask, text_w, torch.randn(n, d, generator=g)),
        video=VideoFeatures(video, video_mask, video_w),
        text_to_video_T=torch.arange(n),
    )
    return model, cfg, fs


# -- one gallery size (in its own process) ----------------------------------------------------------------
def _gallery_run(args: argparse.Namespace, n: int, out: Any) -> None:
    torch.set_num_threads(args.threads)
    from vidret.eval.retrieval import rerank_distributed
    from vidret.features.scoring import evaluate_features

    model, cfg, fs = _setup(args, n)
    state = model.state_dict()
    times: dict[str, float] = {}
    similarity = model.similarity

    def timed_similarity(*a: Any, **kw: Any) -> Tensor:
        t0 = time.perf_counter()
        sim = similarity(*a, **kw)
        times["similarity_s"] = time.perf_counter() - t0
        return sim

    def timed_rerank(sim: Tensor) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        res = rerank_distributed(model, state, cfg, sim, fs, 1)
        times["rerank_s"] = time.perf_counter() - t0
        return res

    model.similarity = timed_similarity  # type: ignore[method-assign]
    baseline = _status_mb("VmRSS")
    hwm_reset = _reset_hwm()
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        res = evaluate_features(model, fs, cfg.eval, rerank=True, rerank_fn=timed_rerank)
        wall = time.perf_counter() - t0
    hwm = _status_mb("VmHWM")
    out.put(
        {
            "gallery": n,
            "queries_per_direction": n,
            "wall_s": round(wall, 2),
            "similarity_s": round(times["similarity_s"], 2),
            "rerank_both_directions_s": round(times["rerank_s"], 2),
            "metrics_and_rest_s": round(wall - times["similarity_s"] - times["rerank_s"], 2),
            "peak_rss_mb_sampled": round(sampler.peak_mb, 1),
            "peak_rss_mb_vmhwm": round(hwm, 1) if hwm_reset else None,
            "rss_before_mb": round(baseline, 1),
            "peak_extra_mb_sampled": round(sampler.peak_mb - baseline, 1),
            "rss_samples": sampler.samples,
            "inputs_mb": round(
                sum(t.numel() * t.element_size() for p in (fs.text, fs.video) for t in p.as_model().values())
                / 2**20,
                1,
            ),
            "one_sim_matrix_mb": round(n * n * 4 / 2**20, 1),
            "t2v_R1_stage1_rerank": [round(res.metrics[v]["t2v"]["R1"], 2) for v in ("stage1", "rerank")],
        }
    )


def gallery(args: argparse.Namespace, n: int) -> dict[str, Any]:
    result: dict[str, Any] = run_in_child(_gallery_run, (args, n), f"gallery run N={n}")
    return result


# -- upstream-style loop (lives only here) ------------------------------------------------------------------
def _loop_fuse(rows_QN: Tensor, ids: list[Tensor], x0_CK: Tensor, alpha: float, temp: float) -> None:
    """One scalar ``+=`` per (query, candidate), in place (docs/method.md §4.5)."""
    w_CK = (temp * x0_CK).softmax(dim=-1)
    for i in range(rows_QN.shape[0]):
        for j, c in enumerate(ids[i]):
            rows_QN[i, c] += w_CK[i, j] * alpha


def loop_rerank(
    den: Any,
    diffusion: Any,
    sim_QN: Tensor,
    feats: dict[str, Tensor],
    dcfg: DiffusionConfig,
    direction: str,
    rows: int,
) -> Tensor:
    """Rows ``0..rows-1`` re-ranked the released code's way (module docstring); (rows, N).

    ``den`` is called as a module (``forward``: frame attention + every projection) at each DDIM step.
    """
    k = dcfg.t2v_k if direction == "t2v" else dcfg.v2t_k
    alpha, temp = (dcfg.t2v_alpha, dcfg.t2v_temp) if direction == "t2v" else (dcfg.v2t_alpha, dcfg.v2t_temp)
    text_eot, video, video_mask = feats["text_eot"], feats["video"], feats["video_mask"]
    new = sim_QN[:rows].clone()
    for s in range(0, rows, UPSTREAM_CHUNK):
        chunk = new[s : s + UPSTREAM_CHUNK]  # a view, fused in place
        e = s + chunk.shape[0]
        ids, cands, cand_masks = [], [], []
        for b in range(chunk.shape[0]):
            _, idx = chunk[b].topk(k, largest=True, sorted=True)
            ids.append(idx)
            if direction == "t2v":  # the upstream iterates the id tensor and indexes one candidate at a time
                cands.append(torch.stack([video[i] for i in idx]))
                cand_masks.append(torch.stack([video_mask[i] for i in idx]))
            else:
                cands.append(torch.stack([text_eot[i] for i in idx]))
        if direction == "t2v":
            cond = {
                "text_BD": text_eot[s:e],
                "video_BKFD": torch.stack(cands),
                "video_mask_BKF": torch.stack(cand_masks),
            }
        else:
            cond = {"text_BKD": torch.stack(cands), "video_BFD": video[s:e], "video_mask_BF": video_mask[s:e]}
        noise = seeded_noise(torch.arange(s, e), k, dcfg.noise_seed)
        x0 = diffusion.ddim_sample(
            den,
            (e - s, k),
            cond,
            noise=noise,
            clip_denoised=dcfg.clip_denoised,
            num_steps=dcfg.sample_steps or None,
        )
        _loop_fuse(chunk, ids, x0, alpha, temp)
    return new


def vectorised_rerank(
    t2v_den: Any,
    v2t_den: Any,
    diffusion: Any,
    sim_TV: Tensor,
    sim_VT: Tensor,
    feats: dict[str, Tensor],
    dcfg: DiffusionConfig,
    rows: int,
) -> tuple[Tensor, Tensor]:
    """What the job's re-ranking (``rerank_features``) runs, both directions, for query rows ``0..rows-1``."""
    from vidret.diffusion.rerank import Conditioning, rerank
    from vidret.eval.retrieval import RERANK_CHUNK

    ids = torch.arange(rows)
    text, video, mask = feats["text_eot"], feats["video"], feats["video_mask"]
    t2v = rerank(
        "t2v",
        sim_TV[:rows],
        Conditioning(text[:rows], video, mask),
        t2v_den,
        diffusion,
        dcfg,
        query_ids_Q=ids,
        chunk=RERANK_CHUNK,
    )
    v2t = rerank(
        "v2t",
        sim_VT[:rows],
        Conditioning(text, video[:rows], mask[:rows]),
        v2t_den,
        diffusion,
        dcfg,
        query_ids_Q=ids,
        chunk=RERANK_CHUNK,
    )
    return t2v, v2t


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(best wall seconds, last result) over ``repeat`` runs: the minimum is the least disturbed by a shared
    machine."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def rerank_vs_loop(args: argparse.Namespace, dim: int, loop_queries: int) -> dict[str, Any]:
    """Vectorised (all N queries) vs loop (the first ``loop_queries``) re-ranking, both directions, width
    D."""
    from vidret.diffusion.denoiser import T2VDenoiser, V2TDenoiser
    from vidret.diffusion.process import GaussianDiffusion

    n, sub = args.loop_gallery, min(loop_queries, args.loop_gallery)
    dcfg = _config(args).diffusion
    torch.manual_seed(0)
    t2v_den = T2VDenoiser.from_config(dim, dcfg).eval()
    v2t_den = V2TDenoiser.from_config(dim, dcfg).eval()
    diffusion = GaussianDiffusion.from_config(dcfg)
    g = torch.Generator().manual_seed(1)
    video_mask = torch.arange(args.frames) < torch.randint(
        args.frames // 2, args.frames + 1, (n, 1), generator=g
    )
    feats = {
        "text_eot": torch.randn(n, dim, generator=g),
        "video": torch.randn(n, args.frames, dim, generator=g),
        "video_mask": video_mask.long(),
    }
    sim_TV = torch.randn(n, n, generator=g)  # only selects the candidates: any scores will do
    sim_VT = sim_TV.T.contiguous()
    with torch.no_grad():
        vec_s, (vec_t2v, vec_v2t) = _best(
            lambda: vectorised_rerank(t2v_den, v2t_den, diffusion, sim_TV, sim_VT, feats, dcfg, n),
            args.repeat,
        )
        vsub_s, (sub_t2v, sub_v2t) = _best(
            lambda: vectorised_rerank(t2v_den, v2t_den, diffusion, sim_TV, sim_VT, feats, dcfg, sub),
            args.repeat,
        )
        loop_s, (loop_t2v, loop_v2t) = _best(
            lambda: (
                loop_rerank(t2v_den, diffusion, sim_TV, feats, dcfg, "t2v", sub),
                loop_rerank(v2t_den, diffusion, sim_VT, feats, dcfg, "v2t", sub),
            ),
            max(1, args.repeat - 1),
        )
    diffs = [(loop_t2v - vec_t2v[:sub]).abs().max().item(), (loop_v2t - vec_v2t[:sub]).abs().max().item()]
    assert max(diffs) < 1e-4, f"loop and vectorised re-ranking differ by {max(diffs):.3g}"
    assert torch.equal(sub_t2v, vec_t2v[:sub])
    assert torch.equal(sub_v2t, vec_v2t[:sub])
    boost = (vec_t2v - sim_TV).abs().max().item()
    return {
        "rerank_vs_loop": round((loop_s / sub) / (vec_s / n), 1),
        "rerank_vs_loop_same_subset": round(loop_s / vsub_s, 1),
        "dim": dim,
        "gallery": n,
        "vectorised_queries_per_direction": n,
        "loop_queries_per_direction": sub,
        "vectorised_all_queries_s": round(vec_s, 3),
        "vectorised_subset_s": round(vsub_s, 3),
        "loop_subset_s": round(loop_s, 2),
        "loop_ms_per_query_both_directions": round(1e3 * loop_s / sub, 2),
        "vectorised_ms_per_query_both_directions": round(1e3 * vec_s / n, 3),
        "max_abs_diff_t2v_v2t": [float(f"{d:.2e}") for d in diffs],
        "max_fusion_boost": round(boost, 3),
        "same_result": True,
    }


def job_path_matches(args: argparse.Namespace) -> bool:
    """``rerank_distributed`` (one worker) of a tiny RetrievalModel equals ``vectorised_rerank`` bit for
    bit."""
    from vidret.eval.retrieval import rerank_distributed

    model, cfg, fs = _setup(args, min(args.loop_gallery, 300))
    sim_TV = torch.randn(len(fs.text), len(fs.video), generator=torch.Generator().manual_seed(2))
    feats = {"text_eot": fs.text.eot, "video": fs.video.frames, "video_mask": fs.video.mask}
    with torch.no_grad():
        job = rerank_distributed(model, model.state_dict(), cfg, sim_TV, fs, 1)
        here = vectorised_rerank(
            model.t2v_denoiser,
            model.v2t_denoiser,
            model.diffusion,
            sim_TV,
            sim_TV.T.contiguous(),
            feats,
            cfg.diffusion,
            sim_TV.shape[0],
        )
    same = all(torch.equal(a, b) for a, b in zip(job, here, strict=True))
    assert same, "vectorised_rerank is not what the evaluation job runs"
    return same


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="gallery sizes N (T = V = N)")
    p.add_argument("--loop-gallery", type=int, default=1000, help="gallery and queries of rerank_vs_loop")
    p.add_argument(
        "--loop-dims",
        type=int,
        nargs="+",
        default=[512, 128],
        help="denoiser widths of rerank_vs_loop (the first is the headline)",
    )
    p.add_argument(
        "--loop-queries",
        type=int,
        nargs="+",
        default=[64, 256],
        help="queries per direction run by the loop, one per --loop-dims entry",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="best-of runs of the vectorised side (loop: one less)"
    )
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--words", type=int, default=32)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--block", type=int, default=256, help="eval.block_size of the WTI similarity")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.loop_gallery, args.loop_queries, args.steps, args.repeat = [300], 300, [32, 64], 5, 1
    if len(args.loop_queries) != len(args.loop_dims):
        raise ValueError(
            f"--loop-queries: expected {len(args.loop_dims)} values (one per --loop-dims), got "
            f"{len(args.loop_queries)}"
        )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "config": {
            "preset": "tiny",
            "dim": 128,
            "words": args.words,
            "frames": args.frames,
            "k": args.k,
            "steps": args.steps,
            "block": args.block,
            "threads": args.threads,
            "device": "cpu",
            "torch": torch.__version__,
        },
        "evaluation": [gallery(args, n) for n in args.sizes],
    }
    report["rerank_job_path_is_the_timed_function"] = job_path_matches(args)
    runs = [rerank_vs_loop(args, d, q) for d, q in zip(args.loop_dims, args.loop_queries, strict=True)]
    report["rerank_vs_loop"] = runs[0]["rerank_vs_loop"]
    report["rerank_vs_loop_runs"] = runs
    report["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
    report["notes"] = [
        "evaluation: evaluate_features on N captions x N videos (single caption, T = V = N) of the tiny "
        "preset "
        "(D = 128): blocked WTI (eval.block_size tiles), rerank_distributed with one worker (in process: t2v "
        f"and v2t, top-{args.k}, {args.steps}-step DDIM, fusion), metrics of stage 1 and re-ranked, both "
        "directions. One process per N; peak_rss_mb_sampled is the largest VmRSS seen every 5 ms (the "
        "process holds ~1.1 GB before: torch + CUDA libraries + ray imports), peak_rss_mb_vmhwm the kernel's "
        "high-water mark since just before the evaluation (null where it cannot be reset). Single runs.",
        "rerank_vs_loop = loop time per query / vectorised time per query, both directions, for the first "
        "entry of rerank_vs_loop_runs (D = 512, the ViT-B/32 width the method uses; D = 128 is the tiny "
        "preset). The vectorised side re-ranks all loop_gallery queries as the evaluation job does (the same "
        "functions as rerank_distributed, checked bit for bit in rerank_job_path_is_the_timed_function); the "
        "loop runs loop_queries_per_direction of them (the first rows) with the same seeded start noise. "
        "rerank_vs_loop_same_subset times the vectorised functions on that subset only. Outputs are asserted "
        "equal (max abs diff < 1e-4: the loop's full forward and the prepared step differ by float summation "
        "order). Times are the best of --repeat runs (loop: one fewer) on a possibly shared machine.",
        "Why the ratio grows with D: the loop's step costs ~7 K D^2 multiply-adds per query; the vectorised "
        "step (CandidateDenoiser.sample_step) one (D, 2D) matmul (2 D^2), an alpha-weighted sum of the K "
        "candidates and three elementwise passes over the (K, 2D) decoder hidden layer (in L2-sized row "
        "blocks), after a one-off 2-3 K D^2 prepare_sampling per query that also tables every c(t) term of "
        "the T steps. At D = 128 the per-step elementwise passes and op overheads weigh relatively more.",
    ]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
