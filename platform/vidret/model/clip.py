"""CLIP backbone: per-token text features, per-frame features, frame normalisation and weight loading.

Shape legend: B batch, F frames, L tokens, D joint embedding width, W text transformer width,
H/W image height/width in pixels (frames are square: H = W = image size).

Weights come from a local path or an object-storage URI in one of two layouts:
* ``openai``: OpenAI's released ``.pt`` (a TorchScript archive; only its state dict is kept) or the same
  state dict saved with ``torch.save``. It carries three extra buffers (``input_resolution``,
  ``context_length``, ``vocab_size``) which are dropped, and needs QuickGELU.
* ``open_clip``: a state dict, possibly nested under ``"state_dict"`` with DDP ``module.`` prefixes.
For ViT models open_clip's key names are OpenAI's, so both layouts load into ``open_clip.CLIP`` as is.

Plain state dicts are read with ``torch.load(weights_only=True)``: a pickle that would construct arbitrary
objects (run code) is refused with ``ValueError``. TorchScript archives are recognised by their zip entries
(``constants.pkl``, ``code/``) and read with ``torch.jit.load``, which does not unpickle Python objects.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import open_clip
import torch
from open_clip.transformer import QuickGELU
from torch import nn

if TYPE_CHECKING:
    from vidret.storage import Storage

WeightsFormat = Literal["auto", "openai", "open_clip"]

# OpenAI CLIP's image statistics (open_clip.constants.OPENAI_DATASET_MEAN/STD); the method uses these.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_MAX_LISTED = 12


def normalize_frames(video_uint8_BFHW3: torch.Tensor, mask_BF: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 RGB frames ``(B, F, H, W, 3)`` -> float32 ``(B, F, 3, H, W)`` with CLIP mean/std.

    This is the one place pixel normalisation happens. Any number of leading dims is accepted
    (``(F, H, W, 3)`` -> ``(F, 3, H, W)``). With ``mask_BF`` (1 real, 0 padded; shape = leading dims),
    padded frames become exact zeros after normalisation, as in the method's loader.
    """
    if video_uint8_BFHW3.dtype != torch.uint8:
        raise TypeError(f"normalize_frames: expected uint8 frames, got {video_uint8_BFHW3.dtype}")
    if video_uint8_BFHW3.ndim < 4 or video_uint8_BFHW3.shape[-1] != 3:
        raise ValueError(
            f"normalize_frames: expected shape (..., H, W, 3), got {tuple(video_uint8_BFHW3.shape)}"
        )
    x = video_uint8_BFHW3.movedim(-1, -3).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(3, 1, 1)
    x = (x - mean) / std
    if mask_BF is not None:
        if tuple(mask_BF.shape) != tuple(x.shape[:-3]):
            raise ValueError(
                f"normalize_frames: mask shape {tuple(mask_BF.shape)} != frames {tuple(x.shape[:-3])}"
            )
        x = x * (mask_BF != 0).to(x.dtype)[..., None, None, None]
    return x


class ClipBackbone(nn.Module):
    """Wraps ``open_clip.CLIP`` (a ViT CLIP) and exposes the features DiffusionRet needs (method 2.1)."""

    def __init__(self, clip: open_clip.CLIP):
        super().__init__()
        if not isinstance(clip, open_clip.CLIP):
            raise TypeError(f"ClipBackbone: expected open_clip.CLIP, got {type(clip).__name__}")
        size = clip.visual.image_size
        if isinstance(size, (tuple, list)) and size[0] != size[1]:
            raise ValueError(f"ClipBackbone: expected a square image size, got {tuple(size)}")
        self.clip = clip

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding width (output of both projections)."""
        return int(self.clip.visual.output_dim)

    @property
    def width(self) -> int:
        """Alias of ``embed_dim`` (D)."""
        return self.embed_dim

    @property
    def text_width(self) -> int:
        """W, the width of the text transformer (= D for all presets)."""
        return int(self.clip.transformer.width)

    @property
    def text_heads(self) -> int:
        return int(self.clip.transformer.resblocks[0].attn.num_heads)

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> nn.Parameter:
        scale: nn.Parameter = self.clip.logit_scale  # open_clip ships no type information
        return scale

    def encode_text(self, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token features ``(B, L, D)`` and the EOT feature ``(B, D)``; neither is normalised.

        Attention is causal and also masks padded keys (``mask_BL == 0``); ``ln_final`` and the text
        projection are applied to all L tokens. The EOT token is at ``argmax(ids)`` (49407 is the largest
        id), so ``eot_BD`` equals ``open_clip.CLIP.encode_text`` on the same ids. Requires ``mask[:, 0] == 1``
        (SOT is always real), so that no query row is fully masked.
        """
        if ids_BL.ndim != 2 or ids_BL.shape != mask_BL.shape:
            raise ValueError(
                f"encode_text: expected ids and mask of equal shape (B, L), got {tuple(ids_BL.shape)} "
                f"and {tuple(mask_BL.shape)}"
            )
        B, L = ids_BL.shape
        if self.context_length < L:
            raise ValueError(f"encode_text: L={L} exceeds the CLIP context length {self.context_length}")
        clip = self.clip
        cast_dtype = clip.transformer.get_cast_dtype()
        x_BLW = clip.token_embedding(ids_BL).to(cast_dtype) + clip.positional_embedding[:L].to(cast_dtype)
        blocked_LL = torch.ones(L, L, dtype=torch.bool, device=ids_BL.device).triu_(1)
        blocked_BLL = blocked_LL[None] | (mask_BL == 0)[:, None, :]
        attn_BLL = torch.zeros(B, L, L, dtype=x_BLW.dtype, device=x_BLW.device)
        attn_BLL.masked_fill_(blocked_BLL, torch.finfo(x_BLW.dtype).min)
        # nn.MultiheadAttention wants a (B * heads, L, L) mask, batch-major.
        attn_mask = attn_BLL.repeat_interleave(self.text_heads, dim=0)
        x_BLW = clip.ln_final(clip.transformer(x_BLW, attn_mask=attn_mask))
        proj = clip.text_projection
        tokens_BLD = proj(x_BLW) if isinstance(proj, nn.Linear) else x_BLW @ proj
        eot_BD = tokens_BLD[torch.arange(B, device=ids_BL.device), ids_BL.argmax(dim=-1)]
        return tokens_BLD, eot_BD

    def encode_frames(self, frames_BF3HW: torch.Tensor, mask_BF: torch.Tensor | None = None) -> torch.Tensor:
        """Projected CLS feature of every frame, ``(B, F, D)``, not normalised (= ``encode_image`` per frame).

        ``frames_BF3HW`` must already be normalised (``normalize_frames``). With ``mask_BF``, padded frames
        are not run through the ViT and get zero features: this is exact for the retrieval scores, since
        padded frames are masked as keys in the temporal module and in WTI.
        """
        if frames_BF3HW.ndim != 5 or frames_BF3HW.shape[2] != 3:
            raise ValueError(f"encode_frames: expected (B, F, 3, H, W), got {tuple(frames_BF3HW.shape)}")
        B, F, _, H, W = frames_BF3HW.shape
        if self.image_size != H or self.image_size != W:
            raise ValueError(
                f"encode_frames: expected {self.image_size}x{self.image_size} frames, got {H}x{W}"
            )
        flat_N3HW = frames_BF3HW.flatten(0, 1)
        if mask_BF is None:
            all_ND: torch.Tensor = self.clip.visual(flat_N3HW)
            return all_ND.view(B, F, -1)
        if tuple(mask_BF.shape) != (B, F):
            raise ValueError(f"encode_frames: mask shape {tuple(mask_BF.shape)} != (B, F) = {(B, F)}")
        real_idx = (mask_BF.flatten() != 0).nonzero().squeeze(1)
        real_RD: torch.Tensor | None = self.clip.visual(flat_N3HW[real_idx]) if real_idx.numel() else None
        if real_RD is None:
            return flat_N3HW.new_zeros(B, F, self.embed_dim)
        out_ND = real_RD.new_zeros(B * F, real_RD.shape[-1]).index_copy(0, real_idx, real_RD)
        return out_ND.view(B, F, -1)


# ---------------------------------------------------------------------------------------------------------
# Weight loading


@dataclass(frozen=True)
class ClipWeights:
    """A CLIP state dict read from ``uri``, with the layout it was recognised as."""

    state_dict: dict[str, torch.Tensor]
    format: Literal["openai", "open_clip"]
    uri: str


def _read_bytes(uri: str, storage: Storage | None) -> bytes:
    if storage is None and "://" in uri and not uri.startswith("file://"):
        from vidret.config import StorageConfig  # lazy: only remote URIs without a Storage need it
        from vidret.storage import Storage

        storage = Storage(StorageConfig())
    if storage is not None:
        if not storage.exists(uri):
            raise FileNotFoundError(f"CLIP weights not found: {uri}")
        return storage.read_bytes(uri)
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found: {uri}")
    return path.read_bytes()


def _is_torchscript(data: bytes) -> bool:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _as_state_dict(obj: object, uri: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"CLIP weights {uri}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"CLIP weights {uri}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k.removeprefix("module.")] = v
    return out


def unpickling_refusal(err: pickle.UnpicklingError) -> str:
    """The line of a refused ``torch.load(weights_only=True)`` that names the refused global (torch's message
    also carries bypass advice, which we do not repeat); else its last line. At most 200 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.split(". Please use", 1)[0][:200]
    return lines[-1][:200] if lines else type(err).__name__


def read_clip_weights(uri: str, fmt: WeightsFormat = "auto", storage: Storage | None = None) -> ClipWeights:
    """Read a CLIP state dict from ``uri`` (local path, ``file://`` or an object-storage URI).

    ``fmt="auto"`` recognises a TorchScript archive or a state dict with OpenAI's extra buffers as
    ``openai``, anything else as ``open_clip``. Raises ``FileNotFoundError`` (naming the URI) when absent and
    ``ValueError`` (naming the URI) for unreadable files, pickles that would run code, or a TorchScript
    archive given with ``fmt="open_clip"``. OpenAI's extra buffers are dropped from the result.
    """
    if fmt not in ("auto", "openai", "open_clip"):
        raise ValueError(f"model.weights_format: expected auto, openai or open_clip, got {fmt!r}")
    data = _read_bytes(uri, storage)
    if _is_torchscript(data):
        if fmt == "open_clip":
            raise ValueError(
                f"CLIP weights {uri}: a TorchScript archive (OpenAI layout) but weights_format is open_clip; "
                "use openai or auto"
            )
        try:
            # torch.jit is deprecated, but it is the only reader of this format.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                # torch.jit.load has no annotations in torch's own sources
                scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
        except RuntimeError as e:
            raise ValueError(f"CLIP weights {uri}: unreadable TorchScript archive: {e}") from None
        state = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
        # A traced open_clip model keeps its causal mask as state; it is derived, not a weight.
        state.pop("attn_mask", None)
        detected: Literal["openai", "open_clip"] = "openai"
    else:
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = unpickling_refusal(e)
            raise ValueError(
                f"CLIP weights {uri}: refused to load, not a plain tensor checkpoint (it would need to run "
                f"pickled code or is corrupt): {first}"
            ) from None
        except (RuntimeError, EOFError) as e:
            raise ValueError(f"CLIP weights {uri}: not a readable torch checkpoint: {e}") from None
        state = _as_state_dict(obj, uri)
        detected = "openai" if fmt == "openai" or "input_resolution" in state else "open_clip"
    for key in OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    return ClipWeights(state_dict=state, format=detected, uri=uri)


def _list(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def apply_clip_state_dict(model: open_clip.CLIP, state_dict: Mapping[str, torch.Tensor], uri: str) -> None:
    """Load ``state_dict`` into ``model`` strictly; ``ValueError`` lists missing/unexpected keys and
    shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_list(shapes)}")
        raise ValueError(f"CLIP weights {uri} do not match the model architecture: " + "; ".join(parts))
    model.load_state_dict(dict(state_dict), strict=True)


def uses_quick_gelu(model: open_clip.CLIP) -> bool:
    """Whether the text tower's MLP activation is QuickGELU."""
    return isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)


def load_clip_weights(
    model: open_clip.CLIP, uri: str, fmt: WeightsFormat = "auto", storage: Storage | None = None
) -> None:
    """Read weights from ``uri`` and load them into an already built ``model`` (strict, see module doc).

    Warns when OpenAI-format weights go into a GELU model (build with ``build_clip`` to get QuickGELU).
    """
    weights = read_clip_weights(uri, fmt, storage)
    if weights.format == "openai" and not uses_quick_gelu(model):
        warnings.warn(
            f"CLIP weights {uri} are in OpenAI format but the model uses GELU; OpenAI weights need QuickGELU",
            stacklevel=2,
        )
    apply_clip_state_dict(model, weights.state_dict, uri)
