"""`unet-fast` (also `python -m unet_fast`): one subcommand per module.

Each module named in SUBCOMMANDS defines `add_arguments(parser)` and `run(args) -> int`, and the
first line of its docstring is its help. Modules are imported only when their subcommand runs,
except for --help, so `unet-fast predict` does not pay for the benchmark harness.
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


def _build_parser(only=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet-fast", description="Fused-kernel U-Net for PyTorch.")
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = _build_parser(only=chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    try:
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
