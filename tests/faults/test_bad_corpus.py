"""A corpus mixing good videos with every kind of bad one, through the real check and evaluation jobs.

The bad kinds: corrupt (random bytes), truncated (the first half of a good generated file), zero-byte,
audio-only (an
AAC-only MP4 made with PyAV) and missing (a URI pointing nowhere); with ``../shared`` present, also real
broken clips (audio-only MP4, a corrupt VP9 bitstream) and real good ones in other codecs and containers.
Within ``data.max_bad_fraction`` every bad video is skipped (never decoded into features) and listed by URI
with its reason, in ``vidret check``'s summary and in the evaluation's ``metrics.json``; above it the check
says so and the evaluation fails with ``TooManyBadVideosError`` listing them.

What ``tests/integration/test_pipeline.py`` and ``test_check_prepare.py`` cover (a few corrupt, empty and
missing files through the bare pipeline and the check) is not repeated: here all five kinds are mixed with
good videos in one manifest, and the verdict is read from the jobs' own summaries.
"""

from __future__ import annotations

import fractions
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
from test_evaluate import _export  # random debug weights exported as a checkpoint
from train_helpers import make_corpus, small_config

from vidret.config import Config
from vidret.data.annotations.manifest import MANIFEST_SCHEMA, read_manifest, write_manifest
from vidret.data.check import TooManyBadVideosError
from vidret.data.executors import run_check
from vidret.eval.job import run_evaluation
from vidret.features import store as cache
from vidret.layout import cache_root
from vidret.storage import Storage

pytestmark = pytest.mark.ray

REAL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-videos"
REAL_BAD = {"sample_audio_only.mp4": "no_video_stream", "invalid-bitstream.webm": "corrupt"}
REAL_GOOD = ("bbb_176x144_192kbps_15fps_mpeg4.mp4", "bear-vp9-odd-dimensions.webm")


@dataclass(frozen=True)
class MixedCorpus:
    root: Path
    manifest: Path  # folder holding test.parquet
    good: list[str]  # URIs
    bad: dict[str, str]  # URI -> the reason it must be reported with
    kinds: dict[str, str]  # URI -> kind of bad (for messages)
    real: bool  # the real clips of ../shared are in the mix

    @property
    def total(self) -> int:
        return len(self.good) + len(self.bad)


def _audio_only(path: Path) -> None:
    """An MP4 (M4A) holding a single AAC stream: 10 frames of silence."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 8000, i * 1024, fractions.Fraction(1, 8000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> MixedCorpus:
    """12 generated good videos, one of each bad kind, and (with ../shared) 2 good + 2 bad real clips,
    interleaved in ``manifest/test.parquet``. Real clips are copied to tmp (../shared is never written)."""
    root = tmp_path_factory.mktemp("bad-corpus")
    corpus = make_corpus(root / "gen", videos=16)
    good = read_manifest(str(corpus.manifest / "train.parquet"), Storage()).column("video_uri").to_pylist()
    bad_dir = root / "bad"
    bad_dir.mkdir()
    source = Path(good[0]).read_bytes()
    (bad_dir / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (bad_dir / "truncated.mp4").write_bytes(source[: len(source) // 2])
    (bad_dir / "zero.mp4").write_bytes(b"")
    _audio_only(bad_dir / "audio_only.m4a")
    made = {
        "corrupt.mp4": ("corrupt", "corrupt"),
        "truncated.mp4": ("truncated", "corrupt"),  # file: kind, reason
        "zero.mp4": ("zero-byte", "corrupt"),
        "audio_only.m4a": ("audio-only", "no_video_stream"),
        "missing.mp4": ("missing", "missing"),
    }  # never written
    bad = {str(bad_dir / name): reason for name, (_, reason) in made.items()}
    kinds = {str(bad_dir / name): kind for name, (kind, _) in made.items()}
    real = REAL_DIR.is_dir()
    if real:
        real_dir = root / "real"
        real_dir.mkdir()
        for name in (*REAL_BAD, *REAL_GOOD):
            shutil.copyfile(REAL_DIR / name, real_dir / name)
        good += [str(real_dir / name) for name in REAL_GOOD]
        bad.update({str(real_dir / name): reason for name, reason in REAL_BAD.items()})
        kinds.update({str(real_dir / name): f"real {reason}" for name, reason in REAL_BAD.items()})
    uris = list(good)
    for i, uri in enumerate(bad):  # spread the bad ones among the good ones
        uris.insert(2 + 3 * i, uri)
    n = len(uris)
    table = pa.table(
        {
            "video_id": [Path(u).stem for u in uris],
            "video_uri": uris,
            "captions": [[f"a clip called {Path(u).stem}"] for u in uris],
            "start": [None] * n,
            "end": [None] * n,
            "split": ["test"] * n,
            "dataset": ["custom"] * n,
        },
        schema=MANIFEST_SCHEMA,
    )
    write_manifest(table, str(root / "manifest" / "test.parquet"), Storage())
    return MixedCorpus(root=root, manifest=root / "manifest", good=good, bad=bad, kinds=kinds, real=real)


def _within(m: MixedCorpus) -> float:
    """A data.max_bad_fraction whose budget is exactly the number of bad videos."""
    return (len(m.bad) + 0.5) / m.total


def _below(m: MixedCorpus) -> float:
    """A data.max_bad_fraction whose budget is one bad video short."""
    return (len(m.bad) - 0.5) / m.total


def _config(m: MixedCorpus, out: str, max_bad_fraction: float, *overrides: str) -> Config:
    return small_config(
        m.root / out,
        m.manifest,
        f"data.max_bad_fraction={max_bad_fraction}",
        "eval.rerank=false",
        "eval.report=false",
        *overrides,
    )


# -------------------------------------------------------------------------------------------------- check
@pytest.fixture(scope="module")
def checked(ray_train: None, mixed: MixedCorpus) -> dict:
    """``vidret check`` of the mixed manifest, one bad video over the budget; its summary as written."""
    out = str(mixed.root / "check.json")
    summary = run_check(
        _config(mixed, "check", _below(mixed)), str(mixed.manifest / "test.parquet"), out_uri=out
    )
    assert json.loads(Path(out).read_text()) == summary
    return summary


def test_check_summary_counts_and_lists_every_kind(mixed: MixedCorpus, checked: dict, faults) -> None:
    faults.inject("bad_corpus", f"vidret check over {mixed.total} videos, {len(mixed.bad)} bad of every kind")
    listed = {f["video_uri"]: f["reason"] for f in checked["failures"]}
    faults.loss(rows_lost=len(set(mixed.bad) ^ set(listed)))  # bad ones not listed + good ones listed
    assert listed == mixed.bad, {mixed.kinds.get(u, u): r for u, r in listed.items()}
    assert (checked["total"], checked["ok"], checked["bad_videos"]) == (
        mixed.total,
        len(mixed.good),
        len(mixed.bad),
    )
    assert {r: n for r, n in checked["by_reason"].items() if n} == dict(Counter(mixed.bad.values()))
    assert checked["within_budget"] is False  # one bad video over data.max_bad_fraction


def test_real_torture_clips_in_the_mix(mixed: MixedCorpus, checked: dict) -> None:
    if not mixed.real:
        pytest.skip(f"{REAL_DIR} is missing: the mixed corpus holds generated videos only")
    listed = {
        Path(f["video_uri"]).name: f["reason"] for f in checked["failures"] if "/real/" in f["video_uri"]
    }
    assert listed == REAL_BAD  # and the real good clips (MPEG-4 Part 2, odd-sized VP9) decoded


# ------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Weights:
    uri: str  # random debug weights exported as a stage-1 checkpoint
    key: str  # their feature-cache key


@pytest.fixture(scope="module")
def weights(mixed: MixedCorpus) -> Weights:
    uri = str(mixed.root / "init" / "discrimination")
    return Weights(uri, _export(_config(mixed, "init", 0.0), uri, "discrimination"))


def _cache_uri(cfg: Config, w: Weights) -> str:
    return cache.split_uri(cache_root(cfg, w.key), "test")


def test_evaluation_skips_and_lists_bad_videos_in_its_summary(
    ray_train: None, mixed: MixedCorpus, weights: Weights, faults
) -> None:
    faults.inject(
        "bad_corpus", f"evaluation over {mixed.total} videos, {len(mixed.bad)} bad, within the budget"
    )
    cfg = _config(mixed, "eval", _within(mixed))
    summary = run_evaluation(cfg, weights.uri)
    written = json.loads((Path(summary["out"]) / "metrics.json").read_text())
    report = written["bad_videos"]["test"]
    faults.loss(rows_lost=len(set(mixed.bad) ^ set(report["videos"])))
    assert report["videos"] == mixed.bad, {mixed.kinds.get(u, u): r for u, r in report["videos"].items()}
    assert (report["total"], report["bad"]) == (mixed.total, len(mixed.bad))
    assert report["by_reason"] == dict(Counter(mixed.bad.values()))
    assert summary["bad_videos"] == written["bad_videos"]
    # skipped: the bad rows carry no decoded frame (all masked out); every good one was decoded and encoded
    fs = cache.load_split(Storage(), _cache_uri(cfg, weights))
    uris = read_manifest(str(mixed.manifest / "test.parquet"), Storage()).column("video_uri").to_pylist()
    is_bad = np.array([u in mixed.bad for u in uris])
    np.testing.assert_array_equal(fs.video_ok, ~is_bad)
    mask = fs.video.mask.numpy()
    assert not mask[is_bad].any()
    assert mask[~is_bad, 0].all()


def test_evaluation_above_the_budget_fails_listing_them(
    ray_train: None, mixed: MixedCorpus, weights: Weights, faults
) -> None:
    faults.inject(
        "bad_corpus", f"evaluation over {mixed.total} videos, {len(mixed.bad)} bad, one over the budget"
    )
    # Ray Data 2.60 leaves an actor of a failed pipeline alive: at 0 CPU it blocks nothing that shares this
    # Ray
    cfg = _config(mixed, "eval-strict", _below(mixed), "data.decode_cpus=0.0")
    with pytest.raises(TooManyBadVideosError) as info:
        run_evaluation(cfg, weights.uri)
    assert info.value.bad == mixed.bad  # budget + 1 bad videos: the run stops at the last one, all listed
    message = str(info.value)
    assert f"{len(mixed.bad)} of {mixed.total} videos failed to decode" in message
    for uri, reason in mixed.bad.items():
        assert f"{uri} ({reason})" in message
    assert cache.read_index(Storage(), _cache_uri(cfg, weights)) is None, (
        "the failed run left a valid-looking cache"
    )
