"""Diffusion re-ranking of a whole split spread over Ray tasks, and the top-k lists of a report.

Determinism: the DDIM start noise of each query is keyed by (``diffusion.noise_seed``, query row), and query
blocks are cut at multiples of ``RERANK_CHUNK`` rows whatever the number of workers, so every chunk runs the
same arithmetic on one worker or many: metrics are bit-identical across runs and worker counts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ray
import torch

from vidret.config import Config
from vidret.diffusion.rerank import Direction
from vidret.features.scoring import DIRECTIONS, rerank_features
from vidret.features.types import FeatureSet
from vidret.model.build import model_from_state
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage
from vidret.watchdog import watching

RERANK_CHUNK = 256


@ray.remote
def _rerank_task(
    state_ref: Any, cfg: Config, sim_ref: Any, fs_ref: Any, direction: Direction, start: int, stop: int
) -> np.ndarray:
    torch.set_num_threads(1)
    model = model_from_state(cfg, Storage(cfg.storage), state_ref)
    rows = slice(start, stop)
    return rerank_features(
        model, direction, sim_ref, fs_ref, cfg.diffusion, rows=rows, chunk=RERANK_CHUNK
    ).numpy()


def _blocks(rows: int, workers: int) -> list[tuple[int, int]]:
    per = math.ceil(math.ceil(rows / workers) / RERANK_CHUNK) * RERANK_CHUNK
    return [(s, min(s + per, rows)) for s in range(0, rows, per)]


def rerank_distributed(
    model: RetrievalModel,
    state: dict[str, torch.Tensor],
    cfg: Config,
    sim_TV: torch.Tensor,
    fs: FeatureSet,
    workers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2v, v2t) re-ranked matrices; query blocks spread over ``workers`` Ray tasks (in-process when 1)."""
    sims = {"t2v": sim_TV, "v2t": sim_TV.T.contiguous()}
    if workers <= 1:
        t2v, v2t = (
            rerank_features(model, d, sims[d], fs, cfg.diffusion, chunk=RERANK_CHUNK) for d in DIRECTIONS
        )
        return t2v, v2t
    state_ref, fs_ref = ray.put(state), ray.put(fs)
    task = _rerank_task.options(scheduling_strategy="SPREAD")  # spread over the cluster's nodes
    pending = []  # both directions' blocks are in flight together
    for direction in DIRECTIONS:
        sim_ref = ray.put(sims[direction])
        pending.append(
            [
                task.remote(state_ref, cfg, sim_ref, fs_ref, direction, a, b)
                for a, b in _blocks(sims[direction].shape[0], workers)
            ]
        )
    # the tasks queue for CPUs (the plan checked that one fits a node); the watchdog ends the wait when an
    # actor or placement group of the job stays pending instead
    with watching(cfg.run):
        t2v, v2t = (torch.from_numpy(np.concatenate(ray.get(refs))) for refs in pending)
    return t2v, v2t


def top_k(sim_QN: torch.Tensor, k: int) -> np.ndarray:
    """(Q, k) column indices of the k best scores per row (ties by lower index)."""
    k = min(k, sim_QN.shape[1])
    order = np.argsort(-sim_QN.double().cpu().numpy(), axis=1, kind="stable")
    return order[:, :k]
