"""TrainState: one update moves the step and the weights; its checkpoint round-trips through the file
format."""

from __future__ import annotations

from pathlib import Path

import torch

from vidret.config import load_config
from vidret.model.checkpoint import load_checkpoint, save_checkpoint
from vidret.storage import Storage
from vidret.train.state import TrainState

torch.set_num_threads(1)


def _state() -> TrainState:
    cfg = load_config(
        None,
        ["model.preset=debug", "model.temporal_layers=1", "train.ema_decay=0.5", "train.warmup_proportion=0"],
    )
    return TrainState.create(cfg, Storage(), None, total_steps=4)


def _loss(state: TrainState) -> torch.Tensor:
    return sum(p.square().sum() for p in state.model.parameters() if p.requires_grad)  # type: ignore[return-value]


def test_update_selection_and_checkpoint_round_trip(tmp_path: Path) -> None:
    state = _state()
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    state.update(_loss(state))
    assert state.step == 1
    assert any(not torch.equal(before[k], v) for k, v in state.model.state_dict().items())
    assert state.select(10.0, 5.0)  # the live weights win
    assert (state.best.score, state.best.step, state.best.source) == (10.0, 1, "model")
    assert not state.select(9.0, 9.5)  # neither beats the best: nothing changes
    state.update(_loss(state))
    assert state.select(11.0, 12.0)
    assert state.best.source == "ema"

    ckpt = state.state_dict(steps_per_epoch=2, final=True)
    assert ckpt["epoch"] == 1
    assert ckpt["selected"] is state.best_state
    save_checkpoint(tmp_path, ckpt)
    resumed = _state()
    resumed.load(load_checkpoint(tmp_path))
    assert resumed.step == 2
    assert resumed.best == state.best
    for k, v in state.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert resumed.lr == state.lr
    assert "selected" not in state.state_dict(steps_per_epoch=2, final=False)
