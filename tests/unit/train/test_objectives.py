"""The stage-2 objective: only the denoisers train, the loss equals a hand computation and the reference
path (gathered frames, module forwards), sharded rows average to the full batch."""

import math

import pytest
import torch

from vidret.config import DiffusionConfig, ModelConfig
from vidret.diffusion.rerank import hard_negatives
from vidret.model.retrieval import RetrievalModel
from vidret.train.objectives import GenerationObjective

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


def _features(model: RetrievalModel, seed: int) -> dict[str, torch.Tensor]:
    """The model's features of ``_batch(seed)``, detached (what the feature cache holds), with video ids."""
    with torch.no_grad():
        return {k: v.detach() for k, v in model(_batch(seed)).items() if k != "logit_scale"}


def _own_batch_loss(model: RetrievalModel, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The objective of one worker whose batch is the whole gathered batch."""
    pos = f["video_index"][:, None] == f["video_index"][None, :]
    return GenerationObjective(model)(f, f, pos)


def test_generation_objective_trains_only_denoisers(model: RetrievalModel) -> None:
    model.set_stage("generation")
    feats = _own_batch_loss(model, _features(model, 0))
    assert "loss_generation" not in model(_batch())  # the model itself has no loss
    assert feats["loss_generation"].item() == pytest.approx(
        feats["loss_t2v"].item() + feats["loss_v2t"].item()
    )
    feats["loss_generation"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("t2v_denoiser.") for n in grads)
    assert any(n.startswith("v2t_denoiser.") for n in grads)
    assert all(n.startswith(("t2v_denoiser.", "v2t_denoiser.")) for n in grads)


def _hand_ce(logits: list[float]) -> float:
    return -(logits[0] - math.log(sum(math.exp(x) for x in logits)))


def test_generation_loss_equals_hand_computation(model: RetrievalModel) -> None:
    f = _features(model, 1)
    ids = f["video_index"]
    pos = ids[:, None] == ids[None, :]
    t = torch.tensor([0, 9, 4, 4, 1, 7])
    g = torch.Generator().manual_seed(5)
    n1, n2 = torch.randn(B, 4, generator=g), torch.randn(B, 4, generator=g)
    out = GenerationObjective(model)(f, f, pos, t_B=t, noise_t2v_BK=n1, noise_v2t_BK=n2)
    sim = model.similarity(f, f)
    total = {"t2v": 0.0, "v2t": 0.0}
    x0 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    for b in range(B):
        for direction, s in (("t2v", sim[b]), ("v2t", sim[:, b])):
            negs = sorted((j for j in range(B) if not pos[b, j]), key=lambda j: -s[j].item())[:3]
            cand = torch.tensor([b, *negs])
            noise = (n1 if direction == "t2v" else n2)[b]
            xt = model.diffusion.q_sample(x0[None], t[b : b + 1], noise[None])
            with torch.no_grad():
                if direction == "t2v":
                    pred = model.t2v_denoiser(
                        xt,
                        t[b : b + 1],
                        f["text_eot"][b : b + 1],
                        f["video"][cand][None],
                        f["video_mask"][cand][None],
                    )
                else:
                    pred = model.v2t_denoiser(
                        xt,
                        t[b : b + 1],
                        f["text_eot"][cand][None],
                        f["video"][b : b + 1],
                        f["video_mask"][b : b + 1],
                    )
            total[direction] += _hand_ce([100.0 * v for v in pred[0].tolist()]) / B
    assert out["loss_t2v"].item() == pytest.approx(total["t2v"], rel=1e-4)
    assert out["loss_v2t"].item() == pytest.approx(total["v2t"], rel=1e-4)


def _reference_generation_loss(
    model: RetrievalModel, f: dict[str, torch.Tensor], pos: torch.Tensor, t: torch.Tensor, n1, n2
) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The straightforward path: gathered (B, K, F, D) frames and the denoisers' module forwards."""
    dcfg = model.diffusion_cfg
    with torch.no_grad():
        sim = model.similarity(f, f)
        idx_t2v = hard_negatives(sim, pos, dcfg.num, 0, dcfg.negatives_fill)
        idx_v2t = hard_negatives(sim.T, pos, dcfg.num, 0, dcfg.negatives_fill)
    x0 = torch.full(idx_t2v.shape, dcfg.neg)
    x0[:, 0] = 1.0
    t2v_cond = {
        "text_BD": f["text_eot"],
        "video_BKFD": f["video"][idx_t2v],
        "video_mask_BKF": f["video_mask"][idx_t2v],
    }
    v2t_cond = {"text_BKD": f["text_eot"][idx_v2t], "video_BFD": f["video"], "video_mask_BF": f["video_mask"]}
    return {
        "loss_t2v": model.diffusion.training_loss(model.t2v_denoiser, x0, t, t2v_cond, dcfg.d_temp, n1),
        "loss_v2t": model.diffusion.training_loss(model.v2t_denoiser, x0, t, v2t_cond, dcfg.d_temp, n2),
    }


@pytest.mark.parametrize(
    ("num", "dtype"),  # K = 2 of 6 takes the sparse candidate encoding, K = 4 the dense one
    [(1, torch.float64), (3, torch.float64), (3, torch.float32)],
)
def test_generation_loss_and_gradients_equal_reference_path(num: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    mcfg = ModelConfig(preset="debug", temporal_layers=1)
    model = RetrievalModel.build(mcfg, DiffusionConfig(steps=10, num=num))
    model.set_stage("generation")
    with torch.no_grad():
        f = {k: v.detach() for k, v in model(_batch(4)).items() if k != "logit_scale"}
        for p in (*model.t2v_denoiser.parameters(), *model.v2t_denoiser.parameters()):
            p.mul_(10.0)  # away from the near-constant 0.02 init, so the comparison is sensitive
    model.t2v_denoiser.to(dtype), model.v2t_denoiser.to(dtype)
    f = {k: v.to(dtype) if v.is_floating_point() else v for k, v in f.items()}
    pos = f["video_index"][:, None] == f["video_index"][None, :]
    t = torch.tensor([0, 9, 4, 4, 1, 7])
    g = torch.Generator().manual_seed(7)
    n1, n2 = torch.randn(B, num + 1, generator=g), torch.randn(B, num + 1, generator=g)

    def run(fn) -> tuple[dict[str, float], dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
        model.zero_grad()
        out = fn()
        (out["loss_t2v"] + out["loss_v2t"]).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: out[k].item() for k in ("loss_t2v", "loss_v2t")}, grads

    fast_loss, fast_grads = run(
        lambda: GenerationObjective(model)(f, f, pos, t_B=t, noise_t2v_BK=n1, noise_v2t_BK=n2)
    )
    ref_loss, ref_grads = run(lambda: _reference_generation_loss(model, f, pos, t, n1, n2))
    # float64 agrees to rounding (the loss itself is float32 cross-entropy on both paths)
    loss_rel, grad_atol = (1e-7, 1e-10) if dtype == torch.float64 else (2e-5, 2e-5)
    assert fast_loss == pytest.approx(ref_loss, rel=loss_rel)
    assert ref_loss["loss_t2v"] != pytest.approx(ref_loss["loss_v2t"], rel=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(fast_grads) == set(ref_grads) == trainable
    overall = max(g.abs().max().item() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        # the last bias shifts every logit of the softmax equally: its gradient is 0 on both paths
        assert name.endswith("decoder.2.bias") or ref.abs().max() > 1e-4 * overall, name
        torch.testing.assert_close(fast_grads[name], ref, rtol=0, atol=grad_atol * overall, msg=name)


def test_generation_loss_sharded_rows_average_to_full(model: RetrievalModel) -> None:
    f = _features(model, 2)
    pos = f["video_index"][:, None] == f["video_index"][None, :]
    t = torch.arange(B) % 10
    g = torch.Generator().manual_seed(6)
    n1, n2 = torch.randn(B, 4, generator=g), torch.randn(B, 4, generator=g)
    full = GenerationObjective(model)(f, f, pos, t_B=t, noise_t2v_BK=n1, noise_v2t_BK=n2)["loss_generation"]
    parts = []
    for rows in (slice(0, 3), slice(3, 6)):
        local = {k: v[rows] for k, v in f.items()}
        parts.append(
            GenerationObjective(model)(
                local,
                f,
                pos[rows],
                row_offset=rows.start,
                t_B=t[rows],
                noise_t2v_BK=n1[rows],
                noise_v2t_BK=n2[rows],
            )["loss_generation"]
        )
    assert ((parts[0] + parts[1]) / 2).item() == pytest.approx(full.item(), rel=1e-5)


def test_full_batch_negatives_with_duplicates() -> None:
    torch.manual_seed(0)
    mcfg = ModelConfig(preset="debug", temporal_layers=1)
    model = RetrievalModel.build(mcfg, DiffusionConfig(steps=10, num=B - 1))  # the recipe's num = B - 1
    model.set_stage("generation")
    with torch.no_grad():  # rows 0 and 3 fill with each other
        assert torch.isfinite(_own_batch_loss(model, _features(model, 0))["loss_generation"])
    strict = RetrievalModel.build(mcfg, DiffusionConfig(steps=10, num=B - 1, negatives_fill="error"))
    strict.set_stage("generation")
    with pytest.raises(ValueError, match=r"diffusion\.num"), torch.no_grad():
        _own_batch_loss(strict, _features(strict, 0))
