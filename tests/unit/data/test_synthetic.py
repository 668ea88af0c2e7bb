"""The generated corpus: layout, splits, captions, determinism, decodability, S3 output."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from vidret.config import StorageConfig, SynthConfig
from vidret.data.synthetic import frame_count, generate_corpus, plan_corpus, split_sizes
from vidret.data.synthetic.plan import COLOURS, HELD_OUT, MOTIONS, SHAPES
from vidret.data.synthetic.render import RGB, render_frames
from vidret.storage import Storage

SMALL = {"videos": 24, "seed": 3, "size": 32, "seconds": 1.5, "fps": 8, "workers": 1}
# Every noun the captions use for a held-out pair, so a paraphrase cannot hide one.
HELD_OUT_PHRASES = re.compile(r"\b(red triangle|green (circle|ball|disc)|blue (square|box|block))\b")


def _generate(root: Path, **changes: object) -> dict:
    cfg = SynthConfig(**{**SMALL, "out": str(root), **changes})
    return generate_corpus(cfg, Storage(StorageConfig()))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _decode_pyav(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    return root, _generate(root)


def test_layout_csv_and_json(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    ids = [f"synth{i:06d}" for i in range(SMALL["videos"])]
    assert sorted(p.stem for p in (root / "videos").iterdir()) == ids
    assert sorted(p.name for p in (root / "anns").iterdir()) == [
        "MSRVTT_data.json",
        "ood.csv",
        "test.csv",
        "train.csv",
        "val.csv",
    ]
    assert json.loads((root / "summary.json").read_text()) == summary

    data = json.loads((root / "anns" / "MSRVTT_data.json").read_text())
    assert [v["video_id"] for v in data["videos"]] == ids
    assert [s["sen_id"] for s in data["sentences"]] == list(range(len(data["sentences"])))
    caps: dict[str, list[str]] = {}
    for s in data["sentences"]:
        caps.setdefault(s["video_id"], []).append(s["caption"])
    assert all(2 <= len(caps[v]) <= 5 and len(set(caps[v])) == len(caps[v]) for v in ids)
    split_of = {v["video_id"]: v["split"] for v in data["videos"]}

    train = _csv_rows(root / "anns" / "train.csv")
    assert list(train[0]) == ["video_id"]
    assert [r["video_id"] for r in train] == [v for v in ids if split_of[v] == "train"]
    seen = {r["video_id"] for r in train}
    for split in ("val", "test", "ood"):
        rows = _csv_rows(root / "anns" / f"{split}.csv")
        assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
        assert [r["video_id"] for r in rows] == [v for v in ids if split_of[v] == split]
        assert all(r["sentence"] == caps[r["video_id"]][0] for r in rows)  # commas survive csv quoting
        seen |= {r["video_id"] for r in rows}
    assert seen == set(ids)
    assert summary["splits"] == split_sizes(SMALL["videos"]) == {"train": 14, "val": 1, "test": 6, "ood": 3}
    assert summary["captions"]["total"] == len(data["sentences"])


def test_held_out_pairs_only_in_ood(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    data = json.loads((root / "anns" / "MSRVTT_data.json").read_text())
    caps: dict[str, list[str]] = {}
    for s in data["sentences"]:
        caps.setdefault(s["video_id"], []).append(s["caption"])
    held = {f"{c} {s}" for c, s in HELD_OUT}
    for video in data["videos"]:
        pairs = {f"{o['colour']} {o['shape']}" for o in video["objects"]}
        mentions = [bool(HELD_OUT_PHRASES.search(c)) for c in caps[video["video_id"]]]
        if video["split"] == "ood":
            assert pairs & held, video
            assert all(mentions), video
        else:
            assert not pairs & held, video
            assert not any(mentions), video


def test_larger_plan_splits_vocabulary_and_unique_eval_captions() -> None:
    plans = plan_corpus(seed=0, videos=600)
    by_split: dict[str, list] = {}
    for p in plans:
        by_split.setdefault(p.split, []).append(p)
    assert {k: len(v) for k, v in by_split.items()} == split_sizes(600)
    assert all(not HELD_OUT_PHRASES.search(c) for p in by_split["train"] for c in p.captions)
    words = " ".join(c for p in plans for c in p.captions).split()
    assert {c for c in COLOURS if c in words} == set(COLOURS)
    assert len(COLOURS) >= 4
    assert {s for s in SHAPES if s in words} == set(SHAPES)
    assert len(SHAPES) >= 3
    assert {"left", "right", "up", "down"} <= set(words)
    assert len(MOTIONS) >= 4
    for split in ("val", "test", "ood"):
        firsts = [p.captions[0] for p in by_split[split]]
        assert len(set(firsts)) == len(firsts), split
    # reversed-order twins ("A, then B" next to "B, then A") in every eval split
    for split in ("val", "test", "ood"):
        contents = {p.content for p in by_split[split]}
        twins = [c for c in contents if c.reversed() in contents]
        assert len(twins) >= 2, split


def test_kinds_and_then() -> None:
    plans = plan_corpus(seed=1, videos=200)
    kinds = {p.content.kind for p in plans}
    assert kinds == {"one_object", "two_objects", "two_events"}
    for p in plans:
        has_then = [" then " in f" {c} " for c in p.captions]
        assert all(has_then) if p.content.kind == "two_events" else not any(has_then), p.captions
        assert len(p.objects) == (1 if p.content.kind == "one_object" or p.content.order == "then_it" else 2)


def _centroid(frame: np.ndarray, rgb: tuple[int, int, int]) -> tuple[float, float, int]:
    ys, xs = np.nonzero(np.all(frame == np.array(rgb, np.uint8), axis=-1))
    return float(xs.mean()), float(ys.mean()), len(xs)


def test_rendered_motion_matches_caption() -> None:
    """Single-object clips: the object's pixels move the way the caption says (image y grows downwards)."""
    plans = [p for p in plan_corpus(seed=2, videos=200) if p.content.kind == "one_object"]
    checked = set()
    for p in plans:
        ((colour, _, motion),) = p.content.items
        frames = render_frames(p, 48, 9)
        (x0, y0, n0), (x1, y1, n1) = _centroid(frames[0], RGB[colour]), _centroid(frames[-1], RGB[colour])
        change = {
            "left": x0 - x1,
            "right": x1 - x0,
            "up": y0 - y1,
            "down": y1 - y0,
            "grows": n1 - n0,
            "shrinks": n0 - n1,
        }[motion]
        assert change > (15 if motion in ("grows", "shrinks") else 0.4 * 48), (p.captions[0], change)
        checked.add(motion)
    assert checked == set(MOTIONS)


def test_every_file_decodes_with_decord_and_pyav(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    frames = frame_count(SynthConfig(**SMALL))
    assert summary["frames"] == frames == 12
    plans = {p.video_id: p for p in plan_corpus(SMALL["seed"], SMALL["videos"])}
    for path in sorted((root / "videos").glob("*.mp4")):
        reader = decord.VideoReader(str(path))
        assert len(reader) == frames
        by_decord = reader.get_batch(list(range(frames))).asnumpy()
        by_pyav = _decode_pyav(path)
        assert by_decord.shape == by_pyav.shape == (frames, 32, 32, 3)
        drawn = render_frames(plans[path.stem], 32, frames).astype(np.float32)
        assert np.abs(by_pyav.astype(np.float32) - drawn).mean() < 12, path.name  # lossy but faithful


def test_same_seed_same_bytes_any_workers_and_other_seed_differs(tmp_path: Path) -> None:
    small = {"videos": 5, "size": 32, "seconds": 1.0}
    a = _generate(tmp_path / "a", **small)
    b = _generate(tmp_path / "b", **small, workers=2)
    c = _generate(tmp_path / "c", **small, seed=4)
    a.pop("out"), b.pop("out"), c.pop("out")
    assert a == b
    assert a != c
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 + 5 + 1
    for rel in files:
        if rel.name != "summary.json":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    json_a, json_c = ((tmp_path / d / "anns" / "MSRVTT_data.json").read_text() for d in "ac")
    assert json_a != json_c
    for name in ("synth000000.mp4", "synth000004.mp4"):
        decoded = [_decode_pyav(tmp_path / d / "videos" / name) for d in "abc"]
        assert np.array_equal(decoded[0], decoded[1])
        assert not np.array_equal(decoded[0], decoded[2])


def test_progress_reports_every_video(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    cfg = SynthConfig(videos=20, size=16, seconds=0.5, fps=8)
    generate_corpus(
        cfg, Storage(StorageConfig()), out=str(tmp_path / "x"), progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (20, 20)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})
    assert len(list((tmp_path / "x" / "videos").iterdir())) == 20
    assert not (tmp_path / "corpus").exists()  # `out` overrides cfg.out


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"videos": 3}, "synth.videos"), ({"seconds": 0.25, "fps": 8}, "frames"), ({"seed": -1}, "synth.seed")],
)
def test_rejects_settings_it_cannot_honour(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _generate(tmp_path / "bad", **changes)
    assert not (tmp_path / "bad").exists()


@pytest.mark.s3
def test_writes_to_s3(s3_bucket: tuple[StorageConfig, str], tmp_path: Path) -> None:
    storage_cfg, bucket = s3_bucket
    cfg = SynthConfig(videos=6, size=32, seconds=1.0, fps=8, seed=5, workers=1)
    storage = Storage(storage_cfg)
    remote = generate_corpus(cfg, storage, out=f"{bucket}/corpus")
    local = generate_corpus(cfg, Storage(StorageConfig()), out=str(tmp_path / "local"))
    names = [u.split("/corpus/", 1)[1] for u in storage.list(f"{bucket}/corpus")]
    assert names == sorted(
        ["summary.json"]
        + [f"anns/{n}" for n in ("MSRVTT_data.json", "train.csv", "val.csv", "test.csv", "ood.csv")]
        + [f"videos/synth{i:06d}.mp4" for i in range(6)]
    )
    assert json.loads(storage.read_text(f"{bucket}/corpus/summary.json")) == remote
    blob = storage.read_bytes(f"{bucket}/corpus/videos/synth000002.mp4")
    assert blob == (tmp_path / "local" / "videos" / "synth000002.mp4").read_bytes()
    with av.open(io.BytesIO(blob)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8
    assert {k: v for k, v in remote.items() if k != "out"} == {k: v for k, v in local.items() if k != "out"}
