"""The evaluation job end to end on a generated corpus and a real local Ray instance.

Weights are a debug model's random initialisation exported as a stage-2 checkpoint (no training), but the
feature cache is built for real: manifests of a 40-video corpus -> Ray Data decode -> encoder actors ->
cache shards -> blocked WTI -> diffusion re-ranking (Ray tasks when eval.num_workers > 1) -> metrics.json
and report.html. ``train`` is multi-caption (2-5 captions per video, grouped metrics), ``test`` single.

Determinism is checked on the matrices themselves (``evaluate_features`` is wrapped to keep its result), not
only on the rounded metrics: a re-run on two workers and a run that rebuilds the cache from the videos must
both give the first (one-worker) run's stage-1 and re-ranked matrices bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vidret.config import Config, SynthConfig, load_config
from vidret.storage import Storage, join

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

SPLITS = ("train", "val", "test", "ood")
EVAL_SPLITS = ("train", "test")  # the first one is the report's


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 generated videos (32 px, 1 s at 8 fps) and ``manifest/<split>.parquet`` for every split."""
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("eval-corpus")
    storage = Storage()
    generate_corpus(
        SynthConfig(out=str(root / "corpus"), videos=40, size=32, seconds=1.0, fps=8, workers=1), storage
    )
    for split in SPLITS:
        result = build_manifest(
            "synthetic", str(root / "corpus" / "anns"), str(root / "corpus" / "videos"), split, storage
        )
        write_manifest(result, str(root / "manifest" / f"{split}.parquet"), storage)
    return root


def _config(root: Path, out: str, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"run.out={root / out}",
            f"data.manifest={root / 'manifest'}",
            "data.size=32",
            "data.max_frames=4",
            "data.framerate=4.0",
            "data.max_words=16",
            "data.decoder=pyav",
            "model.preset=debug",
            "model.temporal_layers=1",
            "diffusion.steps=10",
            "diffusion.t2v_k=4",
            "diffusion.v2t_k=4",
            f"eval.splits=[{', '.join(EVAL_SPLITS)}]",
            "eval.batch_size=16",
            "eval.report_queries=3",
            *overrides,
        ],
    )


def _export(cfg: Config, uri: str, stage: str) -> str:
    """The debug model's random weights exported at ``uri`` as a ``stage`` checkpoint; returns its key."""
    from vidret.model.build import build_model, encoder_key
    from vidret.model.checkpoint import save_state

    torch.set_num_threads(1)
    state = build_model(cfg, Storage(), None).state_dict()
    key = encoder_key(state)
    save_state(
        uri,
        {
            "selected": state,
            "key": key,
            "stage": stage,
            "step": 0,
            "best": {"score": 0.0, "step": 0, "source": "model"},
        },
        Storage(),
    )
    return key


@contextmanager
def _capturing() -> Iterator[list[Any]]:
    """Keep every ``EvalResult`` the job computes (one per split, in ``eval.splits`` order)."""
    from vidret.eval import job

    results: list[Any] = []
    original = job.evaluate_features

    def keep(*args: Any, **kwargs: Any) -> Any:
        res = original(*args, **kwargs)
        results.append(res)
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job, "evaluate_features", keep)
        yield results


def _evaluate(cfg: Config, checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """run_evaluation -> (summary, {split: EvalResult})."""
    from vidret.eval.job import run_evaluation

    with _capturing() as results:
        summary = run_evaluation(cfg, checkpoint)
    assert len(results) == len(cfg.eval.splits)
    return summary, dict(zip(cfg.eval.splits, results, strict=True))


def _cache_mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (out / "features").rglob("*") if p.is_file()}


def _assert_same_matrices(a: Any, b: Any, variants: tuple[str, ...] = ("stage1", "rerank")) -> None:
    for variant in variants:
        for direction, x, y in zip(("t2v", "v2t"), a.sims[variant], b.sims[variant], strict=True):
            assert x.dtype == y.dtype
            assert x.shape == y.shape
            assert torch.equal(x, y), f"{variant} {direction}: max diff {(x - y).abs().max().item():.3g}"


@pytest.fixture(scope="module")
def first_run(corpus: Path) -> dict[str, Any]:
    """One evaluation on one worker, building the feature cache of ``train`` and ``test``."""
    cfg = _config(corpus, "run", "eval.num_workers=1")
    checkpoint = str(corpus / "checkpoints" / "generation")
    key = _export(cfg, checkpoint, "generation")
    summary, results = _evaluate(cfg, checkpoint)
    return {"cfg": cfg, "checkpoint": checkpoint, "key": key, "summary": summary, "results": results}


@pytest.mark.slow
def test_metrics_json_and_report_hold_stage1_and_reranked_rows(
    first_run: dict[str, Any], corpus: Path
) -> None:
    from vidret.data.annotations.manifest import read_manifest
    from vidret.features.store import load_split
    from vidret.layout import cache_root

    out = corpus / "run" / "eval" / "generation"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stage"] == "generation"
    assert saved["checkpoint"] == first_run["checkpoint"]
    assert saved["splits"] == json.loads(json.dumps(first_run["summary"]["splits"]))
    storage = Storage()
    for split in EVAL_SPLITS:
        rows = saved["splits"][split]
        assert set(rows) == {"stage1", "rerank"}
        captions = read_manifest(str(corpus / "manifest" / f"{split}.parquet"), storage).column("captions")
        num_videos, num_captions = len(captions), sum(len(c) for c in captions.to_pylist())
        for variant in ("stage1", "rerank"):
            for direction, n in (("t2v", num_captions), ("v2t", num_videos)):
                m = rows[variant][direction]
                assert set(m) == {"R1", "R5", "R10", "R50", "MdR", "MnR", "n"}
                assert m["n"] == n, (split, variant, direction)
                assert 0.0 <= m["R1"] <= m["R5"] <= m["R10"] <= m["R50"] <= 100.0
                assert 1.0 <= m["MdR"] <= num_videos
                assert 1.0 <= m["MnR"] <= num_videos
    # the cached multi-caption split maps every caption to the manifest video it describes
    fs = load_split(storage, join(cache_root(first_run["cfg"], first_run["key"]), "train"))
    manifest = read_manifest(str(corpus / "manifest" / "train.parquet"), storage).to_pydict()
    assert fs.video_ids == manifest["video_id"]
    by_video = dict(zip(manifest["video_id"], manifest["captions"], strict=True))
    assert len(fs.captions) == sum(len(c) for c in manifest["captions"])
    for caption, video in zip(fs.captions, fs.text_to_video_T.tolist(), strict=True):
        assert caption in by_video[fs.video_ids[video]]
    train = first_run["results"]["train"]
    num_captions, num_videos = train.sims["stage1"][0].shape
    assert num_captions > num_videos  # several captions per video: the grouped metrics were used
    # the re-ranking did something, and only inside each row's top k (k = 4)
    for base, new in zip(train.sims["stage1"], train.sims["rerank"], strict=True):
        boost = (new - base).double().numpy()
        assert np.abs(boost).max() > 0
        assert ((boost != 0).sum(axis=1) <= 4).all()
        np.testing.assert_allclose(boost.sum(axis=1), 1.0, atol=1e-5)
    report = (out / "report.html").read_text()
    assert "stage 1 + diffusion re-rank" in report
    assert "vidret evaluation: train" in report
    assert (out / "config.yaml").is_file()
    for label in ("stage 1 ", "stage 1 + diffusion re-rank", "train:", "test:"):
        assert label in first_run["summary"]["table"]


@pytest.mark.slow
def test_rerun_on_two_workers_is_bit_identical(first_run: dict[str, Any], corpus: Path) -> None:
    """A re-run of the first (one-worker) evaluation with its re-ranking split over two Ray tasks: the same
    matrices bit for bit, so a re-run on one worker is covered too (and by the stage-1 test below)."""
    before = _cache_mtimes(corpus / "run")
    cfg = _config(corpus, "run", "eval.num_workers=2")
    summary, results = _evaluate(cfg, first_run["checkpoint"])
    for split in EVAL_SPLITS:
        _assert_same_matrices(results[split], first_run["results"][split])
    assert summary["splits"] == first_run["summary"]["splits"]
    saved = json.loads((corpus / "run" / "eval" / "generation" / "metrics.json").read_text())
    assert saved["splits"] == json.loads(json.dumps(first_run["summary"]["splits"]))
    assert _cache_mtimes(corpus / "run") == before, "the cache was rebuilt instead of reused"


@pytest.mark.slow
def test_cache_rebuilt_from_the_videos_gives_identical_features_and_matrices(
    first_run: dict[str, Any], corpus: Path
) -> None:
    from vidret.features.store import load_split
    from vidret.layout import cache_root

    cfg = _config(corpus, "run-again", "eval.num_workers=2", "eval.splits=[test]", "eval.report=false")
    _, results = _evaluate(cfg, first_run["checkpoint"])
    _assert_same_matrices(results["test"], first_run["results"]["test"])
    storage = Storage()
    a = load_split(storage, join(cache_root(first_run["cfg"], first_run["key"]), "test"))
    b = load_split(storage, join(cache_root(cfg, first_run["key"]), "test"))
    for part_a, part_b in ((a.text.as_model(), b.text.as_model()), (a.video.as_model(), b.video.as_model())):
        for k, v in part_a.items():
            assert torch.equal(v, part_b[k]), k
    assert a.video_ids == b.video_ids
    assert a.captions == b.captions
    assert not (corpus / "run-again" / "eval" / "generation" / "report.html").exists()


@pytest.mark.slow
def test_stage1_checkpoint_reuses_the_cache_and_skips_reranking(
    first_run: dict[str, Any], corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same encoder weights exported as stage 1: same cache key, stage-1 rows only, with a warning."""
    cfg = _config(corpus, "run", "eval.num_workers=1", "eval.report=false")
    checkpoint = str(corpus / "checkpoints" / "discrimination")
    assert _export(cfg, checkpoint, "discrimination") == first_run["key"]
    before = _cache_mtimes(corpus / "run")
    summary, results = _evaluate(cfg, checkpoint)
    assert "eval.rerank ignored" in capsys.readouterr().err
    assert _cache_mtimes(corpus / "run") == before
    for split in EVAL_SPLITS:
        assert set(summary["splits"][split]) == {"stage1"}
        _assert_same_matrices(results[split], first_run["results"][split], variants=("stage1",))
    saved = json.loads((corpus / "run" / "eval" / "discrimination" / "metrics.json").read_text())
    assert saved["stage"] == "discrimination"
    assert set(saved["splits"]["test"]) == {"stage1"}


def test_distributed_blocks_match_the_in_process_rerank(tmp_path: Path) -> None:
    """More rows than one re-rank chunk: two Ray tasks per direction give the one-process matrices exactly."""
    from vidret.eval.retrieval import RERANK_CHUNK, _blocks, rerank_distributed
    from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures
    from vidret.model.build import build_model

    torch.set_num_threads(1)
    cfg = load_config(
        None,
        [
            f"run.out={tmp_path}",
            "model.preset=debug",
            "model.temporal_layers=1",
            "diffusion.steps=5",
            "diffusion.t2v_k=8",
            "diffusion.v2t_k=8",
        ],
    )
    texts, videos, words, frames, dim = RERANK_CHUNK + 44, RERANK_CHUNK + 14, 6, 4, 64
    assert _blocks(texts, 2) == [(0, RERANK_CHUNK), (RERANK_CHUNK, texts)]
    assert len(_blocks(videos, 2)) == 2
    g = torch.Generator().manual_seed(0)
    text_mask = (torch.arange(words) < torch.randint(2, words + 1, (texts, 1), generator=g)).long()
    video_mask = (torch.arange(frames) < torch.randint(1, frames + 1, (videos, 1), generator=g)).long()
    fs = FeatureSet(
        text=TextFeatures(
            tokens=torch.randn(texts, words, dim, generator=g),
            mask=text_mask,
            weight=text_mask / text_mask.sum(1, keepdim=True),
            eot=torch.randn(texts, dim, generator=g),
        ),
        video=VideoFeatures(
            frames=torch.randn(videos, frames, dim, generator=g),
            mask=video_mask,
            weight=video_mask / video_mask.sum(1, keepdim=True),
        ),
        text_to_video_T=torch.cat(
            [torch.arange(videos), torch.randint(0, videos, (texts - videos,), generator=g)]
        ),
    )
    model = build_model(cfg, Storage(), None).eval()
    state = model.state_dict()
    with torch.no_grad():
        sim = model.similarity(fs.text.as_model(), fs.video.as_model(), block=128)
    one = rerank_distributed(model, state, cfg, sim, fs, 1)
    two = rerank_distributed(model, state, cfg, sim, fs, 2)
    assert one[0].shape == (texts, videos)
    assert one[1].shape == (videos, texts)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b), f"max diff {(a - b).abs().max().item():.3g}"
    assert not torch.equal(one[0], sim)
