"""The DiffusionRet model: CLIP encoders -> temporal module -> WTI features, and the two denoisers.

Shape legend: B batch (this worker's rows), G gathered batch, L tokens, F frames, D width, K candidates,
H/W pixels, Q queries, N gallery.

Composition only, no loss: ``forward`` returns the features the losses need. The contrastive loss lives
in ``vidret.train.losses`` (collectives arrive as an injected ``gather``), the stage-2 objective in
``vidret.train.objectives`` and re-ranking in ``vidret.diffusion.rerank``. Everything that uses a parameter
runs inside a module's ``forward`` so DDP sees it: the WTI weights are computed per item there, which
leaves ``similarity`` parameter-free.

Feature dictionaries (``encode_text``, ``encode_video``, ``forward``) use these keys (the typed form,
outside the model, is ``vidret.features.types``):

    text          (B, L, D)  per-token features (unnormalised)     text_mask    (B, L)
    text_weight   (B, L)     WTI token weights (masked softmax)    text_eot     (B, D) the EOT feature
    video         (B, F, D)  temporal-module frame features        video_mask   (B, F)
    video_weight  (B, F)     WTI frame weights                     logit_scale  () exp(clip.logit_scale),
    capped
    video_index   (B,)       stable video id, when the batch has it
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import open_clip
import torch
from torch import Tensor, nn

from vidret.config import DiffusionConfig, ModelConfig
from vidret.diffusion.denoiser import T2VDenoiser, V2TDenoiser
from vidret.diffusion.process import GaussianDiffusion
from vidret.diffusion.rerank import Direction
from vidret.model.clip import ClipBackbone, normalize_frames
from vidret.model.presets import build_clip
from vidret.model.similarity import WTIHead, wti_blocked, wti_similarity
from vidret.model.temporal import TemporalTransformer

if TYPE_CHECKING:
    from vidret.storage import Storage

Stage = Literal["discrimination", "generation"]
SIMILARITY_KEYS = ("text", "text_mask", "text_weight", "video", "video_mask", "video_weight")


class RetrievalModel(nn.Module):
    """CLIP backbone + temporal transformer + WTI head (stage 1) and the two denoisers (stage 2)."""

    def __init__(self, clip: open_clip.CLIP, cfg: ModelConfig, diffusion_cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg, self.diffusion_cfg = cfg, diffusion_cfg
        self.backbone = ClipBackbone(clip)
        dim = self.backbone.embed_dim
        self.temporal = TemporalTransformer(clip, cfg.temporal_layers, cfg.temporal)
        self.wti = WTIHead(dim, cfg.wti_hidden_mult)
        self.t2v_denoiser = T2VDenoiser.from_config(dim, diffusion_cfg)
        self.v2t_denoiser = V2TDenoiser.from_config(dim, diffusion_cfg)
        self.diffusion = GaussianDiffusion.from_config(diffusion_cfg)  # a plain object: no parameters
        self.stage: Stage = "discrimination"
        self.set_stage("discrimination")

    @classmethod
    def build(
        cls, cfg: ModelConfig, diffusion_cfg: DiffusionConfig, storage: Storage | None = None
    ) -> RetrievalModel:
        """Build the CLIP of ``cfg`` (random or ``cfg.weights``) and compose the model around it."""
        return cls(build_clip(cfg, storage), cfg, diffusion_cfg)

    # -- stages -------------------------------------------------------------------------------------
    def set_stage(self, stage: Stage) -> None:
        """Set which parameters train (docs/method.md §3.1).

        ``discrimination``: everything but the denoisers and CLIP's patch embedding (``conv1``, frozen in the
        method). ``generation``: only the two denoisers; CLIP, the temporal module and WTI are frozen.
        """
        if stage not in ("discrimination", "generation"):
            raise ValueError(f"train.stage: expected 'discrimination' or 'generation', got {stage!r}")
        self.stage = stage
        stage1 = stage == "discrimination"
        for encoder in (self.backbone, self.temporal, self.wti):
            encoder.requires_grad_(stage1)
        if stage1:
            self.backbone.clip.visual.conv1.requires_grad_(False)
        for denoiser in (self.t2v_denoiser, self.v2t_denoiser):
            denoiser.requires_grad_(not stage1)

    def denoiser(self, direction: Direction) -> T2VDenoiser | V2TDenoiser:
        """The denoiser that re-ranks ``direction``."""
        return self.t2v_denoiser if direction == "t2v" else self.v2t_denoiser

    # -- encoders -----------------------------------------------------------------------------------
    def encode_text(self, ids_BL: Tensor, mask_BL: Tensor) -> dict[str, Tensor]:
        """``text``, ``text_mask``, ``text_weight``, ``text_eot`` for token ids (B, L) and their mask."""
        tokens_BLD, eot_BD = self.backbone.encode_text(ids_BL, mask_BL)
        return {
            "text": tokens_BLD,
            "text_mask": mask_BL,
            "text_weight": self.wti.text_weights(tokens_BLD, mask_BL),
            "text_eot": eot_BD,
        }

    def encode_video(self, video: Tensor, mask_BF: Tensor) -> dict[str, Tensor]:
        """``video``, ``video_mask``, ``video_weight`` for uint8 frames (B, F, H, W, 3) or normalised
        float frames (B, F, 3, H, W), with the frame mask (B, F)."""
        if video.dtype == torch.uint8:
            video = normalize_frames(video, mask_BF)
        frames_BFD = self.backbone.encode_frames(video, mask_BF)
        video_BFD = self.temporal(frames_BFD, mask_BF)
        return {
            "video": video_BFD,
            "video_mask": mask_BF,
            "video_weight": self.wti.video_weights(video_BFD, mask_BF),
        }

    def logit_scale(self) -> Tensor:
        """exp(clip.logit_scale) capped at ``model.logit_scale_max`` (100 in the method), a 0-d tensor."""
        return self.backbone.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)

    def similarity(
        self, text: Mapping[str, Tensor], video: Mapping[str, Tensor], block: int | None = None
    ) -> Tensor:
        """WTI scores (texts x videos) from feature dictionaries; parameter-free.

        ``block=None`` builds the whole (X, Y, L, F) tensor (training batches); otherwise ``wti_blocked``
        tiles a query set x gallery in ``block x block`` pieces.
        """
        args = (
            text["text"],
            text["text_mask"],
            video["video"],
            video["video_mask"],
            text["text_weight"],
            video["video_weight"],
        )
        if block is None:
            return wti_similarity(*args, padding=self.cfg.wti_padding)
        return wti_blocked(*args, padding=self.cfg.wti_padding, block_q=block, block_n=block)

    # -- training forward ---------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Features of a batch (keys in the module docstring).

        ``batch`` holds ``text_ids``/``text_mask`` (B, L), ``video`` (B, F, H, W, 3) uint8 and
        ``video_mask`` (B, F), optionally ``video_index`` (B,). The stage-2 objective runs on cached
        features instead (``vidret.train.objectives``).
        """
        feats = self.encode_text(batch["text_ids"], batch["text_mask"])
        feats.update(self.encode_video(batch["video"], batch["video_mask"]))
        feats["logit_scale"] = self.logit_scale()
        if "video_index" in batch:
            feats["video_index"] = batch["video_index"]
        return feats
