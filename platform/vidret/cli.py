"""The ``vidret`` command line: the only place that parses arguments.

Every subcommand takes ``--config FILE`` and dotted overrides (``train.lr=1e-4``); its own flags are sugar for
overrides. Errors print one line (``vidret: error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vidret.config import Config, dump_yaml, load_config, with_absolute_paths

log = logging.getLogger("vidret")

EXIT_USAGE = 2
EXIT_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit with EXIT_USAGE."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vidret: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (defaults are used for missing keys)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-4")


def _load(args: argparse.Namespace, flag_overrides: Sequence[str] = ()) -> Config:
    """Config from --config, then flag overrides, then positional overrides (last wins)."""
    return with_absolute_paths(load_config(args.config, [*flag_overrides, *args.overrides]))


def _flags(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Turn set CLI flags into dotted overrides: {"videos": "synth.videos"} -> ["synth.videos=N"]."""
    out = []
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out


def _write_resolved_config(cfg: Config, out_uri: str) -> str:
    """Write the resolved config (secrets redacted) next to an output; returns its URI."""
    from vidret.storage import Storage, join

    uri = join(out_uri, "config.yaml")
    Storage(cfg.storage).write_text(uri, dump_yaml(cfg))
    return uri


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------------- synth
def _cmd_synth(args: argparse.Namespace) -> int:
    from vidret.data.synthetic import generate_corpus
    from vidret.storage import Storage

    cfg = _load(
        args,
        _flags(
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
    storage = Storage(cfg.storage)
    print(f"vidret synth: {cfg.synth.videos} videos -> {cfg.synth.out}", file=sys.stderr)
    if args.layout == "activitynet":  # long 30 fps videos with paragraph annotations (train.json, val_1.json)
        from vidret.data.synthetic_activitynet import generate_activitynet as generate_corpus
    summary = generate_corpus(cfg.synth, storage, progress=_progress("synth") if not args.quiet else None)
    _write_resolved_config(cfg, cfg.synth.out)
    _print_json(summary)
    return 0


def _progress(label: str) -> Callable[[int, int], None]:
    """A progress callback printing a line every ~10 %."""
    state = {"last": -1}

    def report(done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done // step != state["last"]:
            state["last"] = done // step
            print(f"[{label}] {done}/{total}", file=sys.stderr, flush=True)

    return report


# -------------------------------------------------------------------------------------------- manifest
def manifest_uri(cfg: Config, split: str) -> str:
    """Where the manifest of ``split`` lives: ``<data.manifest>/<split>.parquet``."""
    from vidret.storage import join

    if not cfg.data.manifest:
        raise ValueError("data.manifest is empty: set it to the folder or s3:// prefix holding the manifests")
    return join(cfg.data.manifest, f"{split}.parquet")


def _cmd_manifest(args: argparse.Namespace) -> int:
    from vidret.data.manifest import build_manifest, write_manifest
    from vidret.storage import Storage

    cfg = _load(args, _flags(args, {"dataset": "data.dataset"}))
    storage = Storage(cfg.storage)
    out = args.out or manifest_uri(cfg, args.split)
    result = build_manifest(
        cfg.data.dataset, args.anno, args.videos, args.split, storage, check_videos=not args.no_check_videos
    )
    print(result.report.format_text(), file=sys.stderr)
    write_manifest(result, out, storage)
    _print_json({"manifest": out, **result.report.counts()})
    return 0


# ------------------------------------------------------------------------------------- check / prepare
def _cmd_check(args: argparse.Namespace) -> int:
    from vidret.data.pipeline import ensure_ray, run_check

    cfg = _load(args)
    ensure_ray(cfg.run)
    summary = run_check(cfg, args.manifest, out_uri=args.out, progress=_progress("check"))
    _print_json(summary)
    return 0 if summary["within_budget"] else EXIT_ERROR


def _cmd_prepare(args: argparse.Namespace) -> int:
    from vidret.data.pipeline import ensure_ray, run_prepare

    cfg = _load(
        args,
        _flags(
            args,
            {"out": "data.prepare_out", "fps": "data.prepare_fps", "short_side": "data.prepare_short_side"},
        ),
    )
    ensure_ray(cfg.run)
    _print_json(run_prepare(cfg, splits=args.split or None, progress=_progress("prepare")))
    return 0


# ------------------------------------------------------------------------------------------ quickstart
def _cmd_quickstart(args: argparse.Namespace) -> int:
    """The main job on the embedded default (see vidret.quickstart)."""
    from vidret.quickstart import run_quickstart
    from vidret.storage import join

    overrides = []
    if args.out:
        overrides = [
            f"run.out={args.out}",
            f"synth.out={join(args.out, 'corpus')}",
            f"data.manifest={join(args.out, 'manifest')}",
            f"train.storage_path={join(args.out, 'ray-results')}",
        ]
    cfg = _load(args, overrides)
    summary = run_quickstart(cfg, progress=_progress("synth"))
    table = summary.pop("table")
    _print_json(summary)
    print("\n" + table)
    print(f"\nreport: {summary['evaluation'].get('report')}")
    print(f"total: {summary['wall_s']} s")
    return 0


# ----------------------------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from vidret.train.trainer import run_training

    cfg = _load(args, _flags(args, {"stage": "train.stage"}))
    summary = run_training(cfg)
    _print_json(summary)
    return 0


# -------------------------------------------------------------------------------------------- evaluate
def _default_checkpoint(cfg: Config) -> str:
    """The run's stage-2 weights if exported, else its stage-1 weights."""
    from vidret.storage import Storage
    from vidret.train.artifacts import checkpoint_exists
    from vidret.train.trainer import stage_uri

    storage = Storage(cfg.storage)
    for stage in ("generation", "discrimination"):
        if checkpoint_exists(stage_uri(cfg, stage), storage):
            return stage_uri(cfg, stage)
    raise ValueError(f"no exported weights under {cfg.run.out}/checkpoints: train first or pass --checkpoint")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from vidret.eval.job import run_evaluation

    cfg = _load(args, _flags(args, {"checkpoint": "eval.checkpoint"}))
    summary = run_evaluation(cfg, cfg.eval.checkpoint or _default_checkpoint(cfg))
    print(summary.pop("table"))
    _print_json(summary)
    return 0


# ------------------------------------------------------------------------------------------------ tune
def _cmd_tune(args: argparse.Namespace) -> int:
    from vidret.eval.tune import run_tune

    cfg = _load(args, _flags(args, {"kind": "tune.kind"}))
    summary = run_tune(cfg, args.checkpoint)
    print(summary.pop("table"))
    _print_json(summary)
    return 0


# ----------------------------------------------------------------------------------------------- main
Handler = Callable[[argparse.Namespace], int]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = _Parser(prog="vidret", description="DiffusionRet text-video retrieval on Ray.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    handlers: dict[str, Handler] = {}

    p = sub.add_parser("synth", help="generate the captioned synthetic video corpus")
    p.add_argument("--out", metavar="URI", help="output folder or s3://bucket/prefix")
    p.add_argument("--videos", type=int, metavar="N")
    p.add_argument("--seed", type=int)
    p.add_argument("--size", type=int, metavar="PX")
    p.add_argument("--seconds", type=float)
    p.add_argument("--fps", type=int)
    p.add_argument("--workers", type=int, help="local encoding processes")
    p.add_argument(
        "--layout",
        choices=["synthetic", "activitynet"],
        default="synthetic",
        help="synthetic: short MSR-VTT-style clips; activitynet: long videos (--size is the short side, "
        "e.g. 360, --fps e.g. 30, --seconds e.g. 120) with train.json/val_1.json paragraphs",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_common(p)
    handlers["synth"] = _cmd_synth

    p = sub.add_parser("manifest", help="read a dataset's annotation files into a Parquet manifest")
    p.add_argument(
        "--dataset", choices=["msrvtt", "msvd", "activitynet", "didemo", "lsmdc", "custom", "synthetic"]
    )
    p.add_argument("--anno", required=True, metavar="PATH_OR_URI", help="annotation folder (or file, custom)")
    p.add_argument("--videos", required=True, metavar="URI", help="folder or prefix holding the videos")
    p.add_argument("--split", required=True, help="split name, e.g. train, val, test")
    p.add_argument("--out", metavar="URI", help="manifest file; default <data.manifest>/<split>.parquet")
    p.add_argument("--no-check-videos", action="store_true", help="do not list the videos folder")
    _add_common(p)
    handlers["manifest"] = _cmd_manifest

    p = sub.add_parser("check", help="decode every video of a manifest on Ray and report failures")
    p.add_argument("--manifest", required=True, metavar="URI")
    p.add_argument("--out", metavar="URI", help="summary JSON (default <manifest>.check.json)")
    _add_common(p)
    handlers["check"] = _cmd_check

    p = sub.add_parser("prepare", help="transcode a corpus to retrieval-ready H.264 files + new manifests")
    p.add_argument("--out", metavar="URI", help="output folder or prefix (data.prepare_out)")
    p.add_argument("--split", action="append", help="split to prepare (repeatable; default: all)")
    p.add_argument("--fps", type=float)
    p.add_argument("--short-side", type=int, dest="short_side")
    _add_common(p)
    handlers["prepare"] = _cmd_prepare

    p = sub.add_parser("train", help="train a stage (discrimination or generation) on Ray Train")
    p.add_argument("--stage", choices=["discrimination", "generation"])
    _add_common(p)
    handlers["train"] = _cmd_train

    p = sub.add_parser("evaluate", help="evaluate exported weights: metrics, re-ranking, HTML report")
    p.add_argument("--checkpoint", metavar="URI", help="exported weights (default: the run's latest stage)")
    _add_common(p)
    handlers["evaluate"] = _cmd_evaluate

    p = sub.add_parser("tune", help="Ray Tune sweep of inference or training parameters on the val split")
    p.add_argument("--kind", choices=["inference", "training"])
    p.add_argument("--checkpoint", metavar="URI", help="exported weights (default: the run's)")
    _add_common(p)
    handlers["tune"] = _cmd_tune

    p = sub.add_parser("quickstart", help="the whole pipeline on the embedded default (generated corpus)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: run.out of the config)")
    _add_common(p)
    handlers["quickstart"] = _cmd_quickstart

    return parser, handlers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser, handlers = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("vidret: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"vidret {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
