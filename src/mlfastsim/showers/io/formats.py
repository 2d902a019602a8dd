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

import inspect
import json
import re
from collections.abc import Callable, Sequence
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
    _read_dataset,
    _write_calochallenge_datasets,
    concat_showers,
    expand_inputs,
    guess_mesh,
    read_native,
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
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_calochallenge_datasets(f, data, compression, dtype=np.float64)
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


def _read_par04_file(path: Path, mesh: CylindricalMesh | None, angle: float | None) -> ShowerData:
    with open_h5(path, what="Par04 file") as f:
        theta = _par04_angle(f, path, angle)
        names = [k for k in f if isinstance(f[k], h5py.Dataset)]
        if not names:
            raise InputFileError(
                "no energy datasets",
                file=path, field="datasets", fix="pass a Par04 file (one dataset per energy)",
            )
        keyed = sorted(((_par04_energy_gev(k, path), k) for k in names), key=lambda t: t[0])
        energies, showers = [], []
        for gev, key in keyed:
            arr = _read_dataset(f, key, path)
            if arr.ndim != 4:
                raise DataError(
                    f"dataset has shape {arr.shape}, expected (N, R, PHI, Z)",
                    file=path, field=key, fix="Par04 showers are 4-D: events x radial x azimuthal x depth",
                )
            if mesh is None:
                mesh = _par04_mesh(f, path, tuple(arr.shape[1:]))
            if tuple(arr.shape[1:]) != (mesh.n_r, mesh.n_phi, mesh.n_z):
                raise DataError(
                    f"(R, PHI, Z) = {tuple(arr.shape[1:])} does not match the mesh {mesh.describe()}",
                    file=path, field=key, fix="pass the geometry the file was made with (--mesh)",
                )
            # (N, R, PHI, Z) -> (N, Z, PHI, R): the axis reorder, then the mesh's one reshape.
            showers.append(mesh.to_flat(np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1)))))
            energies.append(np.full(arr.shape[0], np.float32(gev * 1000.0), dtype=np.float32))
        meta: dict[str, Any] = {}
        if "meta" in f.attrs:
            try:
                meta = json.loads(f.attrs["meta"])
            except json.JSONDecodeError:
                meta = {}
    assert mesh is not None  # set by the first dataset; names is not empty
    e = np.concatenate(energies)
    data = ShowerData(
        energies=e, showers=np.concatenate(showers), mesh=mesh, angles=np.full(e.shape, theta), meta=meta
    )
    return data.validate(source=path)


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


def _par04_stem(data: ShowerData, name: str | None) -> str:
    if name:
        return name
    det = data.meta.get("detector")
    if isinstance(det, dict) and det.get("name"):
        return str(det["name"])
    if isinstance(det, str) and det:
        return det
    return data.mesh.name


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
    keep their relative order.  Each file is written atomically; the set of files is not.
    Files also carry ``angle_deg``, ``geometry`` and ``meta`` attributes, which plain Par04 readers ignore.
    """
    data.validate(source=out)
    angles = data.angles if data.angles is not None else np.full(len(data), default_angle, dtype=np.float32)
    distinct = np.unique(angles)
    pattern = str(out)
    if "{angle}" not in pattern:
        if Path(pattern).suffix.lower() in H5_SUFFIXES and not Path(pattern).is_dir():
            if distinct.size > 1:
                raise ConfigError(
                    f"{distinct.size} distinct angles need one file each, but a single file was given",
                    field="output", fix="pass a directory or a pattern containing {angle}",
                )
        else:
            pattern = str(Path(pattern) / f"{_par04_stem(data, name)}_angle_{{angle}}.h5")
    geometry = json.dumps(data.mesh.to_dict())
    meta = json.dumps(data.meta, default=str) if data.meta else None
    grid = data.grid
    written: list[Path] = []
    for theta in distinct:
        in_angle = np.flatnonzero(angles == theta)
        target = Path(pattern.format(angle=format_number(theta)))
        with atomic_path(target) as tmp:
            with h5py.File(tmp, "w") as f:
                for energy in np.unique(data.energies[in_angle]):
                    rows = in_angle[data.energies[in_angle] == energy]
                    # (N, Z, PHI, R) -> (N, R, PHI, Z): the Par04 axis order.
                    block = np.ascontiguousarray(np.transpose(grid[rows], (0, 3, 2, 1)))
                    kw = {"compression": compression} if compression else {}
                    gev = format_number(float(energy) / 1000.0)
                    f.create_dataset(gev, data=block, chunks=(min(len(rows), 256), *block.shape[1:]), **kw)
                f.attrs["angle_deg"] = np.float32(theta)
                f.attrs["geometry"] = geometry
                f.attrs["axis_order"] = "N,R,PHI,Z"
                f.attrs["units"] = "dataset name: incident energy in GeV; values: MeV"
                if meta is not None:
                    f.attrs["meta"] = meta
        written.append(target)
    return written


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


# ------------------------------------------------------------------------------ file-parallel reading
def read_input_part(source_format: str, path: str | Path, mesh: Mesh | None, options: dict[str, Any]) -> Any:
    """Read one input file of a conversion: a task of a parallel ``showers convert`` (one per file).

    Returns what :func:`combine_parts` joins: a :class:`ShowerData`, or for hits the voxelisation parts
    (showers, outside-mesh counts, normal), so the joined result equals reading all files at once.
    """
    if source_format == "hits":
        from mlfastsim.showers.sim.voxelise import DEFAULT_CHUNK_HITS, read_hits_part

        if mesh is None:
            read_hits_files([path], mesh=None)  # raises the reader's own "needs a mesh" error
        return read_hits_part(path, mesh, chunk_hits=options.get("chunk_hits") or DEFAULT_CHUNK_HITS)
    return convert(source_format, [path], mesh=mesh, **options)


def combine_parts(source_format: str, parts: Sequence[Any], paths: Sequence[Path]) -> ShowerData:
    """Join per-file parts in file order exactly as the format's reader joins its files.

    Par04 sorts by (angle, energy) with a stable sort, so sorting the concatenation of per-file sorted
    parts gives the same order as sorting the concatenation of the raw files.
    """
    if source_format == "hits":
        from mlfastsim.showers.sim.voxelise import combine_hits

        return combine_hits(parts, paths)
    data = concat_showers(list(parts), list(paths))
    return sort_by_angle_energy(data) if source_format == "par04" else data

