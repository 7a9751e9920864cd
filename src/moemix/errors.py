"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero."""


class MoemixError(Exception):
    """A problem with the user's input or environment (bad config, missing file or column, ...).

    The message must name the offending thing (file, column, key) and fit on one line.
    """
