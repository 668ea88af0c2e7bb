"""Pooled vectors and the faiss prefilter: exactness of flat, recall of IVF/HNSW, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from vidret.config import SearchConfig
from vidret.search import ann


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(4, n // 50), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pooled_is_the_weighted_mean_of_normalised_real_rows() -> None:
    feat = np.array([[[3.0, 0.0], [0.0, 5.0], [9.0, 9.0]]], np.float32)
    weight = np.array([[0.25, 0.75, 0.9]], np.float32)
    mask = np.array([[1, 1, 0]])  # the third row is padding: its weight must not count
    out = ann.pooled(feat, weight, mask)
    want = np.array([0.25, 0.75]) / np.linalg.norm([0.25, 0.75])
    np.testing.assert_allclose(out[0], want, rtol=1e-6)
    assert ann.pooled(feat, weight, np.zeros((1, 3))).tolist() == [[0.0, 0.0]]  # nothing real: zero vector


@pytest.mark.parametrize(("n", "cfg", "kind"), [
    (100, SearchConfig(), "flat"),
    (100, SearchConfig(ann="ivf"), "ivf"),
    (50, SearchConfig(ann="ivf"), "flat"),  # too few points to train IVF cells
    (60_000, SearchConfig(), "ivf"),
    (10, SearchConfig(ann="hnsw"), "hnsw"),
])  # fmt: skip
def test_choose_kind(n: int, cfg: SearchConfig, kind: str) -> None:
    assert ann.choose_kind(n, cfg) == kind


def test_flat_is_exact_and_ties_and_small_indexes_are_handled() -> None:
    x = _clustered(500, 16)
    index, spec = ann.build_ann(x, SearchConfig(ann="flat"))
    assert spec.to_dict() == {"kind": "flat", "rows": 500, "dim": 16, "params": {}}
    q = x[:3]
    scores, ids = ann.ann_search(index, q, 10)
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert (ids == exact).all()
    assert ids[:, 0].tolist() == [0, 1, 2]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    _, few = ann.ann_search(index, q, 10_000)  # m above the gallery: every row once
    assert few.shape == (3, 500)
    assert all(sorted(r) == list(range(500)) for r in few.tolist())


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall_the_exact_top_100(kind: str) -> None:
    x = _clustered(8000, 32, seed=1)
    q = _clustered(50, 32, seed=2)
    cfg = SearchConfig(ann=kind, nprobe=16, ef=400)
    index, spec = ann.build_ann(x, cfg, seed=3)
    ann.set_search_params(index, cfg)
    _, got = ann.ann_search(index, q, 100)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :100]
    recall = np.mean([len(set(g) & set(e)) / 100 for g, e in zip(got, exact, strict=True)])
    assert spec.kind == kind
    assert recall >= 0.9, recall


def test_serialisation_round_trip_and_corrupt_bytes() -> None:
    x = _clustered(400, 8)
    index, _ = ann.build_ann(x, SearchConfig(ann="ivf"), seed=0)
    back = ann.from_bytes(ann.to_bytes(index), "mem://ann")
    ann.set_search_params(back, SearchConfig(nprobe=4))
    assert back.ntotal == 400
    assert ann.ann_search(back, x[:2], 5)[1].shape == (2, 5)
    with pytest.raises(ValueError, match=r"mem://bad: not a readable faiss index"):
        ann.from_bytes(b"definitely not faiss", "mem://bad")


def test_build_is_deterministic() -> None:
    x = _clustered(3000, 16)
    a, _ = ann.build_ann(x, SearchConfig(ann="ivf"), seed=5)
    b, _ = ann.build_ann(x, SearchConfig(ann="ivf"), seed=5)
    assert ann.to_bytes(a) == ann.to_bytes(b)


def test_query_vector_adds_the_sentence_feature() -> None:
    tokens = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    weight, mask = np.array([[1.0, 0.0]], np.float32), np.array([[1, 0]])
    out = ann.query_vector(tokens, weight, mask, np.array([[0.0, 5.0]], np.float32))
    np.testing.assert_allclose(out, [[2**-0.5, 2**-0.5]], rtol=1e-6)
