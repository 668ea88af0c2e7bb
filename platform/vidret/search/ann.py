"""Pooled embeddings and the ANN prefilter over them (faiss, inner product on L2-normalised vectors).

Shape legend: N gallery videos, Q queries, F frames, L tokens, D width, M prefiltered candidates.

WTI scores a text against a video with weighted maxima over token-frame similarities (``docs/method.md``).
The prefilter approximates it with one vector per side: for a video the WTI-weighted mean of its normalised
frames; for a query the WTI-weighted mean of its normalised tokens plus its normalised EOT (sentence)
feature, each L2-normalised. The first term makes the inner product the WTI-weighted average of the same
token-frame similarities that WTI takes maxima of; the EOT term adds the sentence-level match, which
recovered more of the exact top 10 on the generated gallery (``benchmarks/search.py``). Only the candidates
the prefilter returns are scored exactly.

Index kinds: ``flat`` is exact (brute force); ``ivf`` (inverted file, ``nprobe`` cells visited) and ``hnsw``
(graph, ``efSearch``) are approximate and pay off from about a million vectors. ``auto`` picks ``flat`` up
to ``search.flat_max`` vectors and ``ivf`` above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from vidret.config import SearchConfig

IVF_MIN_POINTS_PER_CELL = 39  # faiss warns (and clusters poorly) below this many training points per cell


def pooled(feat_NXD: np.ndarray, weight_NX: np.ndarray, mask_NX: np.ndarray) -> np.ndarray:
    """(N, D) float32 unit vectors: the ``weight``-weighted mean of the normalised rows where ``mask`` is set.

    A row with no real frame/token (all masked) gives the zero vector, which scores 0 against everything.
    """
    feat = np.asarray(feat_NXD, np.float32)
    norm = np.linalg.norm(feat, axis=-1, keepdims=True)
    hat = feat / np.maximum(norm, 1e-12)
    w = np.asarray(weight_NX, np.float32) * (np.asarray(mask_NX) != 0)
    out = np.einsum("nx,nxd->nd", w, hat)
    out_norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(out_norm, 1e-12), dtype=np.float32)


def query_vector(
    text_QLD: np.ndarray, weight_QL: np.ndarray, mask_QL: np.ndarray, eot_QD: np.ndarray
) -> np.ndarray:
    """(Q, D) float32 unit vectors: the pooled tokens plus the normalised EOT feature, normalised."""
    eot = np.asarray(eot_QD, np.float32)
    eot = eot / np.maximum(np.linalg.norm(eot, axis=-1, keepdims=True), 1e-12)
    out = pooled(text_QLD, weight_QL, mask_QL) + eot
    return np.ascontiguousarray(
        out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12), np.float32
    )


@dataclass(frozen=True)
class AnnSpec:
    """What kind of index was built and with which parameters (recorded in ``index.json``)."""

    kind: str  # flat | ivf | hnsw
    rows: int
    dim: int
    params: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "dim": self.dim, "params": dict(self.params)}


def choose_kind(n: int, cfg: SearchConfig) -> str:
    """The index kind for ``n`` vectors: ``search.ann``, or for ``auto`` flat up to ``flat_max`` then IVF.
    IVF needs enough points to train its cells: below that a flat index is used whatever was asked."""
    kind = cfg.ann if cfg.ann != "auto" else ("flat" if n <= cfg.flat_max else "ivf")
    if kind == "ivf" and n < 2 * IVF_MIN_POINTS_PER_CELL:
        return "flat"
    return kind


def ivf_lists(n: int, cfg: SearchConfig) -> int:
    """IVF cells for ``n`` vectors: ``search.ivf_lists`` or 4 * sqrt(n), capped so every cell trains."""
    want = cfg.ivf_lists or int(4 * math.sqrt(n))
    return max(1, min(want, n // IVF_MIN_POINTS_PER_CELL))


def build_ann(vectors_ND: np.ndarray, cfg: SearchConfig, seed: int = 0) -> tuple[faiss.Index, AnnSpec]:
    """An inner-product index over unit vectors (row i gets id i). IVF trains its k-means with ``seed``."""
    x = np.ascontiguousarray(vectors_ND, dtype=np.float32)
    n, d = x.shape
    kind = choose_kind(n, cfg)
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
        params: dict[str, int] = {}
    elif kind == "ivf":
        nlist = ivf_lists(n, cfg)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        params = {"nlist": nlist}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        params = {"m": cfg.hnsw_m}
    else:
        raise ValueError(f"search.ann: expected auto, flat, ivf or hnsw, got {kind!r}")
    if n:
        index.add(x)
    return index, AnnSpec(kind=kind, rows=n, dim=d, params=params)


def set_search_params(index: faiss.Index, cfg: SearchConfig) -> None:
    """Apply the query-time knobs of ``cfg`` (``nprobe`` for IVF, ``ef`` for HNSW; nothing for flat)."""
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = min(cfg.nprobe, index.nlist)
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.ef


def ann_search(index: faiss.Index, query_QD: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``m`` rows per query, best first: (scores_QM float32, ids_QM int64). Missing slots (an index with
    fewer than ``m`` reachable rows) are dropped from the end, so every returned id is valid."""
    q = np.ascontiguousarray(query_QD, dtype=np.float32)
    m = max(0, min(m, index.ntotal))
    if m == 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    scores, ids = index.search(q, m)
    valid = (ids >= 0).all(axis=0)
    return scores[:, valid], ids[:, valid].astype(np.int64)


def to_bytes(index: faiss.Index) -> bytes:
    """The index serialised by faiss (what ``ann.faiss`` holds)."""
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes, where: str) -> faiss.Index:
    """An index read back from ``to_bytes``; ``ValueError`` naming ``where`` when the bytes are not one."""
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as err:
        raise ValueError(f"{where}: not a readable faiss index ({str(err).splitlines()[0][:200]})") from None
