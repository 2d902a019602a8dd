"""Showers as network inputs: normalisation and conditions (Par04 / MetaHEP conventions).

* Voxel energies are divided by the incident energy, so every value lies in [0, 1] and a sigmoid output
  with a binary cross-entropy loss fits them (as in Par04); generated showers are multiplied back.
* Conditions are [E / MAX_ENERGY, angle / MAX_ANGLE, geometry one-hot]; MetaHEP reserves slots for the
  pre-training geometries and a new geometry being adapted takes slot 0 ([1, 0, 0]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.showers.config import ConditioningConfig, DataConfig
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData, read_native

DEFAULT_ANGLE_DEG = 90.0


def n_conditions(cond: ConditioningConfig) -> int:
    """Width of the condition vector: energy, angle and the geometry one-hot."""
    return 2 + cond.n_geometry_slots


def make_conditions(
    energies_mev: np.ndarray, angles_deg: np.ndarray | None, geometry_index: int | np.ndarray, cond: ConditioningConfig
) -> np.ndarray:
    """(N, 2 + n_geometry_slots) float32 condition vectors."""
    e = np.asarray(energies_mev, dtype=np.float64).reshape(-1)
    n = e.shape[0]
    a = np.full(n, DEFAULT_ANGLE_DEG) if angles_deg is None else np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    g = np.broadcast_to(np.asarray(geometry_index, dtype=np.int64), (n,))
    if np.any(g < 0) or np.any(g >= cond.n_geometry_slots):
        raise ConfigError(
            f"geometry index {int(g.max())} outside the {cond.n_geometry_slots} one-hot slots",
            field="data.geometry_index",
            fix=f"use indices 0..{cond.n_geometry_slots - 1} or raise conditioning.n_geometry_slots",
        )
    out = np.zeros((n, n_conditions(cond)), dtype=np.float32)
    out[:, 0] = e / (cond.max_energy_gev * 1000.0)
    out[:, 1] = a / cond.max_angle_deg
    out[np.arange(n), 2 + g] = 1.0
    return out


def normalise_showers(data: ShowerData) -> np.ndarray:
    """Voxel energies / incident energy, clipped to [0, 1] (float32)."""
    x = data.showers / data.energies[:, None]
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def denormalise_showers(x: np.ndarray, energies_mev: np.ndarray) -> np.ndarray:
    """Network output in [0, 1] back to MeV."""
    return (np.asarray(x, dtype=np.float32) * np.asarray(energies_mev, dtype=np.float32).reshape(-1, 1)).astype(
        np.float32
    )


@dataclass
class TrainingData:
    """Normalised showers and their conditions, ready for the trainer."""

    x: torch.Tensor
    c: torch.Tensor
    mesh: CylindricalMesh
    files: list[Path]
    geometry_index: list[int]
    samples: list[ShowerData]


def load_training_data(cfg: DataConfig, *, mesh: CylindricalMesh | None = None) -> TrainingData:
    """Read the configured files, check they share one mesh, normalise and condition them."""
    if not cfg.files:
        raise ConfigError("no data files given", field="data.files", fix="list native shower files (or pass --data)")
    indices = list(cfg.geometry_index) if cfg.geometry_index is not None else list(range(len(cfg.files)))
    if len(indices) != len(cfg.files):
        raise ConfigError(
            f"{len(indices)} geometry indices for {len(cfg.files)} files",
            field="data.geometry_index",
            fix="give one one-hot slot per file",
        )
    xs, cs, samples = [], [], []
    for path, gi in zip(cfg.files, indices, strict=True):
        data = read_native(path)
        if cfg.max_showers_per_file is not None:
            data = data.subset(slice(0, cfg.max_showers_per_file))
        if mesh is None:
            mesh = data.mesh
        elif data.mesh.shape != mesh.shape or not np.allclose(data.mesh.r_edges, mesh.r_edges):
            raise DataError(
                f"mesh {data.mesh.describe()} differs from {mesh.describe()} of the model/other files",
                file=path,
                field="geometry",
                fix="train and adapt on files scored into the same mesh",
            )
        data.meta.setdefault("source", str(path))
        samples.append(data)
        xs.append(normalise_showers(data))
        cs.append(make_conditions(data.energies, data.angles, gi, cfg.conditioning))
    assert mesh is not None
    return TrainingData(
        x=torch.from_numpy(np.concatenate(xs)),
        c=torch.from_numpy(np.concatenate(cs)),
        mesh=mesh,
        files=list(cfg.files),
        geometry_index=indices,
        samples=samples,
    )
