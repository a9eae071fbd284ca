"""Output files that are either complete or absent, and output folders checked before any work.

Every file the workflow writes (checkpoints, metrics.json, PNGs, ONNX) goes to a temporary file in
the destination folder first and is renamed over the destination only once it is complete:
os.replace is atomic on one filesystem, so a crash, a full disk or Ctrl-C never leaves a
truncated checkpoint where the previous good one was.

Temporary files are named `.NAME.PID.XXXXXXXX.tmp`. An error or an interrupt (Ctrl-C, and SIGTERM,
which the command line turns into one) removes its own; a process that could not clean up (killed
with SIGKILL, a power cut) leaves one behind, which the next `prepare_output_dir` of that folder
removes once that PID no longer runs.
"""
import os
import re
import tempfile
from typing import Callable, Iterable

from unet_fast.errors import InputError


def one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line, for InputError messages."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) to fill a temporary file next to `path`, then rename it to `path`.

    The temporary file is removed if write() raises; the destination is never half-written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(base), suffix=".tmp", dir=folder)
    except OSError as e:
        raise InputError(f"cannot write {path}: {one_line(e)}") from e
    os.close(fd)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes the file visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"cannot write {path}: {one_line(e)}") from e
        raise


def atomic_write_text(path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def _temporary_prefix(base: str) -> str:
    """`.BASE.PID.`: hidden, next to its destination, and telling which process owns it."""
    return f".{base}.{os.getpid()}."


# What _temporary_prefix + mkstemp's 8 random characters + ".tmp" make.
_TEMPORARY_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")


def _process_running(pid: int) -> bool:
    if os.name != "posix":  # no cheap, harmless probe elsewhere: treat the owner as alive
        return True
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        pass
    return True


def remove_stale_temporaries(folder) -> None:
    """Delete temporary files of ours in `folder` whose process is gone (it was killed before it
    could clean up). Those of running processes are left alone: they may still be writing."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY_NAME.match(name)
        if match and int(match["pid"]) != os.getpid() and not _process_running(int(match["pid"])):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def refuse_to_overwrite(paths: Iterable, how_to_replace: str) -> None:
    """InputError naming the first of `paths` that already exists; `how_to_replace` tells the way
    to allow it (the option that does). Called before any work, so nothing is replaced unasked."""
    for path in paths:
        if os.path.lexists(path):
            raise InputError(f"{os.fspath(path)} already exists; {how_to_replace}")


def prepare_output_dir(path) -> str:
    """Create `path` (and parents) and prove it is writable, or raise InputError; returns the path.

    Called before training or prediction starts, so an unwritable --out fails in a second, not
    after an hour of training. Only the folder (and its missing parents) is created; temporary
    files that killed runs left in it are removed.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"output folder {path} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_temporary_prefix("write-test"), suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"cannot write to output folder {path}: {one_line(e)}") from e
    remove_stale_temporaries(path)
    return path


def check_output_file(path) -> str:
    """Check that a single output file can be created (its folder exists or can be made)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"output file {path} is a folder")
    prepare_output_dir(os.path.dirname(os.path.abspath(path)))
    return path
