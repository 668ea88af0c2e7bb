"""The handlers of the data, training, evaluation and tuning commands (parsed in cli/main.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vidret.cli.common import EXIT_ERROR, Handler, end_run, flags, load, print_json, write_resolved_config
from vidret.config import Config, dump_yaml
from vidret.console.progress import progress_callback
from vidret.preflight import preflight


# ----------------------------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from vidret.data.synthetic import generate_corpus
    from vidret.storage import Storage

    cfg = load(
        args,
        flags(
            args,
            {
                "out": "synth.out",
                "videos": "synth.videos",
                "seed": "synth.seed",
                "size": "synth.size",
                "seconds": "synth.seconds",
                "fps": "synth.fps",
                "workers": "synth.workers",
            },
        ),
    )
    preflight("synth", cfg)
    storage = Storage(cfg.storage)
    print(f"vidret synth: {cfg.synth.videos} videos -> {cfg.synth.out}", file=sys.stderr)
    if args.layout == "activitynet":  # long 30 fps videos with paragraph annotations (train.json, val_1.json)
        from vidret.data.synthetic.activitynet import generate_activitynet as generate_corpus
    progress = None if args.quiet else progress_callback("synth", unit="video")
    summary = generate_corpus(cfg.synth, storage, progress=progress)
    write_resolved_config(cfg, cfg.synth.out)
    print_json(summary)
    return 0


# -------------------------------------------------------------------------------------------- manifest
def manifest_uri(cfg: Config, split: str) -> str:
    """Where the manifest of ``split`` lives: ``<data.manifest>/<split>.parquet``."""
    from vidret.storage import join

    if not cfg.data.manifest:
        raise ValueError("data.manifest is empty: set it to the folder or s3:// prefix holding the manifests")
    return join(cfg.data.manifest, f"{split}.parquet")


def default_manifest_out(cfg: Config, split: str) -> str:
    """``vidret manifest``'s output without ``--out``: ``<data.manifest>/<split>.parquet`` when
    ``data.manifest`` is set, else ``<run.out>/manifest/<split>.parquet`` (next to the run)."""
    from vidret.storage import join

    if cfg.data.manifest:
        return manifest_uri(cfg, split)
    return join(cfg.run.out, "manifest", f"{split}.parquet")


def cmd_manifest(args: argparse.Namespace) -> int:
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.storage import Storage

    cfg = load(args, flags(args, {"dataset": "data.dataset", "on_duplicate": "data.on_duplicate"}))
    out = args.out or default_manifest_out(cfg, args.split)
    preflight("manifest", cfg, anno=args.anno, videos=args.videos, out=out)
    storage = Storage(cfg.storage)
    result = build_manifest(
        cfg.data.dataset,
        args.anno,
        args.videos,
        args.split,
        storage,
        check_videos=not args.no_check_videos,
        on_duplicate=cfg.data.on_duplicate,
    )
    print(result.report.format_text(), file=sys.stderr)
    write_manifest(result, out, storage)
    report_uri, config_uri = f"{out}.report.json", f"{out}.config.yaml"
    storage.write_text(report_uri, json.dumps(result.report.to_dict(), indent=2, sort_keys=True) + "\n")
    storage.write_text(config_uri, dump_yaml(cfg))
    print_json({"manifest": out, "report": report_uri, "config": config_uri, **result.report.counts()})
    return 0


# ------------------------------------------------------------------------------------- check / prepare
def cmd_check(args: argparse.Namespace) -> int:
    cfg = load(args)
    preflight("check", cfg, manifest=args.manifest, out=args.out)
    from vidret.data.check import verdict_lines
    from vidret.data.executors import run_check
    from vidret.runtime import ensure_ray

    ensure_ray(cfg.run)
    progress = progress_callback("check", unit="video")
    summary = run_check(cfg, args.manifest, out_uri=args.out, progress=progress)
    print_json(summary)
    sys.stdout.flush()
    print("\n".join(verdict_lines(summary, summary["summary_uri"])), file=sys.stderr)
    return 0 if summary["within_budget"] else EXIT_ERROR


def cmd_prepare(args: argparse.Namespace) -> int:
    cfg = load(
        args,
        flags(
            args,
            {"out": "data.prepare_out", "fps": "data.prepare_fps", "short_side": "data.prepare_short_side"},
        ),
    )
    preflight("prepare", cfg, splits=",".join(args.split or []))
    from vidret.data.executors import run_prepare
    from vidret.runtime import ensure_ray

    ensure_ray(cfg.run)
    progress = progress_callback("prepare", unit="video")
    print_json(run_prepare(cfg, splits=args.split or None, progress=progress))
    return 0


# ------------------------------------------------------------------------------------------ quickstart
def cmd_quickstart(args: argparse.Namespace) -> int:
    """The main job on the embedded default (see vidret.quickstart)."""
    from vidret.storage import join

    overrides = []
    if args.out:
        overrides = [
            f"run.out={args.out}",
            f"synth.out={join(args.out, 'corpus')}",
            f"data.manifest={join(args.out, 'manifest')}",
            f"train.storage_path={join(args.out, 'ray-results')}",
        ]
    cfg = load(args, overrides)
    preflight("quickstart", cfg)
    from vidret.quickstart import run_quickstart

    summary = run_quickstart(cfg, progress=progress_callback("synth", unit="video"))
    evaluation = summary["evaluation"]
    paths = {"report": evaluation.get("report"), "metrics": _metrics_uri(evaluation.get("out"))}
    table = summary.pop("table")
    end_run(args, cfg, summary, cfg.run.out, table=table, verdicts=summary["sentences"], paths=paths)
    return 0


def _metrics_uri(out: str | None) -> str | None:
    from vidret.storage import join

    return join(out, "metrics.json") if out else None


# ----------------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    cfg = load(args, flags(args, {"stage": "train.stage"}))
    preflight("train", cfg)
    from vidret.train.trainer import run_training

    summary = run_training(cfg)
    cache = summary.get("cache") or {}
    features = next(iter(cache.values()), "").rsplit("/", 1)[0] or None
    end_run(
        args,
        cfg,
        summary,
        cfg.run.out,
        verdicts=train_verdicts(summary),
        paths={"weights": summary.get("weights"), "features": features},
        filename=f"summary.{summary['stage']}.json",
    )
    return 0


def train_verdicts(summary: dict[str, Any]) -> list[str]:
    """Plain sentences on a finished stage: steps, time, the selected weights' validation score, bad
    videos."""
    stage = {"discrimination": "stage 1 (discrimination)", "generation": "stage 2 (generation)"}
    out = [
        f"{stage.get(summary['stage'], summary['stage'])}: {summary['steps']} steps in {summary['wall_s']} s."
    ]
    metrics = summary.get("metrics") or {}
    if "best_val_t2v_R1" in metrics:
        out.append(
            f"Selected the weights of step {int(metrics['best_step'])}: validation t2v R@1 "
            f"{metrics['best_val_t2v_R1']:.2f}."
        )
    if summary.get("bad_videos"):
        out.append(
            f"{summary['bad_videos']} training video(s) could not be decoded and were skipped "
            "(bad_videos_by_uri in the summary)."
        )
    return out


# -------------------------------------------------------------------------------------------- evaluate
def _default_checkpoint(cfg: Config) -> str:
    """The run's stage-2 weights if exported, else its stage-1 weights."""
    from vidret.layout import checkpoint_exists, stage_uri
    from vidret.storage import Storage

    storage = Storage(cfg.storage)
    for stage in ("generation", "discrimination"):
        if checkpoint_exists(stage_uri(cfg, stage), storage):
            return stage_uri(cfg, stage)
    raise ValueError(f"no exported weights under {cfg.run.out}/checkpoints: train first or pass --checkpoint")


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = load(args, flags(args, {"checkpoint": "eval.checkpoint"}))
    preflight("evaluate", cfg, checkpoint=args.checkpoint)
    from vidret.eval.job import run_evaluation

    summary = run_evaluation(cfg, cfg.eval.checkpoint or _default_checkpoint(cfg))
    table = summary.pop("table")
    paths = {"report": summary.get("report"), "metrics": _metrics_uri(summary.get("out"))}
    end_run(args, cfg, summary, summary["out"], table=table, verdicts=summary["sentences"], paths=paths)
    return 0


# -------------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    """Side-by-side metrics of evaluated runs with paired intervals (see vidret.eval.compare)."""
    from vidret.eval.compare import run_compare
    from vidret.eval.intervals import BootstrapSpec
    from vidret.storage import Storage

    cfg = load(args)
    spec = BootstrapSpec(cfg.eval.bootstrap_resamples, cfg.eval.bootstrap_seed, cfg.eval.bootstrap_level)
    summary = run_compare(Storage(cfg.storage), args.runs, args.out, spec)
    print(summary.pop("table"))
    print_json({k: summary[k] for k in ("runs", "config_diff", "html")})
    return 0


# ------------------------------------------------------------------------------------------------ tune
def cmd_tune(args: argparse.Namespace) -> int:
    cfg = load(args, flags(args, {"kind": "tune.kind"}))
    preflight("tune", cfg, checkpoint=args.checkpoint)
    from vidret.train.trainer import run_training
    from vidret.tune.sweep import run_tune

    summary = run_tune(cfg, args.checkpoint, train=run_training)
    summary.pop("table")  # run_tune has printed it
    verdict = (
        f"Best of {summary['num_trials']} trials on {summary['split']!r}: {summary['metric']} "
        f"{summary['best_metric']:.4g} with {' '.join(summary['best_overrides'])}."
    )
    paths = {"results": summary.get("table_path"), "best config": summary.get("best_config")}
    end_run(args, cfg, summary, summary["out"], verdicts=[verdict], paths=paths)
    return 0


COMMAND_HANDLERS: dict[str, Handler] = {
    "synth": cmd_synth,
    "manifest": cmd_manifest,
    "check": cmd_check,
    "prepare": cmd_prepare,
    "quickstart": cmd_quickstart,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "tune": cmd_tune,
}
