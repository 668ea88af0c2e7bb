"""Collectives for Ray Train workers; the only module of the package that imports ``torch.distributed``.

Nothing here initialises a process group (Ray Train does); every helper is the identity / a no-op when
``torch.distributed`` is not initialised or the world has one process.

Gradient semantics of the stage-1 loss (W workers, B local rows each, G = W B; DDP averages gradients):

* ``train.gather = "exact"`` (default). Each worker takes the loss of its B LOCAL rows against the G
  gathered columns, averaged over its B rows: ``L_r``. The full-batch loss is ``L = (1/W) sum_r L_r``.
  ``gather_with_grad(x, "exact")`` sums the columns' gradient over workers in backward, so worker r
  receives ``d(sum_r' L_r')/d x_r`` for its features; DDP's average turns that into ``dL/d theta``. Scalars
  used directly (``logit_scale``) get ``dL_r/ds`` per worker, averaged to ``dL/ds``. So the gradient
  equals a single process on the full G batch, exactly, for every parameter, with B x G work per worker.
* ``train.gather = "local_slice"`` (the upstream ``AllGather``). Backward returns only the local slice of
  the incoming gradient (no all-reduce). Upstream every worker computes the FULL G x G loss ``L``: worker r
  gets ``dL/dx_r`` and DDP's average gives ``(1/W) dL/d theta`` for every parameter reached through the
  gathered features, but ``dL/ds`` (unscaled) for ``logit_scale``. Combining ``local_slice`` with
  local-row losses would be neither: the gradient that other workers' rows send to the local columns is
  dropped. ``contrastive_loss`` applies the right pairing for each mode.

With Adam the 1/W factor mostly cancels (it is ~scale-invariant), except through eps and weight decay.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from vidret.train.losses import Gather, SimilarityFn, identity_gather, symmetric_infonce

GatherMode = Literal["exact", "local_slice"]
_MAX_DIMS = 8


def is_initialized() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not initialised)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not initialised)."""
    return dist.get_rank() if is_initialized() else 0


def _check_same_shape(x: Tensor) -> None:
    """Raise ValueError on every rank if the ranks' tensors differ in shape (one tiny all_gather)."""
    if x.ndim > _MAX_DIMS:
        raise ValueError(f"gather_with_grad: at most {_MAX_DIMS} dims, got shape {tuple(x.shape)}")
    desc = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.int64, device=x.device)
    desc[0] = x.ndim
    desc[1 : x.ndim + 1] = torch.tensor(x.shape, dtype=torch.int64)
    descs = [torch.empty_like(desc) for _ in range(world_size())]
    dist.all_gather(descs, desc)
    shapes = [tuple(d[1 : int(d[0]) + 1].tolist()) for d in descs]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"gather_with_grad: every rank needs the same shape, got {shapes} by rank (an uneven last "
            "batch? iterate the dataset shard with drop_last=True)"
        )


def _all_gather_cat(x: Tensor) -> Tensor:
    wire = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo does not reduce/gather bool everywhere
    parts = [torch.empty_like(wire) for _ in range(world_size())]
    dist.all_gather(parts, wire.contiguous())
    out = torch.cat(parts, dim=0)
    return out.to(torch.bool) if x.dtype == torch.bool else out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward sums the gradient over ranks (``exact``) or not (``local_slice``),
    then returns this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, exact: bool) -> Tensor:
        ctx.exact, ctx.rank, ctx.rows = exact, rank(), x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx: Any, grad_G: Tensor) -> tuple[Tensor, None]:
        if ctx.exact:
            grad_G = grad_G.contiguous().clone()  # all_reduce is in place; the incoming grad may be shared
            dist.all_reduce(grad_G, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad_G[start : start + ctx.rows], None


def gather_with_grad(x_B: Tensor, mode: GatherMode = "exact", check_shapes: bool = True) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 in rank order: ``(B, ...) -> (W * B, ...)``.

    ``mode="exact"``: backward all-reduces (sums) the gradient, then keeps the local rows, which is the
    exact gradient of a loss summed over ranks (see the module docstring). ``mode="local_slice"``: backward
    keeps the local rows of this rank's gradient only (upstream's ``AllGather``). Tensors without grad
    (masks, ids) are gathered as plain data. ``check_shapes`` costs one tiny collective and turns a
    mismatched shape (which would hang or corrupt NCCL) into a ValueError. Identity on one process.
    """
    if mode not in ("exact", "local_slice"):
        raise ValueError(f"train.gather: expected 'exact' or 'local_slice', got {mode!r}")
    if not is_initialized() or world_size() == 1:
        return x_B
    if x_B.ndim == 0:
        raise ValueError("gather_with_grad: expected a tensor with a batch dimension, got a 0-d tensor")
    if check_shapes:
        _check_same_shape(x_B)
    if x_B.requires_grad:
        gathered_GD: Tensor = _GatherWithGrad.apply(x_B, mode == "exact")  # Function.apply returns Any
        return gathered_GD
    return _all_gather_cat(x_B)


def make_gather(mode: GatherMode = "exact", check_shapes: bool = True) -> Gather:
    """``gather_with_grad`` bound to ``mode``: the ``gather`` callable the model and losses take."""
    if mode not in ("exact", "local_slice"):
        raise ValueError(f"train.gather: expected 'exact' or 'local_slice', got {mode!r}")
    return functools.partial(gather_with_grad, mode=mode, check_shapes=check_shapes)


def row_offset(local_rows: int) -> int:
    """Index of this rank's first row in the gathered batch (equal shards)."""
    return rank() * local_rows


def contrastive_loss(
    features: Mapping[str, Tensor],
    similarity: SimilarityFn,
    *,
    mode: GatherMode = "exact",
    logit_scale: float | Tensor = 100.0,
    same_video_positives: bool = False,
    video_id_key: str = "video_index",
) -> Tensor:
    """The stage-1 symmetric InfoNCE for this rank's features, paired with ``mode`` as the module docstring
    derives: ``exact`` = local rows vs gathered columns (exact full-batch gradient after DDP averaging);
    ``local_slice`` = the full gathered G x G loss on every rank (upstream; 1/W gradient through features).
    On one process both are the method's loss on the batch. Returns a scalar."""
    batched = [v for v in features.values() if v.ndim >= 1]
    if not batched:
        raise ValueError("contrastive_loss: expected at least one batched feature tensor")
    if mode == "exact":
        return symmetric_infonce(
            features,
            similarity,
            logit_scale=logit_scale,
            gather=make_gather("exact"),
            row_offset=row_offset(batched[0].shape[0]),
            same_video_positives=same_video_positives,
            video_id_key=video_id_key,
        )
    if mode == "local_slice":
        gathered = {k: gather_with_grad(v, "local_slice") if v.ndim >= 1 else v for k, v in features.items()}
        return symmetric_infonce(
            gathered,
            similarity,
            logit_scale=logit_scale,
            gather=identity_gather,
            same_video_positives=same_video_positives,
            video_id_key=video_id_key,
        )
    raise ValueError(f"train.gather: expected 'exact' or 'local_slice', got {mode!r}")


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a new float tensor, no gradient); ``x`` itself on one process."""
    if not is_initialized() or world_size() == 1:
        return x
    out = x.detach().clone()
    if not out.is_floating_point():
        out = out.double()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_initialized() and world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; small objects only). Identity on one process."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
