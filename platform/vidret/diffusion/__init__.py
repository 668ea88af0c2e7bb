"""The generative re-ranker: noise schedules, the Gaussian process, the denoisers, candidate selection."""

from vidret.diffusion.denoiser import CandidateDenoiser, T2VDenoiser, TimestepEmbedder, V2TDenoiser
from vidret.diffusion.process import GaussianDiffusion, seeded_noise
from vidret.diffusion.rerank import Conditioning, Direction, fuse, hard_negatives, rerank, topk_candidates
from vidret.diffusion.schedule import betas

__all__ = [
    "CandidateDenoiser",
    "Conditioning",
    "Direction",
    "GaussianDiffusion",
    "T2VDenoiser",
    "TimestepEmbedder",
    "V2TDenoiser",
    "betas",
    "fuse",
    "hard_negatives",
    "rerank",
    "seeded_noise",
    "topk_candidates",
]
