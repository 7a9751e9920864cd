"""The ``moemix`` command. It sits above every other package (it wires the pipeline to ``ray_jobs``),
so nothing inside moemix imports it."""

from moemix.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
