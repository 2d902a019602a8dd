"""Shower file formats.

The **native** format is a CaloChallenge file plus optional extras::

    incident_energies  (N, 1) float32  MeV
    showers            (N, n_voxels) float32  MeV, voxel order z, phi, r (r fastest)
    incident_angles    (N, 1) float32  degrees            [optional]
    attrs["geometry"]  JSON: mesh (and detector) block     [optional]

With the optional fields absent it is exactly a CaloChallenge dataset 2/3 file, so files from either
side read without conversion.  Every reader validates what it loads (keys, shapes, NaN, negative
energies) and raises :class:`~mlfastsim.core.errors.MlfastsimError` subclasses naming file and field.

Other layouts are reached through two registries, :data:`READERS` and :data:`WRITERS`, keyed by format
name, and :func:`convert` (read one format from several inputs into one :class:`ShowerData`):

``native``
    the format above (:func:`read_native`, :func:`write_native`).
``calochallenge``
    a plain CaloChallenge dataset 2/3 file: ``incident_energies`` (N, 1) and ``showers`` (N, n_voxels),
    float64 as the official datasets (read at any float precision), MeV, voxel order z, alpha, r with
    r fastest (the native order), gzip.  The mesh comes from ``mesh``, a binning XML (``binning=``) or
    the voxel count.  Writing drops angles and metadata.
``par04``
    the Geant4 Par04 / MetaHEP training layout (g4fastsim ``preprocess``): one file per incidence angle,
    named ``{name}_angle_{angle}.h5`` (e.g. ``SiW_angle_70.h5``), one dataset per incident energy named
    by the energy in GeV (``"64"``, ``"0.5"``: shortest exact decimal, no trailing ``.0``), each an
    (N, R, PHI, Z) array of cell energies in MeV.  The angle is read from the file attribute
    ``angle_deg`` when present (our writer sets it), else from ``angle_<deg>`` or ``<deg>deg`` in the
    file name, else from the ``angle=`` option.  Events come out stably sorted by (angle, energy): the
    layout has no place for the original order, so :func:`sort_by_angle_energy` gives the order a
    round trip yields.
``hits``
    (read only) hit-level files voxelised onto a mesh; layout in :mod:`mlfastsim.showers.sim.voxelise`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.core.io import atomic_path, open_h5
from mlfastsim.showers.geometry import (
    MESH_PRESETS,
    CylindricalMesh,
    Mesh,
    read_binning_xml,
)
from mlfastsim.showers.io.native import (  # noqa: F401  (re-exported: the format registry's native entry)
    H5_SUFFIXES,
    NATIVE_FORMAT_VERSION,
    ShowerData,
    _dataset_of,
    angle_energy_order,
    check_layout,
    check_values,
    concat_showers,
    expand_inputs,
    guess_mesh,
    native_writer,
    read_native,
    read_rows,
    same_mesh,
    sort_by_angle_energy,
    write_native,
)


def read_native_files(inputs: Sequence[str | Path], *, mesh: Mesh | None = None) -> ShowerData:
    """Read and concatenate native shower files (directories expand to their .h5 files)."""
    paths = expand_inputs(inputs, what="shower")
    return concat_showers([read_native(p, mesh=mesh) for p in paths], paths)


# ------------------------------------------------------------------------------------- CaloChallenge
def read_calochallenge(
    inputs: Sequence[str | Path],
    *,
    mesh: CylindricalMesh | None = None,
    binning: str | Path | None = None,
    particle: str | None = None,
    size_z: float = 3.4,
) -> ShowerData:
    """Read CaloChallenge dataset 2/3 files (voxel order z, alpha, r; r fastest: the native order).

    The geometry comes from ``mesh``, else from a CaloChallenge binning XML (``binning``, optionally
    for one ``particle``; the XML has no layer thickness, hence ``size_z`` in mm), else from a geometry
    block in the file, else from the voxel count (6480 -> ds2, 40500 -> par04/ds3).
    """
    if mesh is not None and binning is not None:
        raise ConfigError(
            "both a mesh and a binning XML were given",
            field="--binning", fix="pass either --mesh or --binning",
        )
    if binning is not None:
        mesh = read_binning_xml(binning, particle=particle, size_z=size_z)
    return read_native_files(inputs, mesh=mesh)


def write_calochallenge(data: ShowerData, path: str | Path, *, compression: str | None = "gzip") -> Path:
    """Write a pure CaloChallenge file (``incident_energies`` and ``showers`` only), atomically.

    Angles, geometry and metadata are dropped on purpose: the result must be indistinguishable from an
    official dataset 2/3 file for third-party evaluation scripts.  Both datasets are float64, as in the
    official files (``incident_energies`` (N, 1), ``showers`` (N, n_voxels), MeV): the official
    ``evaluate.py`` classifier is a float64 network fed the arrays as stored, and stops with a dtype
    error on float32.  The values are our float32 ones widened exactly, so reading back is lossless.
    """
    data.validate(source=path)
    with native_writer(path, mesh=data.mesh, energies=data.energies, compression=compression,
                       calochallenge=True) as writer:
        writer.append(data.showers)
    return Path(path)


# ------------------------------------------------------------------------------------------- Par04
PAR04_DEFAULT_ANGLE = 90.0
# "SiW_angle_70.h5" (g4fastsim) or "SiW_70deg.h5"
_ANGLE_IN_NAME = re.compile(r"angle_?(-?\d+(?:\.\d+)?)|(-?\d+(?:\.\d+)?)_?deg", re.IGNORECASE)


def format_number(value: float) -> str:
    """Shortest decimal that reads back as exactly ``value`` (no exponent, no trailing '.0').

    Used for Par04 dataset names (energy in GeV) and file names (angle), so that ``64 GeV`` is
    ``"64"`` as in the original files and any other value still round-trips bit for bit.
    """
    return np.format_float_positional(value, unique=True, trim="-")


def _par04_angle(f: h5py.File, path: Path, angle: float | None) -> float:
    if "angle_deg" in f.attrs:
        return float(np.float32(f.attrs["angle_deg"]))
    match = _ANGLE_IN_NAME.search(path.stem)
    if match:
        return float(np.float32(float(match.group(1) or match.group(2))))
    if angle is not None:
        return float(np.float32(angle))
    raise InputFileError(
        "cannot tell the incidence angle: no 'angle_deg' attribute, no 'angle_<deg>'/'<deg>deg' in the name",
        file=path, field="angle", fix="name the file like SiW_angle_70.h5 or pass the angle option",
    )


def _par04_mesh(f: h5py.File, path: Path, shape: tuple[int, ...]) -> CylindricalMesh:
    """The mesh of a Par04 file without an explicit one: its geometry block, else a preset by shape."""
    if "geometry" in f.attrs:
        try:
            return CylindricalMesh.from_dict(json.loads(f.attrs["geometry"]), source=str(path))
        except json.JSONDecodeError as exc:
            raise InputFileError(
                "geometry attribute is not valid JSON", file=path, field="geometry", fix="re-create the file"
            ) from exc
    n_r, n_phi, n_z = shape
    for name in ("par04", "ds2"):
        m = MESH_PRESETS[name]
        if (m.n_r, m.n_phi, m.n_z) == (n_r, n_phi, n_z):
            return m
    raise InputFileError(
        f"arrays of (R, PHI, Z) = {shape} match no preset mesh",
        file=path, field="geometry", fix="pass the geometry with --mesh",
    )


def _par04_energy_gev(name: str, path: Path) -> float:
    try:
        value = float(name)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise InputFileError(
            f"dataset {name!r} is not named by a positive energy in GeV",
            file=path, field=name, fix="Par04 files hold one dataset per energy, named like '64'",
        )
    return value


@dataclass
class Par04Header:
    """A Par04 file's layout, checked, with its showers left on disk: the angle, the mesh, the energy
    datasets in the order a reader returns them (by energy, stably) and the ``meta`` attribute."""

    path: Path
    angle: float
    mesh: CylindricalMesh
    datasets: list[tuple[str, int, float]]  # (name, events, energy in MeV as float32)
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return sum(n for _, n, _ in self.datasets)


def read_par04_header(path: Path, mesh: CylindricalMesh | None, angle: float | None, *,
                      rows: int | None = None) -> Par04Header:
    """Everything of a Par04 file but its showers, checked (``rows``: the largest block to be read)."""
    with open_h5(path, what="Par04 file") as f:
        theta = _par04_angle(f, path, angle)
        names = [k for k in f if isinstance(f[k], h5py.Dataset)]
        if not names:
            raise InputFileError(
                "no energy datasets",
                file=path, field="datasets", fix="pass a Par04 file (one dataset per energy)",
            )
        keyed = sorted(((_par04_energy_gev(k, path), k) for k in names), key=lambda t: t[0])
        datasets = []
        for gev, key in keyed:
            ds = _dataset_of(f, key, path, rows=rows)
            if ds.ndim != 4:
                raise DataError(
                    f"dataset has shape {ds.shape}, expected (N, R, PHI, Z)",
                    file=path, field=key, fix="Par04 showers are 4-D: events x radial x azimuthal x depth",
                )
            if mesh is None:
                mesh = _par04_mesh(f, path, tuple(ds.shape[1:]))
            if tuple(ds.shape[1:]) != (mesh.n_r, mesh.n_phi, mesh.n_z):
                raise DataError(
                    f"(R, PHI, Z) = {tuple(ds.shape[1:])} does not match the mesh {mesh.describe()}",
                    file=path, field=key, fix="pass the geometry the file was made with (--mesh)",
                )
            datasets.append((key, int(ds.shape[0]), float(np.float32(gev * 1000.0))))
        meta: dict[str, Any] = {}
        if "meta" in f.attrs:
            try:
                meta = json.loads(f.attrs["meta"])
            except json.JSONDecodeError:
                meta = {}
    assert mesh is not None  # set by the first dataset; names is not empty
    head = Par04Header(path=path, angle=theta, mesh=mesh, datasets=datasets, meta=meta)
    energies = np.concatenate([np.full(n, e, dtype=np.float32) for _, n, e in datasets])
    check_layout((head.n, mesh.n_voxels), mesh, energies, np.full(head.n, theta, dtype=np.float32), source=path)
    return head


def read_par04_rows(f: h5py.File, path: Path, key: str, mesh: Mesh, lo: int | None = None,
                    hi: int | None = None) -> np.ndarray:
    """Rows ``[lo, hi)`` of one energy dataset of a Par04 file as flat native rows (N, n_voxels), checked."""
    arr = read_rows(f[key], path, lo, hi)
    # (N, R, PHI, Z) -> (N, Z, PHI, R): the axis reorder, then the mesh's one reshape.
    rows = mesh.to_flat(np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1))))
    check_values(rows, key, source=path, first_row=lo or 0)
    return rows


def _read_par04_file(path: Path, mesh: CylindricalMesh | None, angle: float | None) -> ShowerData:
    head = read_par04_header(path, mesh, angle)
    with open_h5(path, what="Par04 file") as f:
        showers = [read_par04_rows(f, path, key, head.mesh) for key, _, _ in head.datasets]
    energies = np.concatenate([np.full(n, e, dtype=np.float32) for _, n, e in head.datasets])
    return ShowerData(energies=energies, showers=np.concatenate(showers), mesh=head.mesh,
                      angles=np.full(energies.shape, head.angle), meta=head.meta)


def read_par04(
    inputs: Sequence[str | Path], *, mesh: CylindricalMesh | None = None, angle: float | None = None
) -> ShowerData:
    """Read Par04 per-angle files (or directories of them) into one :class:`ShowerData`.

    Energies come from the dataset names (GeV, converted to MeV), the angle from the ``angle_deg``
    attribute, ``angle_<deg>`` or ``<deg>deg`` in the file name, or ``angle`` (degrees) as the last resort.
    The mesh is ``mesh``, else the file's geometry block, else the preset with the arrays' (R, PHI, Z).
    Events are returned stably sorted by (angle, energy), whatever order the files are given in.
    """
    paths = expand_inputs(inputs, what="Par04")
    parts = [_read_par04_file(p, mesh, angle) for p in paths]
    return sort_by_angle_energy(concat_showers(parts, paths))


def _par04_stem(meta: dict[str, Any], mesh: Mesh, name: str | None) -> str:
    if name:
        return name
    det = meta.get("detector")
    if isinstance(det, dict) and det.get("name"):
        return str(det["name"])
    if isinstance(det, str) and det:
        return det
    return mesh.name


def par04_targets(distinct_angles: np.ndarray, out: str | Path, stem: str) -> dict[float, Path]:
    """The file of each angle: ``out`` is a directory, a pattern containing ``{angle}`` or a single .h5
    file (refused for several angles; an existing directory is always a directory)."""
    pattern = str(out)
    if "{angle}" not in pattern:
        if Path(pattern).suffix.lower() in H5_SUFFIXES and not Path(pattern).is_dir():
            if distinct_angles.size > 1:
                raise ConfigError(
                    f"{distinct_angles.size} distinct angles need one file each, but a single file was given",
                    field="output", fix="pass a directory or a pattern containing {angle}",
                )
        else:
            pattern = str(Path(pattern) / f"{stem}_angle_{{angle}}.h5")
    return {float(t): Path(pattern.format(angle=format_number(t))) for t in distinct_angles}


class Par04Writer:
    """Showers appended in (angle, energy) order to Par04 files, one per angle, one dataset per energy:
    memory for one block, whatever the number of showers.  Made by :func:`par04_writer`."""

    def __init__(self, groups: list[tuple[float, float, int]], targets: dict[float, Path], mesh: Mesh,
                 attrs: dict[str, Any], compression: str | None, job: str | None,
                 publish: contextlib.ExitStack) -> None:
        self._groups = groups  # (angle, energy MeV, rows) in output order
        self._targets = targets
        self._mesh = mesh
        self._attrs = attrs
        self._kw: dict[str, Any] = {"compression": compression} if compression else {}
        self._job = job
        self._publish = publish  # every file's atomic rename, all at the end
        self._file: contextlib.ExitStack | None = None
        self._f: h5py.File | None = None
        self._guard: Any = None
        self._angle: float | None = None
        self._g = -1  # current group
        self._pos = 0  # rows written into it
        self.written = 0
        self.n = sum(g[2] for g in groups)
        self.paths: list[Path] = []

    def _next_group(self) -> None:
        from mlfastsim.core.io import guarded_h5

        self._g += 1
        self._pos = 0
        angle, energy, rows = self._groups[self._g]
        if angle != self._angle:
            self._close_file()
            tmp = self._publish.enter_context(atomic_path(self._targets[angle]))
            self._file = contextlib.ExitStack()
            chunk_bytes = min(rows, 256) * self._mesh.n_voxels * 4
            self._f, self._guard = self._file.enter_context(
                guarded_h5(tmp, rdcc_nbytes=3 * chunk_bytes + (1 << 20), rdcc_nslots=10007, rdcc_w0=1.0))
            self._f.attrs["angle_deg"] = np.float32(angle)
            for key, value in self._attrs.items():
                self._f.attrs[key] = value
            self._angle = angle
        assert self._f is not None
        shape = (rows, self._mesh.n_r, self._mesh.n_phi, self._mesh.n_z)  # type: ignore[attr-defined]
        self._f.create_dataset(format_number(energy / 1000.0), shape=shape, dtype=np.float32,
                               chunks=(min(rows, 256), *shape[1:]), **self._kw)

    def _close_file(self) -> None:
        from mlfastsim.core.resume import stamp_h5

        if self._file is None:
            return
        assert self._f is not None
        if self._job is not None:
            stamp_h5(self._f, self._job, {"files": sorted({p.name for p in self._targets.values()})})
        self._guard.check()
        self._file.close()  # the HDF5 file; its rename waits for the last file
        self._file = self._f = None

    def append(self, showers: np.ndarray) -> None:
        """Write the next rows (flat native rows, in output order)."""
        rows = np.asarray(showers, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self._mesh.n_voxels or self.written + len(rows) > self.n:
            raise DataError(f"block of shape {rows.shape} does not fit the Par04 output at row {self.written}",
                            field="showers", fix="this is a bug in the job writing the files")
        done = 0
        while done < len(rows):
            if self._g < 0 or self._pos == self._groups[self._g][2]:
                self._next_group()
            assert self._f is not None
            _, energy, size = self._groups[self._g]
            take = min(size - self._pos, len(rows) - done)
            # (N, Z, PHI, R) -> (N, R, PHI, Z): the Par04 axis order.
            block = np.transpose(self._mesh.to_grid(rows[done : done + take]), (0, 3, 2, 1))
            self._f[format_number(energy / 1000.0)][self._pos : self._pos + take] = block
            self._guard.check()
            self._pos += take
            done += take
        self.written += len(rows)

    def finish(self) -> list[Path]:
        if self.written != self.n:
            raise DataError(f"only {self.written} of {self.n} showers were written", field="showers",
                            fix="this is a bug in the job writing the files")
        self._close_file()
        self.paths = [self._targets[a] for a in dict.fromkeys(g[0] for g in self._groups)]
        return self.paths

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = self._f = None


@contextlib.contextmanager
def par04_writer(out: str | Path, *, mesh: Mesh, energies: np.ndarray, angles: np.ndarray, meta: dict[str, Any],
                 name: str | None = None, compression: str | None = "gzip",
                 job: str | None = None) -> Iterator[Par04Writer]:
    """Open the Par04 output for streaming: ``energies`` and ``angles`` are those of the rows that will be
    appended, already in (angle, energy) order.  Every file is written under a temporary name and all
    are renamed into place at the end, so a failure anywhere publishes none of them.  With ``job`` each
    file is stamped as that job's output and lists its sibling files (a rerun checks all of them)."""
    energies = np.asarray(energies, dtype=np.float32).reshape(-1)
    angles = np.asarray(angles, dtype=np.float32).reshape(-1)
    if energies.size and not (np.all(np.diff(angles) >= 0)
                              and np.all((np.diff(energies) >= 0) | (np.diff(angles) > 0))):
        raise DataError("rows are not in (angle, energy) order", field="showers",
                        fix="this is a bug in the job writing the files")
    edges = np.flatnonzero((np.diff(angles) != 0) | (np.diff(energies) != 0)) + 1
    starts = np.concatenate([[0], edges]).astype(np.int64)
    stops = np.concatenate([edges, [energies.size]]).astype(np.int64)
    groups = [(float(angles[a]), float(energies[a]), int(b - a)) for a, b in zip(starts, stops, strict=True)
              if b > a]
    targets = par04_targets(np.unique(angles), out, _par04_stem(meta, mesh, name))
    attrs: dict[str, Any] = {"geometry": json.dumps(mesh.to_dict()), "axis_order": "N,R,PHI,Z",
                             "units": "dataset name: incident energy in GeV; values: MeV"}
    if meta:
        attrs["meta"] = json.dumps(meta, default=str)
    with contextlib.ExitStack() as publish:
        writer = Par04Writer(groups, targets, mesh, attrs, compression, job, publish)
        try:
            yield writer
            writer.finish()
        except BaseException:
            writer.abort()
            raise


def write_par04(
    data: ShowerData,
    out: str | Path,
    *,
    name: str | None = None,
    compression: str | None = "gzip",
    default_angle: float = PAR04_DEFAULT_ANGLE,
) -> list[Path]:
    """Write ``data`` in the Par04 layout: one file per distinct angle, one dataset per energy.

    ``out`` is a directory (files ``{name}_angle_{angle}.h5``; ``name`` defaults to the detector in
    ``meta``, else the mesh name), a pattern containing ``{angle}`` (e.g. ``out/SiW_{angle}deg.h5``), or
    a single ``.h5`` file when all showers share one angle (an existing directory is always a directory).
    Missing directories are created.  Showers without angles are written as
    ``default_angle`` (90 = normal incidence, as CaloChallenge datasets 2/3).  Within a dataset events
    keep their relative order.  Every file is written under a temporary name and all are renamed at the
    end.  Files also carry ``angle_deg``, ``geometry`` and ``meta`` attributes, which plain Par04 readers
    ignore.
    """
    data.validate(source=out)
    angles = data.angles if data.angles is not None else np.full(len(data), default_angle, dtype=np.float32)
    order = angle_energy_order(data.energies, angles)
    with par04_writer(out, mesh=data.mesh, energies=data.energies[order], angles=angles[order], meta=data.meta,
                      name=name, compression=compression) as writer:
        for lo in range(0, len(order), 4096):
            writer.append(data.showers[order[lo : lo + 4096]])
    return writer.paths


# --------------------------------------------------------------------------------------------- hits
def read_hits_files(
    inputs: Sequence[str | Path], *, mesh: Mesh | None = None, chunk_hits: int | None = None
) -> ShowerData:
    """Voxelise hit-level files onto ``mesh`` (see :mod:`mlfastsim.showers.sim.voxelise`).

    The import is deferred so that reading shower files never pays for compiling the numba kernel.
    """
    from mlfastsim.showers.sim.voxelise import DEFAULT_CHUNK_HITS, read_hits

    if mesh is None:
        raise ConfigError(
            "voxelising hits needs a mesh", field="--mesh",
            fix="pass --mesh (par04, ds2, ds3, hcal48, a binning .xml or a mesh .yaml)",
        )
    return read_hits(expand_inputs(inputs, what="hits"), mesh, chunk_hits=chunk_hits or DEFAULT_CHUNK_HITS)


# ----------------------------------------------------------------------------------------- registry
ShowerReader = Callable[..., ShowerData]
ShowerWriter = Callable[..., Path | list[Path]]

#: Readers take a sequence of input paths (directories expand) and keyword options, ``mesh`` first.
READERS: dict[str, ShowerReader] = {
    "native": read_native_files,
    "calochallenge": read_calochallenge,
    "par04": read_par04,
    "hits": read_hits_files,
}

#: Writers take ``(data, out)`` and keyword options; they return the path(s) written.
WRITERS: dict[str, ShowerWriter] = {
    "native": write_native,
    "calochallenge": write_calochallenge,
    "par04": write_par04,
}


def _lookup(registry: dict[str, Any], name: str, flag: str, what: str) -> Any:
    key = str(name).lower()
    if key not in registry:
        raise ConfigError(
            f"unknown {what} format {name!r}", field=flag, fix=f"choose one of {', '.join(registry)}"
        )
    return registry[key]


def get_reader(name: str) -> ShowerReader:
    """The reader for format ``name``; a :class:`ConfigError` on ``--from`` lists the choices."""
    return _lookup(READERS, name, "--from", "input")


def get_writer(name: str) -> ShowerWriter:
    """The writer for format ``name``; a :class:`ConfigError` on ``--to`` lists the choices."""
    return _lookup(WRITERS, name, "--to", "output")


def _check_options(func: Callable[..., Any], fmt: str, options: dict[str, Any]) -> None:
    """Refuse options a format does not take with a :class:`ConfigError` rather than a TypeError."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"option {key!r} does not apply to the {fmt} format",
                field=f"--{key.replace('_', '-')}",
                fix=f"{fmt} takes: {', '.join(allowed) or 'no options'}",
            )


def convert(
    source_format: str,
    inputs: Sequence[str | Path],
    *,
    mesh: CylindricalMesh | None = None,
    **options: Any,
) -> ShowerData:
    """Read ``inputs`` (files or directories) in ``source_format`` into one validated :class:`ShowerData`.

    Options that are ``None`` are treated as not given, so a CLI can pass every flag it has.  Write the
    result with ``get_writer(to)(data, out)``.
    """
    reader = get_reader(source_format)
    given = {k: v for k, v in options.items() if v is not None}
    _check_options(reader, source_format, given)
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    return reader(list(inputs), mesh=mesh, **given)


def write(to_format: str, data: ShowerData, out: str | Path, **options: Any) -> Path | list[Path]:
    """Write ``data`` to ``out`` in ``to_format`` (``None`` options are dropped, unknown ones refused)."""
    writer = get_writer(to_format)
    given = {k: v for k, v in options.items() if v is not None}
    _check_options(writer, to_format, given)
    return writer(data, out, **given)
