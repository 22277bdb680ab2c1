"""The error a person sees as one line: the CLI prints it and exits non-zero."""


class KeelError(Exception):
    """A problem the user can fix (bad input, unreachable server); never shown as a traceback."""
