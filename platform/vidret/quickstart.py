"""The main job on the embedded default: corpus -> manifests -> stage 1 -> feature cache -> stage 2 -> eval.

Every step is resumable: a re-run reuses the complete corpus, manifests, checkpoints and feature caches it
finds under ``run.out`` and redoes only what is missing.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from vidret.config import Config, dump_yaml, replace, with_absolute_paths
from vidret.storage import Storage, join

SYNTH_SPLITS = ("train", "val", "test", "ood")
STEPS = 5


def _announce(i: int, text: str) -> float:
    print(f"\n[{i}/{STEPS}] {text}", file=sys.stderr, flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"      done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def existing_corpus(storage: Storage, cfg: Config) -> dict[str, Any] | None:
    """The summary of a complete corpus generated with the same settings, else None."""
    uri = join(cfg.synth.out, "summary.json")
    if not storage.exists(uri):
        return None
    summary = json.loads(storage.read_text(uri))
    same = all(summary.get(k) == getattr(cfg.synth, k) for k in ("videos", "seed", "size", "fps", "seconds"))
    return summary if same else None


def run_quickstart(cfg: Config, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the whole pipeline on the synthetic corpus; returns the summary (metrics tables, report path)."""
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.data.synthetic import generate_corpus
    from vidret.eval.job import run_evaluation
    from vidret.layout import stage_uri
    from vidret.runtime import ensure_ray
    from vidret.train.trainer import run_training

    cfg = with_absolute_paths(cfg)
    storage = Storage(cfg.storage)
    storage.write_text(join(cfg.run.out, "config.yaml"), dump_yaml(cfg))
    t_all = time.perf_counter()

    t0 = _announce(1, f"synthetic corpus: {cfg.synth.videos} videos -> {cfg.synth.out}")
    corpus = existing_corpus(storage, cfg)
    if corpus is None:
        corpus = generate_corpus(cfg.synth, storage, progress=progress)
    else:
        print("      reusing the complete corpus found there", file=sys.stderr)
    for split in SYNTH_SPLITS:
        result = build_manifest(
            "synthetic", join(cfg.synth.out, "anns"), join(cfg.synth.out, "videos"), split, storage
        )
        write_manifest(result, join(cfg.data.manifest, f"{split}.parquet"), storage)
    _done(t0)

    ensure_ray(cfg.run)
    t0 = _announce(2, "stage 1 (discrimination) on streamed, decoded video, then the feature cache")
    s1 = replace(cfg, train=replace(cfg.train, stage="discrimination"))
    stage1 = run_training(s1)
    _done(t0)

    t0 = _announce(3, "stage 2 (generation) on cached features")
    s2 = replace(
        cfg, train=replace(cfg.train, stage="generation", init_checkpoint=stage_uri(cfg, "discrimination"))
    )
    stage2 = run_training(s2)
    _done(t0)

    t0 = _announce(4, f"evaluation on {', '.join(cfg.eval.splits)} (stage 1 vs diffusion re-ranked)")
    evaluation = run_evaluation(s2, stage_uri(cfg, "generation"))
    _done(t0)

    _announce(5, "summary")
    return {
        "corpus": {k: corpus[k] for k in ("videos", "splits") if k in corpus},
        "stage1": {k: stage1.get(k) for k in ("weights", "steps", "wall_s", "bad_videos")},
        "stage2": {k: stage2.get(k) for k in ("weights", "steps", "wall_s")},
        "evaluation": {k: evaluation.get(k) for k in ("splits", "report", "out", "wall_s")},
        "table": evaluation["table"],
        "sentences": evaluation["sentences"],
        "wall_s": round(time.perf_counter() - t_all, 1),
        "run": cfg.run.out,
    }
