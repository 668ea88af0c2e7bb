"""The query path over a search index: text -> ANN prefilter top-M -> exact WTI on the M -> optional diffusion
re-rank of the best K -> top k (``vidret search`` and the service both call :meth:`SearchEngine.search`).

Shape legend: N gallery videos, M prefiltered candidates, L tokens, F frames, D width.

Deterministic for a given index and query: the faiss search is exact or has fixed parameters, ties are broken
by gallery row, and the re-ranker's DDIM noise is seeded by ``diffusion.noise_seed`` alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vidret.config import Config, config_from_dict, replace, yaml_load
from vidret.data.tokenizer import ClipTokenizer
from vidret.search import ann, layout
from vidret.search.model_io import (
    LoadedModel,
    checkpoint_identity,
    encode_query,
    load_model,
    rerank_scores,
    wti_scores,
)
from vidret.storage import Storage, join


class QueryError(ValueError):
    """A request the engine refuses (empty or too long query, k out of range): the caller's mistake."""


def clean_query(text: str, max_chars: int) -> str:
    """``text`` stripped; ``QueryError`` when it is empty, too long or not printable text."""
    if not isinstance(text, str):
        raise QueryError(f"q: expected text, got {type(text).__name__}")
    q = text.strip()
    if not q:
        raise QueryError("q: expected a non-empty query (it is empty or only whitespace)")
    if len(q) > max_chars:
        raise QueryError(f"q: {len(q)} characters, at most search.max_query_chars={max_chars} are accepted")
    if "\ufffd" in q or any(ord(c) < 32 and c not in "\t\n\r" for c in q):
        raise QueryError("q: expected UTF-8 text without control characters")
    return q


@dataclass
class Gallery:
    """Every part of an index concatenated in ``index.json`` order (row i = faiss id i)."""

    video_NFD: np.ndarray  # float16
    video_mask_NF: np.ndarray  # uint8
    video_weight_NF: np.ndarray  # float32
    video_ids: list[str]
    video_uris: list[str]
    thumb_offsets: np.ndarray  # (N + 1,) int64
    thumbs: np.ndarray  # uint8 JPEG bytes, back to back

    @property
    def size(self) -> int:
        return len(self.video_ids)

    def nbytes(self) -> int:
        arrays = (self.video_NFD, self.video_mask_NF, self.video_weight_NF, self.thumb_offsets, self.thumbs)
        return sum(a.nbytes for a in arrays)

    def rows(self, idx_M: np.ndarray) -> dict[str, torch.Tensor]:
        """The features of rows ``idx_M`` as the model's float32 video dictionary."""
        return {
            "video": torch.from_numpy(self.video_NFD[idx_M].astype(np.float32)),
            "video_mask": torch.from_numpy(self.video_mask_NF[idx_M].astype(np.int64)),
            "video_weight": torch.from_numpy(self.video_weight_NF[idx_M]),
        }

    def thumbnail(self, row: int) -> bytes:
        return self.thumbs[self.thumb_offsets[row] : self.thumb_offsets[row + 1]].tobytes()

    @classmethod
    def from_parts(cls, parts: list[layout.PartData]) -> Gallery:
        offsets, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p.arrays["thumb_offsets"][1:] + base)
            base += int(p.arrays["thumb_offsets"][-1])
        return cls(
            video_NFD=np.concatenate([p.arrays["video"] for p in parts]),
            video_mask_NF=np.concatenate([p.arrays["video_mask"] for p in parts]),
            video_weight_NF=np.concatenate([p.arrays["video_weight"] for p in parts]),
            video_ids=[i for p in parts for i in p.video_ids],
            video_uris=[u for p in parts for u in p.video_uris],
            thumb_offsets=np.concatenate(offsets),
            thumbs=np.concatenate([p.arrays["thumbs"] for p in parts]),
        )


def index_config(storage: Storage, uri: str, serving: Config) -> Config:
    """The config the index was built with, with ``storage``, ``search`` and ``run`` of ``serving``."""
    where = join(uri, layout.CONFIG_FILE)
    try:
        built = config_from_dict(yaml_load(storage.read_text(where)) or {}, source=where)
    except (OSError, ValueError) as err:
        raise layout.SearchIndexError(f"{where}: cannot read the index's config ({err})") from None
    out: Config = replace(built, storage=serving.storage, search=serving.search, run=serving.run)
    return out


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class SearchEngine:
    """A loaded index and model answering text queries (thread-safe for concurrent ``search`` calls)."""

    def __init__(
        self,
        cfg: Config,
        loaded: LoadedModel,
        gallery: Gallery,
        ann_index: Any,
        meta: dict[str, Any],
        uri: str,
    ) -> None:
        self.cfg, self.loaded, self.gallery, self.ann_index, self.meta, self.uri = (
            cfg,
            loaded,
            gallery,
            ann_index,
            meta,
            uri,
        )
        self.tokenizer = ClipTokenizer(cfg.data.max_words)
        ann.set_search_params(ann_index, cfg.search)

    @classmethod
    def open(cls, uri: str, serving: Config, checkpoint: str | None = None) -> SearchEngine:
        """Load the index at ``uri`` and its model (``checkpoint`` overrides the weights it records; their
        encoder key must match). Every problem is a ``SearchIndexError`` naming the URI."""
        storage = Storage(serving.storage)
        meta = layout.require_index(storage, uri)
        cfg = index_config(storage, uri, serving)
        loaded = load_model(cfg, checkpoint or meta["checkpoint"], storage)
        if loaded.key != meta["encoder"]["encoder_key"]:
            raise layout.SearchIndexError(
                f"{uri}: built with encoder key {meta['encoder']['encoder_key']}, but the weights at "
                f"{loaded.checkpoint} have key {loaded.key}"
            )
        gallery = Gallery.from_parts([layout.read_part(storage, uri, e) for e in meta["parts"]])
        where = join(uri, meta["ann"]["file"])
        ann_index = ann.from_bytes(layout.read_blob(storage, uri, meta["ann"]), where)
        if ann_index.ntotal != gallery.size:
            raise layout.SearchIndexError(f"{where}: {ann_index.ntotal} vectors for {gallery.size} videos")
        return cls(cfg, loaded, gallery, ann_index, meta, uri)

    @staticmethod
    def preflight(uri: str, serving: Config, checkpoint: str | None = None) -> dict[str, Any]:
        """Check, without building the model, what ``open`` will need: a complete index whose files are
        intact, its config, and weights with its encoder key. Returns ``index.json``."""
        storage = Storage(serving.storage)
        meta = layout.require_index(storage, uri)
        layout.verify_index(storage, uri, meta)
        index_config(storage, uri, serving)
        identity = checkpoint_identity(checkpoint or meta["checkpoint"], storage)
        if identity["encoder_key"] != meta["encoder"]["encoder_key"]:
            raise layout.SearchIndexError(
                f"{uri}: built with encoder key {meta['encoder']['encoder_key']}, but the weights at "
                f"{identity['checkpoint']} have key {identity['encoder_key']}"
            )
        return meta

    @property
    def can_rerank(self) -> bool:
        return self.loaded.stage == "generation"

    def check_k(self, k: int | None) -> int:
        k = self.cfg.search.k if k is None else k
        if not 1 <= k <= self.cfg.search.max_k:
            raise QueryError(f"k: expected an integer in [1, {self.cfg.search.max_k}], got {k}")
        return k

    def encode(self, query: str) -> dict[str, torch.Tensor]:
        """The query's token features (batch of one)."""
        ids, mask = self.tokenizer([query], self.cfg.data.max_words, return_tensors="pt")
        return encode_query(self.loaded.model, ids, mask)

    def search(self, query: str, k: int | None = None, rerank: bool | None = None) -> dict[str, Any]:
        """Top-``k`` videos for ``query`` with stage-1 (WTI) and fused scores and per-stage timings (ms)."""
        t_all = time.perf_counter()
        q, k = clean_query(query, self.cfg.search.max_query_chars), self.check_k(k)
        want_rerank = self.cfg.search.rerank if rerank is None else rerank
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        text = self.encode(q)
        qvec = ann.query_vector(
            text["text"].numpy(),
            text["text_weight"].numpy(),
            text["text_mask"].numpy(),
            text["text_eot"].numpy(),
        )
        timings["encode_ms"] = _ms(t0)
        t0 = time.perf_counter()
        pre_M, cand_M = ann.ann_search(self.ann_index, qvec, max(self.cfg.search.prefilter_m, k))
        pre_M, cand_M = pre_M[0], cand_M[0]
        timings["prefilter_ms"] = _ms(t0)
        t0 = time.perf_counter()
        video = self.gallery.rows(cand_M)
        stage1_M = wti_scores(self.loaded.model, text, video)[0]
        timings["wti_ms"] = _ms(t0)
        fused_M, reranked = None, want_rerank and self.can_rerank and len(cand_M) > 0
        if reranked:
            t0 = time.perf_counter()
            rk = self.cfg.search.rerank_k or self.cfg.diffusion.t2v_k
            fused_M = rerank_scores(
                self.loaded.model,
                stage1_M[None],
                text["text_eot"],
                video["video"],
                video["video_mask"],
                self.cfg.diffusion,
                rk,
            )[0]
            timings["rerank_ms"] = _ms(t0)
        final = (fused_M if fused_M is not None else stage1_M).double().numpy()
        order = np.lexsort((cand_M, -final))[:k]  # score descending, then gallery row
        results = [
            self._result(i + 1, int(cand_M[j]), pre_M[j], stage1_M[j], fused_M, j)
            for i, j in enumerate(order)
        ]
        timings["total_ms"] = _ms(t_all)
        warnings = []
        if want_rerank and not self.can_rerank:
            warnings.append("re-ranking skipped: the index's weights are from stage 1 (untrained denoisers)")
        return {
            "query": q,
            "k": k,
            "rerank": bool(reranked),
            "prefilter_m": len(cand_M),
            "gallery": self.gallery.size,
            "results": results,
            "timings": timings,
            "warnings": warnings,
        }

    def _result(
        self, rank: int, row: int, pre: float, s1: torch.Tensor, fused: torch.Tensor | None, j: int
    ) -> dict[str, Any]:
        return {
            "rank": rank,
            "row": row,
            "video_id": self.gallery.video_ids[row],
            "video_uri": self.gallery.video_uris[row],
            "thumbnail_url": f"/thumb/{row}",
            "prefilter_score": round(float(pre), 6),
            "stage1_score": round(float(s1), 6),
            "fused_score": None if fused is None else round(float(fused[j]), 6),
        }

    def exhaustive_wti(self, query: str, block: int = 4096) -> np.ndarray:
        """(N,) exact WTI scores of ``query`` against the whole gallery (what the prefilter avoids)."""
        text = self.encode(clean_query(query, self.cfg.search.max_query_chars))
        out = np.empty(self.gallery.size, np.float32)
        for s in range(0, self.gallery.size, block):
            rows = np.arange(s, min(s + block, self.gallery.size))
            out[rows] = wti_scores(self.loaded.model, text, self.gallery.rows(rows), block=256)[0].numpy()
        return out

    def thumbnail(self, row: int) -> bytes:
        """The JPEG thumbnail of gallery row ``row``; ``QueryError`` when there is no such row."""
        if not 0 <= row < self.gallery.size:
            raise QueryError(f"no video at row {row} (the index has {self.gallery.size})")
        return self.gallery.thumbnail(row)

    def info(self) -> dict[str, Any]:
        """What ``/healthz`` reports about the loaded index."""
        return {
            "index": self.uri,
            "videos": self.gallery.size,
            "ann": self.meta["ann"]["kind"],
            "encoder_key": self.loaded.key,
            "stage": self.loaded.stage,
            "rerank_available": self.can_rerank,
        }
