"""The names of the expert-kernel implementations, importable without torch (configs validate them)."""

from typing import Literal, get_args

Impl = Literal["auto", "reference", "grouped", "triton"]
IMPLS: tuple[str, ...] = get_args(Impl)
