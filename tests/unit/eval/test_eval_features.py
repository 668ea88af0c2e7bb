"""``evaluate_features`` on feature sets whose similarity matrix is known by construction.

With one token, one frame and unit weights, WTI reduces to the cosine of the two features. Captions are
``[S_t, sqrt(1 - |S_t|^2), 0, ...]`` and videos the basis vectors ``e_v``, so ``sim[t, v] = S[t, v]`` for a
hand-written S, and every rank below can be checked on paper.

S (5 captions x 3 videos; captions 0, 1 describe video 0, captions 2, 3 video 1, caption 4 video 2)::

            v0    v1    v2      rank of the own video (t2v)
    cap0  0.90  0.10  0.20      0
    cap1  0.30  0.50  0.40      2
    cap2  0.20  0.60  0.70      1
    cap3  0.10  0.80  0.00      0
    cap4  0.50  0.30  0.45      1

v2t scores a video against each caption group by its best caption: (v, g) = max_{t in g} S[t, v]::

            g0    g1    g2      rank of the own group
    v0    0.90  0.20  0.50      0
    v1    0.50  0.80  0.30      0
    v2    0.40  0.70  0.45      1
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from vidret.config import DiffusionConfig, EvalConfig, ModelConfig
from vidret.features.encode import encode_batches
from vidret.features.scoring import evaluate_features, similarity
from vidret.features.store import load_split, write_split
from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures
from vidret.model.retrieval import RetrievalModel
from vidret.storage import Storage

S_TV = np.array(
    [
        [0.90, 0.10, 0.20],
        [0.30, 0.50, 0.40],
        [0.20, 0.60, 0.70],
        [0.10, 0.80, 0.00],
        [0.50, 0.30, 0.45],
    ]
)
TEXT_TO_VIDEO = [0, 0, 1, 1, 2]
DIM = 64  # the debug preset's width, so the denoisers accept the features too
DIFFUSION = DiffusionConfig(steps=5, t2v_k=2, v2t_k=2)


@pytest.fixture(scope="module")
def model() -> RetrievalModel:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return RetrievalModel.build(ModelConfig(preset="debug", temporal_layers=1), DIFFUSION).eval()


def known_features(sim_TV: np.ndarray, text_to_video: list[int]) -> FeatureSet:
    """A FeatureSet whose WTI similarity is ``sim_TV`` (rows of norm < 1) and whose EOT features are
    random."""
    t, v = sim_TV.shape
    text = np.zeros((t, 1, DIM))
    text[:, 0, :v] = sim_TV
    text[:, 0, v] = np.sqrt(1.0 - (sim_TV**2).sum(axis=1))
    video = np.zeros((v, 1, DIM))
    video[np.arange(v), 0, np.arange(v)] = 1.0
    g = torch.Generator().manual_seed(0)
    return FeatureSet(
        text=TextFeatures(
            tokens=torch.from_numpy(text).float(),
            mask=torch.ones(t, 1, dtype=torch.int64),
            weight=torch.ones(t, 1),
            eot=torch.randn(t, DIM, generator=g),
        ),
        video=VideoFeatures(
            frames=torch.from_numpy(video).float(),
            mask=torch.ones(v, 1, dtype=torch.int64),
            weight=torch.ones(v, 1),
        ),
        text_to_video_T=torch.tensor(text_to_video, dtype=torch.int64),
        video_ids=[f"video{i}" for i in range(v)],
        captions=[f"caption {i}" for i in range(t)],
    )


def test_features_give_the_hand_written_similarity(model: RetrievalModel) -> None:
    fs = known_features(S_TV, TEXT_TO_VIDEO)
    assert not fs.single_caption
    sim = similarity(model, fs, block=2)
    np.testing.assert_allclose(sim.numpy(), S_TV, atol=1e-6)


def test_multi_caption_stage1_goes_through_the_grouped_metrics(model: RetrievalModel) -> None:
    res = evaluate_features(model, known_features(S_TV, TEXT_TO_VIDEO), EvalConfig(rerank=False))
    assert set(res.metrics) == {"stage1"}
    np.testing.assert_array_equal(res.ranks["stage1"]["t2v"], [0, 2, 1, 0, 1])
    np.testing.assert_array_equal(res.ranks["stage1"]["v2t"], [0, 0, 1])
    t2v, v2t = res.metrics["stage1"]["t2v"], res.metrics["stage1"]["v2t"]
    # t2v: 5 captions, ranks 0 2 1 0 1; the upstream multi-caption MdR is the lower median (1) + 1
    assert t2v["n"] == 5
    assert t2v["R1"] == pytest.approx(40.0)
    assert t2v["R5"] == 100.0
    assert t2v["MdR"] == 2.0
    assert t2v["MnR"] == pytest.approx(1.8)
    # v2t: 3 videos, ranks 0 0 1
    assert v2t["n"] == 3
    assert v2t["R1"] == pytest.approx(200 / 3)
    assert v2t["MdR"] == 1.0
    assert v2t["MnR"] == pytest.approx(4 / 3)


def test_upstream_off_by_one_grouping_shifts_captions(model: RetrievalModel) -> None:
    """Groups become [0, 1), [1, 3), [3, 4): cap1 is labelled video 1, cap3 video 2, cap4 is dropped."""
    ecfg = EvalConfig(rerank=False, multi_caption_grouping="upstream_off_by_one")
    res = evaluate_features(model, known_features(S_TV, TEXT_TO_VIDEO), ecfg)
    # t2v: cap0->v0 rank 0, cap1->v1 (0.5 is its best) 0, cap2->v1 (0.6 < 0.7) 1, cap3->v2 (0.0) 2
    np.testing.assert_array_equal(res.ranks["stage1"]["t2v"], [0, 0, 1, 2])
    # v2t: v0 [0.9, 0.3, 0.1] -> 0; v1 [0.1, 0.6, 0.8] -> 1; v2 [0.2, 0.7, 0.0] -> 2
    np.testing.assert_array_equal(res.ranks["stage1"]["v2t"], [0, 1, 2])
    assert res.metrics["stage1"]["t2v"]["n"] == 4
    assert res.metrics["stage1"]["v2t"]["R1"] == pytest.approx(100 / 3)


def test_rerank_rows_use_each_directions_own_matrix(model: RetrievalModel) -> None:
    """The v2t metrics come from the separately re-ranked (V, T) matrix, not the t2v matrix transposed."""
    t2v_new = S_TV.copy()
    t2v_new[1, 0] = 0.95  # cap1 now finds video 0 first: t2v ranks 0 0 1 0 1
    v2t_new = S_TV.T.copy()
    v2t_new[2, 4] = 0.99  # video 2 now scores its own caption best: v2t ranks 0 0 0
    seen = []

    def fake_rerank(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(sim.clone())
        return torch.from_numpy(t2v_new), torch.from_numpy(v2t_new)

    res = evaluate_features(
        model, known_features(S_TV, TEXT_TO_VIDEO), EvalConfig(), rerank=True, rerank_fn=fake_rerank
    )
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0].numpy(), S_TV, atol=1e-6)
    np.testing.assert_array_equal(res.ranks["rerank"]["t2v"], [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(res.ranks["rerank"]["v2t"], [0, 0, 0])
    assert res.metrics["rerank"]["t2v"]["R1"] == pytest.approx(60.0)
    assert res.metrics["rerank"]["v2t"]["R1"] == pytest.approx(100.0)
    # the stage-1 row is untouched by the re-ranking
    np.testing.assert_array_equal(res.ranks["stage1"]["v2t"], [0, 0, 1])


def test_in_process_rerank_of_a_multi_caption_set(model: RetrievalModel) -> None:
    """Diffusion re-ranking with T != V: each row gains alpha = 1 in total, only on its top-k columns."""
    fs = known_features(S_TV, TEXT_TO_VIDEO)
    res = evaluate_features(model, fs, EvalConfig(), DIFFUSION, rerank=True)
    t2v, v2t = (m.double().numpy() for m in res.sims["rerank"])
    assert t2v.shape == (5, 3)
    assert v2t.shape == (3, 5)
    for new, base, k in ((t2v, S_TV, DIFFUSION.t2v_k), (v2t, S_TV.T, DIFFUSION.v2t_k)):
        boost = new - base
        np.testing.assert_allclose(boost.sum(axis=1), 1.0, atol=1e-5)  # softmax over k candidates, alpha 1
        top = np.argsort(-base, axis=1, kind="stable")[:, :k]
        outside = boost.copy()
        np.put_along_axis(outside, top, 0.0, axis=1)
        np.testing.assert_allclose(outside, 0.0, atol=1e-6)
        assert (np.take_along_axis(boost, top, axis=1) > 0).all()
    assert res.metrics["rerank"]["t2v"]["n"] == 5
    assert res.metrics["rerank"]["v2t"]["n"] == 3


def test_cached_multi_caption_split_loads_in_caption_order(model: RetrievalModel, tmp_path: Path) -> None:
    """Shards written out of order come back sorted (captions by row, videos by index) with their labels."""
    fs = known_features(S_TV, TEXT_TO_VIDEO)
    text = {k: v.numpy() for k, v in fs.text.as_model().items()}
    video = {k: v.numpy() for k, v in fs.video.as_model().items()}
    t_perm, v_perm = np.array([3, 0, 4, 1, 2]), np.array([2, 0, 1])
    tv = np.array(TEXT_TO_VIDEO)
    text_rows = {
        **{k: v[t_perm] for k, v in text.items()},
        "video_index": tv[t_perm],
        "caption_index": np.zeros(5, np.int64),
        "caption_row": t_perm,
    }
    video_rows = {**{k: v[v_perm] for k, v in video.items()}, "video_index": v_perm, "ok": np.ones(3, bool)}
    storage = Storage()
    uri = str(tmp_path / "cache" / "test")
    write_split(
        storage,
        uri,
        [{k: v[:2] for k, v in text_rows.items()}, {k: v[2:] for k, v in text_rows.items()}],
        [video_rows],
        {"video_ids": fs.video_ids, "captions": fs.captions},
    )
    loaded = load_split(storage, uri)
    assert loaded.text_to_video_T.tolist() == TEXT_TO_VIDEO
    assert loaded.video_ids == fs.video_ids
    assert loaded.captions == fs.captions
    for got, want in ((loaded.text, fs.text), (loaded.video, fs.video)):
        for f in fields(want):
            assert torch.equal(getattr(got, f.name), getattr(want, f.name)), f.name
    res = evaluate_features(model, loaded, EvalConfig(rerank=False))
    np.testing.assert_array_equal(res.ranks["stage1"]["t2v"], [0, 2, 1, 0, 1])
    np.testing.assert_array_equal(res.ranks["stage1"]["v2t"], [0, 0, 1])


def test_caption_map_of_the_wrong_length_is_rejected() -> None:
    fs = known_features(S_TV, TEXT_TO_VIDEO)
    with pytest.raises(ValueError, match=r"text_to_video_T has shape \(4,\), expected \(5,\)"):
        FeatureSet(text=fs.text, video=fs.video, text_to_video_T=torch.tensor([0, 0, 1, 2]))


def test_encode_batches_reads_read_only_arrays_without_warning(model: RetrievalModel) -> None:
    """Ray Data hands batch inference read-only views of the object store: same features, no torch warning,
    and the caller's buffers are not aliased by the returned tensors."""
    import warnings

    rng = np.random.default_rng(0)
    ids = np.zeros((2, 8), np.int64)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, rng.integers(1, 49000, (2, 3)), 49407  # SOT, words, EOT
    batch = {
        "text_ids": ids,
        "text_mask": (ids > 0).astype(np.int64),
        "video": rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8),
        "video_mask": np.array([[1, 1, 1], [1, 1, 0]], np.int64),
        "video_index": np.array([4, 7], np.int64),
    }
    frozen = {}
    for k, v in batch.items():
        frozen[k] = v.copy()
        frozen[k].flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the non-writable-array UserWarning would fail here
        got = encode_batches(model, [frozen])
    want = encode_batches(model, [batch])
    got_arrays, want_arrays = got.arrays(), want.arrays()
    assert set(got_arrays) == set(want_arrays)
    assert "video_index" in got.rows
    for k, v in want_arrays.items():
        np.testing.assert_array_equal(got_arrays[k], v, err_msg=k)
    got.rows["video_index"][0] = -1
    assert frozen["video_index"][0] == 4
