"""Errors the command line reports as one line and exit code 2 (no traceback)."""


class CLIError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint): message says what and where."""
