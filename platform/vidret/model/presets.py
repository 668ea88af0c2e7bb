"""CLIP architecture presets and the builder of the backbone (random init or loaded weights).

Presets are open_clip model configs (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``). The three
OpenAI architectures are read from open_clip's bundled JSON configs; ``debug`` and ``tiny`` are defined here
for CPU tests and the synthetic corpus. Models are built with ``open_clip.CLIP(**config)`` directly, so no
pretrained tag is ever resolved and nothing is downloaded (and open_clip's global registry is not mutated).

Shape legend: D joint embedding width (``embed_dim``).
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import open_clip

from vidret.config import ModelConfig
from vidret.model.clip import apply_clip_state_dict, read_clip_weights

if TYPE_CHECKING:
    from vidret.storage import Storage

_TEXT_77: dict[str, Any] = {"context_length": 77, "vocab_size": 49408}

# Names of open_clip's bundled configs; read lazily so importing this module has no side effects.
_OPEN_CLIP_NAMES = ("ViT-B-32", "ViT-B-16", "ViT-L-14")

_LOCAL_PRESETS: dict[str, dict[str, Any]] = {
    # A few M params (most of them the 49408 x 64 token table); builds in well under a second on CPU.
    "debug": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {**_TEXT_77, "width": 64, "heads": 2, "layers": 2},
    },
    # Sized for the 64 px synthetic corpus: 3 layers, 4 heads in both towers.
    "tiny": {
        "embed_dim": 128,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 128, "layers": 3, "head_width": 32},
        "text_cfg": {**_TEXT_77, "width": 128, "heads": 4, "layers": 3},
    },
}

PRESETS: tuple[str, ...] = (*_OPEN_CLIP_NAMES, *_LOCAL_PRESETS)
"""Names accepted by ``ModelConfig.preset``."""


def preset_config(name: str) -> dict[str, Any]:
    """A fresh (deep-copied) open_clip config dict for preset ``name``; ``quick_gelu`` is always present."""
    if name in _LOCAL_PRESETS:
        cfg = copy.deepcopy(_LOCAL_PRESETS[name])
    elif name in _OPEN_CLIP_NAMES:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(f"model.preset: open_clip {open_clip.__version__} has no config named {name!r}")
    else:
        raise ValueError(f"model.preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    cfg.setdefault("quick_gelu", False)
    return cfg


def build_clip(cfg: ModelConfig, storage: Storage | None = None) -> open_clip.CLIP:
    """Build the CLIP of ``cfg.preset`` in fp32 on CPU, randomly initialised or with ``cfg.weights`` loaded.

    Activation: ``cfg.quick_gelu`` when set; otherwise QuickGELU for OpenAI-format weights (they were
    trained with it; GELU loads silently but gives wrong features), else the preset's default.
    Weights are read through ``storage`` (a local path works without one). Architecture mismatches raise
    ``ValueError`` listing the offending keys; see ``vidret.model.clip.read_clip_weights``.
    """
    arch = preset_config(cfg.preset)
    weights = read_clip_weights(cfg.weights, cfg.weights_format, storage) if cfg.weights else None
    if cfg.quick_gelu is not None:
        quick_gelu = cfg.quick_gelu
        if weights is not None and weights.format == "openai" and not quick_gelu:
            warnings.warn(
                f"model.quick_gelu=False with OpenAI-format weights {cfg.weights}: these were trained with "
                "QuickGELU, the features will be wrong unless you fine-tune",
                stacklevel=2,
            )
    elif weights is not None and weights.format == "openai":
        quick_gelu = True
    else:
        quick_gelu = bool(arch["quick_gelu"])
    arch["quick_gelu"] = quick_gelu
    model = open_clip.CLIP(**arch)
    if weights is not None:
        apply_clip_state_dict(model, weights.state_dict, weights.uri)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
