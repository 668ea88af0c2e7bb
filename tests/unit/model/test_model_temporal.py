"""seqTransf initialisation from CLIP and its key-padding mask; meanP identity."""

from __future__ import annotations

import pytest
import torch

from vidret.model.temporal import TemporalTransformer


def test_initialised_from_first_text_blocks_and_positional_embedding(debug_clip):
    temporal = TemporalTransformer(debug_clip, num_layers=2)
    assert len(temporal.resblocks) == 2
    for i, block in enumerate(temporal.resblocks):
        src = debug_clip.transformer.resblocks[i].state_dict()
        dst = block.state_dict()
        assert dst.keys() == src.keys()
        for k in src:
            torch.testing.assert_close(dst[k], src[k], rtol=0, atol=0)
    torch.testing.assert_close(temporal.frame_position_embeddings.weight, debug_clip.positional_embedding)
    assert temporal.max_frames == 77
    # Copies, not shared parameters: training the temporal module leaves CLIP untouched.
    with torch.no_grad():
        temporal.resblocks[0].mlp.c_fc.weight.add_(1.0)
        temporal.frame_position_embeddings.weight.add_(1.0)
    assert not torch.equal(
        temporal.resblocks[0].mlp.c_fc.weight, debug_clip.transformer.resblocks[0].mlp.c_fc.weight
    )
    assert not torch.equal(temporal.frame_position_embeddings.weight, debug_clip.positional_embedding)


def test_padded_frames_do_not_change_real_outputs(debug_clip):
    temporal = TemporalTransformer(debug_clip, num_layers=2).eval()
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 5, 64, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    other = frames.clone()
    other[0, 3:] = torch.randn(2, 64, generator=g) * 10
    with torch.no_grad():
        a = temporal(frames, mask)
        b = temporal(other, mask)
        alone = temporal(frames[:1, :3], mask[:1, :3])
    assert a.shape == (2, 5, 64)
    torch.testing.assert_close(a[0, :3], b[0, :3], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a[0, :3], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    # Attention is bidirectional: the first frame does see later real frames.
    changed = frames.clone()
    changed[1, 4] = torch.randn(64, generator=g)  # not a constant shift: LayerNorm would remove it
    with torch.no_grad():
        c = temporal(changed, mask)
    assert not torch.allclose(c[1, 0], a[1, 0])


def test_residual_goes_to_raw_frames(debug_clip):
    """With zero blocks the output is frame + position + frame (residual skips the position embedding)."""
    temporal = TemporalTransformer(debug_clip, num_layers=0)
    frames = torch.randn(1, 3, 64)
    out = temporal(frames, torch.ones(1, 3))
    torch.testing.assert_close(out, 2 * frames + debug_clip.positional_embedding[:3][None])


def test_mean_p_is_identity_and_bad_settings_raise(debug_clip):
    frames = torch.randn(2, 3, 64)
    assert TemporalTransformer(debug_clip, kind="meanP")(frames, torch.ones(2, 3)) is frames
    with pytest.raises(ValueError, match="temporal_layers"):
        TemporalTransformer(debug_clip, num_layers=-1)
    with pytest.raises(ValueError, match="78 frames"):
        TemporalTransformer(debug_clip, num_layers=1)(torch.zeros(1, 78, 64), torch.ones(1, 78))


def test_layers_beyond_text_depth_are_fresh_blocks(debug_clip):
    with pytest.warns(UserWarning, match="randomly initialised"):
        temporal = TemporalTransformer(debug_clip, num_layers=4)
    assert len(temporal.resblocks) == 4
    src = debug_clip.transformer.resblocks
    torch.testing.assert_close(temporal.resblocks[1].attn.in_proj_weight, src[1].attn.in_proj_weight)
    fresh = temporal.resblocks[3]
    assert type(fresh.mlp.gelu) is type(src[0].mlp.gelu)
    assert 0.015 < fresh.attn.in_proj_weight.std().item() < 0.025
    assert not torch.equal(fresh.mlp.c_fc.weight, temporal.resblocks[2].mlp.c_fc.weight)
    out = temporal(torch.randn(2, 3, 64), torch.ones(2, 3))
    assert out.shape == (2, 3, 64)
    assert torch.isfinite(out).all()
