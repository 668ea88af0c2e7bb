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
    assert t2v.q_proj.bias is None and t2v.k_proj.bias is None and t2v.v_proj.bias is None
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
    assert isinstance(m, T2VDenoiser) and m.attn_temp == 0.1 and m.frame_softmax == "renormalise"
    with pytest.raises(ValueError, match="frame_softmax"):
        T2VDenoiser(32, frame_softmax="bogus")  # type: ignore[arg-type]


def test_timestep_table() -> None:
    pe = sinusoidal_table(60, 8)
    assert pe[0, 0] == 0 and pe[0, 1] == 1
    assert pe[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 8)), rel=1e-5)
    assert pe[7, 3].item() == pytest.approx(math.cos(7 / 10000 ** (2 / 8)), rel=1e-5)
    emb = TimestepEmbedder(8, max_steps=60)
    assert "pe" not in emb.state_dict()  # fixed, not a learnt or saved tensor
    out = emb(torch.tensor([0, 5, 5]))
    assert out.shape == (3, 8) and torch.equal(out[1], out[2]) and not torch.equal(out[0], out[1])


def test_bad_shapes_rejected() -> None:
    model = T2VDenoiser(D)
    inp = _t2v_inputs(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"x \(B, K\)"):
        model(**dict(inp, t_B=torch.tensor([1, 2])))
