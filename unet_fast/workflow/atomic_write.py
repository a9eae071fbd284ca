"""Output files that are either complete or absent, and output folders checked before any work.

Every file the workflow writes (checkpoints, metrics.json, PNGs, ONNX) goes to a temporary file in
the destination folder first and is renamed over the destination only once it is complete:
os.replace is atomic on one filesystem, so a crash, a full disk or Ctrl-C never leaves a
truncated checkpoint where the previous good one was.

Temporary files are named `.NAME.unet_fast-PID.XXXXXXXX.tmp`. An error or an interrupt (Ctrl-C,
and SIGTERM, which the command line turns into one) removes its own; a process that could not
clean up (killed with SIGKILL, a power cut) leaves one behind, which the next `prepare_output_dir`
of that folder removes once that PID provably no longer runs. The `unet_fast-` marker is what
makes a file ours: a user's `.draft.4000000.notes_v2.tmp` looks like a temporary file but is
never touched.

A file that is replaced keeps its permission bits and group (a `chmod 600` checkpoint stays
private after `--resume`); a new file gets the mode the umask gives. A symbolic link at the
destination is replaced by the file, never written through.
"""
import errno
import os
import re
import stat
import tempfile
from typing import Callable, Iterable, Optional

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
        _take_mode(tmp, path)
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


def _take_mode(tmp: str, path: str) -> None:
    """Give the temporary file the mode (and group) of the regular file it will replace, or, for
    a new file, the mode a plain open() would (mkstemp makes it private, 0600)."""
    try:
        old = os.lstat(path)
    except OSError:
        old = None
    if old is not None and stat.S_ISREG(old.st_mode):
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        if old.st_gid != os.stat(tmp).st_gid:
            try:
                os.chown(tmp, -1, old.st_gid)
            except OSError:  # not a member of that group: the mode is kept, the group cannot be
                pass
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def atomic_write_text(path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


# In every temporary file's name: only files carrying it are ever removed as stale.
TEMPORARY_MARKER = "unet_fast-"


def _temporary_prefix(base: str) -> str:
    """`.BASE.unet_fast-PID.`: hidden, next to its destination, marked as ours, and telling
    which process owns it."""
    return f".{base}.{TEMPORARY_MARKER}{os.getpid()}."


# What _temporary_prefix + mkstemp's 8 random characters + ".tmp" make.
_TEMPORARY_NAME = re.compile(r"^\..+\." + re.escape(TEMPORARY_MARKER) + r"(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")


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
    """Delete temporary files of ours (marked in their name) in `folder` whose process is gone
    (it was killed before it could clean up). Those of running processes, or of processes this
    one cannot probe, are left alone: they may still be writing."""
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


# The lock a `train` run holds on its --out folder for its whole lifetime.
LOCK_NAME = ".unet_fast-train.lock"


class FolderLock:
    """An exclusive lock on `folder` (an flock on FOLDER/.unet_fast-train.lock holding the PID).

    The kernel releases an flock when its process ends, however it ends, so a crashed run's lock
    is stale, not held: the next run takes it. `release` removes the file.
    """

    def __init__(self, folder, what: str):
        self.path = os.path.join(os.fspath(folder), LOCK_NAME)
        self.fd: Optional[int] = None
        try:
            import fcntl
        except ImportError:  # no flock on this platform: nothing to hold
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise InputError(f"cannot lock {folder}: {one_line(e)}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    # A filesystem without flock (some network mounts): run unlocked, as before.
                    os.close(fd)
                    return
                holder = _read_pid(fd)
                os.close(fd)
                by = f"process {holder}" if holder else "another process"
                raise InputError(f"{folder} is in use by {by}, {what} (it holds {self.path}); wait "
                                 "for it to finish or choose another folder") from None
            # The previous holder may have removed the file between our open and our flock: a
            # lock on a removed file guards nothing, so take the lock on the file now there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked, so no one else's lock file is removed
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# ---- report files (`bench --json/--plot`, `kernels --json`) -----------------------------------

def plot_formats() -> Iterable[str]:
    """The file extensions matplotlib can draw to (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_report_file(path, option: str, plot: bool = False) -> str:
    """InputError, before any work, for a report file that could not be written at the end:
    a folder, a missing or unwritable parent folder, or (plot=True) an extension matplotlib
    cannot draw. Nothing is created."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {folder} is not writable")
    if plot:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        formats = plot_formats()
        if ext not in formats:
            raise InputError(f"{option} {path}: cannot draw a {'.' + ext if ext else 'file without an extension'}"
                             f"; use one of {', '.join('.' + f for f in formats)}")
    return path


def atomic_write_plot(path, draw: Callable) -> None:
    """draw(file) saves a matplotlib figure into an open binary file, which becomes `path`
    atomically; the format is the one `path`'s extension names (the temporary file's own
    extension, .tmp, would mean nothing to matplotlib)."""
    import matplotlib

    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"

    def write(tmp):
        with open(tmp, "wb") as f, matplotlib.rc_context({"savefig.format": fmt}):
            draw(f)
    atomic_write(path, write)
