"""argparse ``choices`` read from the module that owns them, imported only when they are needed.

Building the parser runs every subcommand's ``register``; if that imported the predictor registry or the
proposer (scipy, scikit-learn, LightGBM, torch: ~4 s on a slow 2-core machine), every ``moemix``
command would pay for it, ``moemix --help`` and ``moemix jobs status`` included. argparse only touches
``choices`` when it checks a value given for that option or formats that command's help, so a sequence
that imports on first use keeps the owning module the one source of the names at no start-up cost.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence


class LazyChoices(Sequence[str]):
    """The names in ``module.attr`` (a sequence of str), imported on first use."""

    def __init__(self, module: str, attr: str):
        self.module, self.attr = module, attr
        self._names: tuple[str, ...] | None = None

    def _load(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(getattr(importlib.import_module(self.module), self.attr))
        return self._names

    def __getitem__(self, i):  # type: ignore[override]
        return self._load()[i]

    def __len__(self) -> int:
        return len(self._load())

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __repr__(self) -> str:
        return f"LazyChoices({self.module}.{self.attr})"
