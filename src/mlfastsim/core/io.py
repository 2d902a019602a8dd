"""File plumbing shared by every workflow.

Outputs are written to a temporary name in the destination directory and renamed into place, so a
crash or Ctrl-C never leaves a half-written file under the final name.  Inputs are opened through
helpers that turn the zoo of low-level failures (missing, not HDF5, truncated) into one clear error.

Filesystem failures (full disk, read-only or foreign file system, quota) become one
:class:`OutputError` naming the path and a fix, with the temporary file removed; outputs go only to
regular files (never onto a directory or a device node such as ``/dev/full``).  Temporary names carry
the writer's host and pid (``.NAME.<random>.<host>-<pid>.tmp``), so the litter of a killed run is
recognised and removed by the next writer into the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mlfastsim.core.errors import DataError, InputFileError, MlfastsimError, OutputError

# errno -> (what happened, how to fix it) for failures that are the environment's, not a bug
_FS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space on that disk or write the output elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write the output elsewhere"),
    errno.EFBIG: ("file too large for this file system or the ulimit -f",
                  "write to a file system without the limit, or raise ulimit -f"),
    errno.EROFS: ("read-only file system", "write the output to a writable disk"),
    errno.EACCES: ("permission denied", "choose a directory you can write to"),
    errno.EPERM: ("operation not permitted", "choose a directory you can write to"),
    errno.ENOENT: ("no such file or directory (the file system refused the name)",
                   "write the output to an ordinary directory"),
    errno.ENOTDIR: ("a parent of the path is not a directory", "check the output path"),
    errno.EISDIR: ("is a directory", "pass a file path, not a directory"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter output name"),
}
# errnos that can only come from writing, so they are translated wherever they are raised
_WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def fs_errno(exc: BaseException) -> int | None:
    """The system errno behind ``exc``: its own, or the one HDF5 prints in its message (h5py's write
    errors say ``errno = 28`` in the text but may carry none)."""
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    m = _HDF5_ERRNO.search(str(exc))
    return int(m.group(1)) if m else None


def output_error(exc: BaseException, path: str | Path, *, what: str = "output") -> OutputError | None:
    """The one-line :class:`OutputError` for a filesystem failure writing ``path``, or None when ``exc``
    is not one (then it is a bug and keeps its traceback)."""
    code = fs_errno(exc)
    if code not in _FS_ERRORS:
        return None
    problem, fix = _FS_ERRORS[code]
    return OutputError(f"cannot write {what}: {problem}", file=path, fix=fix)


@contextlib.contextmanager
def translate_fs_errors(path: str | Path, *, what: str = "output", any_errno: bool = False) -> Iterator[None]:
    """Turn a full disk, read-only file system, quota... raised inside the block into one clear line.

    Only errnos that writing alone produces (ENOSPC, EDQUOT, EFBIG, EROFS) are translated unless
    ``any_errno``, so a permission problem reading an *input* inside the block keeps its own error.
    """
    try:
        yield
    except MlfastsimError:
        raise
    except (OSError, RuntimeError) as exc:  # h5py reports some write failures as RuntimeError
        code = fs_errno(exc)
        if code is not None and (any_errno or code in _WRITE_ONLY_ERRNOS):
            err = output_error(exc, path, what=what)
            if err is not None:
                raise err from exc
        raise


def ensure_writable_dir(directory: str | Path, *, what: str = "output") -> Path:
    """Create ``directory`` if needed and check we can write into it."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create {what} directory ({exc.strerror})",
            file=path,
            fix="choose a directory you can write to",
        ) from exc
    if not os.access(path, os.W_OK):
        raise OutputError(
            f"{what} directory is not writable", file=path, fix="choose a directory you can write to"
        )
    return path


@functools.cache
def _umask() -> int:
    """The process umask, read once (by setting and restoring it: POSIX has no getter; once, because
    setting it is not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The permissions ``open()`` would give a new file (0666 & ~umask), for files created another way."""
    return 0o666 & ~_umask()


def check_output_file(path: str | Path, *, what: str = "output") -> Path:
    """Fail now, before any work, if ``path`` cannot become a regular file.

    Refuses an existing directory, device node, pipe or socket (``-o /dev/full`` must never replace the
    device), creates the parent directory, and writes and removes a probe file there, so a read-only
    or pseudo file system (``/proc``) is reported before hours of work instead of after.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} is an existing directory", file=p,
                          fix="pass a file path (e.g. DIR/out.h5), not a directory")
    if p.exists() and not p.is_file():
        raise OutputError(f"{what} exists and is not a regular file (a device, pipe or socket)", file=p,
                          fix="outputs go to regular files: pass an ordinary file path")
    parent = ensure_writable_dir(p.parent if str(p.parent) else Path("."), what=what)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name[:64]}.", suffix=_tmp_suffix(), dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise (output_error(exc, p, what=what) or OutputError(
            f"cannot write {what} ({exc.strerror})", file=p, fix="choose a directory you can write to")) from exc
    return p


def free_bytes(directory: str | Path) -> int:
    """Free bytes for an unprivileged user on the file system holding ``directory`` (or its nearest
    existing ancestor, for an output directory not created yet)."""
    d = Path(directory).absolute()
    while not d.exists() and d != d.parent:
        d = d.parent
    return int(shutil.disk_usage(d).free)


def check_free_space(path: str | Path, nbytes: int, *, what: str = "output") -> None:
    """Refuse to start a job whose output (``nbytes``, an estimate) cannot fit on the disk of ``path``.

    Checked before any work, so a full disk is a one-line refusal and not a crash after hours.
    """
    target = Path(path)
    free = free_bytes(target if target.is_dir() else target.parent if str(target.parent) else Path("."))
    if nbytes > free:
        raise OutputError(f"{what} needs about {format_bytes(nbytes)} but only {format_bytes(free)} is free "
                          f"on its disk", file=path,
                          fix="free space, write elsewhere (-o) or ask for fewer events")


def available_memory() -> int:
    """Bytes of memory this process can still allocate without swapping (MemAvailable)."""
    try:
        import psutil  # a dependency of dask.distributed

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil missing or unsupported platform
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_allocation(nbytes: int, *, what: str, file: str | Path | None = None, field: str | None = None,
                     fix: str = "use a smaller input or read it in parts") -> None:
    """Refuse an allocation of ``nbytes`` that cannot fit in the memory available now.

    Called with sizes taken from a file's declared shapes or a checkpoint's settings *before* numpy or
    torch tries (and the kernel's OOM killer or a MemoryError traceback answers instead).
    """
    avail = available_memory()
    if nbytes > avail:
        raise DataError(f"{what} would need {format_bytes(nbytes)} of memory, {format_bytes(avail)} is available",
                        file=file, field=field, fix=fix)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (for messages)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


# ------------------------------------------------------------------ temporary files
@functools.cache
def _host_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"
    return host


def _tmp_suffix() -> str:
    """``.<host>-<pid>.tmp``: who wrote a temporary file, so a dead writer's litter can be told apart."""
    return f".{_host_tag()}-{os.getpid()}.tmp"


_TMP_OWNER = re.compile(r"\.([A-Za-z0-9_]+)-(\d+)\.tmp$")
_CLEANED_DIRS: set[str] = set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_tmp(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove temporary files left in ``directory`` by writers that died (kill -9, power loss).

    A file counts as stale when its tag names this host and a pid that no longer runs; temporaries of
    live writers and of other hosts (a shared disk) are left alone.  With ``name``, every temporary of
    that output is removed whatever its tag, old-style ``.NAME.xxxxxxxx.tmp`` included: the caller
    holds the output's job lock (:func:`mlfastsim.core.resume.job_lock`), so no one else writes it.
    """
    d = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(d))
    except OSError:
        return removed
    for entry in entries:
        n = entry.name
        if not (n.startswith(".") and n.endswith(".tmp")):
            continue
        # mkstemp's 8 random characters, then our owner tag (absent on old-style names): exactly this
        # output's temporaries, not those of ".{name}.other" written by another job
        stale = name is not None and re.fullmatch(
            rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}(\.[A-Za-z0-9_]+-\d+)?\.tmp", n) is not None
        if not stale:
            m = _TMP_OWNER.search(n)
            stale = bool(m and m.group(1) == _host_tag() and int(m.group(2)) != os.getpid()
                         and not _pid_alive(int(m.group(2))))
        if stale:
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


# Ctrl-C that lands inside a library callback (a weakref finaliser, HDF5's dealloc) is "ignored" there and
# the run would go on to exit 0.  While a long job runs, SIGINT is recorded as well as raised, so loops
# (check_interrupt) and atomic writes notice a swallowed one and stop; the CLI then exits 130.
_PENDING = [False]
_DEPTH = [0]
# Code that HDF5 calls back into (GuardedFile's methods, under h5py's file-object driver): a Ctrl-C landing
# there is recorded and never raised.  An exception out of a write HDF5 is doing leaves HDF5's caches
# inconsistent and the process segfaults at exit (exit 139 after "interrupted", issue 15); recorded, it is
# raised at the next safe point instead (GuardedFile.check after each block, check_interrupt, atomic_path).
_DEFER_CODES: set[Any] = set()


def _on_sigint(signum: int, frame: Any) -> None:
    _PENDING[0] = True
    while frame is not None:  # anywhere inside an HDF5 callback (a file object of GuardedFile's may be wrapped)
        if frame.f_code in _DEFER_CODES:
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def _quiet_unraisable(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # recorded in _PENDING: acted on at the next check, no traceback storm
        previous(unraisable)

    return hook


@contextlib.contextmanager
def watch_interrupts() -> Iterator[None]:
    """Record Ctrl-C during the block (see :func:`check_interrupt`); a no-op off the main thread or when
    the application installed its own SIGINT handler."""
    import sys

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    installed = False
    if _DEPTH[0] == 0:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            _PENDING[0] = False
            signal.signal(signal.SIGINT, _on_sigint)
            previous_hook = sys.unraisablehook
            sys.unraisablehook = _quiet_unraisable(previous_hook)
            installed = True
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1
        if installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = previous_hook
            _PENDING[0] = False


def check_interrupt() -> None:
    """Raise :class:`KeyboardInterrupt` if a Ctrl-C arrived and was swallowed by a library."""
    if _PENDING[0] and _DEPTH[0] > 0 and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_path(destination: str | Path, *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it into place only on success.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.  On any
    exception the temporary file is removed and ``destination`` is left untouched; a filesystem failure
    (full disk, read-only...) becomes one :class:`OutputError`; a Ctrl-C swallowed by a library while
    the block ran is re-raised instead of publishing the file.  ``destination`` must be (or become) a
    regular file: an existing directory or device node is refused before anything is written.
    """
    dest = Path(destination)
    if dest.is_dir() or (dest.exists() and not dest.is_file()):
        check_output_file(dest, what=what)  # raises the matching one-line error
    parent = ensure_writable_dir(dest.parent if str(dest.parent) else Path("."), what=what)
    key = str(parent.resolve())
    if key not in _CLEANED_DIRS:
        _CLEANED_DIRS.add(key)
        remove_stale_tmp(parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=_tmp_suffix(), dir=parent)
    except OSError as exc:
        raise (output_error(exc, dest, what=what) or OutputError(
            f"cannot write {what} ({exc.strerror})", file=dest, fix="choose a directory you can write to")) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with watch_interrupts(), translate_fs_errors(dest, what=what, any_errno=False):
            yield tmp
            check_interrupt()  # a Ctrl-C swallowed while the block ran: do not publish the file
            if tmp.is_file():
                # mkstemp creates 0600; give the file the permissions a plain open() would (0666 & ~umask),
                # so outputs on a shared cluster disk are readable by the group like any other file
                os.chmod(tmp, 0o666 & ~_umask())
            try:
                os.replace(tmp, dest)
            except OSError as exc:
                raise (output_error(exc, dest, what=what) or exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_h5(destination: str | Path, *, what: str = "output") -> Iterator[h5py.File]:
    """An HDF5 file built in memory, then written to ``destination`` atomically in one plain write.

    For outputs of bounded size (one batch, one table): HDF5's own writes never touch the disk, so a
    full disk or a quota fails in Python's ``write`` with a clean :class:`OutputError` instead of
    leaving HDF5 with unflushable metadata (dealloc error storms, a segfault at exit).  Streamed
    outputs of unbounded size use :func:`atomic_path` after a free-space check instead.
    """
    import uuid

    dest = Path(destination)
    if dest.is_dir() or (dest.exists() and not dest.is_file()):
        check_output_file(dest, what=what)
    name = f"mlfastsim-mem-{uuid.uuid4().hex}.h5"  # never created on disk (backing_store=False)
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        yield f
        f.flush()
        image = f.id.get_file_image()
    atomic_write_bytes(dest, image)


class GuardedFile:
    """The file object under an HDF5 file (h5py's ``fileobj`` driver) that never fails inside HDF5.

    HDF5 cannot recover from a failed write: its dirty metadata cannot be flushed, closing fails, and a
    failure inside an object's dealloc (a dataset flushing its chunk cache) is swallowed, leaving the
    library in a state that segfaults at exit (exit 139 on a full disk).  Here a failing write is
    *recorded* and every write from then on is discarded as if it succeeded, so HDF5 stays consistent
    and closes cleanly; the caller checks :meth:`check` after each step it writes and at the end, and
    raises the recorded error from Python (the temporary file is removed by :func:`atomic_path`).
    """

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "w+b")  # closed by guarded_h5
        self.error: OSError | None = None

    def check(self) -> None:
        """Raise the first recorded write failure, if any, then a Ctrl-C that arrived during HDF5's writes."""
        if self.error is not None:
            raise self.error
        check_interrupt()

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def readinto(self, buf: Any) -> int:
        n = self._fh.readinto(buf)
        view = memoryview(buf).cast("B")
        if n < len(view):  # bytes never written (discarded after a failure): HDF5 sees zeros, not a short read
            view[n:] = b"\0" * (len(view) - n)
        return len(view)

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self.error is None:
            try:
                self._fh.write(data)
            except OSError as exc:
                self._fail(exc)
        return n

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                self._fh.truncate(size)
            except OSError as exc:
                self._fail(exc)
        return self._fh.tell() if size is None else size

    def flush(self) -> None:
        if self.error is None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


_DEFER_CODES.update(f.__code__ for f in vars(GuardedFile).values() if hasattr(f, "__code__"))


@contextlib.contextmanager
def guarded_h5(path: str | Path, **kwargs: Any) -> Iterator[tuple[h5py.File, GuardedFile]]:
    """``h5py.File(path, "w", **kwargs)`` over a :class:`GuardedFile`: disk failures end in one clean
    :class:`OSError` (an :class:`OutputError` through :func:`atomic_path`), never in an HDF5 error
    storm or a segfault.  Yields the file and its guard; call ``guard.check()`` after each write step.

    For large outputs streamed to disk (memory stays flat); small ones can use :func:`atomic_h5`.
    """
    guard = GuardedFile(Path(path))
    try:
        try:
            with h5py.File(guard, "w", **kwargs) as f:
                yield f, guard
        except BaseException as exc:
            if guard.error is not None and not isinstance(exc, KeyboardInterrupt):
                raise guard.error from exc
            raise
        guard.flush()
        guard.check()
    finally:
        guard.close()


_STAGING_PREFIX = ".staging."


def _remove_stale_staging(directory: Path) -> None:
    """Staging folders (:func:`staged_dir`) of writers on this host that died (kill -9)."""
    for entry in directory.glob(f"{_STAGING_PREFIX}*.tmp"):
        m = _TMP_OWNER.search(entry.name)
        if (m and m.group(1) == _host_tag() and int(m.group(2)) != os.getpid() and not _pid_alive(int(m.group(2)))
                and entry.is_dir() and not entry.is_symlink()):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(directory: str | Path, *, what: str = "output", last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty staging folder inside ``directory``; on success move its files into ``directory``
    (the names in ``last`` after all others), on any failure remove it.

    For a command that writes a set of files (figures, a report, metrics.json): a full disk, a Ctrl-C
    or a bug half-way leaves ``directory`` as it was, never some of a new run's files without the rest.
    Renames within one folder need no space, so the move itself cannot run out of disk.
    """
    final = ensure_writable_dir(directory, what=what)
    _remove_stale_staging(final)
    try:
        stage = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, suffix=_tmp_suffix(), dir=final))
    except OSError as exc:
        raise (output_error(exc, final, what=what) or OutputError(
            f"cannot write {what} ({exc.strerror})", file=final, fix="choose a directory you can write to")) from exc
    try:
        with watch_interrupts(), translate_fs_errors(final, what=what):
            yield stage
            check_interrupt()  # a Ctrl-C swallowed while the block ran: publish nothing
            names = sorted(p.name for p in stage.iterdir() if p.name not in last)
            for name in [*names, *(n for n in last if (stage / n).exists())]:
                os.replace(stage / name, final / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write_bytes(destination: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``destination`` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def atomic_write_text(destination: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``destination`` atomically."""
    return atomic_write_bytes(destination, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(destination: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays allowed)."""
    return atomic_write_text(destination, json.dumps(obj, indent=2, default=_json_default) + "\n")


def require_file(path: str | Path, *, what: str = "input file") -> Path:
    """Return ``path`` if it is an existing regular file, else raise a clear error."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what} does not exist", file=p, fix="check the path")
    if not p.is_file():
        raise InputFileError(f"{what} is not a regular file", file=p, fix="pass a file, not a directory")
    return p


def open_h5(path: str | Path, *, what: str = "input file") -> h5py.File:
    """Open an HDF5 file read-only, translating failures into :class:`InputFileError`.

    h5py raises a bare ``OSError`` both for "not an HDF5 file" and for a truncated file; we tell the
    two apart by the file signature so the message says which.
    """
    p = require_file(path, what=what)
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head == b"\x89HDF\r\n\x1a\n":
            raise InputFileError(
                "HDF5 file is truncated or corrupt", file=p, fix="re-create or re-download the file"
            ) from exc
        raise InputFileError(
            "not an HDF5 file", file=p, fix="pass an .h5 file written by mlfastsim or a CaloChallenge file"
        ) from exc


# Deflate, the strongest filter HDF5 files commonly use, shrinks at most ~1032:1; a chunked dataset whose
# declared size exceeds its stored bytes by more than this cannot be real data.
MAX_COMPRESSION_RATIO = 1100


class _ClassRefused(pickle.UnpicklingError):
    pass


class _NoClasses(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers only: a pickle that names any class or function (the
    only way one runs code) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise _ClassRefused(f"{module}.{name}")


def _runs_code(raw: bytes) -> str | None:
    """What a pickle ``raw`` would call when unpickled as PyTables does (plain, then latin1, then bytes
    for Python 2 strings), or None when it holds plain data or is no pickle at all."""
    for encoding in ("ASCII", "latin1", "bytes"):
        try:
            _NoClasses(io.BytesIO(raw), encoding=encoding).load()
            return None
        except _ClassRefused as exc:
            return str(exc)
        except UnicodeDecodeError:
            continue
        except Exception:  # not a pickle, or a broken one: PyTables fails on it too, before any call
            return None
    return None


def check_h5_no_code(path: str | Path, *, what: str = "input file",
                     fix: str = "read only files you trust; re-create this one with mlfastsim") -> Path:
    """Refuse an HDF5 file that would run code when PyTables (``pandas.HDFStore``) opens it.

    PyTables unpickles every attribute stored as a byte string ending in ``.`` and the rows of 'object'
    VLArrays.  pandas' own attributes are lists, dicts and strings, which unpickle without naming any
    class; anything else (``os.system`` in a planted attribute) is refused here, read with h5py, before
    PyTables touches the file.
    """
    p = require_file(path, what=what)

    def check(name: str, obj: Any) -> None:
        node = "/" + name.lstrip("/")
        if isinstance(obj, h5py.Dataset) and obj.attrs.get("PSEUDOATOM") in (b"object", "object"):
            raise InputFileError(f"{node} holds pickled Python objects, which run code when read", file=p,
                                 field=node, fix=fix)
        for key in obj.attrs:
            try:
                value = obj.attrs[key]
            except (OSError, TypeError, ValueError):  # a type h5py cannot read is no pickled string either
                continue
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value[()]
            if not isinstance(value, bytes | np.bytes_) or not bytes(value).endswith(b"."):
                continue
            called = _runs_code(bytes(value))
            if called is not None:
                raise InputFileError(f"attribute {key!r} of {node} is a pickle that would call {called} when read",
                                     file=p, field=f"{node}.{key}", fix=fix)

    try:
        f = h5py.File(p, "r")
    except OSError:  # not HDF5 (or truncated): PyTables cannot open it either, and the caller says so
        return p
    with f:
        check("/", f)
        f.visititems(check)
    return p


def check_h5_dataset(dataset: h5py.Dataset, *, file: str | Path, field: str | None = None,
                     rows: int | None = None) -> int:
    """Check that ``dataset``'s declared shape can be backed by the bytes the file holds, and that
    reading it (or its first ``rows`` rows) fits in memory; return the bytes a full read needs.

    A 1.6 KB file can declare a (2e8, 6480) dataset; reading it would allocate terabytes of fill
    values.  Contiguous data must be stored in full; chunked data may be compressed, but not beyond
    :data:`MAX_COMPRESSION_RATIO`.  Checked before anything is allocated.
    """
    name = field or dataset.name.lstrip("/")
    nbytes = int(np.prod(dataset.shape, dtype=np.float64) * dataset.dtype.itemsize) if dataset.shape else 0
    stored = int(dataset.id.get_storage_size())
    if nbytes > 0:
        limit = stored if dataset.chunks is None else stored * MAX_COMPRESSION_RATIO
        if nbytes > limit + 4096:
            raise InputFileError(
                f"declares shape {tuple(dataset.shape)} ({format_bytes(nbytes)}) but stores only "
                f"{format_bytes(stored)}", file=file, field=name,
                fix="the file is truncated or forged: re-create it")
    want = nbytes if rows is None or not dataset.shape else int(nbytes * min(rows, dataset.shape[0])
                                                                 / max(dataset.shape[0], 1))
    check_allocation(want, what=f"reading {name}", file=file, field=name)
    return nbytes
