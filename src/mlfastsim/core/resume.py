"""What makes a data job safe to kill, rerun, and run twice: one writer, a data-only cache, "done" checked
against the output itself.

``job_lock(output)``
    One writer per output, held by an OS file lock (``fcntl.flock`` on a hidden ``.NAME.lock`` beside
    it).  The kernel drops the lock when the process dies, so a kill -9 never leaves a stale lock; a
    second job on the same ``-o`` stops at once with "another job (pid N) is writing X".
:class:`TaskCache`
    Finished task results of one job in ``.NAME.parts/task_000012.npz``, stored as data
    (:mod:`mlfastsim.core.records`, never pickle) and tagged with the job fingerprint and task index.  A
    record of another job, a corrupt or truncated one, or a planted file is not used: the task is
    recomputed.  Opening a cache takes the output's job lock, so two jobs can never share one.
:func:`stamp_h5` / :func:`is_done` / :func:`mark_done`
    "Done" is a property of the output itself.  An HDF5 output carries, in its root attribute
    ``mlfastsim_job``, the fingerprint of the job that wrote it and a digest of what it holds (every
    dataset's stored chunks and every attribute), written by the writer just before the file is renamed
    into place.  A rerun skips the job only when that stamp names its fingerprint and the digest still
    matches: a file replaced by ``generate -o``, another job's ``cp`` or an edit is recomputed, while a
    byte copy of the job's own output put back in its place (``cp``, ``rsync``, a restore) is legitimately
    done: it holds exactly what the job wrote.  Outputs that cannot carry metadata (directories of files, .npy/.json
    sets) keep a record of the fingerprint and their signature (size, mtime, ctime, inode and SHA-256
    of every file) in one hidden ``.mlfastsim-done/`` folder per directory, not a hidden file per output.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mlfastsim.core.errors import OutputError
from mlfastsim.core.io import (
    atomic_path,
    atomic_write_json,
    ensure_writable_dir,
    output_error,
    plain_file_mode,
    remove_stale_tmp,
    translate_fs_errors,
)
from mlfastsim.core.records import RecordError, read_record, write_record

log = logging.getLogger(__name__)

_MISSING = object()


# ------------------------------------------------------------------ one writer per output
def lock_path_for(output: str | Path) -> Path:
    """The lock file of ``output``: a hidden ``.NAME.lock`` beside it."""
    p = Path(output)
    return p.parent / f".{p.name}.lock"


# lock file (resolved) -> [fd, depth]: a process may re-enter its own lock (a job opening its cache twice)
_HELD: dict[str, list[int]] = {}


def _lock_key(output: str | Path) -> str:
    lock = lock_path_for(output)
    return str(lock.parent.resolve() / lock.name)


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode("utf-8", "replace").split()
    except OSError:
        return "?"
    return text[0] if text and text[0].isdigit() else "?"


def acquire_job_lock(output: str | Path) -> None:
    """Become the one writer of ``output`` or raise "another job (pid N) is writing ``output``".

    Re-entrant within a process.  The lock file is checked to still be the one on disk after locking
    (a finishing job unlinks it), so two jobs can never both believe they hold it.
    """
    key = _lock_key(output)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    lock = lock_path_for(output)
    ensure_writable_dir(lock.parent if str(lock.parent) else Path("."))
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, plain_file_mode())
        except OSError as exc:
            raise (output_error(exc, output) or OutputError(
                f"cannot create the job lock ({exc.strerror})", file=lock,
                fix="choose an output directory you can write to")) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise OutputError(f"another job (pid {pid}) is writing {output}",
                              fix="wait for it to finish, or write to another -o") from None
        except OSError as exc:  # a file system without locks
            os.close(fd)
            raise OutputError(f"cannot lock {lock} ({exc.strerror})", file=output,
                              fix="write the output to a local or lock-capable disk") from exc
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # unlinked by the previous holder between our open and our lock: take the new file
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = [fd, 1]
        # we are the only writer: any temporary of this output is a dead run's litter
        remove_stale_tmp(lock.parent, name=Path(output).name)
        return
    raise OutputError(f"cannot take the job lock of {output} (it keeps changing)", file=lock,
                      fix="check that no other job is being started on the same output in a loop")


def release_job_lock(output: str | Path, *, all_levels: bool = False) -> None:
    """Leave one level of the lock (every level with ``all_levels``); the last one removes the file."""
    key = _lock_key(output)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] = 0 if all_levels else held[1] - 1
    if held[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(OSError):
        os.unlink(key)  # while still locked: a waiter that opened the old file sees it is gone and retries
    os.close(held[0])


_OPEN_CACHES: list[TaskCache] = []


@atexit.register
def _release_at_exit() -> None:
    """On any orderly exit (an error line and exit 2 included): drop caches that hold no finished task
    (nothing to resume) and remove our lock files, so a failed run leaves no hidden litter.  After a
    kill -9 the kernel still drops the locks; the files are reused by the next run."""
    for cache in list(_OPEN_CACHES):
        with contextlib.suppress(OSError):
            if cache.directory.is_dir() and len(cache) == 0:
                shutil.rmtree(cache.directory, ignore_errors=True)
    _OPEN_CACHES.clear()
    for key in list(_HELD):
        held = _HELD.pop(key)
        with contextlib.suppress(OSError):
            os.unlink(key)
        with contextlib.suppress(OSError):
            os.close(held[0])


def holds_job_lock(output: str | Path) -> bool:
    """True when this process holds the job lock of ``output``."""
    return _lock_key(output) in _HELD


@contextlib.contextmanager
def job_lock(output: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of ``output`` for the block (see :func:`acquire_job_lock`)."""
    acquire_job_lock(output)
    try:
        yield
    finally:
        release_job_lock(output)


@contextlib.contextmanager
def job_output_dir(directory: str | Path) -> Iterator[Path]:
    """Create a job's output directory; if the job fails and the directory is new and holds nothing a
    rerun could use (no visible file, no finished task record), remove it again, so a refused or failed
    run leaves no empty folder behind."""
    d = Path(directory)
    created = not d.exists()
    out = ensure_writable_dir(d)
    try:
        yield out
    except BaseException:
        if created:
            _remove_if_unused(out)
        raise


def _remove_if_unused(directory: Path) -> None:
    root = directory.resolve()
    try:
        visible = any(not p.name.startswith(".") for p in root.iterdir())
        records = any(root.rglob("task_*.npz"))
    except OSError:
        return
    if visible or records:
        return
    for key in [k for k in _HELD if Path(k).parent == root or root in Path(k).parents]:
        release_job_lock(Path(key).parent / Path(key).name[1 : -len(".lock")], all_levels=True)
    for cache in [c for c in _OPEN_CACHES if root in c.directory.resolve().parents]:
        _OPEN_CACHES.remove(cache)
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ resume cache
def cache_dir_for(output: str | Path) -> Path:
    """Where a job writing ``output`` keeps its finished tasks: a hidden ``.NAME.parts`` beside it."""
    p = Path(output)
    return p.parent / f".{p.name}.parts"


def output_for_cache_dir(directory: str | Path) -> Path:
    """The output a ``.NAME.parts`` directory belongs to (the directory itself for other names)."""
    d = Path(directory)
    if d.name.startswith(".") and d.name.endswith(".parts") and len(d.name) > len("..parts"):
        return d.parent / d.name[1 : -len(".parts")]
    return d


class TaskCache:
    """Finished task results of one job on disk (``task_000012.npz``), so a killed job resumes.

    Opening it takes the job lock of its output (released by :meth:`clear`, or by the kernel when the
    process dies).  The directory holds a ``fingerprint`` file; the results of a job with another
    fingerprint are discarded on open, and every record is also tagged with the fingerprint and its
    task index and checked on load.  Records are data (:mod:`mlfastsim.core.records`): loading one
    cannot run code.  Old pickled results (``*.pkl``) are deleted unread.
    """

    def __init__(self, directory: str | Path, fingerprint: str,
                 accept: Callable[[int, Any], bool] | None = None) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        # what a result of task i must look like (shape, kind): a record that carries this job's tag but
        # not a result it could have written (planted, or from a bug) is recomputed, not written out
        self.accept = accept
        self.output = output_for_cache_dir(self.directory)
        acquire_job_lock(self.output)
        try:
            with translate_fs_errors(self.directory, what="resume cache", any_errno=True):
                self._open()
        except BaseException:
            release_job_lock(self.output)
            raise
        _OPEN_CACHES.append(self)

    def _open(self) -> None:
        stamp = self.directory / "fingerprint"
        if self.directory.is_symlink() or (self.directory.exists() and not self.directory.is_dir()):
            self.directory.unlink()
        if self.directory.exists():
            try:
                same = stamp.is_file() and stamp.read_text().strip() == self.fingerprint
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            with atomic_path(stamp, what="resume cache") as tmp:
                tmp.write_text(self.fingerprint + "\n")
        # we hold the lock: temporaries here are a killed run's, and pickles are never read
        for p in list(self.directory.iterdir()):
            if p.name.endswith((".tmp", ".pkl")):
                with contextlib.suppress(OSError):
                    p.unlink()

    def reset(self) -> None:
        """Forget every stored result but keep the directory, its fingerprint and the job lock."""
        for p in list(self.directory.iterdir()):
            if p.name != "fingerprint":
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()

    def _path(self, i: int) -> Path:
        return self.directory / f"task_{i:06d}.npz"

    def _tag(self, i: int) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "task": int(i)}

    def has(self, i: int) -> bool:
        """A record of task ``i`` exists (it may still prove corrupt: use :meth:`get` to read it)."""
        return self._path(i).is_file()

    def get(self, i: int, default: Any = None) -> Any:
        """The stored result of task ``i``, or ``default`` when absent, corrupt or not this job's.

        A record that cannot be used is deleted (with a log line), so the caller recomputes the task.
        """
        path = self._path(i)
        if not path.is_file():
            return default
        try:
            value = read_record(path, self._tag(i))
            if self.accept is not None and not self._accepted(i, value):
                raise RecordError("it is not a result this task could have produced")
            return value
        except RecordError as exc:
            log.warning("cached result %s cannot be used (%s): recomputing that task", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return default

    def _accepted(self, i: int, value: Any) -> bool:
        assert self.accept is not None
        try:
            return bool(self.accept(i, value))
        except Exception:  # a value of the wrong kind may break the check itself: not acceptable either
            return False

    def load(self, i: int) -> Any:
        """The stored result of task ``i``; :class:`KeyError` when it is absent or unusable (recompute)."""
        value = self.get(i, _MISSING)
        if value is _MISSING:
            raise KeyError(i)
        return value

    def save(self, i: int, result: Any) -> None:
        """Store ``result`` of task ``i`` atomically (a killed save leaves no record)."""
        with atomic_path(self._path(i), what="resume cache") as tmp, open(tmp, "wb") as fh:
            write_record(fh, result, self._tag(i))

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("task_*.npz"))

    def clear(self) -> None:
        """Remove the cache (the job's output is written) and give up the job lock."""
        shutil.rmtree(self.directory, ignore_errors=True)
        release_job_lock(self.output, all_levels=True)
        with contextlib.suppress(ValueError):
            _OPEN_CACHES.remove(self)


# ------------------------------------------------------------------ "done" is a property of the output
#: The root attribute of an HDF5 output naming the job that wrote it (JSON: fingerprint, digest, info).
DONE_ATTR = "mlfastsim_job"
#: Where the done records of outputs that cannot carry metadata (directories, .npy/.json sets) live: one
#: hidden folder per directory instead of one hidden file per output.
DONE_DIR = ".mlfastsim-done"
_DIGEST_BLOCK = 1 << 16  # rows per read when a dataset is not chunked


def _legacy_marker(output: str | Path) -> Path:
    p = Path(output)
    return p.parent / f".{p.name}.done.json"


def _marker(output: str | Path) -> Path:
    p = Path(output)
    return p.parent / DONE_DIR / f"{p.name}.json"


def _drop_legacy_marker(output: str | Path) -> None:
    """Markers of the kind that piled up beside outputs (``.NAME.done.json``) are no longer read: remove."""
    with contextlib.suppress(OSError):
        _legacy_marker(output).unlink()


def _attr_bytes(value: Any) -> bytes:
    """The bytes of an attribute value for the digest (numbers as stored, strings encoded, else repr)."""
    import numpy as np

    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    arr = np.asarray(value)
    if arr.dtype.kind in "biufc":
        return arr.dtype.str.encode() + arr.tobytes()
    return repr(value).encode()


def h5_digest(f: Any) -> str:
    """SHA-256 of what an open HDF5 file holds: every dataset's name, shape, dtype and *stored* bytes
    (chunks as written, compressed, in index order: no decompression, so a rerun's check costs one read
    of the file), and every attribute except :data:`DONE_ATTR`.  A ``cp`` keeps it; an edit, a foreign
    file or a damaged chunk does not."""
    import h5py
    import numpy as np

    h = hashlib.sha256()

    def attrs(name: str, obj: Any) -> None:
        for key in sorted(obj.attrs):
            if name == "/" and key == DONE_ATTR:
                continue
            try:
                raw = _attr_bytes(obj.attrs[key])
            except (OSError, TypeError, ValueError):  # a type h5py cannot read: its name still counts
                raw = b"?"
            h.update(f"{name}@{key}:{len(raw)}:".encode())
            h.update(raw)

    def visit(name: str, obj: Any) -> None:
        attrs(name, obj)
        if not isinstance(obj, h5py.Dataset):
            return
        h.update(f"{name}|{obj.shape}|{obj.dtype.str}|".encode())
        if obj.chunks is not None:
            for i in range(obj.id.get_num_chunks()):
                offset = obj.id.get_chunk_info(i).chunk_offset
                mask, raw = obj.id.read_direct_chunk(offset)
                h.update(f"{offset}:{mask}:{len(raw)}:".encode())
                h.update(raw)
        elif obj.shape and obj.size:
            for lo in range(0, obj.shape[0], _DIGEST_BLOCK):
                h.update(np.ascontiguousarray(obj[lo : lo + _DIGEST_BLOCK]).tobytes())
        elif obj.shape is not None and obj.size:
            h.update(np.asarray(obj[()]).tobytes())

    attrs("/", f)
    f.visititems(visit)
    return h.hexdigest()


def stamp_h5(f: Any, fingerprint: str, info: dict[str, Any] | None = None) -> None:
    """Mark an open HDF5 output (still under its temporary name) as written by the job ``fingerprint``.

    Call it last, after every dataset and attribute is written: the stamp holds the :func:`h5_digest` of
    the file, so :func:`is_done` accepts the file (or a byte copy of it) and nothing else.  ``info`` is
    what a skipped rerun reports (e.g. the other files of a multi-file output).
    """
    f.flush()
    f.attrs[DONE_ATTR] = json.dumps({"fingerprint": fingerprint, "digest": h5_digest(f), "info": info or {}})


def read_stamp(path: str | Path) -> dict[str, Any] | None:
    """The stamp of an HDF5 output with its digest checked against the file now (None when the file is
    not HDF5, unreadable, unstamped, or no longer holds what was stamped)."""
    import h5py

    p = Path(path)
    try:
        if not p.is_file() or not h5py.is_hdf5(p):
            return None
        with h5py.File(p, "r") as f:
            stamp = json.loads(f.attrs[DONE_ATTR]) if DONE_ATTR in f.attrs else None
            if not isinstance(stamp, dict) or stamp.get("digest") != h5_digest(f):
                return None
    except (OSError, ValueError, TypeError, KeyError, RuntimeError):
        return None
    return stamp


def _is_h5(path: Path) -> bool:
    import h5py

    try:
        return path.is_file() and bool(h5py.is_hdf5(path))
    except OSError:
        return False


_HASH_BLOCK = 8 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _stat_sig(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _files_of(output: Path, companions: Iterable[str | Path]) -> list[Path]:
    """The regular files whose bytes make up ``output``: itself, or a directory's visible files."""
    if output.is_dir():
        files = sorted(p for p in output.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [output]
    return files + [Path(c) for c in companions]


def output_signature(output: str | Path, companions: Iterable[str | Path] = ()) -> dict[str, Any]:
    """What identifies the bytes of ``output`` (and of ``companions``): per file, stat fields + SHA-256."""
    out = Path(output)
    return {str(p.name if p.parent == out or p == out else p): {**_stat_sig(p), "sha256": _sha256(p)}
            for p in _files_of(out, companions)}


def _matches(output: Path, recorded: dict[str, Any], companions: list[Path]) -> tuple[bool, bool]:
    """(same bytes, same stat fields) of the output now versus its recorded signature."""
    files = _files_of(output, companions)
    names = [str(p.name if p.parent == output or p == output else p) for p in files]
    if sorted(names) != sorted(recorded):
        return False, False
    unchanged = True
    for name, p in zip(names, files, strict=True):
        rec = recorded[name]
        try:
            now = _stat_sig(p)
        except OSError:
            return False, False
        if now["size"] != rec.get("size"):
            return False, False
        if all(now[k] == rec.get(k) for k in ("mtime_ns", "ctime_ns", "ino")):
            continue
        unchanged = False
        try:
            if _sha256(p) != rec.get("sha256"):
                return False, False
        except OSError:
            return False, False
    return True, unchanged


def is_done(output: str | Path, fingerprint: str, *, companions: Iterable[str | Path] = ()) -> bool:
    """True when ``output`` is exactly what a job with this ``fingerprint`` wrote (safe to skip).

    An HDF5 file answers for itself: its :data:`DONE_ATTR` stamp must name the fingerprint and its
    digest must match the file now (so a file replaced by ``cp``, another command or an edit is not
    done, while a byte copy of the job's own output is).  A stamp listing sibling files (``info.files``,
    a Par04 directory) needs each of them stamped by the same job.  Other outputs (directories, sets of
    .npy/.json files) are checked against a record in the directory's one hidden :data:`DONE_DIR` folder
    holding the fingerprint and the output's signature (stat fields and SHA-256 of every file).
    """
    out = Path(output)
    _drop_legacy_marker(out)
    comps = [Path(c) for c in companions]
    if not out.exists() or not all(c.is_file() for c in comps):
        return False
    if not comps and _is_h5(out):
        stamp = read_stamp(out)
        return stamp is not None and stamp.get("fingerprint") == fingerprint
    if out.is_dir() and not comps:
        stamped = _stamped_dir(out, fingerprint)
        if stamped is not None:
            return stamped
    try:
        marker = json.loads(_marker(out).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("fingerprint") != fingerprint:
        return False
    recorded = marker.get("signature")
    if not isinstance(recorded, dict):
        return False
    same, unchanged = _matches(out, recorded, comps)
    if same and not unchanged:  # same bytes, new stat (touch, chmod, a copy back): refresh the fast path
        with contextlib.suppress(OSError, OutputError):
            marker["signature"] = output_signature(out, comps)
            atomic_write_json(_marker(out), marker)
    return same


def _stamped_dir(directory: Path, fingerprint: str) -> bool | None:
    """A directory of stamped HDF5 files (a Par04 output): done when some file of the job lists the
    job's files and every one of them carries this job's valid stamp; None when no file is stamped
    by this job (fall back to a marker)."""
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or not _is_h5(p):
            continue
        stamp = read_stamp(p)
        if stamp is None or stamp.get("fingerprint") != fingerprint:
            continue
        files = (stamp.get("info") or {}).get("files")
        if not isinstance(files, list) or not files:
            return False
        for name in files:
            other = read_stamp(directory / str(name)) if Path(str(name)).name == str(name) else None
            if other is None or other.get("fingerprint") != fingerprint:
                return False
        return True
    return None


def mark_done(output: str | Path, fingerprint: str, info: dict[str, Any] | None = None, *,
              companions: Iterable[str | Path] = ()) -> None:
    """Record that ``output`` (plus ``companions``, files written with it) is complete for
    ``fingerprint``, with its signature and ``info`` (e.g. the job's counts) for a skipped rerun.

    For outputs that cannot carry metadata; an HDF5 output is stamped by its writer instead
    (:func:`stamp_h5`), and this only checks that it was.
    """
    out = Path(output)
    _drop_legacy_marker(out)
    if not list(companions) and _is_h5(out):
        if read_stamp(out) is None:
            raise OutputError("the output was written without its job stamp", file=out,
                              fix="this is a bug in the job writing the file")
        return
    atomic_write_json(_marker(out), {"fingerprint": fingerprint, "output": out.name, "info": info or {},
                                     "signature": output_signature(out, companions)})


def done_info(output: str | Path) -> dict[str, Any]:
    """The ``info`` stored for a finished ``output`` ({} when none)."""
    out = Path(output)
    if _is_h5(out):
        stamp = read_stamp(out)
        return dict((stamp or {}).get("info") or {})
    try:
        return dict(json.loads(_marker(out).read_text()).get("info") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def clear_done(output: str | Path) -> None:
    """Forget that ``output`` was finished (before rewriting it): its record, and the hidden folder when
    it is left empty.  A stamped HDF5 output needs nothing: it is replaced whole, atomically."""
    marker = _marker(output)
    _drop_legacy_marker(output)
    with contextlib.suppress(OSError):
        marker.unlink()
    with contextlib.suppress(OSError):
        marker.parent.rmdir()  # only when empty
