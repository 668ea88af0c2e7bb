"""Candidate selection and fusion equal a straightforward loop; re-ranking is chunk- and batch-invariant."""

import pytest
import torch

from vidret.config import DiffusionConfig
from vidret.diffusion.denoiser import T2VDenoiser, V2TDenoiser
from vidret.diffusion.process import GaussianDiffusion, seeded_noise
from vidret.diffusion.rerank import (
    Conditioning,
    candidate_scores,
    fuse,
    hard_negatives,
    rerank,
    t2v_encode_candidates,
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
        out.append([own, *(negs + fillers)[:num]])
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


def _cond(x: dict[str, torch.Tensor]) -> Conditioning:
    return Conditioning(x["text"], x["video"], x["mask"])


def test_rerank_t2v_invariant_to_chunk_and_subset() -> None:
    torch.manual_seed(0)
    den, diff = T2VDenoiser(16), GaussianDiffusion.from_config(DiffusionConfig(steps=10))
    cfg = DiffusionConfig(steps=10, t2v_k=4, t2v_alpha=1.0)
    x = _features(9, 12, 3, 16, 0)
    whole = rerank("t2v", x["sim"], _cond(x), den, diff, cfg, chunk=100)
    chunked = rerank("t2v", x["sim"], _cond(x), den, diff, cfg, chunk=2)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    # a subset of queries with their global ids reproduces those rows (a worker's shard)
    rows = torch.tensor([8, 2, 5])
    sub = Conditioning(x["text"][rows], x["video"], x["mask"])
    part = rerank("t2v", x["sim"][rows], sub, den, diff, cfg, query_ids_Q=rows)
    torch.testing.assert_close(part, whole[rows], rtol=1e-5, atol=1e-6)
    # only the top-k cells change, each row gains exactly alpha
    delta = whole - x["sim"]
    cand, _ = topk_candidates(x["sim"], 4)
    assert ((delta != 0).sum(1) <= 4).all()
    assert (delta.scatter(1, cand, 0) == 0).all()
    torch.testing.assert_close(delta.sum(1), torch.ones(9), rtol=1e-5, atol=1e-5)


def _scaled(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # away from the near-constant 0.02 init, so the comparison is sensitive
        for p in model.parameters():
            p.mul_(10.0)
    return model


@pytest.mark.parametrize("frame_softmax", ["mask_after", "renormalise"])
def test_rerank_scores_match_ddim_over_the_reference_forward(frame_softmax: str) -> None:
    """Encode + prepare once per chunk + ``step`` per DDIM step == the module forward at every step."""
    torch.manual_seed(1)
    diff = GaussianDiffusion.from_config(DiffusionConfig(steps=5))
    t2v = _scaled(T2VDenoiser(16, frame_softmax=frame_softmax))  # type: ignore[arg-type]
    v2t = _scaled(V2TDenoiser(16, frame_softmax=frame_softmax))  # type: ignore[arg-type]
    x = _features(4, 10, 3, 16, 1)
    cfg = DiffusionConfig(steps=5, t2v_k=3, v2t_k=3, noise_seed=11)
    cand, x0 = candidate_scores("t2v", x["sim"], _cond(x), t2v, diff, cfg, chunk=3)
    cond = {"text_BD": x["text"], "video_BKFD": x["video"][cand], "video_mask_BKF": x["mask"][cand]}
    noise = seeded_noise(torch.arange(4), 3, 11)
    torch.testing.assert_close(x0, diff.ddim_sample(t2v, (4, 3), cond, noise=noise), rtol=1e-5, atol=1e-5)
    ref = diff.ddim_sample(t2v, (4, 3), cond, noise=noise, clip_denoised=False)
    raw = DiffusionConfig(steps=5, t2v_k=3, noise_seed=11, clip_denoised=False)
    cand2, x0_raw = candidate_scores("t2v", x["sim"], _cond(x), t2v, diff, raw, chunk=3)
    assert torch.equal(cand2, cand)
    torch.testing.assert_close(x0_raw, ref, rtol=1e-5, atol=1e-5)
    assert ref.std() > 0.1  # not a constant prediction
    # video-to-text: 10 videos x 4 texts (the gallery), candidate texts per video
    sim_v = x["sim"].T
    v_cfg = DiffusionConfig(steps=5, v2t_k=3, noise_seed=5, clip_denoised=False)
    cand, x0 = candidate_scores("v2t", sim_v, _cond(x), v2t, diff, v_cfg, chunk=4)
    with pytest.raises(TypeError, match="V2TDenoiser"):
        candidate_scores("v2t", sim_v, _cond(x), t2v, diff, v_cfg)
    cond = {"text_BKD": x["text"][cand], "video_BFD": x["video"], "video_mask_BF": x["mask"]}
    ref = diff.ddim_sample(
        v2t, (10, 3), cond, noise=seeded_noise(torch.arange(10), 3, 5), clip_denoised=False
    )
    torch.testing.assert_close(x0, ref, rtol=1e-5, atol=1e-5)
    assert ref.std() > 0.1


def test_rerank_v2t_and_k_larger_than_gallery_warns() -> None:
    torch.manual_seed(2)
    den, diff = V2TDenoiser(16), GaussianDiffusion.from_config(DiffusionConfig(steps=5))
    g = torch.Generator().manual_seed(2)
    sim = torch.randn(6, 5, generator=g)  # 6 videos x 5 texts
    video, mask, text = torch.randn(6, 3, 16, generator=g), torch.ones(6, 3), torch.randn(5, 16, generator=g)
    cfg = DiffusionConfig(steps=5, v2t_k=32, v2t_alpha=0.5)
    with pytest.warns(UserWarning, match="diffusion.v2t_k = 32"):
        out = rerank("v2t", sim, Conditioning(text, video, mask), den, diff, cfg)
    torch.testing.assert_close((out - sim).sum(1), torch.full((6,), 0.5), rtol=1e-5, atol=1e-5)
    cfg5 = DiffusionConfig(steps=5, v2t_k=5, v2t_alpha=0.5)
    again = rerank("v2t", sim, Conditioning(text, video, mask), den, diff, cfg5)
    torch.testing.assert_close(again, out)


@pytest.mark.parametrize(
    ("frame_softmax", "attn_temp", "dtype"),
    [
        ("mask_after", 1.0, torch.float32),
        ("renormalise", 0.3, torch.float32),
        ("mask_after", 2.0, torch.float64),
    ],
)
def test_t2v_encode_sparse_equals_gathered_encode(
    frame_softmax: str, attn_temp: float, dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(7)
    q, n, f, d, k = 6, 9, 4, 16, 5
    den = T2VDenoiser(d, attn_temp=attn_temp, frame_softmax=frame_softmax)  # type: ignore[arg-type]
    text, video = torch.randn(q, d, generator=g, dtype=dtype), torch.randn(n, f, d, generator=g, dtype=dtype)
    mask = (torch.rand(n, f, generator=g) > 0.4).to(dtype)
    mask[:, 0] = 1
    cand = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(q)])  # distinct, unsorted
    ref = den.encode(text, video[cand], mask[cand])

    def no_gather(*args: object) -> None:
        raise AssertionError("the sparse path must not fall back to the gathered encode")

    den.encode = no_gather  # type: ignore[method-assign]
    for path in ("auto", "sparse", "dense"):
        out = t2v_encode_candidates(den, text, video, mask, cand, path=path)  # type: ignore[arg-type]
        assert out["cand_BKD"].shape == (q, k, d)
        assert out["cand_BKD"].dtype == dtype
        torch.testing.assert_close(out["cand_BKD"], ref["cand_BKD"])
        torch.testing.assert_close(out["query_BXD"], ref["query_BXD"])
    del den.encode
    # every gallery item a candidate (K = N) and a single query
    full = torch.argsort(torch.rand(1, n, generator=g), dim=1)
    torch.testing.assert_close(
        t2v_encode_candidates(den, text[:1], video, mask, full)["cand_BKD"],
        den.encode(text[:1], video[full], mask[full])["cand_BKD"],
    )
    with pytest.raises(ValueError, match="expected path 'auto', 'sparse', 'dense' or 'gather'"):
        t2v_encode_candidates(den, text, video, mask, cand, path="bogus")  # type: ignore[arg-type]


def test_t2v_encode_falls_back_to_an_overridden_encode() -> None:
    class Doubled(T2VDenoiser):
        def encode(self, text_BD, video_BKFD, video_mask_BKF):  # type: ignore[no-untyped-def]
            out = super().encode(text_BD, video_BKFD, video_mask_BKF)
            return {"query_BXD": out["query_BXD"], "cand_BKD": 2 * out["cand_BKD"]}

    x = _features(3, 8, 3, 16, 8)
    cand, _ = topk_candidates(x["sim"], 4)
    den = Doubled(16)
    plain = T2VDenoiser(16).encode(x["text"], x["video"][cand], x["mask"][cand])["cand_BKD"]
    torch.testing.assert_close(
        t2v_encode_candidates(den, x["text"], x["video"], x["mask"], cand)["cand_BKD"], 2 * plain
    )


def test_rerank_t2v_sparse_chunked_equals_gathered_unchunked() -> None:
    torch.manual_seed(3)
    den, diff = T2VDenoiser(16), GaussianDiffusion.from_config(DiffusionConfig(steps=8))
    cfg = DiffusionConfig(steps=8, t2v_k=5, t2v_alpha=1.0)
    x = _features(11, 14, 4, 16, 3)
    ref = rerank("t2v", x["sim"], _cond(x), den, diff, cfg, chunk=100, encode_path="gather")
    for chunk, path in [(1, "sparse"), (4, "sparse"), (100, "sparse"), (4, "dense"), (100, "auto")]:
        out = rerank("t2v", x["sim"], _cond(x), den, diff, cfg, chunk=chunk, encode_path=path)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref, x["sim"])
