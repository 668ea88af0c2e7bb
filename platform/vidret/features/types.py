"""Typed feature sets: what the frozen encoders produce for captions and videos, and a split of both.

Shape legend: T texts (captions), V videos, L tokens, F frames, D width.

The model's encoders return feature dictionaries (keys in ``vidret.model.retrieval``); this module is the
one place that maps them to fields (``TextFeatures.from_model``, ``as_model``), so the rest of the code
passes typed objects. The feature cache stores the same arrays under the model's key names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

TEXT_KEYS = {"tokens": "text", "mask": "text_mask", "weight": "text_weight", "eot": "text_eot"}
"""TextFeatures field -> the model's (and the cache's) key."""
VIDEO_KEYS = {"frames": "video", "mask": "video_mask", "weight": "video_weight"}
"""VideoFeatures field -> the model's (and the cache's) key."""


@dataclass(frozen=True)
class TextFeatures:
    """Per-caption features: WTI tokens (T, L, D), token mask (T, L), WTI weights (T, L), EOT (T, D)."""

    tokens: Tensor
    mask: Tensor
    weight: Tensor
    eot: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_model(cls, feats: Mapping[str, Tensor]) -> TextFeatures:
        """From ``RetrievalModel.encode_text``'s dictionary (or a cache shard's columns as tensors)."""
        return cls(**{name: feats[key] for name, key in TEXT_KEYS.items()})

    def as_model(self) -> dict[str, Tensor]:
        """The model's dictionary form (``RetrievalModel.similarity`` takes it)."""
        return {key: getattr(self, name) for name, key in TEXT_KEYS.items()}

    def take(self, rows: Tensor | slice) -> TextFeatures:
        """The captions ``rows`` (an index tensor or a slice)."""
        return TextFeatures(*(getattr(self, f.name)[rows] for f in fields(self)))


@dataclass(frozen=True)
class VideoFeatures:
    """Per-video features: temporal-module frames (V, F, D), frame mask (V, F), WTI weights (V, F)."""

    frames: Tensor
    mask: Tensor
    weight: Tensor

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @classmethod
    def from_model(cls, feats: Mapping[str, Tensor]) -> VideoFeatures:
        """From ``RetrievalModel.encode_video``'s dictionary (or a cache shard's columns as tensors)."""
        return cls(**{name: feats[key] for name, key in VIDEO_KEYS.items()})

    def as_model(self) -> dict[str, Tensor]:
        """The model's dictionary form (``RetrievalModel.similarity`` takes it)."""
        return {key: getattr(self, name) for name, key in VIDEO_KEYS.items()}

    def take(self, rows: Tensor | slice) -> VideoFeatures:
        """The videos ``rows`` (an index tensor or a slice)."""
        return VideoFeatures(*(getattr(self, f.name)[rows] for f in fields(self)))


@dataclass
class FeatureSet:
    """Features of one split: captions (T rows) and videos (V rows), and which video each caption describes.

    Single-caption splits (MSR-VTT 1k-A) have T == V and the identity map; multi-caption splits (MSVD) are
    ranked with the grouped metrics.
    """

    text: TextFeatures
    video: VideoFeatures
    text_to_video_T: Tensor  # int64 (T,)
    video_ids: list[str] = field(default_factory=list)  # (V,) dataset ids, for reports
    captions: list[str] = field(default_factory=list)  # (T,)
    video_ok: np.ndarray | None = None  # (V,) bool: False where the video could not be decoded

    @property
    def single_caption(self) -> bool:
        """True when every video has exactly one caption, in video order."""
        t, v = self.text_to_video_T.shape[0], len(self.video)
        return t == v and bool(torch.equal(self.text_to_video_T, torch.arange(v)))

    def __post_init__(self) -> None:
        t = len(self.text)
        if self.text_to_video_T.shape != (t,):
            raise ValueError(
                f"FeatureSet: text_to_video_T has shape {tuple(self.text_to_video_T.shape)}, expected ({t},)"
            )
