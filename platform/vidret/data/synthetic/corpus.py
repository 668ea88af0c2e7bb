"""The generated captioned video corpus (``vidret synth``): coloured shapes moving on distractor backgrounds.

Layout written under ``out`` (read back through the MSR-VTT reader, ``dataset="synthetic"``)::

    videos/<video_id>.mp4      H.264 mp4, size x size, round(seconds * fps) frames at fps
    anns/MSRVTT_data.json      {"videos": [{video_id, id, split, kind, order, objects, background}],
                                "sentences": [{video_id, caption, sen_id}]}   (all splits, all captions)
    anns/train.csv             column video_id
    anns/{val,test,ood}.csv    columns key,vid_key,video_id,sentence; one row per video, its first caption
                               (csv-quoted: two-event captions contain a comma)
    summary.json               counts and settings (also returned by ``generate_corpus``)

Splits: ``val`` is 5% of ``videos``, ``test`` 25%, ``ood`` 12.5% (each at least one video), ``train`` the
rest; which index goes where is a seeded permutation of ``range(videos)``. Three colour-shape pairs
(``HELD_OUT``) appear in no train/val/test clip and in every ood clip.

Determinism: a clip's content, geometry, background and captions come from a generator seeded with
``(seed, index)``; its split from ``(seed, videos)``. In val/test/ood the csv caption is kept unique where
the vocabulary allows it (content whose caption the split already has is redrawn from the clip's own
generator, switching kind once a kind runs out) and two-event clips of a split come in reversed-order twins
("A, then B" / "B, then A"); so an eval clip also depends on the earlier clips of its split, all planned
in the calling process. Workers only encode, so the bytes do not depend on ``workers``. Worker processes
are spawned (the caller may hold threads): a script calling ``generate_corpus`` with ``workers > 1`` needs
the usual ``if __name__ == "__main__":`` guard.

Kinds: 30% one object, 40% two objects at once, 30% two events in order ("..., then ..."); large eval splits
hold fewer one-object clips (only 90 distinct one-object captions exist in distribution, 18 held out).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from vidret.config import SynthConfig
from vidret.data.synthetic.plan import (
    COLOURS,
    HELD_OUT,
    KINDS,
    MOTIONS,
    SHAPES,
    Content,
    VideoPlan,
    canonical_caption,
    captions,
    layout,
    sample_background,
    sample_content,
    sample_kind,
)
from vidret.data.synthetic.render import ENCODER_OPTIONS, render_chunk
from vidret.storage import Storage, join

GENERATOR_VERSION = "1"
SPLITS: tuple[str, ...] = ("train", "val", "test", "ood")
EVAL_SPLITS: tuple[str, ...] = ("val", "test", "ood")
SPLIT_FRACTIONS: dict[str, float] = {"val": 0.05, "test": 0.25, "ood": 0.125}  # train gets the rest
MIN_FRAMES = 4
_REDRAWS = 50  # attempts at a caption not yet used in the split
_CHUNK = 16  # most clips per worker task


def video_id(index: int) -> str:
    return f"synth{index:06d}"


def frame_count(cfg: SynthConfig) -> int:
    """Frames per clip: ``round(seconds * fps)``."""
    return round(cfg.seconds * cfg.fps)


def split_sizes(videos: int) -> dict[str, int]:
    """Videos per split; every split gets at least one, so ``videos`` must be >= 4."""
    if videos < len(SPLITS):
        raise ValueError(f"synth.videos: expected an integer >= {len(SPLITS)} (one per split), got {videos}")
    sizes = {s: max(1, round(f * videos)) for s, f in SPLIT_FRACTIONS.items()}
    return {"train": videos - sum(sizes.values()), **sizes}


def assign_splits(seed: int, videos: int) -> list[str]:
    """Split name of each index: a seeded permutation, so splits are interleaved over the ids."""
    sizes = split_sizes(videos)
    order = np.random.default_rng([seed, videos, 1]).permutation(videos)
    out = [""] * videos
    start = 0
    for split in SPLITS:
        for i in order[start : start + sizes[split]]:
            out[int(i)] = split
        start += sizes[split]
    return out


def _video_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, 0])


@dataclass
class _EvalSplitState:
    """What a val/test/ood split has used so far while its clips are planned in index order."""

    used: set[str] = field(default_factory=set)  # csv captions taken
    pending: Content | None = None  # last two-event content still without its reversed twin
    exhausted: set[str] = field(default_factory=set)  # kinds whose redraws found no new caption


def plan_corpus(seed: int, videos: int) -> list[VideoPlan]:
    """Every clip's plan (what to draw and its captions), in index order; deterministic for the arguments."""
    if seed < 0:
        raise ValueError(f"synth.seed: expected an integer >= 0, got {seed}")
    splits = assign_splits(seed, videos)
    states = {s: _EvalSplitState() for s in EVAL_SPLITS}
    plans = []
    for index, split in enumerate(splits):
        rng = _video_rng(seed, index)
        kind = sample_kind(rng)
        if split == "train":
            content = sample_content(rng, kind, split)
        else:
            content = _eval_content(rng, kind, split, states[split])
        plans.append(
            VideoPlan(
                index,
                video_id(index),
                split,
                content,
                layout(rng, content),
                sample_background(rng),
                captions(rng, content),
            )
        )
    return plans


def _eval_content(rng: np.random.Generator, kind: str, split: str, state: _EvalSplitState) -> Content:
    """Content for a val/test/ood clip whose csv caption is new to the split when possible.

    A two-event clip is the reversed twin of the split's previous unpaired two-event clip when that twin's
    caption is new. Otherwise content is drawn and redrawn while its caption is taken: up to ``_REDRAWS``
    times with ``kind``, then with kinds drawn afresh. A kind that fails its redraws is not tried again in
    the split, so a large test split holds fewer one-object clips (90 distinct captions) rather than
    duplicate captions."""
    twin = None
    if kind == "two_events":
        twin = state.pending.reversed() if state.pending is not None else None
        state.pending = None
    if twin is not None and canonical_caption(twin) not in state.used:
        content = twin
    else:
        content = _fresh_content(rng, kind, split, state)
        if content.kind == "two_events":
            state.pending = content
    state.used.add(canonical_caption(content))
    return content


def _fresh_content(rng: np.random.Generator, kind: str, split: str, state: _EvalSplitState) -> Content:
    content = sample_content(rng, kind, split)
    for attempt in range(_REDRAWS):
        if canonical_caption(content) not in state.used:
            return content
        if attempt == _REDRAWS // 2 and kind not in state.exhausted:
            state.exhausted.add(kind)
        if kind in state.exhausted:
            kind = sample_kind(rng)
            while kind in state.exhausted and len(state.exhausted) < len(KINDS):
                kind = sample_kind(rng)
        content = sample_content(rng, kind, split)
    return content  # every kind ran out of new captions: a duplicate, counted in the summary


def _chunks(plans: list[VideoPlan], size: int) -> Iterator[list[VideoPlan]]:
    for start in range(0, len(plans), size):
        yield plans[start : start + size]


def _encoded(
    plans: list[VideoPlan], cfg: SynthConfig, frames: int
) -> Iterator[tuple[list[VideoPlan], list[bytes]]]:
    """(chunk, mp4 bytes) pairs in index order, encoded in ``cfg.workers`` processes."""
    per_task = max(1, min(_CHUNK, math.ceil(len(plans) / (4 * cfg.workers))))  # >= 4 tasks per worker
    chunks = list(_chunks(plans, per_task))
    if cfg.workers == 1 or len(chunks) == 1:
        for chunk in chunks:
            yield chunk, render_chunk(chunk, cfg.size, frames, cfg.fps)
        return
    # spawn: the caller may hold threads (Ray, torch) that make fork unsafe
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(cfg.workers, len(chunks)), mp_context=ctx) as pool:
        results = pool.map(partial(render_chunk, size=cfg.size, frames=frames, fps=cfg.fps), chunks)
        yield from zip(chunks, results, strict=True)


def _csv_text(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _annotations(plans: list[VideoPlan]) -> dict[str, str]:
    """File name under ``anns/`` -> text."""
    sentences: list[dict[str, str | int]] = []
    for plan in plans:
        for caption in plan.captions:
            sentences.append({"video_id": plan.video_id, "caption": caption, "sen_id": len(sentences)})
    data = {"videos": [p.describe() for p in plans], "sentences": sentences}
    files = {"MSRVTT_data.json": json.dumps(data, indent=1) + "\n"}
    files["train.csv"] = _csv_text(("video_id",), [(p.video_id,) for p in plans if p.split == "train"])
    for split in EVAL_SPLITS:
        rows = [p for p in plans if p.split == split]
        files[f"{split}.csv"] = _csv_text(
            ("key", "vid_key", "video_id", "sentence"),
            [(f"ret{i}", p.video_id, p.video_id, p.captions[0]) for i, p in enumerate(rows)],
        )
    return files


def summarise(plans: list[VideoPlan], cfg: SynthConfig) -> dict[str, Any]:
    """Counts and settings of a planned corpus (the content of summary.json)."""
    per_video = [len(p.captions) for p in plans]
    duplicates: dict[str, int] = {}
    for split in EVAL_SPLITS:
        firsts = [p.captions[0] for p in plans if p.split == split]
        duplicates[split] = len(firsts) - len(set(firsts))
    return {
        "generator": "vidret.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "videos": len(plans),
        "size": cfg.size,
        "fps": cfg.fps,
        "seconds": cfg.seconds,
        "frames": frame_count(cfg),
        "encoder": {"codec": "libx264", "pix_fmt": "yuv420p", **ENCODER_OPTIONS},
        "splits": {s: sum(p.split == s for p in plans) for s in SPLITS},
        "captions": {
            "total": sum(per_video),
            "per_video_min": min(per_video),
            "per_video_max": max(per_video),
            "per_video_mean": round(float(np.mean(per_video)), 4),
        },
        "duplicate_csv_captions": duplicates,  # rows minus distinct sentences, per eval split csv
        "kinds": dict(sorted(Counter(p.content.kind for p in plans).items())),
        "orders": dict(sorted(Counter(p.content.order for p in plans if p.content.order).items())),
        "backgrounds": dict(sorted(Counter(p.background.kind for p in plans).items())),
        "held_out_combos": [f"{c} {s}" for c, s in HELD_OUT],
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "motions": list(MOTIONS),
    }


def generate_corpus(
    cfg: SynthConfig,
    storage: Storage,
    out: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the corpus for ``cfg`` under ``out`` (default ``cfg.out``; a path or URI) and return the summary.

    Every file goes through ``storage.write_bytes``/``write_text`` (atomic); ``summary.json`` is written last,
    so its presence marks a complete corpus. Existing files with the same names are replaced; others under
    ``out`` are left alone. ``progress(done, total)`` is called after each batch of videos is written.
    Raises ``ValueError`` for settings the generator cannot honour (fewer than 4 videos or 4 frames, seed <
    0).
    """
    root = cfg.out if out is None else out
    frames = frame_count(cfg)
    if frames < MIN_FRAMES:
        raise ValueError(
            f"synth.seconds * synth.fps: expected at least {MIN_FRAMES} frames per clip, got {frames} "
            f"({cfg.seconds} s at {cfg.fps} fps)"
        )
    plans = plan_corpus(cfg.seed, cfg.videos)
    storage.makedirs(join(root, "videos"))
    storage.makedirs(join(root, "anns"))
    done = 0
    for chunk, blobs in _encoded(plans, cfg, frames):
        for plan, blob in zip(chunk, blobs, strict=True):
            storage.write_bytes(join(root, "videos", f"{plan.video_id}.mp4"), blob)
        done += len(chunk)
        if progress is not None:
            progress(done, len(plans))
    for name, text in _annotations(plans).items():
        storage.write_text(join(root, "anns", name), text)
    summary = summarise(plans, cfg)
    summary["out"] = root
    storage.write_text(join(root, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary
