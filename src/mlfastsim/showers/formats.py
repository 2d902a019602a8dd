"""Shower file formats.

The **native** format is a CaloChallenge file plus optional extras::

    incident_energies  (N, 1) float32  MeV
    showers            (N, n_voxels) float32  MeV, voxel order z, phi, r (r fastest)
    incident_angles    (N, 1) float32  degrees            [optional]
    attrs["geometry"]  JSON: mesh (and detector) block     [optional]

With the optional fields absent it is exactly a CaloChallenge dataset 2/3 file, so files from either
side read without conversion.  Every reader validates what it loads (keys, shapes, NaN, negative
energies) and raises :class:`~mlfastsim.core.errors.MlfastsimError` subclasses naming file and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mlfastsim.core.errors import DataError, InputFileError
from mlfastsim.core.io import atomic_path, open_h5
from mlfastsim.showers.geometry import MESH_PRESETS, CylindricalMesh

NATIVE_FORMAT_VERSION = 1


@dataclass
class ShowerData:
    """Showers in memory: the unit every shower command reads and writes.

    ``energies`` (N,) and ``showers`` (N, n_voxels) are in MeV, ``angles`` (N,) in degrees.
    ``meta`` carries free-form provenance (detector block, particle, seed...) stored in the file.
    """

    energies: np.ndarray
    showers: np.ndarray
    mesh: CylindricalMesh
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
        """Showers as (N, n_z, n_phi, n_r), a view."""
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
        n = len(self)
        if self.showers.ndim != 2:
            raise DataError(
                f"showers must be 2-D (N, n_voxels), got shape {self.showers.shape}",
                file=source, field="showers", fix="store one flattened shower per row",
            )
        if self.showers.shape[0] != n:
            raise DataError(
                f"{self.showers.shape[0]} showers but {n} incident energies",
                file=source, field="incident_energies", fix="store one incident energy per shower",
            )
        if self.showers.shape[1] != self.mesh.n_voxels:
            raise DataError(
                f"showers have {self.showers.shape[1]} voxels but the geometry {self.mesh.describe()} "
                f"has {self.mesh.n_voxels}",
                file=source, field="showers", fix="pass the matching geometry (--mesh or --binning)",
            )
        if self.angles is not None and self.angles.shape[0] != n:
            raise DataError(
                f"{self.angles.shape[0]} incident angles but {n} showers",
                file=source, field="incident_angles", fix="store one angle per shower",
            )
        for name, arr in (("incident_energies", self.energies), ("showers", self.showers)):
            bad = ~np.isfinite(arr)
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise DataError(
                    f"{int(bad.sum())} NaN/inf value(s), first in row {row}",
                    file=source, field=name, fix="remove or repair the broken events",
                )
            if (arr < 0).any():
                row = int(np.argwhere(arr < 0)[0][0])
                raise DataError(
                    f"{int((arr < 0).sum())} negative energy value(s), first in row {row}",
                    file=source, field=name, fix="energies must be >= 0 MeV",
                )
        if (self.energies <= 0).any():
            row = int(np.argwhere(self.energies <= 0)[0][0])
            raise DataError(
                f"incident energy must be > 0 (row {row})",
                file=source, field="incident_energies", fix="remove events with zero incident energy",
            )
        return self


def guess_mesh(n_voxels: int, *, source: str | Path | None = None) -> CylindricalMesh:
    """The preset mesh with ``n_voxels`` voxels (for plain CaloChallenge files without a geometry block)."""
    for name in ("ds2", "par04"):
        if MESH_PRESETS[name].n_voxels == n_voxels:
            return MESH_PRESETS[name]
    raise InputFileError(
        f"file has no geometry block and {n_voxels} voxels match no preset mesh",
        file=source, field="showers", fix="pass the geometry with --mesh or --binning FILE.xml",
    )


def write_native(data: ShowerData, path: str | Path, *, compression: str | None = "gzip") -> Path:
    """Write ``data`` atomically in the native format."""
    data.validate(source=path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            kw = {"compression": compression} if compression else {}
            f.create_dataset("incident_energies", data=data.energies.reshape(-1, 1), **kw)
            f.create_dataset("showers", data=data.showers, chunks=(min(len(data), 256) or 1, data.showers.shape[1]), **kw)
            if data.angles is not None:
                f.create_dataset("incident_angles", data=data.angles.reshape(-1, 1), **kw)
            f.attrs["mlfastsim_format_version"] = NATIVE_FORMAT_VERSION
            f.attrs["geometry"] = json.dumps(data.mesh.to_dict())
            if data.meta:
                f.attrs["meta"] = json.dumps(data.meta, default=str)
    return Path(path)


def _read_dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(f[key][()], dtype=np.float32)
    except KeyError:
        raise InputFileError(
            f"missing dataset {key!r} (found: {', '.join(f.keys()) or 'nothing'})",
            file=path, field=key, fix="pass a native or CaloChallenge shower file",
        ) from None
    except (OSError, TypeError, ValueError) as exc:
        raise InputFileError(
            f"dataset {key!r} cannot be read ({exc})", file=path, field=key, fix="re-create the file"
        ) from exc


def read_native(path: str | Path, *, mesh: CylindricalMesh | None = None) -> ShowerData:
    """Read a native (or plain CaloChallenge) shower file and validate it.

    ``mesh`` overrides the geometry stored in the file (e.g. from ``--binning``); without either, the
    mesh is inferred from the voxel count of the presets.
    """
    p = Path(path)
    with open_h5(p, what="shower file") as f:
        energies = _read_dataset(f, "incident_energies", p)
        showers = _read_dataset(f, "showers", p)
        angles = _read_dataset(f, "incident_angles", p) if "incident_angles" in f else None
        geometry = f.attrs.get("geometry")
        meta_raw = f.attrs.get("meta")
    if showers.ndim != 2:
        raise DataError(
            f"showers must be 2-D (N, n_voxels), got shape {showers.shape}",
            file=p, field="showers", fix="store one flattened shower per row",
        )
    if mesh is None:
        if geometry is not None:
            try:
                mesh = CylindricalMesh.from_dict(json.loads(geometry), source=str(p))
            except json.JSONDecodeError as exc:
                raise InputFileError(
                    "geometry attribute is not valid JSON", file=p, field="geometry", fix="re-create the file"
                ) from exc
        else:
            mesh = guess_mesh(showers.shape[1], source=p)
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
    data = ShowerData(energies=energies, showers=showers, mesh=mesh, angles=angles, meta=meta)
    return data.validate(source=p)
