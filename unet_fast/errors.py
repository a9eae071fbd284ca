"""The exceptions unet_fast raises for a user's input, and the command line's handling of them.

- InputError (a ValueError): a problem with what the caller passed -- a file, an option, a
  checkpoint -- whose message says what and where. The Python API raises it (`fit`,
  `unet_fast.predict`, `unet_fast.load` ...); the command line prints it as one line,
  `unet-fast CMD: error: ...`, with exit code 2.
- Interrupted: Ctrl-C (or SIGTERM) stopped the work; the command line exits with 130.
"""


class InputError(ValueError):
    """A problem with the user's input (a file, an option, a checkpoint): message says what and where."""


# The name this exception had when only the command line raised it; kept so `except CLIError` works.
CLIError = InputError


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the work; the message says where and how to go on.

    A KeyboardInterrupt, so Python callers (a notebook's interrupt, `except KeyboardInterrupt`)
    see what they would without it. `epoch`: the training epoch it stopped in, if any.
    """

    def __init__(self, message: str, epoch=None):
        super().__init__(message)
        self.epoch = epoch
