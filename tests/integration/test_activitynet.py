"""ActivityNet shapes end to end on a real local Ray: ``vidret synth --layout activitynet`` videos (minutes at
30 fps, 640x360, B-frames and multi-second GOPs) with ``train.json``/``val_1.json`` paragraphs, read by the
``activitynet`` reader, prepared, then a few stage-1 steps, the feature cache, stage 2 and the evaluation with
``configs/activitynet.yaml``'s item shapes (64 frames at 1 frame/s, 64 words) on the debug-size model.

Five videos of about a minute (3 train, 2 val_1): the fewest that give a training batch with hard negatives
(3 pairs, 2 negatives each) and a re-ranking of 2 candidates; each costs seconds to generate and prepare.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import av
import pytest

from vidret.config import Config, SynthConfig, load_config
from vidret.data.annotations.manifest import build_manifest, read_manifest, write_manifest
from vidret.data.executors import run_prepare
from vidret.data.synthetic.activitynet import frame_size, generate_activitynet
from vidret.storage import Storage, join

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.ray, pytest.mark.slow]

VIDEOS, SECONDS, FPS, SHORT_SIDE = 5, 60.0, 30, 360
SPLITS = {"train": 3, "val": 2}  # the reader's "val" is val_1.json
STEPS = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("activitynet")
    cfg = SynthConfig(
        out=str(root / "corpus"), videos=VIDEOS, size=SHORT_SIDE, seconds=SECONDS, fps=FPS, workers=2
    )
    summary = generate_activitynet(cfg, Storage())
    return root, summary


def _config(root: Path, manifest: Path, *overrides: str) -> Config:
    """configs/activitynet.yaml with local paths, the debug model and a few steps (same item shapes)."""
    repo = Path(__file__).resolve().parents[2]
    return load_config(
        repo / "configs" / "activitynet.yaml",
        [
            f"run.out={root / 'run'}",
            f"data.manifest={manifest}",
            f"data.prepare_out={root / 'prepared'}",
            f"train.storage_path={root / 'ray-results'}",
            "data.size=32",
            "data.decoder=pyav",
            "data.decode_concurrency=1",
            "data.decode_cpus=0.25",
            "data.rows_per_block=2",
            "model.preset=debug",
            "model.weights=null",
            "model.temporal_layers=1",
            "diffusion.steps=10",
            "diffusion.num=2",
            "diffusion.t2v_k=2",
            "diffusion.v2t_k=2",
            "train.batch_size=3",
            f"train.max_steps={STEPS}",
            "train.checkpoint_every=1",
            "train.num_workers=1",
            "train.cpus_per_worker=0.5",
            "train.use_gpu=false",
            "train.max_failures=0",
            "train.log_every=1000",
            "eval.batch_size=2",
            "eval.threads=1",
            "eval.num_workers=1",
            "eval.report=false",
            *overrides,
        ],
    )


def test_synth_writes_activitynet_shaped_videos_and_annotations(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    width, height = frame_size(SHORT_SIDE)
    assert (summary["width"], summary["height"]) == (width, height) == (640, 360)
    assert summary["splits"] == {"train": 3, "val_1": 2}
    anns = {s: json.loads((root / "corpus" / "anns" / f"{s}.json").read_text()) for s in ("train", "val_1")}
    for split, entries in anns.items():
        assert len(entries) == summary["splits"][split]
        for vid, entry in entries.items():
            assert vid.startswith("v_")
            assert len(vid) == 13
            assert 3 <= len(entry["sentences"]) == len(entry["timestamps"]) <= 8
            assert 0.85 * SECONDS <= entry["duration"] <= SECONDS
            assert all(0 <= s < e <= entry["duration"] for s, e in entry["timestamps"])
            with av.open(str(root / "corpus" / "videos" / f"{vid}.mp4")) as c:
                stream = c.streams.video[0]
                assert (stream.width, stream.height, int(stream.average_rate)) == (width, height, FPS)
                assert stream.codec_context.has_b_frames
                keys = [float(p.pts * p.time_base) for p in c.demux(stream) if p.is_keyframe]
            assert len(keys) >= 2, "one GOP for a whole minute"
            assert max(b - a for a, b in itertools.pairwise(keys)) > 1.0, keys


def test_manifest_prepare_train_cache_evaluate(corpus: tuple[Path, dict]) -> None:
    from vidret.eval.job import run_evaluation
    from vidret.features.store import load_split, read_index
    from vidret.layout import stage_uri
    from vidret.train import trainer

    root, _ = corpus
    storage = Storage()
    raw = root / "manifest"
    for split, rows in SPLITS.items():
        result = build_manifest(
            "activitynet", str(root / "corpus" / "anns"), str(root / "corpus" / "videos"), split, storage
        )
        write_manifest(result, join(str(raw), f"{split}.parquet"), storage)
        table = read_manifest(join(str(raw), f"{split}.parquet"), storage)
        assert table.num_rows == rows
        paragraphs = [c[0] for c in table.column("captions").to_pylist()]
        assert all(p.count(".") >= 3 and not p.startswith(" ") for p in paragraphs), paragraphs
        ends = table.column("end").to_pylist()
        assert all(e == math.ceil(e) and e >= 0.85 * SECONDS for e in ends), ends
    prep_cfg = _config(root, raw)
    prepared = run_prepare(prep_cfg, splits=list(SPLITS))
    assert prepared["transcoded"] == VIDEOS, prepared
    assert prepared["failed"] == 0, prepared
    with av.open(next(iter((root / "prepared" / "videos").glob("*.mp4")))) as c:
        stream = c.streams.video[0]
        assert (stream.height, float(stream.average_rate)) == (224, 3.0)
    cfg = _config(root, root / "prepared" / "manifest")
    s1 = trainer.run_training(cfg)
    assert s1["steps"] == STEPS
    index = read_index(storage, s1["cache"]["val"])
    assert index is not None
    assert len(index["video_ids"]) == SPLITS["val"]
    features = load_split(storage, s1["cache"]["train"])
    assert features.video.frames.shape[:2] == (SPLITS["train"], 64)  # 64 frames per item
    assert features.text.tokens.shape[:2] == (SPLITS["train"], 64)  # 64 words per item
    frames = features.video.mask.sum(dim=1)
    assert bool(((frames >= 0.85 * SECONDS - 1) & (frames <= 64)).all()), frames  # 1 frame/s of ~a minute
    assert bool((features.text.mask.sum(dim=1) == 64).any()), "no paragraph filled the 64 words"
    s2 = trainer.run_training(_config(root, root / "prepared" / "manifest", "train.stage=generation"))
    assert s2["steps"] == STEPS
    assert s2["key"] == s1["key"]
    summary = run_evaluation(cfg, stage_uri(cfg, "generation"))
    metrics = summary["splits"]["val"]
    assert set(metrics) == {"stage1", "rerank"}
    assert all(0 <= metrics[v][d]["R1"] <= 100 for v in metrics for d in ("t2v", "v2t")), metrics
