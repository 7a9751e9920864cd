"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero."""

from __future__ import annotations

from typing import Any


class MoemixError(Exception):
    """A problem with the user's input or environment (bad config, missing file or column, ...).

    The message must name the offending thing (file, column, key) and fit on one line.
    """


def check_config(cfg: Any, what: str) -> None:
    """``cfg.validate()``, its ValueError turned into the one-line ``MoemixError("<what>: <reason>")``."""
    try:
        cfg.validate()
    except ValueError as e:
        raise MoemixError(f"{what}: {e}") from None
