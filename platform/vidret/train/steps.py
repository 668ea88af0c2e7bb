"""One step object per training stage: where its batches come from and what its loss is.

Shape legend: B local batch, G global batch (W * B), K candidates.

Both stages follow the driver's ``StepPlan`` (``vidret.train.plan``): stage 1 reads this worker's
pre-ordered dataset shard (decoded, tokenised batches), stage 2 the cached features of its plan rows. A
resumed run continues at the exact row where its checkpoint was taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import ray.train
import torch
from torch import Tensor, nn

from vidret.config import Config
from vidret.features.encode import encode_batches
from vidret.features.store import load_split
from vidret.features.types import FeatureSet
from vidret.model.retrieval import SIMILARITY_KEYS, RetrievalModel
from vidret.storage import Storage
from vidret.train import distributed as dist
from vidret.train.objectives import GenerationObjective

BATCH_DTYPES = {
    "video": torch.uint8,
    "video_mask": torch.int64,
    "text_ids": torch.int64,
    "text_mask": torch.int64,
    "video_index": torch.int64,
}
VAL_CACHE_BYTES = 512 << 20  # decoded validation batches kept in memory below this size

ValFeatures = Callable[[RetrievalModel], FeatureSet]
"""Features of the validation split under the model's current weights."""


class Step(Protocol):
    """A stage's batches and loss. ``module`` is what DDP wraps; ``loss`` calls the wrapped module."""

    @property
    def module(self) -> nn.Module:
        """The module DDP wraps (read-only here, so a step may hold a more specific module type)."""
        ...

    def batches(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        """This worker's batches from global step ``start_step`` on."""
        ...

    def loss(self, forward: nn.Module, batch: dict[str, Tensor], step: int) -> Tensor:
        """The loss of global step ``step`` on this worker's ``batch`` (already on the device)."""
        ...

    def validation(self) -> ValFeatures | None:
        """The validation features (rank 0 only), or None when the run has no validation split."""
        ...


class DiscriminationStep:
    """Stage 1: the symmetric InfoNCE over the model's features of decoded batches (``train_<rank>``
    shard)."""

    def __init__(
        self, model: RetrievalModel, cfg: Config, local_batch: int, autocast: AbstractContextManager[Any]
    ) -> None:
        self.module, self.model, self.cfg = model, model, cfg
        self.local_batch, self.autocast = local_batch, autocast

    def batches(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        # unsplit per-rank datasets: worker r reads exactly the rows the plan gives it (trainer._run_stage1)
        shard = ray.train.get_dataset_shard(f"train_{dist.rank()}")
        it = shard.iter_batches(
            batch_size=self.local_batch, batch_format="numpy", drop_last=True, prefetch_batches=1
        )
        for i, batch in enumerate(it):
            if i < start_step:  # resuming: these rows were consumed before the checkpoint
                continue
            # Ray hands zero-copy, read-only arrays: copy those (only those) before torch wraps them
            yield {
                k: torch.from_numpy(np.require(batch[k], requirements="W")).to(BATCH_DTYPES[k])
                for k in BATCH_DTYPES
            }

    def loss(self, forward: nn.Module, batch: dict[str, Tensor], step: int) -> Tensor:
        self.model.train()
        with self.autocast:
            feats = forward(batch)
        tcfg = self.cfg.train
        return dist.contrastive_loss(
            {k: feats[k] for k in (*SIMILARITY_KEYS, "video_index")},
            self.model.similarity,
            mode=tcfg.gather,
            logit_scale=feats["logit_scale"],
            same_video_positives=tcfg.same_video_positives,
        )

    def validation(self) -> ValFeatures | None:
        return _stage1_val(self.cfg)


class GenerationStep:
    """Stage 2: the generation objective on cached features of this worker's plan rows."""

    def __init__(
        self,
        model: RetrievalModel,
        cfg: Config,
        plan_rows: np.ndarray,
        cache_uri: dict[str, str],
        autocast: AbstractContextManager[Any],
    ) -> None:
        self.model, self.cfg, self.plan_rows, self.autocast = model, cfg, plan_rows, autocast
        self.module = GenerationObjective(model)
        self.storage, self.cache_uri = Storage(cfg.storage), cache_uri
        self.global_batch = plan_rows.shape[1]
        self.local_batch = self.global_batch // dist.world_size()
        self.offset = dist.rank() * self.local_batch

    def batches(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        fs = load_split(self.storage, self.cache_uri[self.cfg.data.train_split])
        cols = slice(self.offset, self.offset + self.local_batch)
        rows = self.plan_rows[start_step:, cols].reshape(-1)
        for s in range(len(rows) // self.local_batch):
            r = torch.from_numpy(
                np.require(rows[s * self.local_batch : (s + 1) * self.local_batch], requirements="W")
            )
            vi = fs.text_to_video_T[r]
            yield {**fs.text.take(r).as_model(), **fs.video.take(vi).as_model(), "video_index": vi}

    def loss(self, forward: nn.Module, batch: dict[str, Tensor], step: int) -> Tensor:
        self.model.train()
        gathered = {k: dist.gather_with_grad(v, "exact") for k, v in batch.items()}
        pos_BG = batch["video_index"][:, None] == gathered["video_index"][None, :]
        # the draws (t, noise) of global step ``step``: the same on every worker, whatever W is
        gen = torch.Generator().manual_seed((self.cfg.run.seed * 1_000_003 + step * 7_919 + 17) % 2**63)
        g, k = self.global_batch, self.cfg.diffusion.num + 1
        t_G = self.model.diffusion.sample_timesteps(g, generator=gen)
        noise_G2K = torch.randn(2, g, k, generator=gen)
        rows, device = slice(self.offset, self.offset + self.local_batch), batch["video_index"].device
        with self.autocast:
            out = forward(
                batch,
                gathered,
                pos_BG,
                self.offset,
                t_G[rows].to(device),
                noise_G2K[0, rows].to(device),
                noise_G2K[1, rows].to(device),
            )
        loss: Tensor = out["loss_generation"]  # nn.Module.__call__ is untyped
        return loss

    def validation(self) -> ValFeatures | None:
        val_fs = load_split(self.storage, self.cache_uri[self.cfg.data.val_split])
        return lambda _model: val_fs  # frozen encoder: the cached features


def _stage1_val(cfg: Config) -> ValFeatures | None:
    """Re-encodes the validation split (one caption per video, from the 'val' dataset shard) with the current
    weights at each call. The decoded batches are kept in memory when small, else streamed (decoded) again."""
    shard = ray.train.get_dataset_shard("val")
    if shard is None:
        return None
    kept: list[dict[str, np.ndarray]] = []
    state = {"complete": False}

    def batches() -> Iterator[dict[str, np.ndarray]]:
        if state["complete"]:
            yield from kept
            return
        size = 0
        for batch in shard.iter_batches(
            batch_size=cfg.eval.batch_size, batch_format="numpy", prefetch_batches=1
        ):
            size += sum(np.asarray(v).nbytes for v in batch.values())
            if size <= VAL_CACHE_BYTES:
                kept.append(batch)
            yield batch
        state["complete"] = size <= VAL_CACHE_BYTES

    def features(model: RetrievalModel) -> FeatureSet:
        enc = encode_batches(model, batches())
        assert enc.text is not None
        assert enc.video is not None
        order = torch.argsort(enc.rows["video_index"])
        return FeatureSet(
            text=enc.text.take(order), video=enc.video.take(order), text_to_video_T=torch.arange(len(order))
        )

    return features
