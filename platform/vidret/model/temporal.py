"""Temporal aggregation of per-frame CLIP features (method 2.2, ``seqTransf``).

Shape legend: B batch, F frames, D joint embedding width (= CLIP text width for every preset).

``seqTransf``: frame position embeddings (an ``nn.Embedding(context_length, D)`` initialised from CLIP's text
``positional_embedding``) are added, the sum goes through copies of the first N CLIP text blocks (pre-LN,
same activation as the CLIP they come from) with a key-padding-only, bidirectional mask, and the result is
added to the raw frame features (the residual skips the position embedding). No dropout.

``meanP``: identity. The method's mean pooling is subsumed by WTI, whose frame weights already pool the
frames (``vidret.model.similarity``), so there is nothing left for this module to do.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import open_clip
import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

TemporalKind = Literal["seqTransf", "meanP"]


def _fresh_block_like(block: ResidualAttentionBlock) -> ResidualAttentionBlock:
    """A block with ``block``'s structure (width, heads, MLP ratio, activation, norm) and a fresh init."""
    fresh = copy.deepcopy(block)
    for m in fresh.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.normal_(m.in_proj_weight, std=0.02)
            nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return fresh


class TemporalTransformer(nn.Module):
    """``forward(frames_BFD, mask_BF) -> BFD``; see the module docstring for the two kinds."""

    def __init__(self, clip: open_clip.CLIP, num_layers: int = 4, kind: TemporalKind = "seqTransf"):
        super().__init__()
        if kind not in ("seqTransf", "meanP"):
            raise ValueError(f"model.temporal: expected seqTransf or meanP, got {kind!r}")
        self.kind = kind
        if kind == "meanP":
            self.frame_position_embeddings = None
            self.resblocks = nn.ModuleList()
            self.num_heads = 0
            return
        text_blocks = clip.transformer.resblocks
        if num_layers < 0:
            raise ValueError(f"model.temporal_layers: expected an integer >= 0, got {num_layers}")
        embed_dim = int(clip.visual.output_dim)
        width = int(clip.transformer.width)
        if width != embed_dim:
            raise ValueError(
                f"seqTransf needs the CLIP text width ({width}) to equal the embedding width ({embed_dim}) "
                "to copy the text blocks; use model.temporal=meanP for this architecture"
            )
        pos = clip.positional_embedding.detach()
        self.frame_position_embeddings = nn.Embedding(pos.shape[0], embed_dim)
        with torch.no_grad():
            self.frame_position_embeddings.weight.copy_(pos)
        # Independent copies: same structure and state as CLIP's text blocks 0..N-1, trained separately.
        n_copied = min(num_layers, len(text_blocks))
        blocks = [copy.deepcopy(text_blocks[i]) for i in range(n_copied)]
        if num_layers > n_copied:
            # The method's loader copies only the blocks that exist; the rest keep their N(0, 0.02) init.
            warnings.warn(
                f"model.temporal_layers={num_layers} exceeds the CLIP text depth {len(text_blocks)}: "
                f"blocks {n_copied}..{num_layers - 1} are randomly initialised",
                stacklevel=2,
            )
            blocks += [_fresh_block_like(text_blocks[0]) for _ in range(num_layers - n_copied)]
        self.resblocks = nn.ModuleList(blocks)
        self.num_heads = int(text_blocks[0].attn.num_heads)  # every copied or fresh block has CLIP's heads
        for p in self.parameters():
            p.requires_grad_(True)

    @property
    def max_frames(self) -> int:
        emb = self.frame_position_embeddings
        return 0 if emb is None else int(emb.num_embeddings)

    def forward(self, frames_BFD: torch.Tensor, mask_BF: torch.Tensor) -> torch.Tensor:
        """Contextualised frame features ``(B, F, D)``, not normalised; padded frames (mask 0) are masked
        keys.

        Outputs at padded positions are computed but meaningless; WTI ignores them.
        """
        if self.kind == "meanP":
            return frames_BFD
        B, F, _ = frames_BFD.shape
        if tuple(mask_BF.shape) != (B, F):
            raise ValueError(f"TemporalTransformer: mask shape {tuple(mask_BF.shape)} != (B, F) = {(B, F)}")
        if self.max_frames < F:
            raise ValueError(
                f"TemporalTransformer: F={F} frames exceeds the {self.max_frames} position embeddings"
            )
        assert self.frame_position_embeddings is not None
        pos_FD: torch.Tensor = self.frame_position_embeddings(torch.arange(F, device=frames_BFD.device))
        x_BFD = frames_BFD + pos_FD[None].to(frames_BFD.dtype)
        # Key padding only (bidirectional); a large finite negative so an all-padded row cannot give NaN.
        attn_BFF = torch.zeros(B, F, F, dtype=x_BFD.dtype, device=x_BFD.device)
        attn_BFF.masked_fill_((mask_BF == 0)[:, None, :], torch.finfo(x_BFD.dtype).min)
        if len(self.resblocks):
            attn_mask = attn_BFF.repeat_interleave(self.num_heads, dim=0)
            for block in self.resblocks:
                x_BFD = block(x_BFD, attn_mask=attn_mask)
        return x_BFD + frames_BFD
