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
private after `--resume`); a new file gets the mode the umask gives. A symbolic link to a regular
file at the destination is replaced by the file, never written through.

A destination that is a stream, not a file -- a FIFO, a character device such as /dev/null, or
one of this process's own descriptors (/dev/stdout, /dev/fd/N, /proc/self/fd/N), directly or
through symbolic links -- is written through: opened and written, never replaced. Replacing it
would lose what it is (as root, `--json /dev/null` would put a regular file at /dev/null).
"""
import errno
import os
import re
import stat
import sys
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
    A stream destination (stream_kind) gets the finished bytes written through instead.
    """
    path = os.fspath(path)
    if stream_kind(path):
        _write_through(path, write)
        return
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


# /dev/stdin, /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N, /proc/PID/fd/N.
_DESCRIPTOR_PATH = re.compile(r"^/(?:dev/(?:std(?P<std>in|out|err)|fd/(?P<fd>\d+))"
                              r"|proc/(?:self|(?P<pid>\d+))/fd/(?P<pfd>\d+))$")
_STANDARD = {"in": 0, "out": 1, "err": 2}


def own_descriptor(path) -> Optional[int]:
    """The descriptor of this process that `path` names, directly or through symbolic links
    (/dev/stdout, /dev/fd/N, /proc/self/fd/N), or None. Checked link by link: the last link of
    /proc/self/fd/1 points at `pipe:[...]` or at whatever file the shell redirected to."""
    path = os.path.abspath(os.fspath(path))
    for _ in range(40):  # the kernel's own limit on links followed
        match = _DESCRIPTOR_PATH.match(path)
        if match:
            if match["pid"] and int(match["pid"]) != os.getpid():
                return None
            return _STANDARD[match["std"]] if match["std"] else int(match["fd"] or match["pfd"])
        try:
            target = os.readlink(path)
        except OSError:  # not a link (or gone): a plain path
            return None
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return None


def stream_kind(path) -> Optional[str]:
    """"descriptor N", "FIFO" or "character device" when `path` is a stream written through,
    else None (a regular file, a link to one, a new path, anything else)."""
    descriptor = own_descriptor(path)
    if descriptor is not None:
        return f"descriptor {descriptor}"
    try:
        mode = os.stat(path).st_mode  # follows links: a link to /dev/null is a character device
    except (OSError, ValueError):
        return None
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    return None


def _open_stream(path: str) -> int:
    """A write descriptor on the stream `path` names; never creates or truncates anything."""
    descriptor = own_descriptor(path)
    if descriptor is not None:
        for stream in (sys.stdout, sys.stderr):  # what was printed before comes out before
            try:
                if stream is not None and stream.fileno() == descriptor:
                    stream.flush()
            except (OSError, ValueError, AttributeError):  # no real descriptor (a test's capture)
                pass
        return os.dup(descriptor)
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):  # replaced by a file since it was checked
        os.close(fd)
        raise OSError(errno.EEXIST, "it is no longer a FIFO or a character device")
    return fd


def _write_through(path: str, write: Callable[[str], None]) -> None:
    """write() fills a private temporary file; its bytes then go to the stream `path` in one
    pass, so a reader never sees an output that failed half-way."""
    with tempfile.TemporaryDirectory(prefix=TEMPORARY_MARKER) as folder:
        tmp = os.path.join(folder, "output")
        write(tmp)
        with open(tmp, "rb") as f:
            data = f.read()
    try:
        fd = _open_stream(path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as e:
        raise InputError(f"cannot write {path}: {one_line(e)}") from e


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
    a name ending in a slash, a folder, a missing or unwritable parent folder, a socket or block
    device, a stream (stream_kind) that cannot be written, or (plot=True) an extension
    matplotlib cannot draw. Nothing is created or opened."""
    path = os.fspath(path)
    if path.endswith(("/", os.sep)):
        raise InputError(f"{option} {path} ends with a slash, which names a folder; give a file name")
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder; give a file name")
    kind = stream_kind(path)
    if kind:
        _check_stream(path, option, kind)
    else:
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise InputError(f"{option} {path} is neither a regular file nor a FIFO or character "
                             "device; give a file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise InputError(f"{option} {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path}: folder {folder} is not writable")
    if plot:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        formats = plot_formats()
        if ext not in formats and not (kind and not ext):  # a stream without one gets a PNG
            raise InputError(f"{option} {path}: cannot draw a {'.' + ext if ext else 'file without an extension'}"
                             f"; use one of {', '.join('.' + f for f in formats)}")
    return path


def _check_stream(path: str, option: str, kind: str) -> None:
    descriptor = own_descriptor(path)
    if descriptor is None:
        if not os.access(path, os.W_OK):
            raise InputError(f"{option} {path}: the {kind} is not writable")
        return
    try:
        flags = _descriptor_flags(descriptor)
    except OSError:
        raise InputError(f"{option} {path}: descriptor {descriptor} is not open") from None
    if flags is not None and flags & os.O_ACCMODE == os.O_RDONLY:
        raise InputError(f"{option} {path}: descriptor {descriptor} is open for reading only")


def _descriptor_flags(descriptor: int) -> Optional[int]:
    """The open flags of `descriptor` (None where fcntl does not exist); OSError if it is closed."""
    os.fstat(descriptor)
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl.fcntl(descriptor, fcntl.F_GETFL)


def check_report_files(outputs) -> None:
    """check_report_file for each (option, path, plot) given (path None: not asked for), then an
    InputError if two options name the same file, however spelled (`x.json`, `./x.json`, a link
    to it): the second write would replace the first."""
    given = [(option, os.fspath(path), plot) for option, path, plot in outputs if path]
    for option, path, plot in given:
        check_report_file(path, option, plot=plot)
    for i, (option, path, _) in enumerate(given):
        for other, other_path, _ in given[:i]:
            if _same_file(path, other_path):
                raise InputError(f"{other} {other_path} and {option} {path} are the same file; "
                                 "give each output its own")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: the real paths decided
        return False


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
