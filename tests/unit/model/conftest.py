"""Shared fixtures for the model unit tests: a seeded debug CLIP and a small token batch."""

from __future__ import annotations

import pytest
import torch

from vidret.config import ModelConfig
from vidret.model.presets import build_clip


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def debug_clip():
    torch.manual_seed(0)
    return build_clip(ModelConfig(preset="debug")).eval()


@pytest.fixture
def token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three captions of different lengths in a (3, 12) batch, SOT first, EOT at the end, zero padded."""
    ids = torch.zeros(3, 12, dtype=torch.long)
    ids[0, :5] = torch.tensor([49406, 320, 1929, 530, 49407])
    ids[1, :3] = torch.tensor([49406, 0, 49407])  # id 0 ("!") is a real token
    ids[2, :12] = torch.tensor([49406, *range(1000, 1010), 49407])
    mask = torch.zeros(3, 12, dtype=torch.long)
    mask[0, :5] = 1
    mask[1, :3] = 1
    mask[2, :] = 1
    return ids, mask
