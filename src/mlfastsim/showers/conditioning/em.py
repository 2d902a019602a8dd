"""Showers as network inputs: normalisation and conditions (Par04 / MetaHEP conventions).

* Voxel energies are divided by the incident energy, so every value lies in [0, 1] and a sigmoid output
  with a binary cross-entropy loss fits them (as in Par04); generated showers are multiplied back.
* Conditions are [E / MAX_ENERGY, angle / MAX_ANGLE, geometry one-hot]; MetaHEP reserves slots for the
  pre-training geometries and a new geometry being adapted takes slot 0 ([1, 0, 0]).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, ValidationError

from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.showers.conditioning.base import TrainingData
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.native import ShowerData, read_native

logger = logging.getLogger(__name__)

DEFAULT_ANGLE_DEG = 90.0


class ConditioningConfig(StrictModel):
    """How a shower is conditioned (Par04/MetaHEP): E/MAX_ENERGY, angle/MAX_ANGLE, geometry one-hot."""

    max_energy_gev: float = Field(1000.0, gt=0)
    max_angle_deg: float = Field(90.0, gt=0)
    n_geometry_slots: int = Field(3, ge=1)


class DataConfig(StrictModel):
    """Training data: native shower files, each with the one-hot slot of its geometry.

    ``geometry_index[i]`` is the one-hot slot of ``files[i]``; a new geometry being adapted uses slot 0
    ([1, 0, 0], as in MetaHEP).  Missing indices default to 0, 1, 2... in file order.
    """

    files: list[Path] = Field(default_factory=list)
    geometry_index: list[int] | None = None
    max_showers_per_file: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    conditioning: ConditioningConfig = ConditioningConfig()


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
        norm=EMNormalisation(mesh, cfg.conditioning),
        files=list(cfg.files),
        geometry_index=indices,
        samples=samples,
    )


@dataclass(frozen=True)
class EMNormalisation:
    """The Par04/MetaHEP normalisation: cells / E_inc in [0, 1], conditions [E/MAX_E, angle/MAX_A, one-hot].

    Stored in checkpoints and sidecars as the top-level ``mesh`` and ``conditioning`` keys (the layout of
    the shipped ``vae_ds2_meta.pt`` and of Par04's sidecar).  ``mesh`` may be None for a bare ONNX session
    whose output is only scaled, never placed.
    """

    mesh: CylindricalMesh | None
    conditioning: ConditioningConfig

    @property
    def geometry(self) -> CylindricalMesh:
        if self.mesh is None:
            raise ConfigError("this model's mesh is unknown", field="mesh",
                              fix="load it from its checkpoint or sidecar")
        return self.mesh

    @property
    def cond_width(self) -> int:
        return n_conditions(self.conditioning)

    def conditions(self, energies_mev: np.ndarray, angles_deg: np.ndarray | None,
                   geometry_index: int | np.ndarray) -> np.ndarray:
        return make_conditions(energies_mev, angles_deg, geometry_index, self.conditioning)

    def encode(self, data: ShowerData) -> np.ndarray:
        return normalise_showers(data)

    def row_scale(self, energies_mev: np.ndarray) -> np.ndarray:
        return np.asarray(energies_mev, dtype=np.float32).reshape(-1)

    def finish_(self, showers_mev: np.ndarray) -> None:
        """Nothing: the VAE's output is used as it comes."""

    def meta(self) -> dict[str, Any]:
        return {"mesh": self.geometry.to_dict(), "conditioning": self.conditioning.model_dump(mode="json")}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], *, source: str | Path | None = None) -> EMNormalisation:
        from mlfastsim.core.errors import InputFileError

        for key in ("mesh", "conditioning"):
            if key not in meta:
                raise InputFileError(f"no {key!r} block", file=source, field=key,
                                     fix="re-create the checkpoint or export with this mlfastsim version")
        try:
            cond = ConditioningConfig.model_validate(meta["conditioning"])
        except ValidationError as exc:
            raise InputFileError(f"invalid conditioning block ({exc.errors()[0]['msg']})", file=source,
                                 field="conditioning", fix="re-create it with this mlfastsim version") from exc
        return cls(CylindricalMesh.from_dict(meta["mesh"], source=str(source) if source else None), cond)

    def random_conditions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Energies log-uniform over the three decades below MAX_ENERGY, angles uniform, every slot."""
        cond = self.conditioning
        e_max = cond.max_energy_gev * 1000.0
        energies = np.exp(rng.uniform(math.log(e_max / 1000.0), math.log(e_max), n))
        angles = rng.uniform(0.0, cond.max_angle_deg, n)
        angles = np.where(angles > 0, angles, cond.max_angle_deg)
        slots = rng.integers(0, cond.n_geometry_slots, n)
        return make_conditions(energies, angles, slots, cond)

    def check_request(self, energies_mev: np.ndarray, angles_deg: np.ndarray | None, geometry_index: int) -> None:
        cond = self.conditioning
        if not 0 <= int(geometry_index) < cond.n_geometry_slots:
            raise ConfigError(
                f"geometry index {geometry_index} outside the model's {cond.n_geometry_slots} one-hot slots",
                field="geometry_index", fix=f"use 0..{cond.n_geometry_slots - 1} (0 = the adapted geometry)",
            )
        e_gev = np.asarray(energies_mev, dtype=np.float64) / 1000.0
        if e_gev.size and float(e_gev.max()) > cond.max_energy_gev * 1.001:
            logger.warning("requested energies up to %.4g GeV exceed the model's MAX_ENERGY %.4g GeV: the model "
                           "extrapolates there", float(e_gev.max()), cond.max_energy_gev)
        if angles_deg is not None:
            a = np.asarray(angles_deg, dtype=np.float64)
            if a.size and (float(a.max()) > cond.max_angle_deg * 1.001 or float(a.min()) < 0):
                logger.warning("requested angles outside 0-%.4g degrees: the model extrapolates there",
                               cond.max_angle_deg)

    def input_layout(self, latent_dim: int) -> list[dict[str, Any]]:
        slots = self.conditioning.n_geometry_slots
        return [
            {"name": "latent", "offset": 0, "size": latent_dim, "meaning": "z ~ N(0, 1)"},
            {"name": "energy", "offset": latent_dim, "size": 1,
             "meaning": "incident energy / MAX_ENERGY (same unit: MeV / max_energy_mev)"},
            {"name": "angle", "offset": latent_dim + 1, "size": 1,
             "meaning": "incidence angle in degrees / MAX_ANGLE (angle to the front face, 90 = normal incidence)"},
            {"name": "geometry", "offset": latent_dim + 2, "size": slots,
             "meaning": "one-hot geometry slot (a newly adapted geometry uses slot 0)"},
        ]

    def output_meta(self) -> dict[str, Any]:
        return {"conditioning": self.conditioning.model_dump(mode="json")}
