"""Voxel orders of a generator's output row, and the permutations between them.

mlfastsim stores z, phi, r with r fastest (CaloChallenge); Geant4 Par04 places deposits in loops r (outer),
phi, z (inner), so a Par04-ordered output has z fastest.  A family whose last layer is linear exports in
Par04's order at zero run-time cost by permuting that layer's rows.
"""

from __future__ import annotations

import numpy as np

from mlfastsim.core.errors import ConfigError
from mlfastsim.showers.geometry import CylindricalMesh

# How the voxels of one shower follow each other in a flat output row.
VOXEL_ORDERS: dict[str, str] = {
    "par04": "r,phi,z (z fastest; Geant4 Par04)",
    "native": "z,phi,r (r fastest; CaloChallenge, mlfastsim native)",
}


def voxel_permutation(mesh: CylindricalMesh, voxel_order: str) -> np.ndarray | None:
    """Index p with ``ordered[:, j] = native[:, p[j]]`` (None for the native order itself)."""
    if voxel_order not in VOXEL_ORDERS:
        raise ConfigError(
            f"unknown voxel order {voxel_order!r}", field="voxel_order", fix=f"use one of {', '.join(VOXEL_ORDERS)}"
        )
    if voxel_order == "native":
        return None
    native = mesh.to_grid(np.arange(mesh.n_voxels, dtype=np.int64))  # (z, phi, r): entry = native flat index
    return np.ascontiguousarray(native.transpose(2, 1, 0)).reshape(-1)  # (r, phi, z), z fastest


def inverse_permutation(mesh: CylindricalMesh, voxel_order: str) -> np.ndarray | None:
    """Index q with ``native[:, i] = ordered[:, q[i]]`` (None for the native order)."""
    p = voxel_permutation(mesh, voxel_order)
    if p is None:
        return None
    q = np.empty_like(p)
    q[p] = np.arange(p.size, dtype=p.dtype)
    return q
