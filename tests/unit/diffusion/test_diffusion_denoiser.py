"""Denoisers: shapes, the frame-softmax options, permutation equivariance, the timestep table."""

import math

import pytest
import torch

from vidret.config import DiffusionConfig
from vidret.diffusion.denoiser import (
    CandidateDenoiser,
    T2VDenoiser,
    TimestepEmbedder,
    V2TDenoiser,
    sinusoidal_table,
)

torch.set_num_threads(1)
B, K, F, D = 3, 5, 4, 16


def _t2v_inputs(g: torch.Generator) -> dict[str, torch.Tensor]:
    mask = torch.ones(B, K, F)
    mask[:, :, -1] = 0
    mask[0, 2, 1:] = 0
    return {
        "x_BK": torch.randn(B, K, generator=g),
        "t_B": torch.tensor([0, 7, 49]),
        "text_BD": torch.randn(B, D, generator=g),
        "video_BKFD": torch.randn(B, K, F, D, generator=g),
        "video_mask_BKF": mask,
    }


def _v2t_inputs(g: torch.Generator) -> dict[str, torch.Tensor]:
    mask = torch.ones(B, F)
    mask[1, 2:] = 0
    return {
        "x_BK": torch.randn(B, K, generator=g),
        "t_B": torch.tensor([3, 0, 20]),
        "text_BKD": torch.randn(B, K, D, generator=g),
        "video_BFD": torch.randn(B, F, D, generator=g),
        "video_mask_BF": mask,
    }


def _scaled(model: CandidateDenoiser) -> CandidateDenoiser:
    # the 0.02 init makes outputs almost constant; larger weights make the tests sensitive
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20.0)
    return model


@pytest.mark.parametrize("mode", ["mask_after", "renormalise"])
def test_t2v_permutation_equivariant(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = _scaled(T2VDenoiser(D, attn_temp=0.5, frame_softmax=mode))
    inp = _t2v_inputs(g)
    out = model(**inp)
    assert out.shape == (B, K)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = dict(
        inp,
        x_BK=inp["x_BK"][:, perm],
        video_BKFD=inp["video_BKFD"][:, perm],
        video_mask_BKF=inp["video_mask_BKF"][:, perm],
    )
    torch.testing.assert_close(model(**permuted), out[:, perm])
    # and the output does depend on candidate content and on x_t
    assert not torch.allclose(model(**dict(inp, x_BK=inp["x_BK"] * 3)), out)


@pytest.mark.parametrize("mode", ["mask_after", "renormalise"])
def test_v2t_permutation_equivariant(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = _scaled(V2TDenoiser(D, frame_softmax=mode))
    inp = _v2t_inputs(g)
    out = model(**inp)
    assert out.shape == (B, K)
    perm = torch.tensor([4, 2, 0, 1, 3])
    permuted = dict(inp, x_BK=inp["x_BK"][:, perm], text_BKD=inp["text_BKD"][:, perm])
    torch.testing.assert_close(model(**permuted), out[:, perm])


def test_frame_softmax_options() -> None:
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    faithful = _scaled(T2VDenoiser(D, frame_softmax="mask_after"))
    clean = T2VDenoiser(D, frame_softmax="renormalise")
    clean.load_state_dict(faithful.state_dict())
    inp = _t2v_inputs(g)
    # padded frames hold garbage: renormalise ignores it entirely, mask_after keeps it in the denominator
    noisy = dict(inp, video_BKFD=inp["video_BKFD"] + 5 * (1 - inp["video_mask_BKF"])[..., None])
    torch.testing.assert_close(clean(**noisy), clean(**inp))
    assert not torch.allclose(faithful(**noisy), faithful(**inp))
    # without padding the two agree exactly
    full = dict(inp, video_mask_BKF=torch.ones(B, K, F))
    torch.testing.assert_close(clean(**full), faithful(**full))


def test_shared_building_blocks_and_init() -> None:
    torch.manual_seed(3)
    t2v, v2t = T2VDenoiser(64), V2TDenoiser(64)
    assert set(t2v.state_dict()) == set(v2t.state_dict())  # one module family, same parameters
    assert t2v.q_proj.bias is None
    assert t2v.k_proj.bias is None
    assert t2v.v_proj.bias is None
    assert t2v.proj.bias is not None
    assert [tuple(m.weight.shape) for m in t2v.decoder if isinstance(m, torch.nn.Linear)] == [
        (128, 128),
        (1, 128),
    ]
    w = torch.cat([p.flatten() for n, p in t2v.named_parameters() if n.endswith("weight")])
    assert abs(w.std().item() - 0.02) < 2e-3
    assert all(p.abs().max() == 0 for n, p in t2v.named_parameters() if n.endswith("bias"))


def test_from_config() -> None:
    cfg = DiffusionConfig(attn_temp=0.1, frame_softmax="renormalise")
    m = T2VDenoiser.from_config(32, cfg)
    assert isinstance(m, T2VDenoiser)
    assert m.attn_temp == 0.1
    assert m.frame_softmax == "renormalise"
    with pytest.raises(ValueError, match="frame_softmax"):
        T2VDenoiser(32, frame_softmax="bogus")  # type: ignore[arg-type]


def test_timestep_table() -> None:
    pe = sinusoidal_table(60, 8)
    assert pe[0, 0] == 0
    assert pe[0, 1] == 1
    assert pe[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 8)), rel=1e-5)
    assert pe[7, 3].item() == pytest.approx(math.cos(7 / 10000 ** (2 / 8)), rel=1e-5)
    emb = TimestepEmbedder(8, max_steps=60)
    assert "pe" not in emb.state_dict()  # fixed, not a learnt or saved tensor
    out = emb(torch.tensor([0, 5, 5]))
    assert out.shape == (3, 8)
    assert torch.equal(out[1], out[2])
    assert not torch.equal(out[0], out[1])


def test_bad_shapes_rejected() -> None:
    model = T2VDenoiser(D)
    inp = _t2v_inputs(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"x \(B, K\)"):
        model(**dict(inp, t_B=torch.tensor([1, 2])))


def _pair(direction: str, mode: str, dtype: torch.dtype, seed: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cls = T2VDenoiser if direction == "t2v" else V2TDenoiser
    model = _scaled(cls(D, attn_temp=0.7, frame_softmax=mode)).to(dtype)  # type: ignore[arg-type]
    inp = _t2v_inputs(g) if direction == "t2v" else _v2t_inputs(g)
    inp = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inp.items()}
    inp["t_B"] = torch.tensor([7, 0, 7])  # a repeated step: one shared time embedding row
    enc = model.encode(*(v for k, v in inp.items() if k not in ("x_BK", "t_B")))
    return model, inp, enc


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
@pytest.mark.parametrize("mode", ["mask_after", "renormalise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prepare_step_equals_reference_forward(direction: str, mode: str, dtype: torch.dtype) -> None:
    model, inp, enc = _pair(direction, mode, dtype, seed=10)
    ref = model(**inp)
    cache = model.prepare(**enc)
    assert cache["dec_BKE"].shape == (B, K, 2 * D)
    assert cache["qk_BK"].shape == (B, K)
    out = model.step(inp["x_BK"], inp["t_B"], **cache)
    tol = {"rtol": 2e-6, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(model.denoise(inp["x_BK"], inp["t_B"], **enc), ref, rtol=0, atol=0)
    # the cache is step-invariant: reused for other steps and states it still equals the reference
    for t in ([49, 49, 49], [0, 1, 2]):
        t_B, x_BK = torch.tensor(t), inp["x_BK"].flip(1) * 2
        torch.testing.assert_close(
            model.step(x_BK, t_B, **cache), model(**dict(inp, x_BK=x_BK, t_B=t_B)), **tol
        )
    # and the output is not trivially constant in x_t, t or the candidates
    bumped_BK = inp["x_BK"].clone()
    bumped_BK[:, 1] += 40.0  # big enough to move the attention of the scaled model
    assert not torch.allclose(model.step(bumped_BK, inp["t_B"], **cache), out)
    assert not torch.allclose(model.step(inp["x_BK"], inp["t_B"] + 1, **cache), out)
    assert not torch.allclose(out[:, 0], out[:, 1])


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_prepare_step_parameter_gradients_equal_reference(direction: str) -> None:
    model, inp, enc = _pair(direction, "mask_after", torch.float64, seed=11)
    w_BK = torch.randn(B, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def grads(fn) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
        model.zero_grad()
        (fn() * w_BK).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = grads(lambda: model(**inp))
    fast = grads(lambda: model.step(inp["x_BK"], inp["t_B"], **model.prepare(**enc)))
    assert set(fast) == set(ref) == {n for n, _ in model.named_parameters()}
    for name in ref:
        assert ref[name].abs().sum() > 0, name
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)


def test_prepare_and_step_reject_bad_shapes() -> None:
    model = T2VDenoiser(D)
    inp = _t2v_inputs(torch.Generator().manual_seed(0))
    enc = model.encode(inp["text_BD"], inp["video_BKFD"], inp["video_mask_BKF"])
    with pytest.raises(ValueError, match=r"query \(B, 1 or K, D\)"):
        model.prepare(enc["query_BXD"].expand(B, 2, D), enc["cand_BKD"])
    cache = model.prepare(**enc)
    with pytest.raises(ValueError, match=r"x \(B, K\)"):
        model.step(inp["x_BK"][:, :2], inp["t_B"], **cache)


def _random_biases(model: CandidateDenoiser, seed: int) -> CandidateDenoiser:
    # the upstream init zeroes every bias; the sampling tables fold proj's and the decoder's biases
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
@pytest.mark.parametrize("mode", ["mask_after", "renormalise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_step_equals_reference_forward(direction: str, mode: str, dtype: torch.dtype) -> None:
    model, inp, enc = _pair(direction, mode, dtype, seed=12)
    _random_biases(model, seed=13)
    tables = model.prepare_sampling(**enc, t_S=torch.tensor([49, 0, 7, 20, 7, 3, 1, 2]))
    assert tables["t_S"].tolist() == [0, 1, 2, 3, 7, 20, 49]  # sorted, deduplicated
    assert tables["logit_SBK"].shape == (7, B, K)
    assert tables["dec_BKE"].shape == (B, K, 2 * D)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    # one step for all rows (DDIM) and a different step per row, at other noisy states too
    for t, scale in (([7, 7, 7], 1.0), ([7, 0, 49], 1.0), ([20, 3, 1], -2.0), ([2, 2, 49], 0.5)):
        t_B, x_BK = torch.tensor(t), inp["x_BK"] * scale
        ref = model(**dict(inp, x_BK=x_BK, t_B=t_B))
        out = model.sample_step(x_BK, t_B, **tables)
        torch.testing.assert_close(out, ref, **tol)
        torch.testing.assert_close(out, model.step(x_BK, t_B, **model.prepare(**enc)), **tol)
    # the tables do depend on the step and on the candidates
    base = model.sample_step(inp["x_BK"], torch.tensor([7, 7, 7]), **tables)
    assert not torch.allclose(model.sample_step(inp["x_BK"], torch.tensor([20, 20, 20]), **tables), base)
    other = model.prepare_sampling(enc["query_BXD"], enc["cand_BKD"].flip(1), t_S=torch.tensor([7]))
    assert not torch.allclose(model.sample_step(inp["x_BK"], torch.tensor([7, 7, 7]), **other), base)


def test_sample_step_row_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import vidret.diffusion.denoiser as denoiser_mod

    model, inp, enc = _pair("t2v", "mask_after", torch.float64, seed=14)
    _random_biases(model, seed=15)
    tables = model.prepare_sampling(**enc, t_S=torch.arange(50))
    whole = model.sample_step(inp["x_BK"], inp["t_B"], **tables)
    for rows in (1, 2):  # blocks of 1 and 2 rows over B = 3 (a short last block); gemv may sum differently
        monkeypatch.setattr(denoiser_mod, "_HIDDEN_BLOCK_ELEMS", rows * K * 2 * D)
        out = model.sample_step(inp["x_BK"], inp["t_B"], **tables)
        torch.testing.assert_close(out, whole, rtol=1e-13, atol=1e-13)


def test_sample_step_rejects_unprepared_steps_and_bad_tables() -> None:
    model, inp, enc = _pair("v2t", "mask_after", torch.float32, seed=16)
    tables = model.prepare_sampling(**enc, t_S=torch.tensor([0, 7, 49]))
    with pytest.raises(ValueError, match=r"steps \[5\] were not prepared"):
        model.sample_step(inp["x_BK"], torch.tensor([7, 5, 0]), **tables)
    with pytest.raises(ValueError, match=r"steps \[50\] were not prepared"):
        model.sample_step(inp["x_BK"], torch.tensor([50, 50, 50]), **tables)
    with pytest.raises(ValueError, match=r"x \(B, K\)"):
        model.sample_step(inp["x_BK"][:, :2], inp["t_B"], **tables)
    with pytest.raises(ValueError, match="1-D integer tensor of steps"):
        model.prepare_sampling(**enc, t_S=torch.tensor([0.0, 7.0]))
    with pytest.raises(ValueError, match="1-D integer tensor of steps"):
        model.prepare_sampling(**enc, t_S=torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match=r"query \(B, 1 or K, D\)"):
        model.prepare_sampling(enc["query_BXD"][:, :2], enc["cand_BKD"], t_S=torch.tensor([0]))
