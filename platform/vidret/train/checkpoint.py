"""RNG capture for resumable training, and reporting a checkpoint to Ray Train.

The checkpoint directory format itself (atomic save, verified load, content keys) is
``vidret.model.checkpoint``; this module adds what only a training run needs.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray.train
import torch

from vidret.model.checkpoint import save_checkpoint
from vidret.storage.scratch import scratch_dir


def report_with_checkpoint(metrics: Mapping[str, float], rank: int, state: Mapping[str, Any]) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint (verified sha256 in meta.json).
    Entries of ``state`` that are None are left out."""
    kept = {k: v for k, v in state.items() if v is not None}
    with scratch_dir("ckpt") as tmp:
        if rank == 0:
            save_checkpoint(tmp, kept)
            ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(dict(metrics))


def capture_rng() -> dict[str, Any]:
    """Python ``random``, NumPy's global RNG, torch CPU and (if available) all CUDA generators, as tensors and
    primitives that ``weights_only`` loading accepts."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple), type(np_state)  # legacy=True: the (kind, keys, pos, ...) tuple
    kind, keys, pos, has_gauss, cached = np_state
    out: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng``. CUDA states are restored when CUDA is available with as many devices;
    otherwise they are skipped with a warning."""
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
        np.random.set_state(
            (
                npy["kind"],
                npy["keys"].numpy().astype(np.uint32),
                int(npy["pos"]),
                int(npy["has_gauss"]),
                float(npy["cached_gaussian"]),
            )
        )
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"restore_rng: expected the dict of capture_rng(), got a bad entry ({e!r})"
        ) from None
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(
                f"restore_rng: checkpoint has {len(cuda)} CUDA RNG states but this process sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} devices; "
                "CUDA RNG not restored",
                stacklevel=2,
            )
