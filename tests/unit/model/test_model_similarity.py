"""WTI: blocked == unblocked, weight head masking, shape checks, gradients."""

from __future__ import annotations

import pytest
import torch

from vidret.model.similarity import WTIHead, _prepare, wti_blocked, wti_similarity


def _random_case(Q: int, N: int, L: int = 5, F: int = 4, D: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(Q, L, D, generator=g)
    video = torch.randn(N, F, D, generator=g)
    t_len = torch.randint(2, L + 1, (Q,), generator=g)
    v_len = torch.randint(1, F + 1, (N,), generator=g)
    t_mask = (torch.arange(L)[None] < t_len[:, None]).long()
    v_mask = (torch.arange(F)[None] < v_len[:, None]).long()
    head = WTIHead(D, hidden_mult=2)
    with torch.no_grad():
        t_w, v_w = head(text, t_mask, video, v_mask)
    return text, t_mask, video, v_mask, t_w, v_w


@pytest.mark.parametrize("padding", ["zero", "neg_inf"])
@pytest.mark.parametrize(("block_q", "block_n"), [(1, 1), (3, 7), (16, 5), (64, 64)])
def test_blocked_equals_unblocked(padding: str, block_q: int, block_n: int):
    case = _random_case(Q=13, N=11)
    full = wti_similarity(*case, padding=padding)
    blocked = wti_blocked(*case, padding=padding, block_q=block_q, block_n=block_n)
    assert blocked.shape == (13, 11)
    torch.testing.assert_close(blocked, full, rtol=1e-5, atol=1e-6)


def test_padding_modes_differ_only_through_padded_pairs():
    text, t_mask, video, v_mask, t_w, v_w = _random_case(Q=6, N=6)
    full_t, full_v = torch.ones_like(t_mask), torch.ones_like(v_mask)
    # Without padding both modes are the same function.
    a = wti_similarity(text, full_t, video, full_v, t_w, v_w, padding="zero")
    b = wti_similarity(text, full_t, video, full_v, t_w, v_w, padding="neg_inf")
    torch.testing.assert_close(a, b)
    # neg_inf never exceeds zero padding (a padded 0 can only raise a maximum).
    z = wti_similarity(text, t_mask, video, v_mask, t_w, v_w, padding="zero")
    n = wti_similarity(text, t_mask, video, v_mask, t_w, v_w, padding="neg_inf")
    assert torch.all(n <= z + 1e-6)
    assert not torch.allclose(n, z)


def test_padded_features_do_not_matter():
    text, t_mask, video, v_mask, t_w, v_w = _random_case(Q=4, N=5)
    text2 = torch.where(t_mask[..., None] == 0, torch.randn_like(text) * 100, text)
    video2 = torch.where(v_mask[..., None] == 0, torch.randn_like(video) * 100, video)
    for padding in ("zero", "neg_inf"):
        a = wti_similarity(text, t_mask, video, v_mask, t_w, v_w, padding=padding)
        b = wti_similarity(text2, t_mask, video2, v_mask, t_w, v_w, padding=padding)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_head_weights_are_masked_softmaxes_and_init():
    head = WTIHead(16, hidden_mult=3)
    assert head.text_weight_fc[0].weight.shape == (48, 16)
    assert head.video_weight_fc[2].weight.shape == (1, 48)
    assert torch.count_nonzero(head.text_weight_fc[0].bias) == 0
    assert 0.015 < head.text_weight_fc[0].weight.std().item() < 0.025
    feats = torch.randn(3, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    w = head.text_weights(feats, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert torch.all(w[mask == 0] == 0)
    assert torch.all(w[mask == 1] > 0)
    assert w[2, 0].item() == pytest.approx(1.0)
    # Text and video MLPs are separate parameters.
    assert not torch.equal(head.text_weights(feats, mask), head.video_weights(feats, mask))


@pytest.mark.parametrize("padding", ["zero", "neg_inf"])
def test_gradients_flow_through_blocked(padding: str):
    text, t_mask, video, v_mask, t_w, v_w = _random_case(Q=3, N=4)
    text.requires_grad_(True)
    video.requires_grad_(True)
    wti_blocked(text, t_mask, video, v_mask, t_w, v_w, padding=padding, block_q=2, block_n=3).sum().backward()
    assert text.grad is not None
    assert video.grad is not None
    assert torch.isfinite(text.grad).all()
    assert torch.isfinite(video.grad).all()
    assert torch.count_nonzero(text.grad[t_mask == 1]) > 0
    assert torch.count_nonzero(text.grad[t_mask == 0]) == 0  # padded tokens get no gradient


def test_shapes_and_settings_are_checked():
    text, t_mask, video, v_mask, t_w, v_w = _random_case(Q=3, N=4)
    with pytest.raises(ValueError, match="video_w"):
        wti_similarity(text, t_mask, video, v_mask, t_w, v_w[:, :2])
    with pytest.raises(ValueError, match="wti_padding"):
        wti_similarity(text, t_mask, video, v_mask, t_w, v_w, padding="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block sizes"):
        wti_blocked(text, t_mask, video, v_mask, t_w, v_w, block_q=0)


@pytest.mark.parametrize("padding", ["zero", "neg_inf"])
def test_blocked_tile_buffer_matches_the_autograd_path(padding: str):
    """Without autograd the tiles share one score buffer (CPU tiles of a few queries x videos); with it each
    tile allocates its own: the same scores, and a zero feature vector scores 0, never nan."""
    text, t_mask, video, v_mask, t_w, v_w = _random_case(Q=9, N=7, L=6, F=5)
    video[2, 0] = 0.0  # a real frame whose feature is exactly zero: normalised with eps, not 0 / 0
    with torch.no_grad():
        shared = wti_blocked(text, t_mask, video, v_mask, t_w, v_w, padding=padding, block_q=4, block_n=3)
    tracked = text.clone().requires_grad_(True)
    own = wti_blocked(tracked, t_mask, video, v_mask, t_w, v_w, padding=padding, block_q=4, block_n=3)
    assert own.requires_grad
    assert not shared.isnan().any()
    torch.testing.assert_close(shared, own.detach(), rtol=0, atol=0)
    expected = torch.nn.functional.normalize(text, dim=-1) * t_mask[..., None]
    torch.testing.assert_close(_prepare(text, t_mask), expected, rtol=1e-6, atol=1e-7)
