"""Which config fields change a result, declared once on the dataclasses (Marin-style).

A field declared with ``execution_only(...)`` changes how a run goes (threads, resources, retries,
logging and checkpoint cadence), not what it computes. ``outcome_view`` drops those fields from any tree
of config dataclasses: it is what every stage key, proxy run id and checkpoint resume key hashes, so
moving a finished run to other hardware, or re-running it with other retries, recomputes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from moemix._io import to_jsonable

_MARK = "moemix_execution_only"


def execution_only(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that does not change the result (left out of every cache key)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_MARK: True})


def execution_only_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(_MARK))


def outcome_view(obj: Any) -> Any:
    """``obj`` (a config dataclass, or a tree of them) as plain JSON without its execution-only fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: outcome_view(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get(_MARK)
        }
    if isinstance(obj, dict):
        return {k: outcome_view(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [outcome_view(v) for v in obj]
    return to_jsonable(obj)
