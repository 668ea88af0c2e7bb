"""Building the feature cache: the frozen encoder applied to every split with Ray Data batch inference.

``build_feature_cache`` encodes the splits a run needs with exported weights into
``<run.out>/features/<key>/<split>`` (format: ``vidret.features.store``). Complete splits are reused, so
stage 2, evaluation and tuning never decode a video that stage 1's cache already holds.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from vidret.config import Config
from vidret.console.progress import Progress
from vidret.data.pipeline import (
    SplitRows,
    build_dataset,
    check_bad_fraction,
    iter_numpy_batches,
    load_split,
    tokenize_rows,
)
from vidret.data.tokenizer import ClipTokenizer
from vidret.features import store
from vidret.features.encode import encode_batches
from vidret.layout import cache_root
from vidret.model.build import model_from_state
from vidret.model.checkpoint import load_state
from vidret.storage import Storage
from vidret.watchdog import watching


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def eval_splits(cfg: Config) -> list[str]:
    """The splits a run caches by default: train, val, test and ``data.extra_eval_splits`` (once each)."""
    out = [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split, *cfg.data.extra_eval_splits]
    return list(dict.fromkeys(out))


class _Encoder:
    """Ray Data actor: frozen stage-1 encoder applied to decoded video rows or tokenised caption rows."""

    def __init__(self, cfg: Config, weights_uri: str, what: str) -> None:
        torch.set_num_threads(1)
        storage = Storage(cfg.storage)
        self.model = model_from_state(cfg, storage, load_state(weights_uri, storage)["selected"])
        self.what, self.max_words = what, cfg.data.max_words
        self.tokenizer = ClipTokenizer() if what == "texts" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.tokenizer is not None:
            batch = tokenize_rows(batch, self.tokenizer, self.max_words)
        feats = encode_batches(self.model, [batch], texts=self.what == "texts", videos=self.what == "videos")
        out = feats.arrays()
        if self.what == "texts":
            out["caption_row"] = np.asarray(batch["caption_row"], np.int64)
            out.pop("ok", None)
        return out


def build_feature_cache(
    cfg: Config, storage: Storage, weights_uri: str, key: str, splits: list[str] | None = None
) -> dict[str, str]:
    """Encode ``splits`` (default: train, val, test and extra) with the weights at ``weights_uri`` into
    ``<run.out>/features/<key>/<split>``. Complete splits are reused; the missing ones are encoded together,
    in one text pass and one video pass (the actors start once). Returns {split: uri}.
    """
    root = cache_root(cfg, key)
    out, missing = {}, []
    for split in splits if splits is not None else eval_splits(cfg):
        out[split] = store.split_uri(root, split)
        if store.read_index(storage, out[split]) is not None:
            _log(f"[cache] {split}: reusing {out[split]}")
        else:
            missing.append(split)
    if missing:
        t0 = time.perf_counter()
        infos = _encode_splits(cfg, storage, weights_uri, {s: out[s] for s in missing})
        for split in missing:
            _log(
                f"[cache] {split}: {infos[split]['num_texts']} captions, {infos[split]['num_videos']} videos "
                f"-> {out[split]}"
            )
        _log(f"[cache] encoded {', '.join(missing)} in {time.perf_counter() - t0:.1f} s")
    return out


Ranges = dict[str, tuple[int, int, int, int]]
"""split -> (t0, t1, v0, v1): its caption rows ``[t0, t1)`` and video rows ``[v0, v1)`` in the union."""


def _union(
    cfg: Config, storage: Storage, weights_uri: str, splits: list[str]
) -> tuple[list[pa.Table], list[pa.Table], Ranges, dict[str, Any]]:
    """The caption and video tables of ``splits`` renumbered into one union, their ranges and index infos."""
    texts, videos, ranges, infos = [], [], {}, {}
    v_off = t_off = 0
    for split in splits:
        pairs = load_split(cfg.data.manifest, split, storage, pairs=True)
        vids = load_split(cfg.data.manifest, split, storage, pairs=False)
        n_t, n_v = pairs.table.num_rows, vids.num_videos
        texts.append(
            pa.table(
                {
                    "caption": pairs.table.column("caption"),
                    "caption_row": pa.array(np.arange(n_t) + t_off, pa.int64()),
                    "video_index": pa.array(pairs.table.column("video_index").to_numpy() + v_off),
                }
            )
        )
        vt = vids.table
        videos.append(
            vt.set_column(
                vt.schema.get_field_index("video_index"),
                "video_index",
                pa.array(vt.column("video_index").to_numpy() + v_off),
            )
        )
        ranges[split] = (t_off, t_off + n_t, v_off, v_off + n_v)
        infos[split] = {
            "split": split,
            "num_texts": n_t,
            "num_videos": n_v,
            "weights": weights_uri,
            "video_ids": vt.column("video_id").to_pylist(),
            "captions": pairs.table.column("caption").to_pylist(),
        }
        t_off, v_off = t_off + n_t, v_off + n_v
    return texts, videos, ranges, infos


def _encode_splits(cfg: Config, storage: Storage, weights_uri: str, uris: dict[str, str]) -> dict[str, Any]:
    """One text pass and one video pass over the union of the splits; rows are routed back to each split's
    shards by their offset ranges (video rows ``[v0, v1)`` and caption rows ``[t0, t1)`` of the union)."""
    texts, videos, ranges, infos = _union(cfg, storage, weights_uri, list(uris))
    union = SplitRows(table=pa.concat_tables(videos), num_videos=sum(r[3] - r[2] for r in ranges.values()))
    video_ds, log = build_dataset(union, cfg.data, storage, tokenize=False, drop_bad=False)
    # one actor per pass at half a CPU: headroom for the train workers. The actors keep Ray Data's restarts: a
    # killed encoder is replaced and its batches re-run (tests/faults/test_worker_loss.py).
    kwargs: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(size=1),
        "num_cpus": 0.5,
        "batch_size": cfg.eval.batch_size,
    }
    encoder = {"cfg": cfg, "weights_uri": weights_uri}
    text_feats = ray.data.from_arrow(pa.concat_tables(texts)).map_batches(
        _Encoder, fn_constructor_kwargs={**encoder, "what": "texts"}, **kwargs
    )
    video_feats = video_ds.map_batches(
        _Encoder, fn_constructor_kwargs={**encoder, "what": "videos"}, **kwargs
    )
    writers = {
        s: (store.ShardWriter(storage, u, "texts"), store.ShardWriter(storage, u, "videos"))
        for s, u in uris.items()
    }
    # the video pass is read with its bad-video log: past data.max_bad_fraction it raises the typed
    # TooManyBadVideosError listing them (Ray Data would hand over a wrapped RayTaskError(UserCodeException))
    num_texts = sum(r[1] - r[0] for r in ranges.values())
    passes = (("texts", text_feats, None, num_texts), ("videos", video_feats, log, union.num_videos))
    with watching(cfg.run):  # an encoder or decode actor the cluster cannot place ends the job
        for kind, feats, pass_log, rows in passes:
            with Progress(f"cache {kind}", rows, unit=kind[:-1]) as progress:
                for batch in iter_numpy_batches(
                    feats, cfg.eval.batch_size, log=pass_log, total=union.num_videos, cfg=cfg.data
                ):
                    split_writers = {s: w[0 if kind == "texts" else 1] for s, w in writers.items()}
                    _route(batch, kind, ranges, split_writers)
                    progress.update(len(batch["video_index"]))
    bad = check_bad_fraction(log, union.num_videos, cfg.data)["bad"]
    for split, uri in uris.items():
        split_uris = {u for u in bad if u in set(_video_uris(videos, ranges[split]))}
        store.write_index(
            storage,
            uri,
            {**infos[split], "bad_videos": {u: bad[u] for u in split_uris}},
            writers[split][0].close(),
            writers[split][1].close(),
        )
    return infos


def _route(
    batch: dict[str, np.ndarray], kind: str, ranges: Ranges, writers: dict[str, store.ShardWriter]
) -> None:
    """Hand each split's rows of a union batch to its writer, renumbered to the split."""
    row_key = "caption_row" if kind == "texts" else "video_index"
    for split, (t0, t1, v0, v1) in ranges.items():
        lo, hi = (t0, t1) if kind == "texts" else (v0, v1)
        sel = (batch[row_key] >= lo) & (batch[row_key] < hi)
        if not sel.any():
            continue
        part = {k: v[sel] for k, v in batch.items()}
        part["video_index"] = part["video_index"] - v0
        if kind == "texts":
            part["caption_row"] = part["caption_row"] - t0
        writers[split].add(part)


def _video_uris(tables: list[Any], rng: tuple[int, int, int, int]) -> list[str]:
    union = pa.concat_tables(tables)
    return [str(u) for u in union.column("video_uri").to_pylist()[rng[2] : rng[3]]]
