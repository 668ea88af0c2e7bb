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


def default_manifest_out(cfg: Config, split: str) -> str:
    """``vidret manifest``'s output without ``--out``: ``<data.manifest>/<split>.parquet`` when
    ``data.manifest`` is set, else ``<run.out>/manifest/<split>.parquet`` (next to the run)."""
    from vidret.storage import join

    if cfg.data.manifest:
        return manifest_uri(cfg, split)
    return join(cfg.run.out, "manifest", f"{split}.parquet")


def _cmd_manifest(args: argparse.Namespace) -> int:
    from vidret.data.annotations.manifest import build_manifest, write_manifest
    from vidret.storage import Storage

    cfg = _load(args, _flags(args, {"dataset": "data.dataset", "on_duplicate": "data.on_duplicate"}))
    storage = Storage(cfg.storage)
    out = args.out or default_manifest_out(cfg, args.split)
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
    _print_json({"manifest": out, "report": report_uri, "config": config_uri, **result.report.counts()})
    return 0


# ------------------------------------------------------------------------------------- check / prepare
def _cmd_check(args: argparse.Namespace) -> int:
    from vidret.data.check import verdict_lines
    from vidret.data.executors import run_check
    from vidret.runtime import ensure_ray

    cfg = _load(args)
    ensure_ray(cfg.run)
    summary = run_check(cfg, args.manifest, out_uri=args.out, progress=_progress("check"))
    _print_json(summary)
    sys.stdout.flush()
    print("\n".join(verdict_lines(summary, summary["summary_uri"])), file=sys.stderr)
    return 0 if summary["within_budget"] else EXIT_ERROR


def _cmd_prepare(args: argparse.Namespace) -> int:
    from vidret.data.executors import run_prepare
    from vidret.runtime import ensure_ray

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
    print("\n".join(["", *summary.get("sentences", [])]))
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
    from vidret.layout import checkpoint_exists, stage_uri
    from vidret.storage import Storage

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


# -------------------------------------------------------------------------------- compare
def _cmd_compare(args: argparse.Namespace) -> int:
    """Side-by-side metrics of evaluated runs with paired intervals (see vidret.eval.compare)."""
    from vidret.eval.compare import run_compare
    from vidret.eval.intervals import BootstrapSpec
    from vidret.storage import Storage

    cfg = _load(args)
    spec = BootstrapSpec(cfg.eval.bootstrap_resamples, cfg.eval.bootstrap_seed, cfg.eval.bootstrap_level)
    summary = run_compare(Storage(cfg.storage), args.runs, args.out, spec)
    print(summary.pop("table"))
    _print_json({k: summary[k] for k in ("runs", "config_diff", "html")})
    return 0


def _add_compare(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser("compare", help="compare evaluated runs: metrics, paired intervals, config diff, HTML")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (run.out, local or s3://), first = A")
    p.add_argument("--out", default="runs/compare", metavar="URI", help="where compare.{json,html} go")
    p.add_argument("--config", metavar="FILE", help="YAML config (storage settings, eval.bootstrap_*)")
    p.set_defaults(overrides=[])
    handlers["compare"] = _cmd_compare


# ------------------------------------------------------------------------------------------------ tune
def _cmd_tune(args: argparse.Namespace) -> int:
    from vidret.train.trainer import run_training
    from vidret.tune.sweep import run_tune

    cfg = _load(args, _flags(args, {"kind": "tune.kind"}))
    summary = run_tune(cfg, args.checkpoint, train=run_training)
    print(summary.pop("table"))
    _print_json(summary)
    return 0


# ----------------------------------------------------------------------------------------------- main
Handler = Callable[[argparse.Namespace], int]


def _add_data_commands(sub: Any, handlers: dict[str, Handler]) -> None:
    """The data commands: synth, manifest, check, prepare."""
    p = sub.add_parser("synth", help="generate the captioned synthetic video corpus")
    p.add_argument("--out", metavar="URI", help="output folder or s3://bucket/prefix")
    p.add_argument("--videos", type=int, metavar="N")
    p.add_argument("--seed", type=int)
    p.add_argument("--size", type=int, metavar="PX")
    p.add_argument("--seconds", type=float)
    p.add_argument("--fps", type=int)
    p.add_argument("--workers", type=int, help="local encoding processes")
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
    p.add_argument(
        "--out",
        metavar="URI",
        help=(
            "manifest file (default <data.manifest>/<split>.parquet, else "
            "<run.out>/manifest/<split>.parquet); the report (<out>.report.json) and the resolved config "
            "(<out>.config.yaml) go next to it"
        ),
    )
    p.add_argument("--no-check-videos", action="store_true", help="do not list the videos folder")
    p.add_argument(
        "--on-duplicate",
        choices=["error", "keep-first"],
        dest="on_duplicate",
        help="one video_id naming two different videos: fail naming both rows (default) or keep the first",
    )
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


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = _Parser(prog="vidret", description="DiffusionRet text-video retrieval on Ray.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    handlers: dict[str, Handler] = {}

    _add_data_commands(sub, handlers)

    p = sub.add_parser("train", help="train a stage (discrimination or generation) on Ray Train")
    p.add_argument("--stage", choices=["discrimination", "generation"])
    _add_common(p)
    handlers["train"] = _cmd_train

    p = sub.add_parser("evaluate", help="evaluate exported weights: metrics, re-ranking, HTML report")
    p.add_argument("--checkpoint", metavar="URI", help="exported weights (default: the run's latest stage)")
    _add_common(p)
    handlers["evaluate"] = _cmd_evaluate
    _add_compare(sub, handlers)

    p = sub.add_parser("tune", help="Ray Tune sweep of inference or training parameters on the val split")
    p.add_argument("--kind", choices=["inference", "training"])
    p.add_argument("--checkpoint", metavar="URI", help="exported weights (default: the run's)")
    _add_common(p)
    handlers["tune"] = _cmd_tune

    p = sub.add_parser("quickstart", help="the whole pipeline on the embedded default (generated corpus)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: run.out of the config)")
    _add_common(p)
    handlers["quickstart"] = _cmd_quickstart

    _add_search_commands(sub, handlers)
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


# ---------------------------------------------------------------------------------- index / search / serve
def _cmd_index(args: argparse.Namespace) -> int:
    from vidret.search.build import run_index

    cfg = _load(args)
    summary = run_index(cfg, args.checkpoint, args.manifest, args.out, split=args.split)
    _print_json(summary)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from vidret.search.query import SearchEngine

    cfg = _load(args, _flags(args, {"prefilter_m": "search.prefilter_m"}))
    engine = SearchEngine.open(args.index, cfg, args.checkpoint)
    _print_json(engine.search(args.query, args.k, args.rerank))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from vidret.data.pipeline import ensure_ray
    from vidret.search.service import start_service, stop_service

    cfg = _load(args, _flags(args, {"host": "search.host", "port": "search.port"}))
    ensure_ray(cfg.run)
    url = start_service(cfg, args.index, args.checkpoint)
    print(f"vidret serve: {args.index} at {url}", file=sys.stderr, flush=True)
    if args.detach:
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_service()
    return 0


def _add_search_commands(sub: Any, handlers: dict[str, Handler]) -> None:
    """``index``, ``search`` and ``serve`` (text-to-video search over a video library)."""
    p = sub.add_parser("index", help="encode a library of videos into a search index (Ray Data)")
    p.add_argument("--checkpoint", required=True, metavar="URI", help="exported weights (stage 1 or 2)")
    p.add_argument("--manifest", required=True, metavar="URI", help="Parquet manifest or .csv/.jsonl table")
    p.add_argument("--out", required=True, metavar="URI", help="index folder or s3:// prefix")
    p.add_argument("--split", help="only this split of a Parquet manifest (default: every row)")
    _add_common(p)
    handlers["index"] = _cmd_index

    p = sub.add_parser("search", help="search an index for a text query; prints JSON")
    p.add_argument("query", help="the text to search for")
    p.add_argument("--index", required=True, metavar="URI")
    p.add_argument("--k", type=int, help="results (default search.k)")
    p.add_argument("--prefilter-m", type=int, dest="prefilter_m", help="ANN candidates (search.prefilter_m)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None, help="diffusion re-rank")
    p.add_argument("--checkpoint", metavar="URI", help="weights (default: those the index was built with)")
    p.add_argument("--config", metavar="FILE", help="YAML config (storage, search)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    handlers["search"] = _cmd_search

    p = sub.add_parser("serve", help="serve an index over HTTP with Ray Serve (web page, /search, /thumb)")
    p.add_argument("--index", required=True, metavar="URI")
    p.add_argument("--host", help="address to bind (search.host, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (search.port)")
    p.add_argument("--checkpoint", metavar="URI", help="weights (default: those the index was built with)")
    p.add_argument("--detach", action="store_true", help="deploy and return (the app keeps running on Ray)")
    _add_common(p)
    handlers["serve"] = _cmd_serve
