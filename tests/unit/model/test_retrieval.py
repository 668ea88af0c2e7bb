"""RetrievalModel: features, stage switching, the stage-1 gradients; re-ranking through the features layer."""

import pytest
import torch

from vidret.config import DiffusionConfig, ModelConfig
from vidret.features.scoring import rerank_features
from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures
from vidret.model.retrieval import SIMILARITY_KEYS, RetrievalModel
from vidret.train.losses import symmetric_infonce

B, L, F = 6, 8, 3


@pytest.fixture
def model() -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel.build(
        ModelConfig(preset="debug", temporal_layers=1), DiffusionConfig(steps=10, num=3)
    )


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        n = 3 + b % 4
        ids[b, 0], ids[b, n - 1] = 49406, 49407
        ids[b, 1 : n - 1] = torch.randint(300, 5000, (n - 2,), generator=g)
        mask[b, :n] = 1
    video_mask = torch.ones(B, F, dtype=torch.long)
    video_mask[1, 2:] = 0
    return {
        "text_ids": ids,
        "text_mask": mask,
        "video_mask": video_mask,
        "video": torch.randint(0, 256, (B, F, 32, 32, 3), generator=g, dtype=torch.uint8),
        "video_index": torch.tensor([0, 1, 2, 0, 3, 4]),
    }  # rows 0 and 3 are the same video


def test_features_and_stage1_gradients(model: RetrievalModel) -> None:
    feats = model(_batch())
    assert feats["text"].shape == (B, L, 64)
    assert feats["text_eot"].shape == (B, 64)
    assert feats["video"].shape == (B, F, 64)
    assert feats["video_weight"].shape == (B, F)
    assert feats["video_weight"][1, 2] == 0
    assert torch.allclose(feats["text_weight"].sum(1), torch.ones(B))
    assert "loss_generation" not in feats
    loss = symmetric_infonce(
        {k: feats[k] for k in SIMILARITY_KEYS}, model.similarity, logit_scale=feats["logit_scale"]
    )
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("temporal.") for n in grads)
    assert any(n.startswith("wti.") for n in grads)
    assert any(n.startswith("backbone.clip.transformer.") for n in grads)
    assert not any("denoiser" in n for n in grads)


def test_stage_switch_freezes_the_right_parameters(model: RetrievalModel) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.clip.visual.conv1.weight" not in trainable  # frozen in the method
    assert any(n.startswith("wti.") for n in trainable)
    assert any(n.startswith("temporal.") for n in trainable)
    assert not any("denoiser" in n for n in trainable)
    model.set_stage("generation")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(n.startswith(("t2v_denoiser.", "v2t_denoiser.")) for n in trainable)
    assert {n for n, _ in model.t2v_denoiser.named_parameters()} <= {n.split(".", 1)[1] for n in trainable}
    model.set_stage("discrimination")
    assert model.wti.text_weight_fc[0].weight.requires_grad
    assert not model.t2v_denoiser.q_proj.weight.requires_grad
    with pytest.raises(ValueError, match=r"train\.stage"):
        model.set_stage("both")  # type: ignore[arg-type]


def test_rerank_changes_only_topk_and_is_seeded(model: RetrievalModel) -> None:
    with torch.no_grad():
        f = model(_batch(3))
    sim = model.similarity(f, f, block=4)
    torch.testing.assert_close(sim, model.similarity(f, f))
    cfg = DiffusionConfig(steps=10, t2v_k=2, v2t_k=3, t2v_alpha=1.0, v2t_alpha=0.5)
    fs = FeatureSet(TextFeatures.from_model(f), VideoFeatures.from_model(f), torch.arange(B))
    t2v = rerank_features(model, "t2v", sim, fs, cfg)
    v2t = rerank_features(model, "v2t", sim.T, fs, cfg)
    assert t2v.shape == (B, B)
    assert v2t.shape == (B, B)
    assert ((t2v != sim).sum(1) <= 2).all()
    assert ((v2t != sim.T).sum(1) <= 3).all()
    torch.testing.assert_close((v2t - sim.T).sum(1), torch.full((B,), 0.5), rtol=1e-5, atol=1e-5)
    again = rerank_features(model, "t2v", sim, fs, cfg, chunk=1)
    torch.testing.assert_close(again, t2v)
    rows = rerank_features(model, "v2t", sim.T, fs, cfg, rows=slice(2, 5))  # a worker's block of queries
    torch.testing.assert_close(rows, v2t[2:5])
    with pytest.raises(ValueError, match="differ"):
        rerank_features(model, "t2v", sim, fs, DiffusionConfig(steps=20))
