"""Strict conversion of nested dicts (parsed YAML) into typed dataclasses.

Errors name the full dotted key (``proxies.train.lr``) and what was expected, so a typo in a
config file is one clear line instead of a stack trace deep in a stage. The other way, dataclasses
to plain dicts, is ``moemix._io.to_jsonable``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from moemix.errors import MoemixError

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    here = f"{where}: " if where else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MoemixError(f"{here}expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MoemixError(f"{here}unknown key {unknown[0]!r} (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MoemixError(f"{key}: required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, TypeError) as e:
            raise MoemixError(f"{here}{e}") from None
    return obj


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key)
            except MoemixError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise MoemixError(errors[0])
        kinds = " or ".join(_describe(a) for a in args if a is not type(None))
        raise MoemixError(f"{key}: expected {kinds}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise MoemixError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise MoemixError(f"{key}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise MoemixError(f"{key}: expected a mapping, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, key): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MoemixError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MoemixError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise MoemixError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise MoemixError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _describe(tp: Any) -> str:
    """What a value of ``tp`` looks like in YAML, for error lines."""
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return "a mapping"
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return str(tp)
