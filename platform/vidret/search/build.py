"""``vidret index``: Ray Data batch inference over a library of videos into a search index (``layout``).

Shape legend: B videos in a batch, F frames, S frame side, D width.

manifest -> decode actors (``vidret.data.pipeline``) -> encoder actor (frame features, WTI weights, pooled
embedding, a JPEG thumbnail of the middle frame) -> the driver, which commits a part every
``search.part_size`` videos -> the ANN over every part's pooled vectors.

Resumable and incremental: videos whose id is already in a committed part are skipped, so re-running after a
crash, or over a manifest that grew, encodes only what is missing. Videos that cannot be decoded are left
out and listed in ``index.json``; more than ``data.max_bad_fraction`` of the new videos fails the run
(the parts committed so far stay valid).
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from PIL import Image

from vidret.config import Config, dump_yaml, to_dict
from vidret.data.pipeline import build_dataset, check_bad_fraction, iter_numpy_batches
from vidret.planning import PathUse
from vidret.search import ann, layout
from vidret.search.inputs import read_videos, split_rows_of
from vidret.search.model_io import checkpoint_identity, encode_videos, load_model
from vidret.startup import planned, start_job
from vidret.storage import Storage, join
from vidret.watchdog import watching

Progress = Callable[[int, int], None]
# The encoder pool, and the plan's ask for it: fractional CPUs, so the decode actors and read tasks keep
# theirs (see the pipeline).
ENCODER_ACTORS, ENCODER_CPUS = 1, 0.5


def thumbnail_jpeg(frames_FSS3: np.ndarray, mask_F: np.ndarray, size: int) -> bytes:
    """A JPEG of the middle real frame, its longest side at most ``size`` pixels (a grey square if none)."""
    real = np.flatnonzero(np.asarray(mask_F) != 0)
    frame = frames_FSS3[real[len(real) // 2]] if len(real) else np.full((size, size, 3), 128, np.uint8)
    img = Image.fromarray(np.ascontiguousarray(frame, np.uint8), "RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class IndexEncoder:
    """Ray Data actor: decoded video rows -> index columns (features, pooled vector, thumbnail)."""

    def __init__(self, cfg: Config, checkpoint_uri: str) -> None:
        import torch

        torch.set_num_threads(1)
        self.model = load_model(cfg, checkpoint_uri, Storage(cfg.storage)).model
        self.thumb_size = cfg.search.thumb_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return index_columns(self.model, batch, self.thumb_size)


def index_columns(model: Any, batch: dict[str, np.ndarray], thumb_size: int) -> dict[str, np.ndarray]:
    """The index's columns of a decoded batch (``video`` (B, F, S, S, 3) uint8, ``video_mask``,
    ``video_index``): features in float16, WTI weights, the pooled unit vector and a JPEG thumbnail."""
    feats = encode_videos(model, batch["video"], batch["video_mask"])
    thumbs = [
        thumbnail_jpeg(batch["video"][i], batch["video_mask"][i], thumb_size)
        for i in range(len(batch["video"]))
    ]
    return {
        "video_index": np.asarray(batch["video_index"], np.int64),
        "video": feats["video"].astype(np.float16),
        "video_mask": feats["video_mask"].astype(np.uint8),
        "video_weight": feats["video_weight"].astype(np.float32),
        "pooled": ann.pooled(feats["video"], feats["video_weight"], feats["video_mask"]),
        "thumb": np.array(thumbs, dtype=object),
    }


def encoder_spec(cfg: Config, identity: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to add to the same index: the weights and how frames are sampled."""
    d = cfg.data
    return {
        "encoder_key": identity["encoder_key"],
        "model": to_dict(cfg.model),
        "sampling": {"max_frames": d.max_frames, "framerate": d.framerate, "size": d.size},
    }


def _check_compatible(existing: dict[str, Any], spec: dict[str, Any], out: str) -> None:
    for name, value in spec.items():
        if existing.get("encoder", {}).get(name) != value:
            raise ValueError(
                f"{join(out, layout.INDEX_FILE)}: the index was built with another {name} "
                f"({existing.get('encoder', {}).get(name)!r}, now {value!r}); index into a new --out"
            )


def _indexed_ids(storage: Storage, out: str, index: dict[str, Any] | None) -> set[str]:
    if index is None:
        return set()
    ids: set[str] = set()
    for entry in index["parts"]:
        ids.update(layout.read_part(storage, out, entry, pooled_only=True).video_ids)
    return ids


class PartBuffer:
    """Encoded rows waiting on the driver; ``take(n)`` cuts a part of the first ``n`` rows."""

    def __init__(self, videos: list[dict[str, Any]]) -> None:
        self.videos, self.rows = videos, 0
        self.chunks: list[dict[str, np.ndarray]] = []

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.chunks.append(batch)
        self.rows += len(batch["video_index"])

    def take(self, n: int) -> layout.PartData:
        merged = {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}
        head = {k: v[:n] for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        self.chunks, self.rows = ([rest] if len(rest["video_index"]) else []), self.rows - n
        offsets, blob = layout.thumbs_to_arrays([bytes(t) for t in head["thumb"]])
        rows = [self.videos[int(i)] for i in head["video_index"]]
        return layout.PartData(
            arrays={
                "video": head["video"],
                "video_mask": head["video_mask"],
                "video_weight": head["video_weight"],
                "thumb_offsets": offsets,
                "thumbs": blob,
            },
            pooled=head["pooled"],
            video_ids=[r["video_id"] for r in rows],
            video_uris=[r["video_uri"] for r in rows],
        )


def _encode_new(
    cfg: Config, checkpoint_uri: str, new: list[dict[str, Any]], commit: Callable[[layout.PartData], None]
) -> dict[str, str]:
    """Encode ``new`` on Ray Data, committing a part every ``search.part_size`` rows; returns the bad
    videos."""
    storage = Storage(cfg.storage)
    rows = split_rows_of(new)
    ds, log = build_dataset(rows, cfg.data, storage, tokenize=False, drop_bad=True)
    encoded = ds.map_batches(
        IndexEncoder,
        fn_constructor_kwargs={"cfg": cfg, "checkpoint_uri": checkpoint_uri},
        batch_size=cfg.eval.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=ENCODER_ACTORS),
        num_cpus=ENCODER_CPUS,
    )
    buffer = PartBuffer(new)
    with watching(cfg.run):  # a decode or encoder actor the cluster cannot place ends the job
        for batch in iter_numpy_batches(
            encoded, cfg.eval.batch_size, log=log, total=rows.num_videos, cfg=cfg.data
        ):
            buffer.add(batch)
            while buffer.rows >= cfg.search.part_size:
                commit(buffer.take(cfg.search.part_size))
    if buffer.rows:
        commit(buffer.take(buffer.rows))
    bad: dict[str, str] = check_bad_fraction(log, rows.num_videos, cfg.data)["bad"]
    return bad


def _planned(
    cfg: Config, manifest_uri: str, out: str, checkpoint_uri: str, new: list[dict[str, Any]]
) -> Config:
    """Start the index job on Ray (``vidret.startup.start_job``: it fails fast when the decode and encoder
    pools cannot fit, or when a path is local on a multi-node cluster); ``cfg`` as planned."""
    used = [PathUse("manifest", manifest_uri), PathUse("index", out), PathUse("checkpoint", checkpoint_uri)]
    plan, _ = start_job(
        "index",
        cfg,
        (v["video_uri"] for v in new),
        paths=used,
        encoder_actors=ENCODER_ACTORS,
        encoder_cpus=ENCODER_CPUS,
    )
    return planned(cfg, plan)


def build_ann_entry(storage: Storage, out: str, index: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Build the ANN over every part's pooled vectors and write it; returns its ``index.json`` entry."""
    pooled = [layout.read_part(storage, out, e, pooled_only=True).pooled for e in index["parts"]]
    vectors = np.concatenate(pooled) if pooled else np.zeros((0, index["dim"]), np.float32)
    faiss_index, spec = ann.build_ann(vectors, cfg.search, seed=cfg.run.seed)
    blob = layout.write_blob(storage, out, f"ann-{spec.rows}.faiss", ann.to_bytes(faiss_index))
    return {**spec.to_dict(), **blob}


def new_state(spec: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The ``index.json`` of an empty index."""
    return {
        "format": layout.FORMAT,
        "encoder": spec,
        "frames": cfg.data.max_frames,
        "dim": None,
        "parts": [],
        "bad_videos": {},
        "ann": None,
    }


def run_index(
    cfg: Config,
    checkpoint_uri: str,
    manifest_uri: str,
    out: str,
    *,
    split: str | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Index the videos of ``manifest_uri`` into ``out`` (``vidret index``); returns a summary."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    storage, t0 = Storage(cfg.storage), time.perf_counter()
    videos = read_videos(manifest_uri, storage, split)
    identity = checkpoint_identity(checkpoint_uri, storage)
    spec = encoder_spec(cfg, identity)
    index = layout.read_index(storage, out)
    if index is not None:
        _check_compatible(index, spec, out)
    have = _indexed_ids(storage, out, index)
    new = [v for v in videos if v["video_id"] not in have]
    say(
        f"[index] {len(videos)} videos listed, {len(videos) - len(new)} already indexed, {len(new)} to encode"
    )
    state = index or new_state(spec, cfg)
    state.update(stage=identity["stage"], checkpoint=checkpoint_uri)
    storage.write_text(join(out, layout.CONFIG_FILE), dump_yaml(cfg))

    def commit(part: layout.PartData) -> None:
        entry = layout.write_part(storage, out, len(state["parts"]), part)
        state["parts"].append(entry)
        state.update(dim=int(part.pooled.shape[1]), ann=None, videos=sum(p["rows"] for p in state["parts"]))
        layout.write_index(storage, out, state)
        say(f"[index] committed {entry['name']} ({entry['rows']} videos, {state['videos']} in the index)")

    bad: dict[str, str] = {}
    if new:
        bad = _encode_new(_planned(cfg, manifest_uri, out, checkpoint_uri, new), checkpoint_uri, new, commit)
    state["bad_videos"] = bad
    if not state["parts"]:
        raise ValueError(f"{manifest_uri}: no video could be indexed ({len(bad)} failed to decode)")
    if new or not state.get("ann"):
        state["ann"] = build_ann_entry(storage, out, state, cfg)
        say(f"[index] ANN {state['ann']['kind']} over {state['ann']['rows']} videos")
    state["videos"] = sum(p["rows"] for p in state["parts"])
    layout.write_index(storage, out, state)
    return {
        "index": out,
        "videos": state["videos"],
        "added": len(new) - len(bad),
        "already_indexed": len(videos) - len(new),
        "bad_videos": bad,
        "ann": {k: state["ann"][k] for k in ("kind", "rows", "params")},
        "encoder_key": identity["encoder_key"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
