"""The ``vidret`` command line: the only place that parses arguments.

Every subcommand takes ``--config FILE`` and dotted overrides (``train.lr=1e-4``); its own flags are sugar for
overrides. Errors print one line (``vidret: error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from vidret.cli.commands import COMMAND_HANDLERS
from vidret.cli.common import EXIT_ERROR, EXIT_USAGE, Handler, Parser, add_common
from vidret.cli.search import SEARCH_HANDLERS
from vidret.cli.spec import COMMANDS, FLAGS, OWN_ARGS
from vidret.console.logs import RAY_DRIVER_SKIP, one_line, setup_console, verbose_requested
from vidret.console.native import filter_native_stderr


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

    parser = Parser(
        prog="vidret",
        description="DiffusionRet text-video retrieval on Ray.",
        epilog="Run `vidret COMMAND --help` for a command's flags and an example.",
    )
    parser.add_argument("--version", action="version", version=f"vidret {__version__}")
    _add_output_flags(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (summary, description, example) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=summary,
            description=description,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for flag, kwargs in FLAGS[name]:
            p.add_argument(flag, **kwargs)
        if name in OWN_ARGS:
            p.set_defaults(overrides=[])
        else:
            add_common(p)
        _add_output_flags(p, argparse.SUPPRESS)
    handlers: dict[str, Handler] = {**COMMAND_HANDLERS, **SEARCH_HANDLERS}
    return parser, handlers


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run the CLI; returns the exit status. ``own_process``: this is the command's process (the console
    script, a job entrypoint), so fd 2 may be filtered for Ray's native noise (``console/native.py``)."""
    parser, handlers = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if own_process and not verbose_requested(args.debug or args.verbose):
        filter_native_stderr(RAY_DRIVER_SKIP)
    # before any handler imports ray (they import it lazily): Ray reads its quiet settings at import
    setup_console(args.debug or args.verbose)
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
        print(f"vidret {args.command}: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return EXIT_ERROR


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main(own_process=True))
