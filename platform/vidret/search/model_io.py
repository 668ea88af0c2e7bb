"""The search package's one doorway to the model: exported weights, encoding, WTI and re-ranking.

Shape legend: Q queries (1 per request), M prefiltered candidates, B videos in a batch, L tokens, F frames,
D width, K re-ranked candidates.

Every import of the model, diffusion and checkpoint code that ``vidret.search`` needs lives here, so a change
of those interfaces is absorbed in this one module. Exported weights are read with
``vidret.model.checkpoint.load_state``, as training and evaluation do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vidret.config import Config, DiffusionConfig, replace
from vidret.diffusion.rerank import Conditioning, rerank
from vidret.model.checkpoint import load_state
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage

VIDEO_KEYS = ("video", "video_mask", "video_weight")
__all__ = [
    "LoadedModel",
    "checkpoint_identity",
    "encode_query",
    "encode_videos",
    "load_model",
    "rerank_scores",
    "state_summary",
    "wti_scores",
]


@dataclass
class LoadedModel:
    """A model in eval mode with the identity of its weights."""

    model: RetrievalModel
    key: str  # the encoder key of the exported weights (equal for stage 1 and its stage 2)
    stage: str  # "discrimination" or "generation": only the latter has trained denoisers
    checkpoint: str  # URI the weights came from


def load_model(cfg: Config, checkpoint_uri: str, storage: Storage) -> LoadedModel:
    """The model of ``cfg`` with the exported weights at ``checkpoint_uri`` (verified), in eval mode."""
    exported = load_state(checkpoint_uri, storage)
    model = RetrievalModel.build(cfg.model, cfg.diffusion, storage)
    try:
        model.load_state_dict(exported["selected"])
    except RuntimeError as err:
        raise ValueError(
            f"{checkpoint_uri}: weights do not match the model of the config (model.preset "
            f"{cfg.model.preset!r}): {str(err).splitlines()[0]}"
        ) from None
    model.eval()
    return LoadedModel(
        model=model,
        key=str(exported.get("key", "")),
        stage=str(exported.get("stage", "discrimination")),
        checkpoint=checkpoint_uri,
    )


@torch.no_grad()
def encode_videos(
    model: RetrievalModel, video_BFSS3: np.ndarray, mask_BF: np.ndarray
) -> dict[str, np.ndarray]:
    """``video`` (B, F, D), ``video_mask`` (B, F) and ``video_weight`` (B, F) of decoded uint8 frames."""
    feats = model.encode_video(_tensor(video_BFSS3), _tensor(mask_BF))
    return {k: feats[k].float().numpy() if k != "video_mask" else feats[k].numpy() for k in VIDEO_KEYS}


def _tensor(x: np.ndarray) -> Tensor:
    arr = np.asarray(x)  # Ray Data hands over read-only views of its object store: copy those
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


@torch.no_grad()
def encode_query(model: RetrievalModel, ids_QL: Tensor, mask_QL: Tensor) -> dict[str, Tensor]:
    """``text`` (Q, L, D), ``text_mask``, ``text_weight`` (Q, L) and ``text_eot`` (Q, D) of token ids."""
    return model.encode_text(ids_QL, mask_QL)


@torch.no_grad()
def wti_scores(
    model: RetrievalModel, text: Mapping[str, Tensor], video: Mapping[str, Tensor], block: int | None = None
) -> Tensor:
    """Exact WTI similarity ``sim_QM`` of the queries against candidate videos, float32 (``block``: tile the
    computation for a large gallery, see ``RetrievalModel.similarity``)."""
    return model.similarity(text, video, block=block).float()


@torch.no_grad()
def rerank_scores(
    model: RetrievalModel,
    sim_QM: Tensor,
    text_eot_QD: Tensor,
    video_MFD: Tensor,
    video_mask_MF: Tensor,
    dcfg: DiffusionConfig,
    k: int,
) -> Tensor:
    """Fused scores (Q, M): the best ``k`` of each row re-ranked by the text-to-video denoiser (DDIM from
    noise seeded by ``diffusion.noise_seed`` and query id 0, so a query always gets the same answer)."""
    k = max(1, min(k, sim_QM.shape[1]))
    return rerank(
        "t2v",
        sim_QM,
        Conditioning(text_D=text_eot_QD, video_FD=video_MFD, video_mask_F=video_mask_MF),
        model.t2v_denoiser,
        model.diffusion,
        replace(dcfg, t2v_k=k),
        query_ids_Q=torch.zeros(sim_QM.shape[0], dtype=torch.int64),
    )


def state_summary(loaded: LoadedModel) -> dict[str, Any]:
    """What an index records about the weights it was built with."""
    return {"encoder_key": loaded.key, "stage": loaded.stage, "checkpoint": loaded.checkpoint}


def checkpoint_identity(checkpoint_uri: str, storage: Storage) -> dict[str, Any]:
    """``state_summary`` of the exported weights at ``checkpoint_uri`` without building the model."""
    exported = load_state(checkpoint_uri, storage)
    return {
        "encoder_key": str(exported.get("key", "")),
        "stage": str(exported.get("stage", "discrimination")),
        "checkpoint": checkpoint_uri,
    }
