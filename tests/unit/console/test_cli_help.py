"""CLI polish: every subcommand's --help has a description, an example and help on every flag; --version;
--debug/--verbose before or after the subcommand."""

from __future__ import annotations

import argparse

import pytest

from vidret import __version__
from vidret.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser, _ = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_help_has_description_example_and_help_on_every_flag(name: str) -> None:
    p = _subparsers()[name]
    text = p.format_help()
    assert p.description and p.description in " ".join(text.split())
    assert f"example:\n  vidret {name}" in text
    missing = [a.dest for a in p._actions if not a.help]
    assert not missing, f"{name}: flags without help: {missing}"


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vidret {__version__}"


@pytest.mark.parametrize(
    ("argv", "debug", "verbose"),
    [
        (["--debug", "train"], True, False),
        (["train", "--debug"], True, False),
        (["--verbose", "evaluate"], False, True),
        (["evaluate", "--verbose", "eval.splits=[test]"], False, True),
        (["tune"], False, False),
    ],
)
def test_output_flags_before_or_after_the_subcommand(argv: list[str], debug: bool, verbose: bool) -> None:
    args = build_parser()[0].parse_args(argv)
    assert (args.debug, args.verbose) == (debug, verbose)
