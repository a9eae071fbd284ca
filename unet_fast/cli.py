"""`unet-fast` (also `python -m unet_fast`): one subcommand per module.

Each module named in SUBCOMMANDS defines `add_arguments(parser)` and `run(args) -> int`, and the
first line of its docstring is its help. Modules are imported only when their subcommand runs,
except for --help, so `unet-fast predict` does not pay for the benchmark harness.

Every error, argparse's own included, is one line `unet-fast CMD: error: ...` and exit code 2,
before any work: the environment variables a command reads are checked before it runs.
"""
import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from unet_fast.errors import InputError

SUBCOMMANDS = {
    "check": "unet_fast.check",
    "bench": "unet_fast.bench.cli",
    "networks": "unet_fast.bench.networks",
    "kernels": "unet_fast.gpu.kernel_report",
    "train": "unet_fast.workflow.train",
    "predict": "unet_fast.workflow.predict",
    "export": "unet_fast.workflow.export",
    "demo": "unet_fast.workflow.demo",
}


class UsageError(Exception):
    """An argument argparse refused; its message is the whole line to print."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, like every other error of the command line
    (argparse's default prints the usage first and exits from inside parse_args)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value
    return parse


# argparse types for counts: refused when the arguments are parsed, naming the option.
positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _version() -> str:
    from unet_fast import __version__

    return __version__


def _build_parser(only=None) -> argparse.ArgumentParser:
    parser = _Parser(prog="unet-fast", description="Fused-kernel U-Net for PyTorch.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help="(see unet-fast %s --help)" % name)
            continue
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs, SIGTERM (`kill PID`, a scheduler's time limit, torchrun stopping
    its workers) interrupts it like Ctrl-C, so temporary files are removed and the user gets
    one line instead of a silent death that leaves them behind."""
    if threading.current_thread() is not threading.main_thread():  # handlers live there only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The environment variables each command reads (beyond the op's switch, which every command
# reads): checked before the command runs, so a bad value is one line naming the variable, not a
# traceback at the first forward after the output folder was made.
_DISTRIBUTED_COMMANDS = ("train", "demo")
_IMAGE_COMMANDS = ("train", "predict", "demo")


def check_environment(command: str) -> None:
    """InputError naming the first environment variable `command` reads with a bad value."""
    from unet_fast.ops.up_concat_op import env_flag

    try:
        env_flag("UNET_FAST_DISABLE_TRITON")
    except ValueError as e:
        raise InputError(str(e)) from None
    if command in _DISTRIBUTED_COMMANDS:
        from unet_fast.workflow.distributed import launch_environment
        launch_environment()
    if command in _IMAGE_COMMANDS:
        from unet_fast.workflow.data import pixel_limit
        pixel_limit()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen is None and "--version" in argv:
        chosen = ""  # the version needs no subcommand's module
    parser = _build_parser(only=chosen if chosen in SUBCOMMANDS or chosen == "" else None)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named by the subcommand, as its other errors are (argparse names the top level)
            raise UsageError(f"unet-fast {args.command}: error: unrecognized arguments: {' '.join(unknown)}")
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        check_environment(args.command)
        with _sigterm_as_interrupt():
            return int(args._module.run(args) or 0)
    except InputError as e:
        print(f"unet-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM; an Interrupted says where it stopped
        print(f"unet-fast {args.command}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`unet-fast check | head -1`): stop quietly, as Unix
        # tools do. Every file written so far is complete (atomic writes), and the rest of stdout
        # goes nowhere, so Python's flush at exit does not print a second error.
        _silence_stdout()
        return 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
