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
from dataclasses import dataclass, field
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
    # the training data's energy baseline (:func:`fit_energy_baseline`); None in files written before it
    baseline: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "grid": self.grid.to_dict(),
            "energy_scale_mev": self.energy_scale_mev,
            "threshold_mev": self.threshold_mev,
            "energy_norm_gev": self.energy_norm_gev,
            "energy_range_gev": list(self.energy_range_gev),
        }
        if self.baseline is not None:
            out["baseline"] = self.baseline
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | Path | None = None) -> HadronNormalisation:
        try:
            return cls(
                grid=CartesianGrid.from_dict(d["grid"], source=str(source) if source else None),
                energy_scale_mev=float(d["energy_scale_mev"]),
                threshold_mev=float(d["threshold_mev"]),
                energy_norm_gev=float(d["energy_norm_gev"]),
                energy_range_gev=(float(d["energy_range_gev"][0]), float(d["energy_range_gev"][1])),
                baseline=d.get("baseline"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputFileError(f"hadron normalisation block is incomplete ({exc})", file=source,
                                 field="normalisation", fix="pass a checkpoint written by mlfastsim") from exc

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    def baseline_fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """The baseline expanded to every cell: ``(a, b, log_max)``, ``a`` and ``b`` (3, n_z, n_y, n_x) float32
        such that the hit head's expected fields at condition ``e`` are ``a + b * log(e)``, ``log_max``
        (n_z, n_y, n_x) the largest log hit energy (None without a baseline)."""
        return None if self.baseline is None else baseline_fields(self.baseline, self.grid)

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


# ------------------------------------------------------------------------------------------- energy baseline
# The hit head of the hadron generators (models/wgan.py) outputs per cell a hit logit, the location and the
# log-width of log E.  A network fed the incident energy as one input number among 30-odd latent ones learns
# its effect slowly: at a CPU budget the WGAN's response E_sum/E_inc went 5.0 -> 0.39 from 10 to 100 GeV
# (simulation 0.80 flat), i.e. it made the mean training shower at every energy; the BIB-AE's encoder put
# the energy into z instead.  The baseline makes the energy dependence structural: per layer and ring (cells
# at the same distance from the axis) a straight line in log(e) for each of the three fields, fitted to the
# training showers once, and added to the network's output; the network learns residuals (shower-to-shower
# fluctuations, the shape within a ring), not the scaling of the hit count (~E^0.7) and hit energies.
BASELINE_BINS = 10
_OCC_CLIP = (1e-4, 0.99)
_LOG_SIGMA_CLIP = (-3.0, 1.0)  # models/wgan.py's clamp of the head's log-width
LOG_MAX_MARGIN = 0.5  # a cell may reach e^0.5 = 1.65 x the hottest hit of its layer and ring in training


def ring_index(grid: CartesianGrid) -> np.ndarray:
    """(n_y, n_x) ring of every cell: floor(distance from the axis / cell width), as in the lateral profile."""
    return np.floor(grid.radial_distances() / grid.ring_width + 1e-9).astype(np.int64)


def fit_energy_baseline(x: np.ndarray, e: np.ndarray, grid: CartesianGrid, *, chunk: int = 256) -> dict[str, Any]:
    """Fit the energy baseline to showers ``x`` (N, n_z, n_y, n_x) in network units (hits > 0) at conditions
    ``e`` (N,).

    The showers are split into ``BASELINE_BINS`` equal-count bins of e; in each bin and for each (layer,
    ring) the hit fraction p, the mean m and the standard deviation s of log(hit energy) are measured, and
    ``logit(p)``, ``m`` and ``log(s)`` are fitted with straight lines in log(e) (least squares weighted by
    the number of cells, resp. hits, behind each point).  Cells never hit get p = 1e-4 and m, log(s) of
    the layer's nearest ring with hits.  ``log_max`` (n_z, n_rings) is the largest log hit energy of each
    layer and ring plus ``LOG_MAX_MARGIN`` (the hit head's upper truncation).  Returns ``{"a", "b",
    "log_max"}``, nested lists, JSON-ready (they travel in checkpoints and ONNX sidecars with the rest of
    the normalisation).
    """
    n, nz = x.shape[0], x.shape[1]
    rings = ring_index(grid).reshape(-1)
    n_rings = int(rings.max()) + 1
    onehot = np.zeros((rings.size, n_rings), dtype=np.float64)
    onehot[np.arange(rings.size), rings] = 1.0
    cells = onehot.sum(0)  # cells per ring
    order = np.argsort(e, kind="stable")
    bins = np.array_split(order, min(BASELINE_BINS, max(n, 1)))
    log_e, stats = [], []
    top = np.full((nz, n_rings), -np.inf)
    for idx in bins:
        acc = np.zeros((3, nz, n_rings))  # hits, sum log E, sum log^2 E
        for start in range(0, len(idx), chunk):
            xb = x[idx[start:start + chunk]].reshape(-1, nz, rings.size).astype(np.float64)
            hit = xb > 0
            lx = np.where(hit, np.log(np.where(hit, xb, 1.0)), 0.0)
            acc[0] += hit.sum(0) @ onehot
            acc[1] += lx.sum(0) @ onehot
            acc[2] += (lx * lx).sum(0) @ onehot
            lmax = np.where(hit, lx, -np.inf).max(0)  # (n_z, cells)
            for r in range(n_rings):
                top[:, r] = np.maximum(top[:, r], lmax[:, rings == r].max(1))
        log_e.append(float(np.log(np.mean(e[idx]))))
        stats.append((acc, len(idx)))
    t = np.array(log_e)
    y = np.zeros((3, len(bins), nz, n_rings))
    w = np.zeros((3, len(bins), nz, n_rings))
    for k, (acc, count) in enumerate(stats):
        hits, n_cells = acc[0], count * cells[None, :]
        p = np.clip(hits / n_cells, *_OCC_CLIP)
        mean = acc[1] / np.maximum(hits, 1.0)
        var = np.maximum(acc[2] / np.maximum(hits, 1.0) - mean**2, 1e-4)
        y[0, k], w[0, k] = np.log(p / (1.0 - p)), n_cells
        y[1, k], w[1, k] = mean, hits
        y[2, k], w[2, k] = np.clip(0.5 * np.log(var), *_LOG_SIGMA_CLIP), np.maximum(hits - 1.0, 0.0)
    a, b = _weighted_lines(t, y, w)
    hit_any = w[1].sum(0) > 0
    top = np.where(hit_any, top, np.nan)
    for layer in range(nz):  # rings without hits: the nearest ring of the layer that has some
        have = np.flatnonzero(hit_any[layer])
        for r in np.flatnonzero(~hit_any[layer]):
            src = have[np.argmin(np.abs(have - r))] if have.size else None
            for c in (1, 2):
                a[c, layer, r], b[c, layer, r] = (a[c, layer, src], b[c, layer, src]) if src is not None else (0.0, 0.0)
            top[layer, r] = top[layer, src] if src is not None else np.nan
    top = np.where(np.isnan(top), np.nanmax(top) if np.isfinite(top).any() else 0.0, top) + LOG_MAX_MARGIN
    return {"a": np.round(a, 5).tolist(), "b": np.round(b, 5).tolist(), "log_max": np.round(top, 5).tolist()}


def _weighted_lines(t: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per trailing index, the weighted least-squares line y = a + b t over axis 1 (a flat line where all
    weight sits on one t, zero where there is none)."""
    sw = w.sum(1)
    safe = np.maximum(sw, 1e-12)
    tm = (w * t[None, :, None, None]).sum(1) / safe
    ym = (w * y).sum(1) / safe
    dt = t[None, :, None, None] - tm[:, None]
    var = (w * dt**2).sum(1)
    b = np.where(var > 1e-9 * np.maximum(sw, 1e-12), (w * dt * (y - ym[:, None])).sum(1) / np.maximum(var, 1e-12), 0.0)
    a = ym - b * tm
    return np.where(sw > 0, a, 0.0), np.where(sw > 0, b, 0.0)


def baseline_fields(baseline: dict[str, Any], grid: CartesianGrid
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A fitted baseline (per layer and ring) expanded to (3, n_z, n_y, n_x) arrays ``a`` and ``b`` and the
    (n_z, n_y, n_x) ``log_max`` (None when the baseline has none)."""
    rings = ring_index(grid)
    a, b = np.asarray(baseline["a"], dtype=np.float32), np.asarray(baseline["b"], dtype=np.float32)
    if a.shape != b.shape or a.ndim != 3 or a.shape[:2] != (3, grid.n_z) or a.shape[2] <= int(rings.max()):
        raise InputFileError(f"energy baseline of shape {a.shape} does not fit grid {grid.describe()}",
                             field="normalisation.baseline", fix="pass a checkpoint written by mlfastsim")
    top = baseline.get("log_max")
    log_max = None if top is None else np.ascontiguousarray(np.asarray(top, dtype=np.float32)[:, rings])
    return np.ascontiguousarray(a[:, :, rings]), np.ascontiguousarray(b[:, :, rings]), log_max


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
                                   expect.energy_norm_gev, expect.energy_range_gev, expect.baseline)
    else:
        scale = cfg.energy_scale_mev or _calorimeter_value(first, "mip_mev") or 1.0
        threshold = cfg.threshold_mev
        if threshold is None:
            threshold = _calorimeter_value(first, "threshold_mev") or 0.0
        e_gev = energies / 1000.0
        norm = HadronNormalisation(grid, float(scale), float(threshold), cfg.energy_norm_gev,
                                   (float(e_gev.min()), float(e_gev.max())))
    x = norm.to_network(showers)
    if expect is None:
        # fitted on the whole file (training and validation rows): it is a normalisation, like the MIP scale
        baseline = fit_energy_baseline(x, norm.energy_condition(energies), norm.grid)
        norm = HadronNormalisation(norm.grid, norm.energy_scale_mev, norm.threshold_mev, norm.energy_norm_gev,
                                   norm.energy_range_gev, baseline)
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
