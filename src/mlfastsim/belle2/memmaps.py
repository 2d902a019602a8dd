"""Many preprocessed ``.npy`` files -> one memory map with ``.shape`` and ``.dtype`` sidecars.

Written out of core: each input is opened memory-mapped and copied ``block_rows`` rows at a time, so the
resident memory is one block whatever the total size.  The sidecars are plain text (``.shape``:
``N,100,12``; ``.dtype``: a numpy dtype string such as ``<f4``) so any tool can map the file, and they
are checked on load against each other and the file size: a memmap with a missing or inconsistent
sidecar is refused with a clear error instead of being read as garbage.

Training reads through :class:`PrefetchingReader`: batches are gathered from the memmaps by a
background thread one step ahead of the trainer, so the disk and the network overlap.
"""

from __future__ import annotations

import glob as globlib
import json
import mmap
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlfastsim.core.errors import DataError, InputFileError
from mlfastsim.core.io import atomic_path, atomic_write_text, require_file
from mlfastsim.core.progress import progress_bar


def sidecars(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    return p.with_name(p.name + ".shape"), p.with_name(p.name + ".dtype")


def _open_npy(path: Path) -> np.ndarray:
    require_file(path, what="preprocessed input")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"not a readable .npy file ({str(exc).splitlines()[0][:100]})", file=path,
                             fix="pass .npy files written by belle2 preprocess") from exc


def create_memmap(pattern: str | Sequence[str | Path], output: str | Path, *, block_rows: int = 4096,
                  progress: bool = True) -> dict[str, Any]:
    """Concatenate the ``.npy`` files matching ``pattern`` (sorted) along axis 0 into ``output``."""
    if isinstance(pattern, str):
        files = [Path(p) for p in sorted(globlib.glob(pattern))]
        if not files:
            raise InputFileError("no file matches the pattern", file=pattern,
                                 fix="quote the glob and check it, e.g. -i 'pre/*/particle.npy'")
    else:
        files = [Path(p) for p in pattern]
    arrays = [_open_npy(f) for f in files]
    first = arrays[0]
    for f, a in zip(files, arrays, strict=True):
        if a.ndim == 0 or a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
            raise DataError(f"shape {a.shape} / dtype {a.dtype} does not match {files[0]} "
                            f"({first.shape}, {first.dtype})", file=f, field="shape",
                            fix="preprocess every file with the same settings and input type")
    _check_vocabularies(files)
    n = sum(a.shape[0] for a in arrays)
    shape = (n, *first.shape[1:])
    out = Path(output)
    shape_file, dtype_file = sidecars(out)
    with atomic_path(out) as tmp:
        # plain sequential writes (no output mapping): resident memory is one block, whatever the size
        with open(tmp, "wb") as fh, progress_bar(n, f"memmap {out.name}", enabled=progress) as bar:
            for a in arrays:
                for lo in range(0, a.shape[0], block_rows):
                    block = np.ascontiguousarray(a[lo : lo + block_rows])
                    fh.write(block.tobytes(order="C"))
                    bar.advance(block.shape[0])
                    release_pages(a)
        # sidecars are written before the data file appears under its final name
        atomic_write_text(shape_file, ",".join(str(s) for s in shape) + "\n")
        atomic_write_text(dtype_file, first.dtype.str + "\n")
    vocab = files[0].parent / "vocab.json"
    if vocab.is_file():
        atomic_write_text(out.with_name(out.name + ".vocab.json"), vocab.read_text(encoding="utf-8"))
    return {"output": str(out), "files": [str(f) for f in files], "shape": list(shape), "dtype": first.dtype.str,
            "bytes": int(np.prod(shape)) * first.dtype.itemsize}


def _check_vocabularies(files: Sequence[Path]) -> None:
    """Token ids only mean the same thing if every file was preprocessed with the same vocabulary."""
    ref: tuple[Path, Any] | None = None
    for f in files:
        v = f.parent / "vocab.json"
        if not v.is_file():
            continue
        data = json.loads(v.read_text(encoding="utf-8"))
        if ref is None:
            ref = (v, data)
        elif data != ref[1]:
            raise DataError(f"vocabulary differs from {ref[0]}", file=v, field="vocab",
                            fix="preprocess all files with the same decay table")


def open_memmap(path: str | Path) -> np.ndarray:
    """Map a memmap read-only after validating its sidecars; ``.npy`` files are accepted too."""
    p = Path(path)
    if p.suffix == ".npy":
        return _open_npy(p)
    require_file(p, what="memmap")
    shape_file, dtype_file = sidecars(p)
    for side, what in ((shape_file, "shape"), (dtype_file, "dtype")):
        if not side.is_file():
            raise InputFileError(f"missing .{what} sidecar", file=side,
                                 fix="re-create the memmap with 'mlfastsim belle2 memmap'")
    text = shape_file.read_text(encoding="utf-8").strip()
    try:
        shape = tuple(int(x) for x in text.split(",") if x.strip())
        if not shape or any(s < 0 for s in shape):
            raise ValueError
    except ValueError:
        raise InputFileError(f"malformed .shape sidecar {text[:40]!r}", file=shape_file, field="shape",
                             fix="write the shape as comma-separated integers, e.g. 1000,100,12") from None
    dtext = dtype_file.read_text(encoding="utf-8").strip()
    try:
        dtype = np.dtype(dtext)
        if dtype.hasobject:
            raise TypeError
    except TypeError:
        raise InputFileError(f"malformed .dtype sidecar {dtext[:40]!r}", file=dtype_file, field="dtype",
                             fix="write a numpy dtype such as <f4 or int32") from None
    expected = int(np.prod(shape)) * dtype.itemsize
    size = p.stat().st_size
    if size != expected:
        raise DataError(f"file has {size} bytes but .shape {shape} x .dtype {dtype} needs {expected}", file=p,
                        field="shape", fix="the sidecars do not belong to this file; re-create the memmap")
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(p, mode="r", dtype=dtype, shape=shape)


def release_pages(a: np.ndarray) -> None:
    """Drop a memmap's pages from this process's resident set (they stay in the kernel's page cache).

    Pages of a file mapping touched by reads count in the RSS until the kernel reclaims them; releasing
    them after each batch keeps the RSS of a long training flat instead of growing towards the file size.
    """
    mm = getattr(a, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        return


class PrefetchingReader:
    """Batches gathered from memmaps in a background thread, one step ahead of the trainer.

    ``columns()`` are array-like views the :class:`~mlfastsim.core.trainer.Trainer` indexes exactly like
    tensors (``col[idx]`` for a batch, ``col[lo:hi]`` for validation).  The reader asks the bound
    trainer which step comes next and prefetches ``trainer.batch_indices(step + 1)``; a batch is the same
    whether it was prefetched or read on demand, so prefetching cannot change results (or exact resume).
    """

    def __init__(self, arrays: Sequence[np.ndarray], rows: np.ndarray, dtypes: Sequence[torch.dtype],
                 prefetch: int = 2) -> None:
        self.arrays = list(arrays)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.dtypes = list(dtypes)
        self.prefetch = prefetch
        self.trainer: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1) if prefetch > 0 else None
        self._pending: dict[int, Future[tuple[torch.Tensor, ...]]] = {}
        self._served: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None
        self._served_slice: tuple[tuple[int, int, int], tuple[torch.Tensor, ...]] | None = None
        self._lock = threading.Lock()

    def bind(self, trainer: Any) -> None:
        """Use ``trainer.step`` and ``trainer.batch_indices`` to know what to read next."""
        self.trainer = trainer

    def __len__(self) -> int:
        return int(self.rows.size)

    def read(self, local: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Rows ``local`` (positions in this reader's subset) of every array, as tensors."""
        global_rows = self.rows[local]
        order = np.argsort(global_rows, kind="stable")
        sorted_rows = global_rows[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        out = []
        for a, dt in zip(self.arrays, self.dtypes, strict=True):
            block = np.asarray(a[sorted_rows])[inverse]  # sorted reads: sequential access on disk
            out.append(torch.from_numpy(np.ascontiguousarray(block)).to(dt))
            release_pages(a)
        return tuple(out)

    def _indices(self, step: int) -> np.ndarray:
        return self.trainer.batch_indices(step).numpy()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch for ``idx``; served from the prefetch when it is the trainer's current step."""
        local = idx.cpu().numpy()
        with self._lock:
            if self._served is not None and self._served[0] is idx:
                return self._served[1]
            step = int(self.trainer.step) if self.trainer is not None else None
            result = None
            if step is not None and step in self._pending:
                fut = self._pending.pop(step)
                cand = fut.result()
                if np.array_equal(self._indices(step), local):
                    result = cand
            if result is None:
                result = self.read(local)
            # drop stale prefetches and schedule the next ones
            if step is not None and self._pool is not None:
                for s in [s for s in self._pending if s <= step]:
                    self._pending.pop(s)
                total = getattr(self.trainer, "total_steps", step + 1)
                for s in range(step + 1, min(step + 1 + self.prefetch, total)):
                    if s not in self._pending:
                        self._pending[s] = self._pool.submit(self.read, self._indices(s))
            self._served = (idx, result)  # holding idx keeps its identity unique while cached
            return result

    def slice(self, item: slice) -> tuple[torch.Tensor, ...]:
        """Rows of a contiguous slice (validation), cached so the columns of one batch read once."""
        key = item.indices(len(self))
        with self._lock:
            if self._served_slice is not None and self._served_slice[0] == key:
                return self._served_slice[1]
        result = self.read(np.arange(*key))
        with self._lock:
            self._served_slice = (key, result)
        return result

    def columns(self) -> tuple[MemmapColumn, ...]:
        return tuple(MemmapColumn(self, k) for k in range(len(self.arrays)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


class MemmapColumn:
    """One input of a :class:`PrefetchingReader`, indexable like a tensor by the trainer."""

    device = torch.device("cpu")

    def __init__(self, reader: PrefetchingReader, k: int) -> None:
        self.reader = reader
        self.k = k
        self.shape = (len(reader), *reader.arrays[k].shape[1:])

    def __getitem__(self, item: Any) -> torch.Tensor:
        if isinstance(item, slice):
            return self.reader.slice(item)[self.k]
        if isinstance(item, torch.Tensor):
            return self.reader.batch(item)[self.k]
        return self.reader.read(np.asarray(item))[self.k]
