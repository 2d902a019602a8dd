"""File plumbing shared by every workflow.

Outputs are written to a temporary name in the destination directory and renamed into place, so a
crash or Ctrl-C never leaves a half-written file under the final name.  Inputs are opened through
helpers that turn the zoo of low-level failures (missing, not HDF5, truncated) into one clear error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mlfastsim.core.errors import InputFileError, OutputError


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


@contextlib.contextmanager
def atomic_path(destination: str | Path, *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it into place only on success.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.  On any
    exception the temporary file is removed and ``destination`` is left untouched.
    """
    dest = Path(destination)
    parent = ensure_writable_dir(dest.parent if str(dest.parent) else Path("."), what=what)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():
            # mkstemp creates 0600; give the file the permissions a plain open() would (0666 & ~umask),
            # so outputs on a shared cluster disk are readable by the group like any other file
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
