"""Package ``__init__`` exports resolved on first use (PEP 562), so importing a light submodule, such
as a config dataclass, does not import torch, scipy or pandas through its package's ``__init__``.

Without this, ``moemix status`` spent ~4 s importing torch and scipy to read a YAML file."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose attribute ``name`` lives in module
    ``exports[name]``; a resolved attribute is cached in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
