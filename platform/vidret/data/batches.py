"""Per-batch transforms of the data pipeline: pure functions over ``dict[str, np.ndarray]`` (no Ray here).

Shape legend: B rows in a batch, F frames (``data.max_frames``), S frame side (``data.size``), L tokens
(``data.max_words``).

:mod:`vidret.data.pipeline` wraps these in Ray Data's ``map_batches``; they also run as-is in a loop (tests,
benchmarks). A split is first flattened into rows (:func:`split_rows`), then each batch is decoded
(:func:`decode_rows`), tokenised (:func:`tokenize_rows`), optionally augmented (:func:`augment_rows`) and cut
down to the model's columns (:func:`model_columns`)::

    video       uint8  (B, F, S, S, 3)   frames, zero-padded after the real ones
    video_mask  int64  (B, F)            1 on real frames
    text_ids    int64  (B, L)            CLIP BPE ids, [SOT] ... [EOT] 0 ...
    text_mask   int64  (B, L)            1 on SOT, tokens and EOT
    video_index int64  (B,)              row of the video in its split manifest (stable id for positives)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidret.config import DataConfig
from vidret.data.check import classify
from vidret.data.video import DecodeError, decode_with_config
from vidret.storage import Storage, StorageError, is_remote, parse_uri

if TYPE_CHECKING:  # the tokenizer imports torch and open_clip (~7 s, ~1 GB): decode workers never need it
    from vidret.data.tokenizer import ClipTokenizer

MODEL_COLUMNS: tuple[str, ...] = ("video", "video_mask", "text_ids", "text_mask", "video_index")
ROW_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string()),
        pa.field("video_uri", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("video_index", pa.int64()),
        pa.field("caption_index", pa.int64()),
    ]
)


@dataclass(frozen=True)
class SplitRows:
    """The rows of one split flattened for the pipeline (columns: ``ROW_SCHEMA``)."""

    table: pa.Table
    num_videos: int


def split_rows(manifest: pa.Table, split: str, *, pairs: bool) -> SplitRows:
    """Rows of ``split``: every caption its own row (``pairs=True``, training and text-to-video evaluation)
    or one row per video with its first caption (``pairs=False``, video features, corpus checks).

    ``video_index`` numbers the split's videos 0..V-1 in manifest order; ``caption_index`` numbers the
    captions of a video. A video without captions still gets one row (empty caption) when ``pairs=False``.
    """
    sub = manifest.filter(pc.equal(manifest.column("split"), split))
    if sub.num_rows == 0:
        splits = sorted(set(manifest.column("split").to_pylist()))
        raise ValueError(f"manifest has no rows for split {split!r} (it has: {', '.join(splits) or 'none'})")
    captions = sub.column("captions").to_pylist()
    if pairs:
        counts = np.array([len(c) for c in captions], dtype=np.int64)
        texts = [c for caps in captions for c in caps]
        caption_index = np.concatenate([np.arange(n) for n in counts]) if texts else np.zeros(0, np.int64)
    else:
        counts = np.ones(sub.num_rows, dtype=np.int64)
        texts = [caps[0] if caps else "" for caps in captions]
        caption_index = np.zeros(sub.num_rows, np.int64)
    take = pa.array(np.repeat(np.arange(sub.num_rows), counts))
    table = pa.table(
        {
            "video_id": sub.column("video_id").take(take),
            "video_uri": sub.column("video_uri").take(take),
            "caption": pa.array(texts, pa.string()),
            "start": sub.column("start").take(take),
            "end": sub.column("end").take(take),
            "video_index": pa.array(np.repeat(np.arange(sub.num_rows, dtype=np.int64), counts)),
            "caption_index": pa.array(caption_index.astype(np.int64)),
        },
        schema=ROW_SCHEMA,
    )
    return SplitRows(table=table, num_videos=sub.num_rows)


def _opt_float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def decode_rows(batch: dict[str, np.ndarray], cfg: DataConfig, storage: Storage) -> dict[str, np.ndarray]:
    """Read and decode every row's video; a video that cannot be used gives ``ok=False`` instead of raising.

    Adds ``video`` (B, F, S, S, 3) uint8 (zeros when not ok), ``video_mask`` (B, F) int64, ``ok`` (B,) bool,
    ``reason`` and ``detail`` (B,) str (empty when ok). Local files are handed to the decoder by path (no
    copy); remote ones are read whole through ``storage`` (the decoder's timeout worker needs bytes).
    """
    n = len(batch["video_uri"])
    video = np.zeros((n, cfg.max_frames, cfg.size, cfg.size, 3), np.uint8)
    video_mask = np.zeros((n, cfg.max_frames), np.int64)
    ok = np.zeros(n, bool)
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)
    for i in range(n):
        uri = str(batch["video_uri"][i])
        try:
            source: str | bytes = storage.read_bytes(uri) if is_remote(uri) else parse_uri(uri).path
            video[i], video_mask[i] = decode_with_config(
                source, cfg, uri=uri, start=_opt_float(batch["start"][i]), end=_opt_float(batch["end"][i])
            )
            ok[i] = True
        except (DecodeError, StorageError, FileNotFoundError, ValueError) as exc:
            reason[i], detail[i] = classify(exc)
    return {
        **batch,
        "video": video,
        "video_mask": video_mask,
        "ok": ok,
        "reason": reason.astype(str),
        "detail": detail.astype(str),
    }


def tokenize_rows(
    batch: dict[str, np.ndarray], tokenizer: ClipTokenizer, max_words: int
) -> dict[str, np.ndarray]:
    """Add ``text_ids`` and ``text_mask`` (B, L) int64 for the ``caption`` column (L = ``max_words``)."""
    ids_BL, mask_BL = tokenizer([str(c) for c in batch["caption"]], max_words)
    return {**batch, "text_ids": ids_BL, "text_mask": mask_BL}


def keep_rows(batch: dict[str, np.ndarray], keep_B: np.ndarray) -> dict[str, np.ndarray]:
    """The rows where ``keep_B`` (B,) bool is True, in every column."""
    return {k: v[keep_B] for k, v in batch.items()}


def model_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only the model's columns (``MODEL_COLUMNS``): every column numeric, so torch's default collate
    works."""
    return {k: batch[k] for k in MODEL_COLUMNS}


# ------------------------------------------------------------------------------------------- augmentation
AUG_SCALE = (0.5, 1.0)  # area fraction of the random resized crop
AUG_RATIO = (3 / 4, 4 / 3)  # aspect ratio range of the crop


def augment_rows(batch: dict[str, np.ndarray], seed: int, epoch: int = 0) -> dict[str, np.ndarray]:
    """Training augmentation of ``video`` (B, F, S, S, 3): one random resized crop (bilinear, back to S x S)
    and a horizontal flip with probability 1/2 per row, the same for all frames of the row.

    Seeded per row by ``(seed, epoch, video_index, caption_index)``, so results do not depend on how rows are
    batched or which worker runs them. Padding frames stay zero.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"augment_rows: seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    video = batch["video"]
    captions = batch.get("caption_index")
    out = np.empty_like(video)
    for i in range(video.shape[0]):
        caption = int(captions[i]) if captions is not None else 0
        rng = np.random.default_rng([seed, epoch, int(batch["video_index"][i]), caption])
        out[i] = _random_resized_crop(video[i], rng)
    return {**batch, "video": out}


def _random_resized_crop(video_FSS3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size_h, size_w = video_FSS3.shape[1:3]
    area = size_h * size_w * rng.uniform(*AUG_SCALE)
    ratio = math.exp(rng.uniform(math.log(AUG_RATIO[0]), math.log(AUG_RATIO[1])))
    h = int(min(size_h, max(1, round(math.sqrt(area / ratio)))))
    w = int(min(size_w, max(1, round(math.sqrt(area * ratio)))))
    top = int(rng.integers(0, size_h - h + 1))
    left = int(rng.integers(0, size_w - w + 1))
    flip = bool(rng.integers(0, 2))
    crop = video_FSS3[:, top : top + h, left : left + w].astype(np.float32)
    ys, y0, y1 = _bilinear_axis(h, size_h)
    xs, x0, x1 = _bilinear_axis(w, size_w)
    if flip:
        xs, x0, x1 = xs[::-1], x0[::-1], x1[::-1]
    wy = ys[None, :, None, None]
    wx = xs[None, None, :, None]
    rows0, rows1 = crop[:, y0], crop[:, y1]
    top_row = rows0[:, :, x0] * (1 - wx) + rows0[:, :, x1] * wx
    bottom_row = rows1[:, :, x0] * (1 - wx) + rows1[:, :, x1] * wx
    out_FSS3: np.ndarray = np.clip(np.rint(top_row * (1 - wy) + bottom_row * wy), 0, 255).astype(np.uint8)
    return out_FSS3


def _bilinear_axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fractional weights and the two source indices of each of ``dst`` outputs (half-pixel centres)."""
    pos = np.clip((np.arange(dst, dtype=np.float32) + 0.5) * (src / dst) - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    return (pos - lo).astype(np.float32), lo, hi
