"""Encoding decoded, tokenised batches (the data pipeline's layout) into typed features.

Shape legend: N rows, L tokens, F frames, H/W pixels, D width.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vidret.features.types import TextFeatures, VideoFeatures
from vidret.model.retrieval import RetrievalModel

ROW_KEYS = ("video_index", "caption_index", "ok")
"""Per-row columns a batch may carry besides its inputs; they are passed through in order."""


@dataclass(frozen=True)
class Encoded:
    """Features of the encoded rows in arrival order, and the row columns the batches carried."""

    text: TextFeatures | None
    video: VideoFeatures | None
    rows: dict[str, Tensor]  # a subset of ROW_KEYS, each (N,)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every column as a numpy array under the model's (the feature cache's) key names."""
        out = {k: v.numpy() for k, v in self.rows.items()}
        for part in (self.text, self.video):
            if part is not None:
                out.update({k: v.numpy() for k, v in part.as_model().items()})
        return out


@torch.no_grad()
def encode_batches(
    model: RetrievalModel, batches: Iterable[Mapping[str, Any]], *, texts: bool = True, videos: bool = True
) -> Encoded:
    """Encode numpy/torch batches (``text_ids``/``text_mask`` and/or ``video``/``video_mask``, plus any of
    ``ROW_KEYS``) in eval mode without gradients; features are float32, concatenated in arrival order."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    for batch in batches:
        feats: dict[str, Tensor] = {}
        if texts:
            feats.update(model.encode_text(_t(batch["text_ids"]), _t(batch["text_mask"])))
        if videos:
            feats.update(model.encode_video(_t(batch["video"]), _t(batch["video_mask"])))
        feats.update({key: _t(batch[key]) for key in ROW_KEYS if key in batch})
        for k, v in feats.items():
            parts.setdefault(k, []).append(v.float() if v.is_floating_point() else v)
    model.train(was_training)
    if not parts:
        raise ValueError("encode_batches: no batches (is the split empty, or did every video fail?)")
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return Encoded(
        text=TextFeatures.from_model(cat) if texts else None,
        video=VideoFeatures.from_model(cat) if videos else None,
        rows={k: cat[k] for k in ROW_KEYS if k in cat},
    )


def _t(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    arr = np.asarray(x)
    # Ray Data hands batch inference read-only views of the object store, which torch would warn about
    # (and a tensor over them could write into shared memory): copy those, wrap the others
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
