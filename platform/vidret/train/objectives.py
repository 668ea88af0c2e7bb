"""The stage-2 (generation) objective: both denoisers trained on hard negatives mined from the gathered batch.

Shape legend: B local batch, G gathered batch (W * B), F frames, D width, K candidates (``diffusion.num`` +
1).

The objective is an ``nn.Module`` wrapping the model so that DDP sees every parameter it uses inside one
``forward``. The stage-1 objective is ``vidret.train.distributed.contrastive_loss`` over the model's
features.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from vidret.diffusion.rerank import hard_negatives, t2v_encode_candidates
from vidret.model.retrieval import RetrievalModel


class GenerationObjective(nn.Module):
    """The stage-2 loss of the local queries against hard negatives from the gathered batch (method
    docs/method.md §3.2-3.5)."""

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        local: Mapping[str, Tensor],
        gathered: Mapping[str, Tensor],
        positive_mask_BG: Tensor,
        row_offset: int = 0,
        t_B: Tensor | None = None,
        noise_t2v_BK: Tensor | None = None,
        noise_v2t_BK: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``loss_t2v``, ``loss_v2t`` and their sum ``loss_generation``.

        ``local`` / ``gathered`` hold the cached features of this worker's B rows and of all G rows
        (``text``, ``text_mask``, ``text_weight``, ``text_eot``, ``video``, ``video_mask``, ``video_weight``);
        ``row_offset`` is this worker's first row in the gathered batch. Per direction: candidates = [own
        pair] + ``diffusion.num`` hardest negatives by WTI score (every positive of ``positive_mask_BG``
        excluded; ``diffusion.negatives_fill`` decides when too few remain), target x0 = [1, neg, ..., neg],
        loss = CE(d_temp x0_hat, 0). One ``t_B`` (uniform unless given) for both directions, separate noise
        per direction. The t2v candidates are pooled straight from the gathered frames
        (``t2v_encode_candidates``) and both denoisers run as ``prepare`` + ``step``.
        """
        model, dcfg = self.model, self.model.diffusion_cfg
        with torch.no_grad():
            t2v_BG = model.similarity(local, gathered)
            same = t2v_BG.shape[0] == t2v_BG.shape[1]
            v2t_BG = t2v_BG.T if same else model.similarity(gathered, local).T
            idx_t2v_BK = hard_negatives(t2v_BG, positive_mask_BG, dcfg.num, row_offset, dcfg.negatives_fill)
            idx_v2t_BK = hard_negatives(v2t_BG, positive_mask_BG, dcfg.num, row_offset, dcfg.negatives_fill)
        rows, k = idx_t2v_BK.shape
        x0_BK = torch.full((rows, k), dcfg.neg, device=t2v_BG.device)
        x0_BK[:, 0] = 1.0
        if t_B is None:
            t_B = model.diffusion.sample_timesteps(rows, device=x0_BK.device)
        # conditioning without the (B, K, F, D) frame gather, and the candidate-side projections once:
        # the same loss and parameter gradients as the module forwards (tests/unit/train/test_objectives.py)
        t2v, v2t = model.t2v_denoiser, model.v2t_denoiser
        t2v_enc = t2v_encode_candidates(
            t2v, local["text_eot"], gathered["video"], gathered["video_mask"], idx_t2v_BK
        )
        v2t_enc = v2t.encode(gathered["text_eot"][idx_v2t_BK], local["video"], local["video_mask"])
        loss_t2v = model.diffusion.training_loss(
            t2v.step, x0_BK, t_B, t2v.prepare(**t2v_enc), dcfg.d_temp, noise_t2v_BK
        )
        loss_v2t = model.diffusion.training_loss(
            v2t.step, x0_BK, t_B, v2t.prepare(**v2t_enc), dcfg.d_temp, noise_v2t_BK
        )
        return {"loss_t2v": loss_t2v, "loss_v2t": loss_v2t, "loss_generation": loss_t2v + loss_v2t}
