"""Checkpoints: round trip, RNG restore, refusal of corrupt / incomplete / malicious files, content keys."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vidret.config import TrainConfig, dump_yaml, load_config
from vidret.model.checkpoint import (
    META_FILE,
    STATE_FILE,
    CheckpointError,
    checkpoint_key,
    is_valid_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from vidret.train.checkpoint import capture_rng, restore_rng
from vidret.train.ema import EMA
from vidret.train.optim import build_optimizer, build_scheduler

torch.set_num_threads(1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _trained_state() -> tuple[dict, _Net, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = _Net()
    cfg = TrainConfig()
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)
    ema = EMA(net, 0.99)
    for _ in range(2):
        net.head(net.backbone(torch.randn(5, 4))).pow(2).sum().backward()
        opt.step()
        sched.step()
        ema.update(net)
    state = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "ema": ema.state_dict(),
        "rng": capture_rng(),
        "step": 2,
        "epoch": 0,
        "config": dump_yaml(load_config()),
    }
    return state, net, opt


def test_round_trip_with_rng_restore(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    state, net, opt = _trained_state()
    expected = _draws()  # what the generators produce right after the capture
    meta = save_checkpoint(tmp_path / "ck", state)
    assert meta["step"] == 2
    assert meta["epoch"] == 0
    assert len(meta["config_sha256"]) == 64
    assert json.loads((tmp_path / "ck" / META_FILE).read_text()) == meta
    assert is_valid_checkpoint(tmp_path / "ck")
    _draws()  # move every generator on
    loaded = load_checkpoint(tmp_path / "ck")
    restore_rng(loaded["rng"])
    assert _draws() == expected
    fresh = _Net()
    fresh.load_state_dict(loaded["model"])
    for a, b in zip(fresh.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)
    fresh_opt = build_optimizer(fresh, TrainConfig())
    fresh_opt.load_state_dict(loaded["optimizer"])
    for name in ("exp_avg", "exp_avg_sq"):
        want = opt.state[net.head.weight][name]
        assert want.abs().sum() > 0
        assert torch.equal(fresh_opt.state[fresh.head.weight][name], want)
    assert loaded["scheduler"]["last_epoch"] == 2
    ema = EMA(fresh, 0.5)
    ema.load_state_dict(loaded["ema"])
    assert ema.decay == 0.99


def test_overwrite_and_meta_written_last(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    save_checkpoint(d, {"step": 1, "w": torch.zeros(3)})
    save_checkpoint(d, {"step": 2, "w": torch.ones(3)})
    assert read_meta(d)["step"] == 2
    assert torch.equal(load_checkpoint(d)["w"], torch.ones(3))
    assert sorted(os.listdir(d)) == [META_FILE, STATE_FILE]  # no temporary files left


def test_unsafe_state_is_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['extra'\]\['arr'\].*ndarray"):
        save_checkpoint(tmp_path / "ck", {"extra": {"arr": np.zeros(3)}})
    assert not is_valid_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize(
    "damage", ["missing_meta", "truncated", "flipped_byte", "bad_meta_json", "missing_state"]
)
def test_damaged_checkpoints_are_refused(tmp_path: Path, damage: str) -> None:
    d = tmp_path / "ck"
    save_checkpoint(d, {"step": 3, "w": torch.arange(1000.0)})
    state_path, meta_path = d / STATE_FILE, d / META_FILE
    if damage == "missing_meta":
        meta_path.unlink()
    elif damage == "truncated":
        data = state_path.read_bytes()
        state_path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped_byte":
        data = bytearray(state_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state_path.write_bytes(bytes(data))
    elif damage == "bad_meta_json":
        meta_path.write_text("{not json")
    else:
        state_path.unlink()
    assert not is_valid_checkpoint(d)
    with pytest.raises(CheckpointError, match=str(d)):
        load_checkpoint(d)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_even_with_a_valid_meta(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    save_checkpoint(d, {"step": 1})
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(str(marker))}, d / STATE_FILE)
    meta = json.loads((d / META_FILE).read_text())
    import hashlib

    meta["state_sha256"] = hashlib.sha256((d / STATE_FILE).read_bytes()).hexdigest()
    meta["state_bytes"] = (d / STATE_FILE).stat().st_size
    (d / META_FILE).write_text(json.dumps(meta))
    assert is_valid_checkpoint(d)  # integrity is fine; safety is checked when loading
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(d)
    assert not marker.exists()


def test_checkpoint_key() -> None:
    torch.manual_seed(0)
    a = _Net().state_dict()
    same = {k: v.clone() for k, v in reversed(list(a.items()))}
    key = checkpoint_key(a)
    assert len(key) == 16
    assert key == checkpoint_key(same)
    changed = {k: v.clone() for k, v in a.items()}
    changed["head.bias"][0] += 1e-6
    assert checkpoint_key(changed) != key
    retyped = {k: v.double() for k, v in a.items()}
    assert checkpoint_key(retyped) != key
    assert checkpoint_key({"w": torch.zeros(2, 3)}) != checkpoint_key({"w": torch.zeros(3, 2)})
    assert checkpoint_key({"w": torch.ones(2, dtype=torch.bfloat16)}) != checkpoint_key(
        {"w": torch.ones(2, dtype=torch.float16)}
    )


def test_restore_rng_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="capture_rng"):
        restore_rng({"python": {}})
