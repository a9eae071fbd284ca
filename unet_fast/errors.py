"""Errors the command line reports as one line, with no traceback: CLIError (exit code 2) and
Interrupted (exit code 130, as shells report a process stopped by Ctrl-C)."""


class CLIError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint): message says what and where."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the work; the message says where and how to go on.

    A KeyboardInterrupt, so Python callers (a notebook's interrupt, `except KeyboardInterrupt`)
    see what they would without it. `epoch`: the training epoch it stopped in, if any.
    """

    def __init__(self, message: str, epoch=None):
        super().__init__(message)
        self.epoch = epoch
