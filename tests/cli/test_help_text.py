"""Every flag and positional of every ``moemix`` command says what it is for in ``--help``."""

from __future__ import annotations

import argparse

import pytest

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


def test_building_the_parser_imports_no_numerical_library():
    # every moemix command builds the whole parser first: `moemix --help` or `moemix jobs status` must not
    # wait seconds for torch or the predictors (their choices are read from their modules on demand)
    import subprocess
    import sys

    heavy = (
        "torch",
        "scipy",
        "sklearn",
        "lightgbm",
        "ray",
        "moemix.mixing.predictors",
        "moemix.mixing.propose",
    )
    code = (
        "import sys; from moemix.cli.main import build_parser; build_parser(); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"building the parser imported {out.strip()}"


def test_lazily_read_choices_still_check_and_list_the_values():
    from moemix.mixing.config import METHODS
    from moemix.mixing.predictors import PREDICTOR_NAMES

    parser = build_parser()
    fit = _subparser(parser, "fit")
    assert fit.parse_args(["runs.csv", "--out", "o", "--predictor", "dml"]).predictor == "dml"
    with pytest.raises(SystemExit):
        fit.parse_args(["runs.csv", "--out", "o", "--predictor", "nope"])
    assert all(name in fit.format_help() for name in PREDICTOR_NAMES)
    propose = _subparser(parser, "propose")
    with pytest.raises(SystemExit):
        propose.parse_args(["fitdir", "--out", "m.json", "--method", "nope"])
    assert all(name in propose.format_help() for name in METHODS)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(sub for cmd, sub in _commands(parser) if cmd == f"moemix {name}")
