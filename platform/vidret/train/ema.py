"""Exponential moving average of a model's weights (docs/method.md §2.5) and the model-vs-EMA choice.

Faithful: after every optimiser step ``ema <- d * ema + (1 - d) * theta`` with a constant ``d``
(``train.ema_decay``, 0.99), over all parameters (trainable or not) and, here, also the floating-point
buffers. Deviation: upstream builds the EMA as a second, independently initialised model, so its randomly
initialised heads start from a different draw; here the EMA starts as an exact copy of the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / ``prepare_model`` wrapper, so EMA keys never carry ``module.``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _tracked(model: nn.Module) -> dict[str, Tensor]:
    """Floating-point parameters and buffers of ``model`` by name (shared tensors once)."""
    m = _unwrap(model)
    return {name: t for name, t in [*m.named_parameters(), *m.named_buffers()] if t.is_floating_point()}


class EMA:
    """Shadow copies of a model's floating-point parameters and buffers.

    ``update(model)`` after each optimiser step; ``swap(model)`` (a context manager) evaluates with the EMA
    weights and restores the live ones afterwards; ``copy_to(model)`` writes the EMA weights for good.
    ``state_dict()`` holds only tensors and a float, so it can go into a ``weights_only`` checkpoint.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: expected decay in [0, 1) (train.ema_decay), got {decay}")
        self.decay = float(decay)
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in _tracked(model).items()}

    def _match(self, model: nn.Module) -> dict[str, Tensor]:
        live = _tracked(model)
        if live.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - live.keys())[:5]
            extra = sorted(live.keys() - self.shadow.keys())[:5]
            raise ValueError(
                f"EMA: model tensors differ from the EMA's (missing {missing}, unexpected {extra})"
            )
        return live

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema <- decay * ema + (1 - decay) * theta`` for every tracked tensor."""
        live = self._match(model)
        for name, ema in self.shadow.items():
            ema.lerp_(live[name].detach().to(ema.dtype), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's tracked tensors with the EMA values."""
        live = self._match(model)
        for name, ema in self.shadow.items():
            live[name].copy_(ema)

    @contextmanager
    def swap(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block the model holds the EMA weights; on exit (also on error) its own come back."""
        live = self._match(model)
        with torch.no_grad():
            backup = {name: t.detach().clone() for name, t in live.items()}
            self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, t in live.items():
                    t.copy_(backup[name])

    def state_dict(self) -> dict[str, object]:
        """``{"decay": float, "shadow": {name: tensor}}``."""
        return {"decay": self.decay, "shadow": dict(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore from ``state_dict()``; the tensor names and shapes must match this EMA's."""
        shadow = state.get("shadow")
        decay = state.get("decay")
        if not isinstance(shadow, Mapping) or not isinstance(decay, float):
            raise ValueError("EMA.load_state_dict: expected {'decay': float, 'shadow': {name: tensor}}")
        if shadow.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - shadow.keys())[:5]
            extra = sorted(shadow.keys() - self.shadow.keys())[:5]
            raise ValueError(f"EMA.load_state_dict: names differ (missing {missing}, unexpected {extra})")
        for name, t in shadow.items():
            if not isinstance(t, Tensor) or t.shape != self.shadow[name].shape:
                raise ValueError(
                    f"EMA.load_state_dict: {name}: expected a tensor of shape "
                    f"{tuple(self.shadow[name].shape)}"
                )
            self.shadow[name].copy_(t)
        self.decay = decay


def select_better(model_metric: float, ema_metric: float) -> Literal["model", "ema"]:
    """Which weights to keep: the EMA only when its metric (higher is better, e.g. t2v R@1) is strictly
    higher (ties keep the model). A NaN metric never wins over a number."""
    if not math.isnan(ema_metric) and (math.isnan(model_metric) or ema_metric > model_metric):
        return "ema"
    return "model"
