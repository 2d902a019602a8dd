"""The native shower format and :class:`ShowerData`, the unit every shower command reads and writes.

A CaloChallenge file plus optional extras (angles, a geometry block); see :mod:`.formats` for the other
layouts.  This module knows nothing of hits or voxelisation, so the simulators and the voxeliser can
import it without an import circle through :mod:`.formats`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.core.io import atomic_path, check_h5_dataset, guarded_h5, open_h5
from mlfastsim.showers.geometry import (
    MESH_PRESETS,
    CartesianGrid,
    CylindricalMesh,
    Mesh,
    mesh_from_dict,
)

NATIVE_FORMAT_VERSION = 1


@dataclass
class ShowerData:
    """Showers in memory: the unit every shower command reads and writes.

    ``energies`` (N,) and ``showers`` (N, n_voxels) are in MeV, ``angles`` (N,) in degrees.
    ``meta`` carries free-form provenance (detector block, particle, seed...) stored in the file.
    """

    energies: np.ndarray
    showers: np.ndarray
    mesh: Mesh
    angles: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.energies = np.asarray(self.energies, dtype=np.float32).reshape(-1)
        self.showers = np.asarray(self.showers, dtype=np.float32)
        if self.angles is not None:
            self.angles = np.asarray(self.angles, dtype=np.float32).reshape(-1)

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def grid(self) -> np.ndarray:
        """Showers as (N, n_z, n_phi, n_r) (cylindrical) or (N, n_z, n_y, n_x) (Cartesian), a view."""
        return self.mesh.to_grid(self.showers)

    def subset(self, index: np.ndarray | slice) -> ShowerData:
        return ShowerData(
            energies=self.energies[index],
            showers=self.showers[index],
            mesh=self.mesh,
            angles=None if self.angles is None else self.angles[index],
            meta=dict(self.meta),
        )

    def validate(self, *, source: str | Path | None = None) -> ShowerData:
        """Check shapes and physical sanity; raise a :class:`DataError` naming the field if broken."""
        if self.showers.ndim != 2:
            raise DataError(
                f"showers must be 2-D (N, n_voxels), got shape {self.showers.shape}",
                file=source, field="showers", fix="store one flattened shower per row",
            )
        check_layout(self.showers.shape, self.mesh, self.energies, self.angles, source=source)
        check_values(self.showers, "showers", source=source)
        return self


def check_layout(shape: tuple[int, ...], mesh: Mesh, energies: np.ndarray, angles: np.ndarray | None, *,
                 source: str | Path | None = None) -> None:
    """Everything :meth:`ShowerData.validate` checks except the cell values: the showers' (N, n_voxels)
    ``shape`` against the energies, angles and mesh, and the per-shower energies and angles.

    Split out so that a streaming job checks a whole file's layout before reading a single shower, and
    the cells block by block (:func:`check_values`)."""
    n = int(energies.shape[0])
    if shape[0] != n:
        raise DataError(
            f"{shape[0]} showers but {n} incident energies",
            file=source, field="incident_energies", fix="store one incident energy per shower",
        )
    if shape[1] != mesh.n_voxels:
        raise DataError(
            f"showers have {shape[1]} voxels but the geometry {mesh.describe()} has {mesh.n_voxels}",
            file=source, field="showers", fix="pass the matching geometry (--mesh or --binning)",
        )
    if angles is not None and angles.shape[0] != n:
        raise DataError(
            f"{angles.shape[0]} incident angles but {n} showers",
            file=source, field="incident_angles", fix="store one angle per shower",
        )
    if angles is not None and not np.isfinite(angles).all():
        row = int(np.argwhere(~np.isfinite(angles))[0][0])
        raise DataError(
            f"NaN/inf incident angle, first in row {row}",
            file=source, field="incident_angles", fix="remove or repair the broken events",
        )
    if angles is not None and ((angles < 0) | (angles > 180)).any():
        row = int(np.argwhere((angles < 0) | (angles > 180))[0][0])
        raise DataError(
            f"incident angle {float(angles[row]):g} degrees is outside 0..180, first in row {row}",
            file=source, field="incident_angles", fix="store angles in degrees (90 = normal incidence)",
        )
    check_values(energies, "incident_energies", source=source)
    if (energies <= 0).any():
        row = int(np.argwhere(energies <= 0)[0][0])
        raise DataError(
            f"incident energy must be > 0 (row {row})",
            file=source, field="incident_energies", fix="remove events with zero incident energy",
        )


def check_values(arr: np.ndarray, name: str, *, source: str | Path | None = None, first_row: int = 0) -> None:
    """No NaN/inf and no negative energy in ``arr`` (rows numbered from ``first_row`` in the message)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        row = first_row + int(np.argwhere(bad)[0][0])
        raise DataError(
            f"{int(bad.sum())} NaN/inf value(s), first in row {row}",
            file=source, field=name, fix="remove or repair the broken events",
        )
    if (arr < 0).any():
        row = first_row + int(np.argwhere(arr < 0)[0][0])
        raise DataError(
            f"{int((arr < 0).sum())} negative energy value(s), first in row {row}",
            file=source, field=name, fix="energies must be >= 0 MeV",
        )


def guess_mesh(n_voxels: int, *, source: str | Path | None = None) -> CylindricalMesh:
    """The preset mesh with ``n_voxels`` voxels (for plain CaloChallenge files without a geometry block)."""
    for name in ("ds2", "par04"):
        if MESH_PRESETS[name].n_voxels == n_voxels:
            return MESH_PRESETS[name]
    raise InputFileError(
        f"file has no geometry block and {n_voxels} voxels match no preset mesh",
        file=source, field="showers", fix="pass the geometry with --mesh or --binning FILE.xml",
    )


def _write_calochallenge_datasets(
    f: h5py.File, data: ShowerData, compression: str | None, dtype: type[np.floating] = np.float32
) -> dict[str, Any]:
    """The two datasets every shower file has; returns the dataset options for any extra datasets.

    ``dtype`` is float32 for native files (our precision) and float64 for CaloChallenge-layout files:
    the official datasets store float64, and the official ``evaluate.py`` feeds the arrays to a float64
    network as they are (float32 input stops its classifier with a dtype mismatch).
    """
    kw: dict[str, Any] = {"compression": compression} if compression else {}
    f.create_dataset("incident_energies", data=data.energies.reshape(-1, 1).astype(dtype), **kw)
    chunks = (min(len(data), 256) or 1, data.showers.shape[1])
    f.create_dataset("showers", data=data.showers, dtype=dtype, chunks=chunks, **kw)
    return kw


def write_native(data: ShowerData, path: str | Path, *, compression: str | None = "gzip") -> Path:
    """Write ``data`` atomically in the native format."""
    data.validate(source=path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            kw = _write_calochallenge_datasets(f, data, compression)
            if data.angles is not None:
                f.create_dataset("incident_angles", data=data.angles.reshape(-1, 1), **kw)
            f.attrs["mlfastsim_format_version"] = NATIVE_FORMAT_VERSION
            f.attrs["geometry"] = json.dumps(data.mesh.to_dict())
            if data.meta:
                f.attrs["meta"] = json.dumps(data.meta, default=str)
    return Path(path)


# ------------------------------------------------------------------------------------ streaming writes
class NativeWriter:
    """Showers appended to a native file as they come: writing N showers needs memory for one chunk.

    Made by :func:`native_writer`.  Energies and angles (two floats per shower) are written up front;
    each :meth:`append` validates its rows (shape, NaN/inf, negative cells) and writes them in place.
    The per-shower totals are kept (four bytes a shower) for the summary a command prints.
    """

    def __init__(self, f: h5py.File, path: Path, n: int, n_voxels: int,
                 check: Callable[[], None] = lambda: None) -> None:
        self._f = f
        self._check = check  # raises a write failure the file layer recorded (a full disk)
        self.path = path
        self.n = n
        self.n_voxels = n_voxels
        self.written = 0
        self.totals = np.zeros(n, dtype=np.float32)

    def append(self, showers: np.ndarray) -> None:
        """Write the next rows (a chunk in task order)."""
        rows = np.asarray(showers, dtype=np.float32)
        lo = self.written
        if rows.ndim != 2 or rows.shape[1] != self.n_voxels or lo + rows.shape[0] > self.n:
            raise DataError(f"chunk of shape {rows.shape} does not fit rows {lo}.. of ({self.n}, {self.n_voxels})",
                            file=self.path, field="showers", fix="this is a bug in the job writing the file")
        bad = ~np.isfinite(rows)
        if bad.any() or (rows < 0).any():
            row = lo + int(np.argwhere(bad | (rows < 0))[0][0])
            raise DataError(f"NaN/inf or negative cell energy in row {row}", file=self.path, field="showers",
                            fix="remove or repair the broken events")
        self._f["showers"][lo : lo + rows.shape[0]] = rows
        self.totals[lo : lo + rows.shape[0]] = rows.sum(axis=1)
        self.written = lo + rows.shape[0]
        self._check()

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace the ``meta`` attribute (a job that learns its provenance while streaming, e.g. the
        voxelisation counts of a hits conversion, writes it before the file is closed)."""
        if meta:
            self._f.attrs["meta"] = json.dumps(meta, default=str)
        elif "meta" in self._f.attrs:
            del self._f.attrs["meta"]


@contextlib.contextmanager
def native_writer(path: str | Path, *, mesh: Mesh, energies: np.ndarray, angles: np.ndarray | None = None,
                  meta: dict[str, Any] | None = None, compression: str | None = "gzip", job: str | None = None,
                  calochallenge: bool = False) -> Iterator[NativeWriter]:
    """Open a native file for streaming (written under a temporary name, renamed into place on success).

    The layout is that of :func:`write_native` (same datasets, chunks and attributes), so readers see
    no difference; the HDF5 chunk cache holds a few chunks so that a task boundary inside an HDF5 chunk
    never rewrites a compressed chunk (the bytes do not depend on the task size's alignment).
    ``calochallenge`` writes the plain CaloChallenge layout instead (float64 ``incident_energies`` and
    ``showers`` only, as :func:`~mlfastsim.showers.io.formats.write_calochallenge`).  With ``job`` (a
    job fingerprint) the finished file is stamped as that job's output (:func:`mlfastsim.core.resume.stamp_h5`).
    """
    from mlfastsim.core.resume import stamp_h5

    p = Path(path)
    energies = np.asarray(energies, dtype=np.float32).reshape(-1)
    n = int(energies.size)
    if angles is not None:
        angles = np.asarray(angles, dtype=np.float32).reshape(-1)
        if angles.size != n or not np.isfinite(angles).all():
            raise DataError("incident angles must be finite, one per shower", file=p, field="incident_angles",
                            fix="this is a bug in the job writing the file")
    if n == 0 or not np.isfinite(energies).all() or (energies <= 0).any():
        raise DataError("incident energies must be finite and > 0, at least one", file=p,
                        field="incident_energies", fix="check the requested energies")
    dtype = np.float64 if calochallenge else np.float32
    chunk_rows = min(n, 256) or 1
    chunk_bytes = chunk_rows * mesh.n_voxels * np.dtype(dtype).itemsize
    kw: dict[str, Any] = {"compression": compression} if compression else {}
    with atomic_path(p) as tmp:
        # guarded: a full disk mid-stream is one clean error, never an HDF5 error storm or a segfault
        with guarded_h5(tmp, rdcc_nbytes=3 * chunk_bytes + (1 << 20), rdcc_nslots=10007,
                        rdcc_w0=1.0) as (f, guard):
            f.create_dataset("incident_energies", data=energies.reshape(-1, 1).astype(dtype), **kw)
            f.create_dataset("showers", shape=(n, mesh.n_voxels), dtype=dtype,
                             chunks=(chunk_rows, mesh.n_voxels), **kw)
            if not calochallenge:
                if angles is not None:
                    f.create_dataset("incident_angles", data=angles.reshape(-1, 1), **kw)
                f.attrs["mlfastsim_format_version"] = NATIVE_FORMAT_VERSION
                f.attrs["geometry"] = json.dumps(mesh.to_dict())
                if meta:
                    f.attrs["meta"] = json.dumps(meta, default=str)
            writer = NativeWriter(f, p, n, mesh.n_voxels, guard.check)
            yield writer
            if writer.written != n:
                raise DataError(f"only {writer.written} of {n} showers were written", file=p, field="showers",
                                fix="this is a bug in the job writing the file")
            if job is not None:
                stamp_h5(f, job)
            guard.check()


class ShowerRows:
    """The ``showers`` of a file on disk, read in row blocks: the reductions a summary needs, without
    holding N showers in memory (``np.asarray`` reads them all, for a caller that wants that)."""

    def __init__(self, path: Path, shape: tuple[int, int], totals: np.ndarray | None = None) -> None:
        self.path = path
        self.shape = shape
        self._totals = totals

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self, rows: int = 1024) -> Iterator[np.ndarray]:
        with open_h5(self.path, what="shower file") as f:
            ds = f["showers"]
            for lo in range(0, self.shape[0], rows):
                yield np.asarray(ds[lo : lo + rows], dtype=np.float32)

    def sum(self, axis: int | None = None) -> Any:
        """Per-shower totals (``axis=1``) or the grand total, computed block by block."""
        if axis in (1, -1):
            if self._totals is None:
                self._totals = np.concatenate([b.sum(axis=1) for b in self.blocks()]) if self.shape[0] else (
                    np.zeros(0, np.float32))
            return self._totals
        if axis is None:
            return float(self.sum(axis=1).sum(dtype=np.float64))
        raise ValueError("ShowerRows sums over axis 1 or everything")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        with open_h5(self.path, what="shower file") as f:
            return np.asarray(f["showers"][()], dtype=dtype or np.float32)


@dataclass
class StoredShowers:
    """A native file written by a streaming job: what a caller prints about it, without the showers in
    memory (``showers`` reads row blocks from the file; :meth:`load` reads everything)."""

    path: Path
    energies: np.ndarray
    mesh: Mesh
    angles: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    totals: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def showers(self) -> ShowerRows:
        return ShowerRows(self.path, (len(self), self.mesh.n_voxels), self.totals)

    def load(self) -> ShowerData:
        return read_native(self.path, mesh=self.mesh)

    @classmethod
    def open(cls, path: str | Path) -> StoredShowers:
        """The small parts of a native file (energies, angles, geometry, meta), showers left on disk."""
        p = Path(path)
        with open_h5(p, what="shower file") as f:
            energies = _read_dataset(f, "incident_energies", p).reshape(-1)
            angles = _read_dataset(f, "incident_angles", p).reshape(-1) if "incident_angles" in f else None
            n_voxels = int(f["showers"].shape[1]) if "showers" in f and len(f["showers"].shape) == 2 else -1
            geometry = f.attrs.get("geometry")
            meta_raw = f.attrs.get("meta")
        mesh = mesh_from_dict(json.loads(geometry), source=str(p)) if geometry is not None else guess_mesh(
            n_voxels, source=p)
        try:
            meta = json.loads(meta_raw) if meta_raw is not None else {}
        except json.JSONDecodeError:
            meta = {}
        return cls(path=p, energies=energies, mesh=mesh, angles=angles, meta=meta)


def _dataset_of(f: h5py.File, key: str, path: Path, *, rows: int | None = None) -> h5py.Dataset:
    """Dataset ``key`` of a shower file, its declared shape checked against its stored bytes and the
    memory a read of it (or of its first ``rows`` rows) needs."""
    try:
        ds = f[key]
    except KeyError:
        raise InputFileError(
            f"missing dataset {key!r} (found: {', '.join(f.keys()) or 'nothing'})",
            file=path, field=key, fix="pass a native or CaloChallenge shower file",
        ) from None
    if not isinstance(ds, h5py.Dataset):
        raise InputFileError(f"{key!r} is a group, not a dataset", file=path, field=key,
                             fix="pass a native or CaloChallenge shower file")
    # a declared shape the file's bytes cannot back (a forged 1.6 KB file declaring 4.7 TiB), or one
    # that cannot fit in memory: refused before numpy allocates anything
    check_h5_dataset(ds, file=path, field=key, rows=rows)
    return ds


def read_rows(ds: h5py.Dataset, path: Path, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Rows ``[lo, hi)`` of a dataset (everything by default) as float32, one clean error if unreadable."""
    try:
        return np.asarray(ds[()] if lo is None else ds[lo:hi], dtype=np.float32)
    except (OSError, TypeError, ValueError) as exc:
        key = ds.name.lstrip("/")
        raise InputFileError(
            f"dataset {key!r} cannot be read ({exc})", file=path, field=key, fix="re-create the file"
        ) from exc


def _read_dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    return read_rows(_dataset_of(f, key, path), path)


@dataclass
class ShowerHeader:
    """A native or CaloChallenge file with its layout, mesh and per-shower arrays read and checked, and
    the showers left on disk: what a streaming conversion plans with (rows are read block by block)."""

    path: Path
    shape: tuple[int, int]
    mesh: Mesh
    energies: np.ndarray
    angles: np.ndarray | None
    meta: dict[str, Any]


def read_native_header(path: str | Path, *, mesh: Mesh | None = None, rows: int | None = None) -> ShowerHeader:
    """Everything of a native (or plain CaloChallenge) file but its showers, checked as :func:`read_native`
    checks it (``rows``: the largest block that will be read, for the memory check)."""
    p = Path(path)
    with open_h5(p, what="shower file") as f:
        energies = _read_dataset(f, "incident_energies", p)
        ds = _dataset_of(f, "showers", p, rows=rows)
        shape = tuple(int(x) for x in ds.shape)
        angles = _read_dataset(f, "incident_angles", p) if "incident_angles" in f else None
        geometry = f.attrs.get("geometry")
        meta_raw = f.attrs.get("meta")
    if len(shape) != 2:
        raise DataError(
            f"showers must be 2-D (N, n_voxels), got shape {shape}",
            file=p, field="showers", fix="store one flattened shower per row",
        )
    if mesh is None:
        if geometry is not None:
            try:
                mesh = mesh_from_dict(json.loads(geometry), source=str(p))
            except json.JSONDecodeError as exc:
                raise InputFileError(
                    "geometry attribute is not valid JSON", file=p, field="geometry", fix="re-create the file"
                ) from exc
        else:
            mesh = guess_mesh(shape[1], source=p)
    meta: dict[str, Any] = {}
    if meta_raw is not None:
        try:
            meta = json.loads(meta_raw)
        except json.JSONDecodeError:
            meta = {}
    if energies.ndim == 2 and energies.shape[1] != 1:
        raise DataError(
            f"incident_energies must have shape (N, 1), got {energies.shape}",
            file=p, field="incident_energies", fix="store one incident energy per shower",
        )
    energies = energies.reshape(-1)
    angles = None if angles is None else angles.reshape(-1)
    check_layout((shape[0], shape[1]), mesh, energies, angles, source=p)
    return ShowerHeader(path=p, shape=(shape[0], shape[1]), mesh=mesh, energies=energies, angles=angles, meta=meta)


def read_native(path: str | Path, *, mesh: Mesh | None = None) -> ShowerData:
    """Read a native (or plain CaloChallenge) shower file and validate it.

    ``mesh`` overrides the geometry stored in the file (e.g. from ``--binning``); without either, the
    mesh is inferred from the voxel count of the presets.
    """
    head = read_native_header(path, mesh=mesh)
    with open_h5(head.path, what="shower file") as f:
        showers = read_rows(f["showers"], head.path)
    check_values(showers, "showers", source=head.path)
    return ShowerData(energies=head.energies, showers=showers, mesh=head.mesh, angles=head.angles, meta=head.meta)


# ------------------------------------------------------------------------------------ shared helpers
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def expand_inputs(inputs: Sequence[str | Path], *, what: str = "input") -> list[Path]:
    """Paths as given, with each directory replaced by its HDF5 files (sorted by name).

    Directories are accepted because the Par04 writer produces one file per angle in a directory, and
    a user converting it back should not have to list the files.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in H5_SUFFIXES)
            if not found:
                raise InputFileError(
                    f"{what} directory contains no HDF5 files",
                    file=p, fix="pass .h5 files or a directory of them",
                )
            paths.extend(found)
        else:
            paths.append(p)
    if not paths:
        raise ConfigError(f"no {what} files given", field="inputs", fix="pass at least one input file")
    return paths


def same_mesh(a: Mesh, b: Mesh) -> bool:
    """Whether two meshes bin space identically (names may differ: 'ds3' and 'par04' are one mesh)."""
    if isinstance(a, CartesianGrid) or isinstance(b, CartesianGrid):
        if not (isinstance(a, CartesianGrid) and isinstance(b, CartesianGrid)):
            return False
        return (a.shape == b.shape and (a.axis_x, a.axis_y) == (b.axis_x, b.axis_y)
                and np.allclose([a.cell_x, a.cell_y, a.cell_z], [b.cell_x, b.cell_y, b.cell_z], rtol=1e-9, atol=0))
    return (
        a.shape == b.shape
        and np.isclose(a.size_z, b.size_z, rtol=1e-9, atol=0.0)
        and np.allclose(a.r_edges, b.r_edges, rtol=1e-9, atol=0.0)
    )


def concat_showers(parts: Sequence[ShowerData], sources: Sequence[str | Path]) -> ShowerData:
    """Concatenate showers read from several files into one :class:`ShowerData`.

    The meshes must bin space identically, and either every part has angles or none does (filling in
    an angle would invent data).  ``meta`` is the first part's, plus ``inputs`` when there are several.
    """
    if not parts:
        raise ConfigError("no input files given", field="inputs", fix="pass at least one input file")
    first = parts[0]
    if len(parts) == 1:
        return first
    check_joinable([p.mesh for p in parts], [p.angles is not None for p in parts], sources)
    meta = dict(first.meta)
    meta["inputs"] = [str(s) for s in sources]
    return ShowerData(
        energies=np.concatenate([p.energies for p in parts]),
        showers=np.concatenate([p.showers for p in parts]),
        mesh=first.mesh,
        angles=None if first.angles is None else np.concatenate([np.asarray(p.angles) for p in parts]),
        meta=meta,
    )


def check_joinable(meshes: Sequence[Mesh], has_angles: Sequence[bool], sources: Sequence[str | Path]) -> None:
    """Files can be joined into one: their meshes bin space identically and either every one has angles
    or none does (filling in an angle would invent data)."""
    for mesh, angles, src in zip(meshes[1:], has_angles[1:], sources[1:], strict=True):
        if not same_mesh(mesh, meshes[0]):
            raise DataError(
                f"geometry {mesh.describe()} differs from {meshes[0].describe()} of {sources[0]}",
                file=src, field="geometry", fix="convert files of one geometry at a time",
            )
        if angles != has_angles[0]:
            raise DataError(
                f"incident angles present in some inputs but not in others (compare with {sources[0]})",
                file=src, field="incident_angles", fix="convert files with and without angles separately",
            )


def angle_energy_order(energies: np.ndarray, angles: np.ndarray | None, *, default_angle: float = 90.0) -> np.ndarray:
    """The stable (angle, energy) order of showers: the order a Par04 round trip returns events in.

    Showers without angles sort as ``default_angle`` (the Par04 writer's assumption: normal incidence).
    """
    a = angles if angles is not None else np.full(len(energies), default_angle, dtype=np.float32)
    return np.lexsort((energies, a))  # lexsort is stable; last key is the primary one


def sort_by_angle_energy(data: ShowerData, *, default_angle: float = 90.0) -> ShowerData:
    """``data`` stably sorted by (angle, energy): the order a Par04 round trip returns events in.

    Showers without angles sort as ``default_angle`` (the Par04 writer's assumption: normal incidence).
    """
    return data.subset(angle_energy_order(data.energies, data.angles, default_angle=default_angle))


# ------------------------------------------------------------------------------------- native (many)
