"""Build the retrieval model of a config, and load exported weights into it.

Exported weights (``<run.out>/checkpoints/<stage>``, written by the training driver with
``vidret.model.checkpoint.save_state``) hold ``selected`` (the model's state dict), ``key`` (the encoder's
content key, which names the feature cache), ``stage``, ``step``, ``best`` and the resolved ``config``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vidret.config import Config
from vidret.model.checkpoint import checkpoint_key, load_state
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage

DENOISER_PREFIXES = ("t2v_denoiser.", "v2t_denoiser.")
"""State-dict prefixes of the stage-2 parameters; everything else is the (stage-1) encoder."""


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (identical initialisation on every worker)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def encoder_key(state_dict: Mapping[str, Any]) -> str:
    """Content key of the encoder weights (everything but the denoisers): the feature cache's key, shared by a
    stage-1 checkpoint and the stage-2 checkpoints trained on top of it (their encoder is frozen)."""
    return checkpoint_key({k: v for k, v in state_dict.items() if not k.startswith(DENOISER_PREFIXES)})


def build_model(cfg: Config, storage: Storage, init_state_uri: str | None = None) -> RetrievalModel:
    """The model of ``cfg`` (seeded by ``run.seed``) with its stage set to ``train.stage``; for stage 2,
    stage 1's selected weights from ``init_state_uri`` (every parameter but the denoisers must match)."""
    seed_everything(cfg.run.seed)  # identical initialisation on every worker
    model = RetrievalModel.build(cfg.model, cfg.diffusion, storage)
    if init_state_uri:
        state = load_state(init_state_uri, storage)
        missing, unexpected = model.load_state_dict(state["selected"], strict=False)
        stage1_missing = [k for k in missing if not k.startswith(DENOISER_PREFIXES)]
        if stage1_missing or unexpected:
            raise ValueError(
                f"{init_state_uri}: weights do not match the model: missing {stage1_missing[:8]}, "
                f"unexpected {list(unexpected)[:8]}"
            )
    model.set_stage(cfg.train.stage)
    return model


def model_from_state(cfg: Config, storage: Storage, state: Mapping[str, Tensor]) -> RetrievalModel:
    """The model of ``cfg`` holding exactly ``state`` (an exported ``selected`` state dict), in eval mode."""
    model = build_model(cfg, storage)
    model.load_state_dict(state)
    return model.eval()
