"""Every flag and positional of every ``moemix`` command says what it is for in ``--help``."""

from __future__ import annotations

import argparse

from moemix.cli.main import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "moemix"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")


def test_every_argument_has_help():
    missing = [
        f"{cmd} {action.option_strings[0] if action.option_strings else action.dest}"
        for cmd, parser in _commands(build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and not (action.help and action.help.strip())
    ]
    assert not missing, "no help text: " + ", ".join(missing)
