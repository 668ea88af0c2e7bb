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
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.lr=1e-4 (last wins)",
    )


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


# name: (one-line help, description, example)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": (
        "generate the captioned synthetic video corpus",
        "Render short captioned clips (moving shapes) and write their train/val/test/ood manifests.",
        "vidret synth --out runs/synthetic/corpus --videos 200",
    ),
    "manifest": (
        "read a dataset's annotation files into a Parquet manifest",
        "Read MSR-VTT, MSVD, ActivityNet, DiDeMo, LSMDC or custom annotations into <split>.parquet.",
        "vidret manifest --dataset msrvtt --anno data/msrvtt --videos s3://b/videos --split test",
    ),
    "check": (
        "decode every video of a manifest on Ray and report failures",
        "Decode every video once (Ray Data) and end with a verdict; details go to a JSON file.",
        "vidret check --manifest runs/synthetic/corpus/manifest/test.parquet",
    ),
    "prepare": (
        "transcode a corpus to retrieval-ready H.264 files + new manifests",
        "Re-encode videos (data.prepare_fps, data.prepare_short_side) and write manifests pointing at them.",
        "vidret prepare --config configs/msrvtt.yaml --out s3://b/prepared --split test",
    ),
    "train": (
        "train a stage (discrimination or generation) on Ray Train",
        "Stage 1 (discrimination) trains the encoders; stage 2 (generation) trains the denoisers on "
        "cached features.",
        "vidret train --config configs/synthetic.yaml --stage discrimination train.epochs=2",
    ),
    "evaluate": (
        "evaluate exported weights: metrics, re-ranking, HTML report",
        "Retrieval metrics of eval.splits with and without diffusion re-ranking, and the HTML report.",
        "vidret evaluate --config configs/synthetic.yaml eval.splits=[test,ood]",
    ),
    "tune": (
        "Ray Tune sweep of inference or training parameters on the val split",
        "Sweep re-ranking parameters (kind inference) or the stage-2 learning rate (kind training).",
        "vidret tune --config configs/synthetic.yaml --kind inference tune.num_samples=8",
    ),
    "quickstart": (
        "the whole pipeline on the embedded default (generated corpus)",
        "Generate a corpus, train both stages, evaluate and write the report: the demo in one command.",
        "vidret quickstart --out runs/demo",
    ),
}
_FLAGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "synth": [
        ("--out", {"metavar": "URI", "help": "output folder or s3://bucket/prefix (synth.out)"}),
        ("--videos", {"type": int, "metavar": "N", "help": "number of clips (synth.videos)"}),
        ("--seed", {"type": int, "help": "random seed of the corpus (synth.seed)"}),
        ("--size", {"type": int, "metavar": "PX", "help": "frame width and height, even (synth.size)"}),
        ("--seconds", {"type": float, "help": "clip length in seconds (synth.seconds)"}),
        ("--fps", {"type": int, "help": "frames per second of the clips (synth.fps)"}),
        ("--workers", {"type": int, "help": "local encoding processes (synth.workers)"}),
        ("--quiet", {"action": "store_true", "help": "no progress lines"}),
    ],
    "manifest": [
        (
            "--dataset",
            {
                "choices": ["msrvtt", "msvd", "activitynet", "didemo", "lsmdc", "custom", "synthetic"],
                "help": "annotation format (data.dataset)",
            },
        ),
        (
            "--anno",
            {"required": True, "metavar": "PATH_OR_URI", "help": "annotation folder (or file, custom)"},
        ),
        ("--videos", {"required": True, "metavar": "URI", "help": "folder or prefix holding the videos"}),
        ("--split", {"required": True, "help": "split name, e.g. train, val, test"}),
        ("--out", {"metavar": "URI", "help": "manifest file; default <data.manifest>/<split>.parquet"}),
        ("--no-check-videos", {"action": "store_true", "help": "do not list the videos folder"}),
    ],
    "check": [
        ("--manifest", {"required": True, "metavar": "URI", "help": "the manifest (.parquet) to decode"}),
        ("--out", {"metavar": "URI", "help": "summary JSON (default <manifest>.check.json)"}),
    ],
    "prepare": [
        ("--out", {"metavar": "URI", "help": "output folder or prefix (data.prepare_out)"}),
        ("--split", {"action": "append", "help": "split to prepare (repeatable; default: all)"}),
        ("--fps", {"type": float, "help": "frame rate of the prepared files (data.prepare_fps)"}),
        (
            "--short-side",
            {
                "type": int,
                "dest": "short_side",
                "help": "short side in pixels, even (data.prepare_short_side)",
            },
        ),
    ],
    "train": [
        ("--stage", {"choices": ["discrimination", "generation"], "help": "stage to run (train.stage)"})
    ],
    "evaluate": [
        ("--checkpoint", {"metavar": "URI", "help": "exported weights (default: the run's latest stage)"}),
    ],
    "tune": [
        ("--kind", {"choices": ["inference", "training"], "help": "what to sweep (tune.kind)"}),
        ("--checkpoint", {"metavar": "URI", "help": "exported weights (default: the run's)"}),
    ],
    "quickstart": [("--out", {"metavar": "DIR", "help": "run folder (default: run.out of the config)"})],
}


def _add_output_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """--debug/--verbose, on the top parser (default False) and on each subcommand (default SUPPRESS, so one
    given before the subcommand is not reset by the subcommand's default)."""
    p.add_argument(
        "--debug", action="store_true", default=default, help="tracebacks and every library's logs"
    )
    p.add_argument(
        "--verbose", action="store_true", default=default, help="every library's logs (also VIDRET_LOG=debug)"
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The ``vidret`` parser and the handler of each subcommand."""
    from vidret import __version__

    parser = _Parser(
        prog="vidret",
        description="DiffusionRet text-video retrieval on Ray.",
        epilog="Run `vidret COMMAND --help` for a command's flags and an example.",
    )
    parser.add_argument("--version", action="version", version=f"vidret {__version__}")
    _add_output_flags(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (summary, description, example) in _COMMANDS.items():
        p = sub.add_parser(
            name,
            help=summary,
            description=description,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for flag, kwargs in _FLAGS[name]:
            p.add_argument(flag, **kwargs)
        _add_common(p)
        _add_output_flags(p, argparse.SUPPRESS)
    handlers: dict[str, Handler] = {
        "synth": _cmd_synth,
        "manifest": _cmd_manifest,
        "check": _cmd_check,
        "prepare": _cmd_prepare,
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "tune": _cmd_tune,
        "quickstart": _cmd_quickstart,
    }
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
