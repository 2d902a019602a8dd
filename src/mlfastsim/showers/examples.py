"""``showers example-data``: small input files in every layout ``showers convert`` reads.

A newcomer following the README has no CaloChallenge download, no Geant4 Par04 output and no hit-level
file at hand; these are made here by the reference simulator, in the layouts those tools write, so every
conversion command in the README runs as written.  They are simulated showers, not Geant4 ones.

* ``dataset_2_1.hdf5``: CaloChallenge dataset-2 layout (SiW electrons, 1 GeV - 1 TeV log-uniform, 90 deg);
* ``SiW_70deg.h5``, ``SiW_90deg.h5``: Geant4 Par04 layout (one file per angle, one dataset per energy);
* ``hits.h5``: hit-level deposits in the detector frame (one hit per non-empty cell centre of Par04-mesh
  showers at normal incidence), the layout of :mod:`mlfastsim.showers.sim.voxelise`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mlfastsim.core.io import ensure_writable_dir
from mlfastsim.core.quick import cap
from mlfastsim.showers.config import SimulateConfig
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData, write_calochallenge, write_par04
from mlfastsim.showers.pipeline import simulate_to_file
from mlfastsim.showers.sim.voxelise import write_hits

EXAMPLE_FILES = ("dataset_2_1.hdf5", "SiW_70deg.h5", "SiW_90deg.h5", "hits.h5")


def showers_to_hits(data: ShowerData, path: Path) -> Path:
    """Write ``data`` (normal incidence, cylindrical mesh) as a hits file: one hit per non-empty cell centre.

    Entry point at the origin, direction and front-face normal +z, so the mesh frame is the detector frame
    (x' = x, y' = y): voxelising the file onto the same mesh gives the showers back.
    """
    mesh = data.mesh
    assert isinstance(mesh, CylindricalMesh)
    grid = mesh.to_grid(np.asarray(data.showers))  # (N, n_z, n_phi, n_r)
    event, iz, iphi, ir = np.nonzero(grid > 0)
    r, phi, z = mesh.r_centres[ir], mesh.phi_centres[iphi], mesh.z_centres[iz]
    counts = np.bincount(event, minlength=len(data))
    n = len(data)
    return write_hits(path, x=r * np.cos(phi), y=r * np.sin(phi), z=z, energy=grid[event, iz, iphi, ir],
                      event_offsets=np.concatenate([[0], np.cumsum(counts)]),
                      incident_energies=np.asarray(data.energies, dtype=np.float32).reshape(n, 1),
                      entry_points=np.zeros((n, 3), np.float32),
                      directions=np.tile(np.array([0.0, 0.0, 1.0], np.float32), (n, 1)),
                      incident_angles=np.full((n, 1), 90.0, np.float32))


def write_example_data(out: str | Path, *, n_showers: int = 200, seed: int = 7) -> list[Path]:
    """Simulate and write the example inputs into ``out``; returns the files written (``n_showers`` per
    file and angle, capped by ``MLFASTSIM_QUICK``)."""
    out = ensure_writable_dir(out)
    n = cap("n_per_point", n_showers)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".example-") as tmp:
        ds2 = simulate_to_file(SimulateConfig(detector="SiW", mesh="ds2", energy_range_gev=(1.0, 1000.0),
                                              angles_deg=[90.0], n_per_point=n, seed=seed,
                                              output=Path(tmp) / "ds2.h5"))
        written.append(write_calochallenge(ds2.load(), out / "dataset_2_1.hdf5"))
        per_point = max(1, n // 3)
        par04 = simulate_to_file(SimulateConfig(detector="SiW", mesh="par04", energies_gev=[1.0, 10.0, 100.0],
                                                angles_deg=[70.0, 90.0], n_per_point=per_point, seed=seed + 1,
                                                output=Path(tmp) / "par04.h5")).load()
        written += write_par04(par04, str(out / "SiW_{angle}deg.h5"))
        normal = np.flatnonzero(np.asarray(par04.angles).reshape(-1) == 90.0)
        written.append(showers_to_hits(par04.subset(normal), out / "hits.h5"))
    return written
