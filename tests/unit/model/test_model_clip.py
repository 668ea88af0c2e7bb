"""ClipBackbone features against open_clip's own encoders; frame normalisation."""

from __future__ import annotations

import pytest
import torch

from vidret.config import ModelConfig
from vidret.model.clip import CLIP_MEAN, CLIP_STD, ClipBackbone, normalize_frames
from vidret.model.presets import PRESETS, build_clip, preset_config


def test_presets_build_offline_with_expected_sizes():
    assert {"ViT-B-32", "ViT-B-16", "ViT-L-14", "debug", "tiny"} <= set(PRESETS)
    assert preset_config("ViT-B-32")["vision_cfg"]["patch_size"] == 32
    tiny = ClipBackbone(build_clip(ModelConfig(preset="tiny")))
    assert (tiny.embed_dim, tiny.width, tiny.text_width, tiny.image_size, tiny.context_length) == (
        128,
        128,
        128,
        64,
        77,
    )
    assert tiny.text_heads == 4
    with pytest.raises(ValueError, match=r"model\.preset"):
        preset_config("ViT-X")


def test_eot_feature_equals_open_clip_encode_text(debug_clip):
    bb = ClipBackbone(debug_clip)
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[0, :4] = torch.tensor([49406, 320, 1929, 49407])
    ids[1, :] = 500
    ids[1, 0], ids[1, 76] = 49406, 49407
    mask = (torch.arange(77)[None] < torch.tensor([[4], [77]])).long()
    with torch.no_grad():
        tokens, eot = bb.encode_text(ids, mask)
        ref = debug_clip.encode_text(ids)
    assert tokens.shape == (2, 77, bb.embed_dim)
    torch.testing.assert_close(eot, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(eot[0], tokens[0, 3])


def test_short_context_eot_matches_full_context(debug_clip, token_batch):
    """L < 77 uses the first L position rows; the EOT feature equals the 77-token computation."""
    bb = ClipBackbone(debug_clip)
    ids, mask = token_batch
    full = torch.zeros(3, 77, dtype=torch.long)
    full[:, :12] = ids
    with torch.no_grad():
        _, eot = bb.encode_text(ids, mask)
        ref = debug_clip.encode_text(full)
    torch.testing.assert_close(eot, ref, rtol=1e-5, atol=1e-5)


def test_padded_tokens_do_not_change_real_tokens(debug_clip, token_batch):
    bb = ClipBackbone(debug_clip)
    ids, mask = token_batch
    ids2 = ids.clone()
    ids2[0, 7] = 4242  # a padded position of caption 0
    with torch.no_grad():
        a, _ = bb.encode_text(ids, mask)
        b, _ = bb.encode_text(ids2, mask)
    torch.testing.assert_close(a[0, :5], b[0, :5], rtol=0, atol=0)
    assert not torch.allclose(a[0, 7], b[0, 7])  # the padded position itself did change


def test_causal_attention_real_token_ignores_later_tokens(debug_clip, token_batch):
    bb = ClipBackbone(debug_clip)
    ids, mask = token_batch
    ids2 = ids.clone()
    ids2[2, 8] = 2000
    with torch.no_grad():
        a, _ = bb.encode_text(ids, mask)
        b, _ = bb.encode_text(ids2, mask)
    torch.testing.assert_close(a[2, :8], b[2, :8], rtol=0, atol=0)
    assert not torch.allclose(a[2, 9], b[2, 9])


def test_encode_text_rejects_bad_shapes(debug_clip):
    bb = ClipBackbone(debug_clip)
    with pytest.raises(ValueError, match="context length"):
        bb.encode_text(torch.zeros(1, 78, dtype=torch.long), torch.ones(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="equal shape"):
        bb.encode_text(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))


def test_encode_frames_equals_encode_image_per_frame(debug_clip):
    bb = ClipBackbone(debug_clip)
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 3, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = bb.encode_frames(frames)
        ref = debug_clip.encode_image(frames.flatten(0, 1)).view(2, 3, -1)
    assert out.shape == (2, 3, bb.embed_dim)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_encode_frames_with_mask_skips_padded_frames(debug_clip):
    bb = ClipBackbone(debug_clip)
    frames = torch.randn(2, 3, 3, 32, 32)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    with torch.no_grad():
        full = bb.encode_frames(frames)
        masked = bb.encode_frames(frames, mask)
    torch.testing.assert_close(masked[mask == 1], full[mask == 1], rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(masked[mask == 0]) == 0
    with pytest.raises(ValueError, match="32x32"):
        bb.encode_frames(torch.zeros(1, 1, 3, 16, 16))


def test_normalize_frames_values_layout_and_mask():
    video = torch.zeros(1, 2, 4, 5, 3, dtype=torch.uint8)
    video[0, 0, 1, 2] = torch.tensor([255, 0, 128], dtype=torch.uint8)
    out = normalize_frames(video)
    assert out.shape == (1, 2, 3, 4, 5)
    assert out.dtype == torch.float32
    for c, v in enumerate((255, 0, 128)):
        expected = (v / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert out[0, 0, c, 1, 2].item() == pytest.approx(expected, abs=1e-6)
    assert out[0, 1, 0, 0, 0].item() == pytest.approx(-CLIP_MEAN[0] / CLIP_STD[0], abs=1e-6)
    masked = normalize_frames(video, torch.tensor([[1, 0]]))
    torch.testing.assert_close(masked[0, 0], out[0, 0])
    assert torch.count_nonzero(masked[0, 1]) == 0
    with pytest.raises(TypeError, match="uint8"):
        normalize_frames(video.float())
