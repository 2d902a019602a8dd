"""Hadron-shower training data: Cartesian-grid files -> cropped, thresholded, scaled tensors.

The hadron models (WGAN, BIB-AE, post-processor, energy regressor) all read the same batch ``(x, e)``:

* ``x`` (N, n_z, n_y, n_x) float32: cell energies in MeV, cropped to a window around the shower axis
  (25 x 25 of the 48 x 48 cells by default, as in Buhmann et al., arXiv:2112.09709), cells below the
  readout threshold set to zero, divided by ``energy_scale_mev`` (the MIP signal by default, so a MIP
  is ~1 and the networks see O(1-100) numbers rather than MeV spanning five decades);
* ``e`` (N,): the incident energy divided by ``energy_norm_gev`` (100 GeV: pions of 10-100 GeV map
  to 0.1-1).

How the data were normalised travels in every checkpoint (:meth:`HadronNormalisation.to_dict`) so that
generation undoes it exactly and knows the energy range the model was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.showers.conditioning.base import TrainingData
from mlfastsim.showers.geometry import CartesianGrid
from mlfastsim.showers.io.native import ShowerData, read_native, same_mesh

logger = logging.getLogger(__name__)


class HadronDataConfig(StrictModel):
    """Where the hadron showers are and how the networks see them."""

    files: list[Path] = Field(default_factory=list)
    crop: tuple[int, int] | None = (25, 25)  # (x, y) cells centred on the shower axis; null = whole grid
    threshold_mev: float | None = Field(None, ge=0.0)  # null: the readout threshold stored in the file, else 0
    energy_scale_mev: float | None = Field(None, gt=0.0)  # null: the file's MIP signal, else 1 MeV
    energy_norm_gev: float = Field(100.0, gt=0.0)
    max_showers: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class HadronNormalisation:
    """Everything needed to go from network units back to MeV on the right grid."""

    grid: CartesianGrid  # the (cropped) grid the model works on
    energy_scale_mev: float
    threshold_mev: float
    energy_norm_gev: float
    energy_range_gev: tuple[float, float]  # incident energies seen in training

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": self.grid.to_dict(),
            "energy_scale_mev": self.energy_scale_mev,
            "threshold_mev": self.threshold_mev,
            "energy_norm_gev": self.energy_norm_gev,
            "energy_range_gev": list(self.energy_range_gev),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | Path | None = None) -> HadronNormalisation:
        try:
            return cls(
                grid=CartesianGrid.from_dict(d["grid"], source=str(source) if source else None),
                energy_scale_mev=float(d["energy_scale_mev"]),
                threshold_mev=float(d["threshold_mev"]),
                energy_norm_gev=float(d["energy_norm_gev"]),
                energy_range_gev=(float(d["energy_range_gev"][0]), float(d["energy_range_gev"][1])),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputFileError(f"hadron normalisation block is incomplete ({exc})", file=source,
                                 field="normalisation", fix="pass a checkpoint written by mlfastsim") from exc

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    def to_network(self, showers_mev: np.ndarray) -> np.ndarray:
        """(N, n_voxels) MeV -> (N, n_z, n_y, n_x) network units, threshold applied."""
        x = np.where(showers_mev >= self.threshold_mev, showers_mev, 0.0) / self.energy_scale_mev
        return self.grid.to_grid(x.astype(np.float32))

    def to_mev(self, x: np.ndarray) -> np.ndarray:
        """Network output (N, n_voxels) -> MeV, readout threshold applied (as the detector would)."""
        mev = np.asarray(x, dtype=np.float32).reshape(len(x), -1) * np.float32(self.energy_scale_mev)
        mev[mev < self.threshold_mev] = 0.0
        return mev

    # ---------------------------------------------------- the Normalisation contract (models/contract.py)
    @property
    def geometry(self) -> CartesianGrid:
        return self.grid

    @property
    def cond_width(self) -> int:
        return 1

    def energy_condition(self, energies_mev: np.ndarray) -> np.ndarray:
        """(N,) incident energy / energy_norm_gev: the one number the hadron networks are conditioned on."""
        return (np.asarray(energies_mev, dtype=np.float32).reshape(-1)
                / np.float32(self.energy_norm_gev * 1000.0)).astype(np.float32)

    def conditions(self, energies_mev: np.ndarray, angles_deg: np.ndarray | None = None,
                   geometry_index: int | np.ndarray = 0) -> np.ndarray:
        """(N, 1): pions enter at normal incidence into one calorimeter, so only the energy conditions."""
        return self.energy_condition(energies_mev)[:, None]

    def encode(self, data: ShowerData) -> np.ndarray:
        return self.to_network(data.showers)

    def row_scale(self, energies_mev: np.ndarray) -> np.ndarray:
        return np.full(np.asarray(energies_mev).reshape(-1).shape[0], self.energy_scale_mev, dtype=np.float32)

    def finish_(self, showers_mev: np.ndarray) -> None:
        showers_mev[showers_mev < self.threshold_mev] = 0.0

    def meta(self) -> dict[str, Any]:
        return {"normalisation": self.to_dict(), "mesh": self.grid.to_dict()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], *, source: str | Path | None = None) -> HadronNormalisation:
        return cls.from_dict(meta.get("normalisation") or {}, source=source)

    def random_conditions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.energy_range_gev
        return (rng.uniform(lo, hi, n) / self.energy_norm_gev).astype(np.float32)[:, None]

    def check_request(self, energies_mev: np.ndarray, angles_deg: np.ndarray | None, geometry_index: int) -> None:
        warn_outside_range(energies_mev, self)

    def input_layout(self, latent_dim: int) -> list[dict[str, Any]]:
        return [{"name": "latent", "offset": 0, "size": latent_dim, "meaning": "z ~ N(0, 1)"},
                {"name": "energy", "offset": latent_dim, "size": 1,
                 "meaning": f"incident energy / {self.energy_norm_gev:g} GeV"}]

    def output_meta(self) -> dict[str, Any]:
        return {"particle": "pion",
                "calorimeter": {"threshold_mev": self.threshold_mev, "mip_mev": self.energy_scale_mev}}


def _calorimeter_value(data: ShowerData, key: str) -> float | None:
    """A calorimeter number recorded in the file's metadata (top level or its ``derived`` block)."""
    calo = data.meta.get("calorimeter")
    if not isinstance(calo, dict):
        return None
    for block in (calo, calo.get("derived") or {}):
        if isinstance(block, dict) and block.get(key) is not None:
            return float(block[key])
    return None


def crop_showers(data: ShowerData, crop: tuple[int, int] | None, *, source: str | Path | None = None) -> ShowerData:
    """``data`` cropped to ``crop`` = (x, y) cells around the axis (a clear error if it does not fit)."""
    if not isinstance(data.mesh, CartesianGrid):
        raise DataError(
            f"hadron models need showers on a Cartesian grid, this file uses {data.mesh.describe()}",
            file=source, field="geometry",
            fix="simulate with `showers simulate --particle pion --grid hcal48` or convert onto a grid",
        )
    if crop is None or (crop[0] == data.mesh.n_x and crop[1] == data.mesh.n_y):
        return data
    grid = data.mesh
    return ShowerData(data.energies, grid.crop(data.showers, crop[0], crop[1]), grid.cropped(crop[0], crop[1]),
                      data.angles, dict(data.meta))


def load_hadron_data(cfg: HadronDataConfig, *, expect: HadronNormalisation | None = None) -> TrainingData:
    """Read, crop, threshold and scale the configured files.

    ``expect`` (the normalisation of a model being fine-tuned or post-processed) pins grid, scale and
    threshold, so a second training stage sees exactly what the first saw.
    """
    if not cfg.files:
        raise ConfigError("no data files given", field="data.files", fix="list hadron shower files (or pass --data)")
    parts: list[ShowerData] = []
    for path in cfg.files:
        data = crop_showers(read_native(path), cfg.crop, source=path)
        if parts and not same_mesh(data.mesh, parts[0].mesh):
            raise DataError(f"grid {data.mesh.describe()} differs from {parts[0].mesh.describe()} of {cfg.files[0]}",
                            file=path, field="geometry", fix="train on files scored into the same grid")
        parts.append(data)
    first = parts[0]
    grid = first.mesh
    assert isinstance(grid, CartesianGrid)
    energies = np.concatenate([p.energies for p in parts])
    showers = np.concatenate([p.showers for p in parts])
    if cfg.max_showers is not None:
        energies, showers = energies[: cfg.max_showers], showers[: cfg.max_showers]
    if expect is not None:
        if not same_mesh(grid, expect.grid):
            raise DataError(
                f"the data's grid {grid.describe()} differs from the model's {expect.grid.describe()}",
                file=cfg.files[0], field="data.crop",
                fix="use the crop and grid the first training stage used",
            )
        norm = HadronNormalisation(expect.grid, expect.energy_scale_mev, expect.threshold_mev,
                                   expect.energy_norm_gev, expect.energy_range_gev)
    else:
        scale = cfg.energy_scale_mev or _calorimeter_value(first, "mip_mev") or 1.0
        threshold = cfg.threshold_mev
        if threshold is None:
            threshold = _calorimeter_value(first, "threshold_mev") or 0.0
        e_gev = energies / 1000.0
        norm = HadronNormalisation(grid, float(scale), float(threshold), cfg.energy_norm_gev,
                                   (float(e_gev.min()), float(e_gev.max())))
    x = norm.to_network(showers)
    # c is (N,): the hadron networks take the energy as one scalar per shower
    return TrainingData(x=torch.from_numpy(np.ascontiguousarray(x)),
                        c=torch.from_numpy(norm.energy_condition(energies)), norm=norm, files=list(cfg.files),
                        samples=parts)


def warn_outside_range(energies_mev: np.ndarray, norm: HadronNormalisation) -> None:
    """Generating outside the trained energy range extrapolates: say so, but do it."""
    lo, hi = norm.energy_range_gev
    e = np.asarray(energies_mev) / 1000.0
    outside = (e < lo * 0.999) | (e > hi * 1.001)
    if outside.any():
        logger.warning(
            "%d of %d requested energies lie outside the trained range %.4g-%.4g GeV (e.g. %.4g GeV): "
            "the model extrapolates there", int(outside.sum()), e.size, lo, hi, float(e[outside][0]))
