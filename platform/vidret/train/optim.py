"""Parameter groups, the BertAdam / AdamW optimisers, warmup-cosine schedules and per-step clamps (method
docs/method.md §2.5).

Parameter groups (faithful to the released code):

* CLIP parameters (everything under ``RetrievalModel.backbone``, the method's ``clip.`` names, including
  ``logit_scale``) train at ``lr * coef_lr``; everything else (temporal transformer, frame positions, WTI
  MLPs, denoisers) at ``lr``.
* Weight decay applies to every name that contains none of ``bias``, ``LayerNorm.bias``,
  ``LayerNorm.weight``. CLIP's LayerNorms are named ``ln_*``, so their weights **are** decayed, exactly as
  upstream; embeddings and ``logit_scale`` are decayed too.
* Only parameters with ``requires_grad`` enter a group; empty groups are dropped.

``clip_precision = "fp16_frozen"``. Upstream casts CLIP's Conv/Linear weights and biases, the attention
``in_proj_*`` tensors and the ``proj`` / ``text_projection`` matrices to fp16 and updates them in fp16 at a
learning rate of ~1e-7: such updates round to no change, so those tensors effectively never move, while
LayerNorms, the token/positional/class embeddings and ``logit_scale`` stay fp32 and do train at
``lr * coef_lr``. The simplest faithful equivalent with fp32 master weights is to freeze exactly the tensors
upstream would have cast to fp16 (``freeze_fp16_clip``) and keep the rest trainable. It does not reproduce
fp16 rounding of activations; it reproduces which weights move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from vidret.config import TrainConfig

CLIP_PREFIX = "backbone."
"""Parameters whose (unwrapped) name starts with this are CLIP's and train at ``lr * coef_lr``."""
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
"""Substrings that exempt a parameter from weight decay (upstream's list; ``ln_*`` never matches it)."""
BETAS = (0.9, 0.98)
EPS = 1e-6
ScheduleKind = Literal["warmup_cosine_unscaled", "warmup_cosine"]

# Attributes upstream's ``convert_weights`` casts to fp16 besides Conv/Linear weights and biases.
_FP16_MHA_ATTRS = (
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
)
_FP16_DIRECT_ATTRS = ("proj", "text_projection")


def _strip_wrapper(name: str) -> str:
    """``module.backbone.x`` (DDP / Ray ``prepare_model``) -> ``backbone.x``."""
    return name[len("module.") :] if name.startswith("module.") else name


def is_clip_param(name: str) -> bool:
    """True for a CLIP backbone parameter name (with or without a DDP ``module.`` prefix)."""
    return _strip_wrapper(name).startswith(CLIP_PREFIX)


def is_decayed(name: str) -> bool:
    """True unless the name contains one of ``NO_DECAY`` (so ``ln_*.weight`` is decayed, as upstream)."""
    return not any(nd in name for nd in NO_DECAY)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimiser groups ``clip_decay``, ``clip_no_decay``, ``other_decay``, ``other_no_decay`` (empty ones
    dropped).

    Each dict holds ``params`` (tensors), ``param_names``, ``lr``, ``weight_decay`` and ``name``; torch
    optimisers keep ``param_names`` and ``name`` in their state dicts.
    """
    buckets: dict[str, tuple[list[str], list[Tensor]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = ("clip" if is_clip_param(name) else "other") + ("_decay" if is_decayed(name) else "_no_decay")
        names, params = buckets.setdefault(key, ([], []))
        names.append(name)
        params.append(p)
    groups = []
    for key in ("clip_decay", "clip_no_decay", "other_decay", "other_no_decay"):
        if key not in buckets:
            continue
        names, params = buckets[key]
        groups.append(
            {
                "params": params,
                "param_names": names,
                "lr": cfg.lr * cfg.coef_lr if key.startswith("clip") else cfg.lr,
                "weight_decay": 0.0 if key.endswith("no_decay") else cfg.weight_decay,
                "name": key,
            }
        )
    if not groups:
        raise ValueError("param_groups: the model has no parameter with requires_grad=True")
    return groups


def freeze_fp16_clip(model: nn.Module) -> list[str]:
    """Freeze the CLIP tensors upstream keeps in fp16 (``train.clip_precision = fp16_frozen``); return
    their names.

    Frozen: weights and biases of every Conv/Linear module, ``nn.MultiheadAttention`` in-projections, and the
    ``proj`` / ``text_projection`` matrices, all under ``backbone``. Left as they are: LayerNorms,
    ``token_embedding``, positional and class embeddings, ``logit_scale``. Only sets ``requires_grad=False``
    (never re-enables anything), so call it after ``set_stage`` and before DDP wrapping and
    ``build_optimizer``.
    """
    inner = getattr(model, "module", model)
    backbone = getattr(inner, CLIP_PREFIX.rstrip("."), None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"freeze_fp16_clip: expected a model with a `{CLIP_PREFIX.rstrip('.')}` module")
    frozen: list[str] = []

    def freeze(prefix: str, attr: str, tensor: Tensor | None) -> None:
        if isinstance(tensor, nn.Parameter):
            if tensor.requires_grad:
                frozen.append(f"{CLIP_PREFIX}{prefix}{attr}")
            tensor.requires_grad_(False)

    for mod_name, module in backbone.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            freeze(prefix, "weight", module.weight)
            freeze(prefix, "bias", module.bias)
        if isinstance(module, nn.MultiheadAttention):
            for attr in _FP16_MHA_ATTRS:
                freeze(prefix, attr, getattr(module, attr, None))
        for attr in _FP16_DIRECT_ATTRS:
            freeze(prefix, attr, getattr(module, attr, None))
    return frozen


class BertAdam(Optimizer):
    """The method's BertAdam: Adam without bias correction, decoupled decay, per-tensor gradient clipping.

    Per parameter tensor ``p`` with gradient ``g``::

        g <- g * min(1, max_grad_norm / (||g|| + 1e-6))        (per tensor; skipped when max_grad_norm <= 0)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2       (no bias correction)
        u  = m / (sqrt(v) + eps) + weight_decay * p
        p <- p - lr * u

    ``lr`` is the group's current value (a ``LambdaLR`` applies the schedule). ``p.grad`` is not modified.
    The moments have ``p``'s dtype, as upstream (``zeros_like(p)``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = BETAS,
        eps: float = EPS,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
    ) -> None:
        if lr < 0:
            raise ValueError(f"BertAdam: expected lr >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"BertAdam: expected betas in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"BertAdam: expected eps >= 0, got {eps}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise TypeError("BertAdam: sparse gradients are not supported")
                if group["max_grad_norm"] > 0:
                    coef = (group["max_grad_norm"] / (grad.norm() + 1e-6)).clamp(max=1.0)
                    grad = grad * coef
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> Optimizer:
    """``train.optimizer``: ``bertadam`` (faithful) or torch ``AdamW`` (bias-corrected), both with betas
    (0.9, 0.98), eps 1e-6 and the groups of ``param_groups``. BertAdam also clips each tensor's gradient
    norm to 1.0, as upstream; the global clip (``clip_gradients``) is separate."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "bertadam":
        return BertAdam(
            groups, lr=cfg.lr, betas=BETAS, eps=EPS, weight_decay=cfg.weight_decay, max_grad_norm=1.0
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=BETAS, eps=EPS, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: expected 'bertadam' or 'adamw', got {cfg.optimizer!r}")


def total_training_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of the run: ``train.max_steps`` if set, else ``epochs * steps_per_epoch``.

    Upstream hard-codes 5 epochs here (docs/method.md §9.4); this follows the configured epochs.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"total_training_steps: expected steps_per_epoch >= 1, got {steps_per_epoch}")
    return cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch


def lr_multiplier(step: int, total_steps: int, warmup_proportion: float, kind: ScheduleKind) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based) of ``total_steps``; x = step / total.

    * ``warmup_cosine_unscaled`` (faithful, ``optimization.py``): ``x / w`` if x < w, else
      ``0.5 (1 + cos(pi x))``, so it jumps from 1.0 to 0.5(1 + cos(pi w)) at the warmup boundary.
    * ``warmup_cosine`` (clean): ``x / w`` if x < w, else ``0.5 (1 + cos(pi (x - w) / (1 - w)))``, continuous
      and reaching 0 at x = 1.

    Both give 0 at step 0 when w > 0 (upstream's first update has lr 0). x is clamped to [0, 1].
    """
    if total_steps < 1:
        raise ValueError(f"lr_multiplier: expected total_steps >= 1, got {total_steps}")
    if not 0.0 <= warmup_proportion < 1.0:
        raise ValueError(f"lr_multiplier: expected warmup_proportion in [0, 1), got {warmup_proportion}")
    x = min(max(step / total_steps, 0.0), 1.0)
    w = warmup_proportion
    if x < w:
        return x / w
    if kind == "warmup_cosine_unscaled":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    if kind == "warmup_cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (x - w) / (1.0 - w)))
    raise ValueError(f"train.schedule: expected 'warmup_cosine_unscaled' or 'warmup_cosine', got {kind!r}")


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` applying ``lr_multiplier`` to every group's base lr; call ``.step()`` after each
    ``optimizer.step()``, so update k (0-based) uses multiplier(k), as upstream."""
    kind, warmup = cfg.schedule, cfg.warmup_proportion
    lr_multiplier(0, total_steps, warmup, kind)  # validate eagerly

    def multiplier(step: int) -> float:
        return lr_multiplier(step, total_steps, warmup, kind)

    return LambdaLR(optimizer, multiplier)


def clip_gradients(params: nn.Module | Iterable[Tensor], max_norm: float) -> Tensor:
    """Global ``clip_grad_norm_`` at ``max_norm`` (``train.clip_grad_norm``; <= 0 disables clipping).

    Returns the total gradient norm before clipping (a 0-d tensor). Under DDP call it after ``backward``:
    the gradients are already averaged, so every rank clips identically.
    """
    plist = list(params.parameters() if isinstance(params, nn.Module) else params)
    grads = [p for p in plist if p.grad is not None]
    limit = max_norm if max_norm > 0 else float("inf")
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(grads, limit)


@torch.no_grad()
def clamp_logit_scale_(model: nn.Module, max_scale: float) -> int:
    """Clamp every parameter named ``*logit_scale`` to ``<= ln(max_scale)`` in place (upstream does this
    after each optimiser step with ``max_scale = 100``). Returns how many tensors were clamped."""
    if max_scale <= 0:
        raise ValueError(f"clamp_logit_scale_: expected max_scale > 0, got {max_scale}")
    count = 0
    for name, p in model.named_parameters():
        if name.endswith("logit_scale"):
            p.clamp_(max=math.log(max_scale))
            count += 1
    return count
