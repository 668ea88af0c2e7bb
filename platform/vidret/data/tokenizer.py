"""CLIP BPE tokenisation of captions (method 5.1, text).

Shape legend: B captions, L = ``max_words`` (tokens including SOT and EOT).

Cleaning is open_clip's ``lower`` mode, the same as the method: ``ftfy.fix_text``, a double
``html.unescape``, whitespace collapsed, lower-cased. Each caption becomes
``[SOT=49406] + bpe[: L - 2] + [EOT=49407]``, zero-padded to L, with mask 1 on SOT, the tokens and EOT.
The BPE merges ship inside the open_clip wheel, so nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer

SOT_ID = 49406
EOT_ID = 49407


class ClipTokenizer:
    """Callable: ``tok(texts, max_words) -> (ids_BL, mask_BL)``, both int64.

    Returns NumPy arrays by default (Ray Data batches are dicts of arrays); ``return_tensors="pt"`` gives
    torch tensors. Picklable and cheap to ship: the BPE tables are rebuilt lazily after unpickling.
    """

    def __init__(self, max_words: int = 32):
        if max_words < 2:
            raise ValueError(f"ClipTokenizer: max_words must be >= 2 (SOT and EOT), got {max_words}")
        self.max_words = max_words
        self._bpe: SimpleTokenizer | None = None

    def _encoder(self) -> SimpleTokenizer:
        if self._bpe is None:
            self._bpe = SimpleTokenizer()
            if (self._bpe.sot_token_id, self._bpe.eot_token_id) != (SOT_ID, EOT_ID):
                raise ValueError(
                    "open_clip SimpleTokenizer has SOT/EOT "
                    f"{self._bpe.sot_token_id}/{self._bpe.eot_token_id}, "
                    f"expected {SOT_ID}/{EOT_ID}"
                )
        return self._bpe

    def __getstate__(self) -> dict[str, Any]:
        return {"max_words": self.max_words}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.max_words = state["max_words"]
        self._bpe = None

    def encode(self, text: str) -> list[int]:
        """BPE ids of one cleaned caption, without SOT/EOT and untruncated."""
        if not isinstance(text, str):
            raise TypeError(f"ClipTokenizer: expected a str caption, got {type(text).__name__}")
        ids: list[int] = self._encoder().encode(text)  # open_clip ships no type information
        return ids

    @overload
    def __call__(
        self, texts: list[str], max_words: int | None = None, return_tensors: Literal["np"] = "np"
    ) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def __call__(
        self, texts: list[str], max_words: int | None, return_tensors: Literal["pt"]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __call__(
        self, texts: list[str], max_words: int | None = None, return_tensors: Literal["np", "pt"] = "np"
    ) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask, each ``(B, L)`` int64, L = ``max_words`` (default: the constructor's)."""
        if isinstance(texts, str):
            raise TypeError("ClipTokenizer: expected a list of captions, got a single str")
        L = self.max_words if max_words is None else max_words
        if L < 2:
            raise ValueError(f"ClipTokenizer: max_words must be >= 2 (SOT and EOT), got {L}")
        ids_BL = np.zeros((len(texts), L), dtype=np.int64)
        mask_BL = np.zeros((len(texts), L), dtype=np.int64)
        for b, text in enumerate(texts):
            row = [SOT_ID, *self.encode(text)[: L - 2], EOT_ID]
            ids_BL[b, : len(row)] = row
            mask_BL[b, : len(row)] = 1  # not ids != 0: BPE id 0 is "!", a real token
        if return_tensors == "pt":
            return torch.from_numpy(ids_BL), torch.from_numpy(mask_BL)
        if return_tensors != "np":
            raise ValueError(f"ClipTokenizer: return_tensors must be 'np' or 'pt', got {return_tensors!r}")
        return ids_BL, mask_BL
