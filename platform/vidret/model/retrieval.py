"""The DiffusionRet model: CLIP encoders -> temporal module -> WTI features, and the two denoisers.

Shape legend: B batch (this worker's rows), G gathered batch, L tokens, F frames, D width, K candidates,
H/W pixels, Q queries, N gallery.

Composition only: ``forward`` returns the features the losses need; the contrastive loss lives in
``vidret.train.losses`` and receives collectives as an injected ``gather``. Everything that uses a
parameter runs inside ``forward`` so DDP sees it (ray-notes P12): the WTI weights are computed per item
there, which leaves ``similarity`` parameter-free, and in the generation stage ``forward`` also runs the
denoisers on hard negatives mined from the gathered batch.

Feature dictionaries (``encode_text``, ``encode_video``, ``forward``) use these keys:

    text          (B, L, D)  per-token features (unnormalised)     text_mask    (B, L)
    text_weight   (B, L)     WTI token weights (masked softmax)    text_eot     (B, D) the EOT feature
    video         (B, F, D)  temporal-module frame features        video_mask   (B, F)
    video_weight  (B, F)     WTI frame weights                     logit_scale  () exp(clip.logit_scale), capped
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
from vidret.diffusion.rerank import hard_negatives, rerank_t2v, rerank_v2t, t2v_encode_candidates
from vidret.model.clip import ClipBackbone, normalize_frames
from vidret.model.presets import build_clip
from vidret.model.similarity import WTIHead, wti_blocked, wti_similarity
from vidret.model.temporal import TemporalTransformer

if TYPE_CHECKING:
    from collections.abc import Callable

    from vidret.storage import Storage

Stage = Literal["discrimination", "generation"]
TEXT_KEYS = ("text", "text_mask", "text_weight", "text_eot")
VIDEO_KEYS = ("video", "video_mask", "video_weight")
SIMILARITY_KEYS = ("text", "text_mask", "text_weight", "video", "video_mask", "video_weight")


def _identity(x: Tensor) -> Tensor:
    return x


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
        """Set which parameters train (method §3.1).

        ``discrimination``: everything but the denoisers and CLIP's patch embedding (``conv1``, frozen in the
        method). ``generation``: only the two denoisers; CLIP, the temporal module and WTI are frozen.
        """
        if stage not in ("discrimination", "generation"):
            raise ValueError(f"train.stage: expected 'discrimination' or 'generation', got {stage!r}")
        self.stage = stage
        stage1 = stage == "discrimination"
        for module in (self.backbone, self.temporal, self.wti):
            module.requires_grad_(stage1)
        if stage1:
            self.backbone.clip.visual.conv1.requires_grad_(False)
        for module in (self.t2v_denoiser, self.v2t_denoiser):
            module.requires_grad_(not stage1)

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
    def forward(
        self,
        batch: Mapping[str, Tensor],
        *,
        gather: Callable[[Tensor], Tensor] = _identity,
        row_offset: int = 0,
        t_B: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Features of a batch (keys in the module docstring), plus the stage-2 losses in ``generation``.

        ``batch`` holds ``text_ids``/``text_mask`` (B, L), ``video`` (B, F, H, W, 3) uint8 and
        ``video_mask`` (B, F), optionally ``video_index`` (B,). In the generation stage ``gather`` and
        ``row_offset`` (this worker's first row in the gathered batch) feed ``generation_loss``, whose
        ``loss_t2v``, ``loss_v2t`` and ``loss_generation`` are added to the result.
        """
        feats = self.encode_text(batch["text_ids"], batch["text_mask"])
        feats.update(self.encode_video(batch["video"], batch["video_mask"]))
        feats["logit_scale"] = self.logit_scale()
        if "video_index" in batch:
            feats["video_index"] = batch["video_index"]
        if self.stage == "generation":
            local = {k: v.detach() for k, v in feats.items() if k != "logit_scale"}
            gathered = {k: gather(v) for k, v in local.items()}
            if "video_index" in local:
                pos_BG = local["video_index"][:, None] == gathered["video_index"][None, :]
            else:
                pos_BG = torch.zeros(
                    local["text"].shape[0],
                    gathered["text"].shape[0],
                    dtype=torch.bool,
                    device=local["text"].device,
                )
            feats.update(self.generation_loss(local, gathered, pos_BG, row_offset=row_offset, t_B=t_B))
        return feats

    def generation_loss(
        self,
        local: Mapping[str, Tensor],
        gathered: Mapping[str, Tensor],
        positive_mask_BG: Tensor,
        *,
        row_offset: int = 0,
        t_B: Tensor | None = None,
        noise_t2v_BK: Tensor | None = None,
        noise_v2t_BK: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The stage-2 loss of the local queries against hard negatives from the gathered batch (§3.2-3.5).

        Per direction: candidates = [own pair] + ``diffusion.num`` hardest negatives by WTI score (every
        positive of ``positive_mask_BG`` excluded; ``diffusion.negatives_fill`` decides when too few remain),
        target x0 = [1, neg, ..., neg], loss = CE(d_temp x0_hat, 0).
        One ``t_B`` (uniform unless given) for both directions, separate noise per direction. Features are
        used detached. The t2v candidates are pooled straight from the gathered frames
        (``t2v_encode_candidates``) and both denoisers run as ``prepare`` + ``step``. Returns ``loss_t2v``,
        ``loss_v2t`` and their sum ``loss_generation``.
        """
        dcfg = self.diffusion_cfg
        with torch.no_grad():
            t2v_BG = self.similarity(local, gathered)
            same = t2v_BG.shape[0] == t2v_BG.shape[1]
            v2t_BG = t2v_BG.T if same else self.similarity(gathered, local).T
            idx_t2v_BK = hard_negatives(t2v_BG, positive_mask_BG, dcfg.num, row_offset, dcfg.negatives_fill)
            idx_v2t_BK = hard_negatives(v2t_BG, positive_mask_BG, dcfg.num, row_offset, dcfg.negatives_fill)
        rows, k = idx_t2v_BK.shape
        x0_BK = torch.full((rows, k), dcfg.neg, device=t2v_BG.device)
        x0_BK[:, 0] = 1.0
        if t_B is None:
            t_B = self.diffusion.sample_timesteps(rows, device=x0_BK.device)
        # conditioning without the (B, K, F, D) frame gather, and the candidate-side projections once:
        # the same loss and parameter gradients as the module forwards (tests/unit/model/test_retrieval.py)
        t2v, v2t = self.t2v_denoiser, self.v2t_denoiser
        t2v_enc = t2v_encode_candidates(
            t2v, local["text_eot"], gathered["video"], gathered["video_mask"], idx_t2v_BK
        )
        v2t_enc = v2t.encode(gathered["text_eot"][idx_v2t_BK], local["video"], local["video_mask"])
        loss_t2v = self.diffusion.training_loss(
            t2v.step, x0_BK, t_B, t2v.prepare(**t2v_enc), dcfg.d_temp, noise_t2v_BK
        )
        loss_v2t = self.diffusion.training_loss(
            v2t.step, x0_BK, t_B, v2t.prepare(**v2t_enc), dcfg.d_temp, noise_v2t_BK
        )
        return {"loss_t2v": loss_t2v, "loss_v2t": loss_v2t, "loss_generation": loss_t2v + loss_v2t}

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def rerank(
        self,
        sim_QN: Tensor,
        text: Mapping[str, Tensor],
        video: Mapping[str, Tensor],
        cfg: DiffusionConfig | None = None,
        *,
        text_ids: Tensor | None = None,
        video_ids: Tensor | None = None,
        chunk: int = 1024,
    ) -> tuple[Tensor, Tensor]:
        """Re-ranked (t2v texts x videos, v2t videos x texts) matrices from ``sim_QN`` (texts x videos).

        ``text`` / ``video`` hold the features of all texts and all videos (``text_eot``; ``video``,
        ``video_mask``). ``cfg`` defaults to the model's diffusion config (override k/alpha/temp to tune).
        ``text_ids``/``video_ids`` key the seeded noise of each query (default: row numbers).
        """
        cfg = cfg or self.diffusion_cfg
        if (cfg.steps, cfg.schedule) != (self.diffusion_cfg.steps, self.diffusion_cfg.schedule):
            raise ValueError(
                f"rerank: diffusion.steps/schedule ({cfg.steps}, {cfg.schedule}) differ from the "
                f"model's ({self.diffusion_cfg.steps}, {self.diffusion_cfg.schedule})"
            )
        t2v = rerank_t2v(
            sim_QN,
            text["text_eot"],
            video["video"],
            video["video_mask"],
            self.t2v_denoiser,
            self.diffusion,
            cfg,
            query_ids_Q=text_ids,
            chunk=chunk,
        )
        v2t = rerank_v2t(
            sim_QN.T,
            video["video"],
            video["video_mask"],
            text["text_eot"],
            self.v2t_denoiser,
            self.diffusion,
            cfg,
            query_ids_Q=video_ids,
            chunk=chunk,
        )
        return t2v, v2t
