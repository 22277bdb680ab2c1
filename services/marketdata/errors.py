"""The one error a bar file that cannot be used raises, and its one-line message."""


class SourceError(ValueError):
    """A bar file that cannot be used, explained in one line that names the file."""


def first_line(exc: BaseException) -> str:
    """First line of an exception message, so a SourceError stays one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
