"""Ray Tune sweeps on a real local Ray instance, over a feature cache of real (debug-model) encoder outputs.

Only a validation cache exists and ``data.manifest`` points nowhere, so a sweep that tried to build or read
any other split (test included) would fail.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vidret.config import Config, load_config
from vidret.data.tokenizer import ClipTokenizer
from vidret.storage import Storage, join

pytestmark = pytest.mark.ray

NUM_VIDEOS = 8


def _config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"run.out={tmp_path / 'run'}",
            f"data.manifest={tmp_path / 'no-manifest'}",
            "data.max_words=8",
            "data.max_frames=4",
            "model.preset=debug",
            "model.temporal_layers=1",
            "diffusion.steps=10",
            "diffusion.num=3",
            "train.batch_size=4",
            "train.epochs=1",
            "train.optimizer=adamw",
            "train.schedule=warmup_cosine",
            "train.warmup_proportion=0.0",
            "train.bf16=false",
            "diffusion.t2v_k=4",
            "diffusion.v2t_k=4",
            *overrides,
        ],
    )


def _encode_split(
    model: torch.nn.Module, cfg: Config, storage: Storage, uri: str, split: str, seed: int
) -> None:
    """Encode random uint8 videos and tokenised captions with the model and write them as a cache split."""
    from vidret.features.store import write_split

    g = torch.Generator().manual_seed(seed)
    size = 32  # the debug preset's image size
    video = torch.randint(
        0, 256, (NUM_VIDEOS, cfg.data.max_frames, size, size, 3), generator=g, dtype=torch.uint8
    )
    video_mask = torch.ones(NUM_VIDEOS, cfg.data.max_frames, dtype=torch.int64)
    video_mask[::3, -1] = 0  # some videos are shorter
    captions = [
        f"a {c} {a} runs across the field number {i}"
        for i, (c, a) in enumerate(
            zip(
                ["red", "blue", "green", "small", "large", "old", "young", "fast"],
                ["dog", "cat", "horse", "car", "man", "woman", "bird", "train"],
                strict=True,
            )
        )
    ]
    ids, mask = ClipTokenizer(cfg.data.max_words)(captions, return_tensors="pt")
    with torch.no_grad():
        text = {k: v.numpy() for k, v in model.encode_text(ids, mask).items()}
        vid = {k: v.numpy() for k, v in model.encode_video(video, video_mask).items()}
    rows = np.arange(NUM_VIDEOS, dtype=np.int64)
    write_split(
        storage,
        uri,
        [{**text, "video_index": rows, "caption_index": np.zeros_like(rows), "caption_row": rows}],
        [{**vid, "video_index": rows, "ok": np.ones(NUM_VIDEOS, bool)}],
        {
            "split": split,
            "num_texts": NUM_VIDEOS,
            "num_videos": NUM_VIDEOS,
            "video_ids": [f"v{i}" for i in range(NUM_VIDEOS)],
            "captions": captions,
        },
    )


def _export(cfg: Config, storage: Storage, stage: str, splits: tuple[str, ...]) -> str:
    """A debug model's weights exported as ``stage`` plus its feature cache of ``splits``; returns the key."""
    from vidret.layout import cache_root, stage_uri
    from vidret.model.build import build_model, encoder_key
    from vidret.model.checkpoint import save_state

    torch.set_num_threads(1)
    model = build_model(cfg, storage, None).eval()
    state = model.state_dict()
    key = encoder_key(state)
    save_state(
        stage_uri(cfg, stage),
        {
            "selected": state,
            "key": key,
            "stage": stage,
            "step": 0,
            "best": {"score": 0.0, "step": 0, "source": "model"},
        },
        storage,
    )
    for i, split in enumerate(splits):
        _encode_split(model, cfg, storage, join(cache_root(cfg, key), split), split, seed=i)
    return key


def _read_csv(storage: Storage, uri: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(storage.read_text(uri))))


def test_inference_sweep_selects_on_validation(ray_session: None, tmp_path: Path) -> None:
    from vidret.features.scoring import evaluate_features
    from vidret.features.store import load_split
    from vidret.layout import cache_root
    from vidret.tune.space import apply_overrides, overrides_for, trial_name
    from vidret.tune.sweep import run_tune

    cfg = _config(
        tmp_path,
        "tune.kind=inference",
        "tune.alphas=[0.5, 5.0]",
        "tune.temps=[1.0, 10.0]",
        "tune.ks=[2, 4]",
        "tune.sample_steps=[0, 5]",
        "tune.num_samples=4",
        "tune.max_concurrent=2",
        "tune.metric=t2v_R1",
    )
    storage = Storage(cfg.storage)
    key = _export(cfg, storage, "generation", (cfg.data.val_split,))

    summary = run_tune(cfg)  # default checkpoint: the run's exported generation weights

    assert summary["num_trials"] == 4  # 16 grid points, 4 drawn
    rows = _read_csv(storage, summary["table_path"])
    assert len(rows) == 4
    assert len({r["name"] for r in rows}) == 4
    best_by_table = max(float(r["t2v_R1"]) for r in rows)
    assert summary["best_metric"] == pytest.approx(best_by_table)
    assert rows[0]["rank"] == "1"
    assert float(rows[0]["t2v_R1"]) == pytest.approx(best_by_table)
    assert rows[0]["name"] == trial_name(summary["best_params"])
    # the reported numbers are the validation evaluation of that point, recomputed here in-process
    from vidret.layout import stage_uri
    from vidret.model.build import build_model
    from vidret.model.checkpoint import load_state

    model = build_model(cfg, storage, None)
    model.load_state_dict(load_state(stage_uri(cfg, "generation"), storage)["selected"])
    val = load_split(storage, join(cache_root(cfg, key), cfg.data.val_split))
    best_cfg = apply_overrides(cfg, overrides_for("inference", summary["best_params"]))
    res = evaluate_features(model, val, cfg.eval, best_cfg.diffusion, rerank=True)
    assert res.metrics["rerank"]["t2v"]["R1"] == pytest.approx(summary["best_metric"])
    assert res.metrics["rerank"]["v2t"]["MnR"] == pytest.approx(float(rows[0]["v2t_MnR"]))
    # outputs: best overrides and the full config with them applied
    out = Path(summary["out"])
    assert yaml.safe_load((out / "best_overrides.yaml").read_text()) == overrides_for(
        "inference", summary["best_params"]
    )
    resolved = load_config(out / "best_config.yaml")
    assert resolved.diffusion == best_cfg.diffusion
    assert resolved.model == cfg.model
    text = (out / "results.txt").read_text()
    assert "stage 1 (no re-rank)" in text
    assert all(r["name"] in text for r in rows)
    # only the validation cache was ever built; no other split was touched
    assert sorted(p.name for p in Path(cache_root(cfg, key)).iterdir()) == [cfg.data.val_split]


def test_inference_sweep_refuses_stage1_weights_and_val_as_test(ray_session: None, tmp_path: Path) -> None:
    from vidret.layout import stage_uri
    from vidret.tune.sweep import run_tune

    cfg = _config(tmp_path)
    storage = Storage(cfg.storage)
    _export(cfg, storage, "discrimination", ())
    with pytest.raises(ValueError, match="expected 'generation'"):
        run_tune(cfg, stage_uri(cfg, "discrimination"))
    with pytest.raises(ValueError, match="validation only"):
        run_tune(_config(tmp_path, "data.test_split=val"))


@pytest.mark.slow
def test_training_sweep_runs_stage2_per_learning_rate(ray_session: None, tmp_path: Path) -> None:
    from vidret.train.trainer import run_training
    from vidret.tune.space import trial_out
    from vidret.tune.sweep import run_tune

    cfg = _config(
        tmp_path,
        "tune.kind=training",
        "tune.lrs=[1.0e-4, 1.0e-2]",
        "tune.max_concurrent=2",
        "tune.metric=t2v_R1",
    )
    storage = Storage(cfg.storage)
    _export(cfg, storage, "discrimination", (cfg.data.train_split, cfg.data.val_split))

    with pytest.warns(UserWarning, match="max_concurrent 2 lowered to 1"):
        summary = run_tune(cfg, train=run_training)

    assert summary["num_trials"] == 2
    rows = _read_csv(storage, summary["table_path"])
    assert summary["best_metric"] == pytest.approx(max(float(r["t2v_R1"]) for r in rows))
    assert all(int(r["train_steps"]) == 2 for r in rows)  # 8 captions, batch 4, 1 epoch
    for lr in (1e-4, 1e-2):
        trial = Path(trial_out(cfg, {"lr": lr}))
        assert (trial / "checkpoints" / "generation" / "meta.json").is_file()
        assert yaml.safe_load((trial / "config.generation.yaml").read_text())["train"]["lr"] == lr
    assert load_config(Path(summary["best_config"])).train.lr == summary["best_params"]["lr"]
