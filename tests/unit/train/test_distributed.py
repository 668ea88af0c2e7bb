"""Collectives on 2 gloo processes: the gradient of the sharded InfoNCE vs one process on the full batch.

``exact`` (local rows vs gathered columns, gradient all-reduced, DDP averaging) must equal the full-batch
gradient; ``local_slice`` (upstream: full loss on every rank, no all-reduce) must give 1/W of it through the
features and the full gradient for ``logit_scale``.
"""

from __future__ import annotations

import datetime
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidret.train import distributed as vd
from vidret.train.losses import symmetric_infonce

torch.set_num_threads(1)

WORLD, LOCAL, IN_T, IN_V, DIM = 2, 4, 6, 7, 5
IDS = torch.tensor([0, 1, 2, 3, 1, 4, 0, 5])  # duplicates across the two shards


class _Towers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.text = nn.Linear(IN_T, DIM)
        self.video = nn.Linear(IN_V, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def forward(self, xt: torch.Tensor, xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.text(xt), self.video(xv), self.logit_scale.exp()


def _cosine(text: dict, video: dict) -> torch.Tensor:
    return F.normalize(text["t"], dim=-1) @ F.normalize(video["v"], dim=-1).T


def _setup() -> tuple[_Towers, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = _Towers().double()
    g = torch.Generator().manual_seed(1)
    xt = torch.randn(WORLD * LOCAL, IN_T, generator=g, dtype=torch.float64)
    xv = torch.randn(WORLD * LOCAL, IN_V, generator=g, dtype=torch.float64)
    return model, xt, xv


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters()}


def _full_batch_grads(same_video: bool) -> dict[str, torch.Tensor]:
    model, xt, xv = _setup()
    t, v, scale = model(xt, xv)
    feats = {"t": t, "v": v, "video_index": IDS}
    symmetric_infonce(feats, _cosine, logit_scale=scale, same_video_positives=same_video).backward()
    return _grads(model)


def _worker(rank: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results: dict[str, object] = {"rank": vd.rank(), "world": vd.world_size()}
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        cases = [
            ("exact", False, "paired"),
            ("exact", True, "paired"),
            ("local_slice", False, "paired"),
            ("local_slice", False, "local_rows"),
        ]
        for mode, same_video, pairing in cases:
            model, xt, xv = _setup()
            ddp = DistributedDataParallel(model)
            t, v, scale = ddp(xt[rows], xv[rows])
            feats = {"t": t, "v": v, "video_index": IDS[rows]}
            if pairing == "paired":
                loss = vd.contrastive_loss(
                    feats, _cosine, mode=mode, logit_scale=scale, same_video_positives=same_video
                )
            else:  # the wrong pairing: local rows with a local_slice gather
                loss = symmetric_infonce(
                    feats,
                    _cosine,
                    logit_scale=scale,
                    gather=vd.make_gather(mode),
                    row_offset=vd.row_offset(LOCAL),
                )
            loss.backward()
            results[f"{mode}/{same_video}/{pairing}"] = _grads(ddp)
        results["gathered_ids"] = vd.gather_with_grad(IDS[rows], "exact")
        results["gathered_mask"] = vd.gather_with_grad(IDS[rows] > 2, "exact")
        results["mean"] = vd.all_reduce_mean(torch.tensor([float(rank), 10.0]))
        results["broadcast"] = vd.broadcast_object({"seed": 123} if rank == 0 else None)
        try:
            vd.gather_with_grad(torch.zeros(2 + rank, 3), "exact")
            results["shape_error"] = ""
        except ValueError as e:
            results["shape_error"] = str(e)
        vd.barrier()
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork"
    )
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("same_video", [False, True])
def test_exact_gather_equals_full_batch_gradient(two_rank_results: list[dict], same_video: bool) -> None:
    full = _full_batch_grads(same_video)
    for res in two_rank_results:
        grads = res[f"exact/{same_video}/paired"]
        for name, want in full.items():
            assert want.abs().sum() > 0
            torch.testing.assert_close(grads[name], want, rtol=1e-9, atol=1e-12, msg=f"{name}")


def test_local_slice_gives_one_over_world_size(two_rank_results: list[dict]) -> None:
    full = _full_batch_grads(False)
    for res in two_rank_results:
        grads = res["local_slice/False/paired"]
        for name in ("text.weight", "text.bias", "video.weight", "video.bias"):
            ratio = grads[name] / full[name]
            torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / WORLD), rtol=1e-7, atol=1e-9)
        # logit_scale is used directly (not gathered): every rank has the full dL/ds, DDP averages to it
        torch.testing.assert_close(grads["logit_scale"], full["logit_scale"], rtol=1e-9, atol=1e-12)


def test_local_slice_with_local_rows_is_neither(two_rank_results: list[dict]) -> None:
    full = _full_batch_grads(False)
    grads = two_rank_results[0]["local_slice/False/local_rows"]["video.weight"]
    ratio = grads / full["video.weight"]
    assert not torch.allclose(ratio, torch.full_like(ratio, 1.0), atol=1e-3)
    assert not torch.allclose(ratio, torch.full_like(ratio, 1 / WORLD), atol=1e-3)


def test_collectives(two_rank_results: list[dict]) -> None:
    for rank, res in enumerate(two_rank_results):
        assert (res["rank"], res["world"]) == (rank, WORLD)
        assert torch.equal(res["gathered_ids"], IDS)
        assert res["gathered_mask"].dtype == torch.bool
        assert torch.equal(res["gathered_mask"], IDS > 2)
        torch.testing.assert_close(res["mean"], torch.tensor([0.5, 10.0]))
        assert res["broadcast"] == {"seed": 123}
        assert "same shape" in res["shape_error"]
        assert "(2, 3)" in res["shape_error"]


def test_single_process_is_identity() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert vd.world_size() == 1
    assert vd.rank() == 0
    assert vd.row_offset(3) == 0
    assert vd.gather_with_grad(x, "exact") is x
    assert vd.gather_with_grad(x, "local_slice") is x
    assert vd.all_reduce_mean(x) is x
    assert vd.broadcast_object({"a": 1}) == {"a": 1}
    vd.barrier()
    feats = {"t": torch.randn(4, 3), "v": torch.randn(4, 3)}
    a = vd.contrastive_loss(feats, _cosine, mode="exact")
    b = vd.contrastive_loss(feats, _cosine, mode="local_slice")
    assert a.item() == pytest.approx(symmetric_infonce(feats, _cosine).item())
    assert a.item() == b.item()
    with pytest.raises(ValueError, match=r"train\.gather"):
        vd.gather_with_grad(x, "sum")  # type: ignore[arg-type]
