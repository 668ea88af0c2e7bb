"""Everything a training run carries from step to step, and its checkpoint form.

``TrainState`` holds the model, its EMA, the optimiser, the LR schedule, the number of steps taken and the
best validation score with the weights that reached it. ``state_dict`` is what a Ray Train checkpoint
stores (``vidret.model.checkpoint`` format); ``load`` resumes from it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from vidret.config import Config, dump_yaml
from vidret.model.build import build_model
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage
from vidret.train.checkpoint import capture_rng, restore_rng
from vidret.train.ema import EMA, select_better
from vidret.train.optim import (
    build_optimizer,
    build_scheduler,
    clamp_logit_scale_,
    clip_gradients,
    freeze_fp16_clip,
)

Source = Literal["model", "ema"]


@dataclass
class Best:
    """The best validation score so far, the step that reached it and which weights (live or EMA) did."""

    score: float = -math.inf
    step: int = -1
    source: Source = "model"


class TrainState:
    """Model, EMA, optimiser, scheduler, step and best score of one worker's training run."""

    def __init__(
        self, model: RetrievalModel, ema: EMA, optimizer: Optimizer, scheduler: LambdaLR, cfg: Config
    ) -> None:
        self.model, self.ema, self.optimizer, self.scheduler, self.cfg = model, ema, optimizer, scheduler, cfg
        self.step = 0
        self.best = Best()
        self.best_state: dict[str, Tensor] | None = None

    @classmethod
    def create(
        cls, cfg: Config, storage: Storage, init_state_uri: str | None, total_steps: int
    ) -> TrainState:
        """A fresh state for ``train.stage``: the model (stage 2: on stage 1's weights), EMA, optimiser and
        a schedule over ``total_steps``."""
        model = build_model(cfg, storage, init_state_uri)
        if cfg.train.stage == "discrimination" and cfg.train.clip_precision == "fp16_frozen":
            freeze_fp16_clip(model)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, total_steps)
        return cls(model, EMA(model, cfg.train.ema_decay), optimizer, scheduler, cfg)

    def update(self, loss: Tensor) -> None:
        """One optimiser step on ``loss``: backward, clip, step, schedule, clamp the logit scale, EMA."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
        clip_gradients(self.model, self.cfg.train.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        clamp_logit_scale_(self.model, self.cfg.model.logit_scale_max)
        self.ema.update(self.model)
        self.step += 1

    @property
    def lr(self) -> float:
        """The learning rate of the last parameter group (the non-CLIP parameters)."""
        return float(self.optimizer.param_groups[-1]["lr"])

    def select(self, model_score: float, ema_score: float) -> bool:
        """Keep the better of the live and EMA weights if it beats the best so far; True when it does."""
        source = select_better(model_score, ema_score)
        score = model_score if source == "model" else ema_score
        if score <= self.best.score:
            return False
        self.best = Best(score, self.step, source)
        self.best_state = self._weights(source)
        return True

    def _weights(self, source: Source) -> dict[str, Tensor]:
        """A copy of the ``source`` weights. Frozen parameters always come from the model itself: their EMA
        equals them only up to rounding, and the stage-2 feature cache is keyed by the exact frozen
        encoder."""
        live = copy.deepcopy(self.model.state_dict())
        if source == "model":
            return live
        frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        with self.ema.swap(self.model):
            averaged = copy.deepcopy(self.model.state_dict())
        return {k: live[k] if k in frozen else v for k, v in averaged.items()}

    def state_dict(self, steps_per_epoch: int, final: bool) -> dict[str, Any]:
        """The checkpoint: everything ``load`` needs, the RNG states and the resolved config; the ``final``
        one also holds ``selected``, the weights to export (the best, else the last)."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.step // steps_per_epoch,
            "best": asdict(self.best),
            "rng": capture_rng(),
            "config": dump_yaml(self.cfg),
        }
        if final:
            state["best_state"] = self.best_state
            state["selected"] = self.best_state if self.best_state is not None else self.model.state_dict()
        return state

    def load(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint written by ``state_dict`` (also restores the RNG states)."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.best = Best(**state["best"])
        self.best_state = state.get("best_state")
        restore_rng(state["rng"])
