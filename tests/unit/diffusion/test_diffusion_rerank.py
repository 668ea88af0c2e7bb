"""Candidate selection and fusion equal a straightforward loop; re-ranking is chunk- and batch-invariant."""

import pytest
import torch

from vidret.config import DiffusionConfig
from vidret.diffusion.denoiser import T2VDenoiser, V2TDenoiser
from vidret.diffusion.process import GaussianDiffusion
from vidret.diffusion.rerank import (
    fuse,
    hard_negatives,
    rerank_t2v,
    rerank_v2t,
    t2v_candidate_scores,
    topk_candidates,
)

torch.set_num_threads(1)


def _loop_hard_negatives(sim: torch.Tensor, pos: torch.Tensor, num: int, offset: int = 0) -> list[list[int]]:
    out = []
    for b in range(sim.shape[0]):
        own = b + offset
        negs = [j for j in range(sim.shape[1]) if j != own and not pos[b, j]]
        negs.sort(key=lambda j: -sim[b, j].item())
        fillers = [j for j in range(sim.shape[1]) if j != own and pos[b, j]]
        fillers.sort(key=lambda j: -sim[b, j].item())
        out.append([own] + (negs + fillers)[:num])
    return out


def _video_ids(b: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, b // 2, (b,), generator=g)  # guarantees duplicate positives


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_negatives_equal_loop_with_duplicates(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b = 24
    sim = torch.randn(b, b, generator=g)
    ids = _video_ids(b, g)
    pos = ids[:, None] == ids[None, :]
    max_other = int(pos.sum(1).max()) - 1
    num = b - 1 - max_other
    idx = hard_negatives(sim, pos, num)
    assert idx.shape == (b, num + 1)
    assert idx.tolist() == _loop_hard_negatives(sim, pos, num)
    assert not pos.gather(1, idx[:, 1:]).any()  # no positive ever used as a negative
    with pytest.raises(ValueError, match=r"diffusion.num = .*negatives_fill=error"):
        hard_negatives(sim, pos, num + 1, fill="error")
    # faithful fill: the batch is too small, other positives complete the list (never the own item)
    full = hard_negatives(sim, pos, b - 1)
    assert full.tolist() == _loop_hard_negatives(sim, pos, b - 1)
    assert all(sorted(row) == list(range(b)) for row in full.tolist())
    assert pos.gather(1, full[:, 1:]).any()


def test_hard_negatives_diagonal_only_and_shard_rows() -> None:
    g = torch.Generator().manual_seed(5)
    sim = torch.randn(8, 8, generator=g)
    eye = torch.eye(8, dtype=torch.bool)
    assert hard_negatives(sim, eye, 7).tolist() == _loop_hard_negatives(sim, eye, 7)
    with pytest.raises(ValueError, match="batch size 8 - 1"):
        hard_negatives(sim, eye, 8)
    # local rows 4..7 of a gathered batch of 8, with no explicit diagonal in the mask
    rows = sim[4:]
    no_pos = torch.zeros(4, 8, dtype=torch.bool)
    assert hard_negatives(rows, no_pos, 3, row_offset=4).tolist() == _loop_hard_negatives(rows, no_pos, 3, 4)


def test_topk_equal_loop() -> None:
    g = torch.Generator().manual_seed(3)
    sim = torch.randn(10, 40, generator=g)
    cand, scores = topk_candidates(sim, 6)
    for q in range(10):
        ref = sorted(range(40), key=lambda j: -sim[q, j].item())[:6]
        assert cand[q].tolist() == ref
        assert scores[q].tolist() == [sim[q, j].item() for j in ref]
    with pytest.raises(ValueError, match="gallery size"):
        topk_candidates(sim, 41)


def test_fuse_adds_exactly_the_softmax_mass() -> None:
    g = torch.Generator().manual_seed(4)
    sim = torch.randn(7, 30, generator=g, dtype=torch.float64)
    before = sim.clone()
    cand, _ = topk_candidates(sim, 5)
    x0 = torch.rand(7, 5, generator=g, dtype=torch.float64) * 2 - 1
    out = fuse(sim, cand, x0, alpha=0.7, temp=3.0)
    assert torch.equal(sim, before)  # input untouched
    # the loop the upstream uses: per-element scalar adds
    ref = sim.clone()
    for q in range(7):
        w = torch.exp(3.0 * x0[q]) / torch.exp(3.0 * x0[q]).sum()
        for k in range(5):
            ref[q, cand[q, k]] += 0.7 * w[k]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    delta = out - sim
    touched = torch.zeros_like(delta, dtype=torch.bool).scatter_(1, cand, True)
    assert (delta[~touched] == 0).all()
    torch.testing.assert_close(delta.sum(1), torch.full((7,), 0.7, dtype=torch.float64))


def _features(q: int, n: int, f: int, d: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, f, generator=g) > 0.3).float()
    mask[:, 0] = 1
    return {
        "sim": torch.randn(q, n, generator=g),
        "text": torch.randn(q, 16, generator=g),
        "video": torch.randn(n, f, 16, generator=g),
        "mask": mask,
    }


def test_rerank_t2v_invariant_to_chunk_and_subset() -> None:
    torch.manual_seed(0)
    den, diff = T2VDenoiser(16), GaussianDiffusion.from_config(DiffusionConfig(steps=10))
    cfg = DiffusionConfig(steps=10, t2v_k=4, t2v_alpha=1.0)
    x = _features(9, 12, 3, 16, 0)
    whole = rerank_t2v(x["sim"], x["text"], x["video"], x["mask"], den, diff, cfg, chunk=100)
    chunked = rerank_t2v(x["sim"], x["text"], x["video"], x["mask"], den, diff, cfg, chunk=2)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    # a subset of queries with their global ids reproduces those rows (a worker's shard)
    rows = torch.tensor([8, 2, 5])
    part = rerank_t2v(
        x["sim"][rows], x["text"][rows], x["video"], x["mask"], den, diff, cfg, query_ids_Q=rows
    )
    torch.testing.assert_close(part, whole[rows], rtol=1e-5, atol=1e-6)
    # only the top-k cells change, each row gains exactly alpha
    delta = whole - x["sim"]
    cand, _ = topk_candidates(x["sim"], 4)
    assert ((delta != 0).sum(1) <= 4).all() and (delta.scatter(1, cand, 0) == 0).all()
    torch.testing.assert_close(delta.sum(1), torch.ones(9), rtol=1e-5, atol=1e-5)


def test_rerank_scores_match_direct_ddim_call() -> None:
    torch.manual_seed(1)
    den, diff = T2VDenoiser(16), GaussianDiffusion.from_config(DiffusionConfig(steps=5))
    x = _features(4, 10, 3, 16, 1)
    cand, x0 = t2v_candidate_scores(x["sim"], x["text"], x["video"], x["mask"], den, diff, 3, seed=11)
    from vidret.diffusion.process import seeded_noise

    cond = {"text_BD": x["text"], "video_BKFD": x["video"][cand], "video_mask_BKF": x["mask"][cand]}
    ref = diff.ddim_sample(den, (4, 3), cond, noise=seeded_noise(torch.arange(4), 3, 11))
    torch.testing.assert_close(x0, ref)


def test_rerank_v2t_and_k_larger_than_gallery_warns() -> None:
    torch.manual_seed(2)
    den, diff = V2TDenoiser(16), GaussianDiffusion.from_config(DiffusionConfig(steps=5))
    g = torch.Generator().manual_seed(2)
    sim = torch.randn(6, 5, generator=g)  # 6 videos x 5 texts
    video, mask, text = torch.randn(6, 3, 16, generator=g), torch.ones(6, 3), torch.randn(5, 16, generator=g)
    cfg = DiffusionConfig(steps=5, v2t_k=32, v2t_alpha=0.5)
    with pytest.warns(UserWarning, match="diffusion.v2t_k = 32"):
        out = rerank_v2t(sim, video, mask, text, den, diff, cfg)
    torch.testing.assert_close((out - sim).sum(1), torch.full((6,), 0.5), rtol=1e-5, atol=1e-5)
    again = rerank_v2t(sim, video, mask, text, den, diff, DiffusionConfig(steps=5, v2t_k=5, v2t_alpha=0.5))
    torch.testing.assert_close(again, out)
