"""Helpers shared by the command handlers: the parser class, config loading, the end of a run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vidret.config import Config, dump_yaml, load_config, replace, with_absolute_paths

EXIT_USAGE = 2
EXIT_ERROR = 1
Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit with EXIT_USAGE."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vidret: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (defaults are used for missing keys)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.lr=1e-4 (last wins)",
    )


def load(args: argparse.Namespace, flag_overrides: Sequence[str] = ()) -> Config:
    """Config from --config, then flag overrides, then positional overrides (last wins); local paths made
    absolute (Ray workers do not share the driver's working directory), a local MLflow store included."""
    from vidret.tracking import absolute_mlflow_uri

    cfg = with_absolute_paths(load_config(args.config, [*flag_overrides, *args.overrides]))
    uri = absolute_mlflow_uri(cfg.tracking.mlflow_uri)
    return (
        cfg
        if uri == cfg.tracking.mlflow_uri
        else replace(cfg, tracking=replace(cfg.tracking, mlflow_uri=uri))
    )


def flags(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Turn set CLI flags into dotted overrides: {"videos": "synth.videos"} -> ["synth.videos=N"]."""
    out = []
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out


def write_resolved_config(cfg: Config, out_uri: str) -> str:
    """Write the resolved config (secrets redacted) next to an output; returns its URI."""
    from vidret.storage import Storage, join

    uri = join(out_uri, "config.yaml")
    Storage(cfg.storage).write_text(uri, dump_yaml(cfg))
    return uri


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def end_run(
    args: argparse.Namespace,
    cfg: Config,
    summary: dict[str, Any],
    out_uri: str,
    *,
    table: str | None = None,
    verdicts: Sequence[str] = (),
    paths: Mapping[str, str | None] | None = None,
    filename: str = "summary.json",
) -> None:
    """The end of a run: ``--json`` prints the summary as JSON on stdout (and nothing else there); otherwise
    the summary goes to ``<out_uri>/<filename>`` and stdout gets the table, the verdicts and the paths."""
    if getattr(args, "json", False):
        print_json(summary)
        return
    from vidret.storage import Storage
    from vidret.tracking import finish_run, tensorboard_hint

    finish_run(
        summary,
        out_uri,
        Storage(cfg.storage),
        table=table,
        verdicts=verdicts,
        paths=paths,
        tensorboard=tensorboard_hint(cfg.run.out),
        filename=filename,
    )
