"""Symmetric InfoNCE: hand computation, multi-positive targets, and sharded rows vs the full batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from vidret.train.losses import positive_mask, soft_target_cross_entropy, symmetric_infonce

torch.set_num_threads(1)


def _cosine(text: dict, video: dict) -> torch.Tensor:
    return F.normalize(text["t"], dim=-1) @ F.normalize(video["v"], dim=-1).T


def _hand_loss(s: list[list[float]], scale: float, positives: list[set[int]]) -> float:
    n = len(s)
    total = 0.0
    for m in (s, [list(r) for r in zip(*s, strict=True)]):
        for i in range(n):
            lse = math.log(sum(math.exp(scale * m[i][j]) for j in range(n)))
            total += sum(-(scale * m[i][j] - lse) for j in positives[i]) / len(positives[i]) / n
    return total / 2


def test_infonce_equals_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    feats = {
        "t": torch.randn(4, 6, generator=g, dtype=torch.float64),
        "v": torch.randn(4, 6, generator=g, dtype=torch.float64),
    }
    s = _cosine(feats, feats).tolist()
    loss = symmetric_infonce(feats, _cosine, logit_scale=100.0)
    assert loss.item() == pytest.approx(_hand_loss(s, 100.0, [{i} for i in range(4)]), rel=1e-9)
    # scale matters
    assert symmetric_infonce(feats, _cosine, logit_scale=10.0).item() == pytest.approx(
        _hand_loss(s, 10.0, [{i} for i in range(4)]), rel=1e-9
    )


def test_same_video_positives() -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([7, 3, 7, 9, 3])
    feats = {
        "t": torch.randn(5, 6, generator=g, dtype=torch.float64),
        "v": torch.randn(5, 6, generator=g, dtype=torch.float64),
        "video_index": ids,
    }
    s = _cosine(feats, feats).tolist()
    groups = [{j for j in range(5) if ids[j] == ids[i]} for i in range(5)]
    clean = symmetric_infonce(feats, _cosine, logit_scale=20.0, same_video_positives=True)
    assert clean.item() == pytest.approx(_hand_loss(s, 20.0, groups), rel=1e-9)
    faithful = symmetric_infonce(feats, _cosine, logit_scale=20.0)
    assert faithful.item() == pytest.approx(_hand_loss(s, 20.0, [{i} for i in range(5)]), rel=1e-9)
    assert faithful.item() != pytest.approx(clean.item())
    with pytest.raises(ValueError, match="video_index"):
        symmetric_infonce({"t": feats["t"], "v": feats["v"]}, _cosine, same_video_positives=True)


@pytest.mark.parametrize("same_video", [False, True])
def test_sharded_rows_match_full_batch_loss_and_gradient(same_video: bool) -> None:
    g = torch.Generator().manual_seed(2)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 1, 3])
    full = symmetric_infonce(
        {"t": t, "v": v, "video_index": ids}, _cosine, logit_scale=30.0, same_video_positives=same_video
    )
    full_grads = torch.autograd.grad(full, [t, v])
    # two workers of 3 rows; the fake gather rebuilds the global batch around the local (grad-carrying) shard
    world, b = 2, 3
    shard_losses = []
    for rank in range(world):
        rows = slice(rank * b, (rank + 1) * b)
        local = {"t": t[rows], "v": v[rows], "video_index": ids[rows]}
        whole = {"t": t, "v": v, "video_index": ids}

        def gather(
            x: torch.Tensor, whole: dict = whole, local: dict = local, rows: slice = rows
        ) -> torch.Tensor:
            key = next(k for k, val in local.items() if val is x)
            return torch.cat([whole[key][: rows.start], x, whole[key][rows.stop :]])

        shard_losses.append(
            symmetric_infonce(
                local,
                _cosine,
                logit_scale=30.0,
                gather=gather,
                row_offset=rows.start,
                same_video_positives=same_video,
            )
        )
    mean = sum(shard_losses) / world  # what DDP's gradient averaging optimises
    assert mean.item() == pytest.approx(full.item(), rel=1e-10)
    for got, want in zip(torch.autograd.grad(mean, [t, v]), full_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_soft_target_ce_reduces_to_cross_entropy() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 7, generator=g)
    labels = torch.tensor([0, 6, 2, 2, 3])
    onehot = F.one_hot(labels, 7)
    torch.testing.assert_close(soft_target_cross_entropy(logits, onehot), F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="positive"):
        soft_target_cross_entropy(logits, torch.zeros(5, 7))
    assert positive_mask(torch.tensor([1, 2]), torch.tensor([2, 1, 1])).tolist() == [
        [False, True, True],
        [True, False, False],
    ]


def test_bad_row_offset() -> None:
    feats = {"t": torch.randn(3, 4), "v": torch.randn(3, 4)}
    with pytest.raises(ValueError, match="row_offset"):
        symmetric_infonce(feats, _cosine, row_offset=1)
