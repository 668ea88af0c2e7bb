"""The generative re-ranker: noise schedules, the Gaussian process, the denoisers, candidate selection."""

from vidret.diffusion.denoiser import CandidateDenoiser, T2VDenoiser, TimestepEmbedder, V2TDenoiser
from vidret.diffusion.process import GaussianDiffusion, seeded_noise
from vidret.diffusion.rerank import fuse, hard_negatives, rerank_t2v, rerank_v2t, topk_candidates
from vidret.diffusion.schedule import betas

__all__ = [
    "CandidateDenoiser",
    "GaussianDiffusion",
    "T2VDenoiser",
    "TimestepEmbedder",
    "V2TDenoiser",
    "betas",
    "fuse",
    "hard_negatives",
    "rerank_t2v",
    "rerank_v2t",
    "seeded_noise",
    "topk_candidates",
]
