"""Shower observables: what a physicist compares between a reference and a fast simulation.

Two families are computed in one pass over the voxels:

* the **Geant4 Par04 validation observables** (examples/extended/parameterisations/Par04 and its
  ``validation`` scripts): longitudinal profile (energy per layer), lateral profile (energy per radial
  bin), first and second moments of both, total energy, energy per layer, number of hits and the
  cell-energy spectrum.  Par04 defines the moments per shower, energy weighted, with positions in mm:
  ``FM = sum_i E_i x_i / E_tot`` and ``SM = sum_i E_i (x_i - FM)^2 / E_tot`` (the second moment is the
  energy-weighted *variance*, in mm^2).  Par04's scripts place cell ``i`` at ``i * cell_size`` (its lower
  edge); we use cell *centres* (from the mesh, so non-uniform radial bins are right), which shifts first
  moments by half a cell and leaves second moments unchanged.
* the **CaloChallenge high-level features** (CaloChallenge/homepage ``code/HighLevelFeatures.py``): per
  layer the deposited energy, the centres of energy and widths in "eta" and "phi" (for datasets 2/3 these
  are the Cartesian x = r cos(alpha) and y = r sin(alpha) of the cell centres, in mm), the centre of
  energy and width in r, and the sparsity (fraction of cells at or below the threshold); E_tot/E_inc.
  Widths are ``sqrt(max(<x^2> - <x>^2, 0))``; an empty layer gives centre and width 0, as there.
  Our alpha runs over [0, 2 pi) (the mesh convention) where CaloChallenge's XMLHandler uses [-pi, pi);
  for the same voxel order that flips the sign of x and y, which no comparison depends on.

Everything is vectorised over showers and cells, in chunks of showers so that the float64 copy used for
the accumulations stays small (a 10k x 6480 float32 sample would otherwise double in memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mlfastsim.core.errors import DataError
from mlfastsim.showers.geometry import LayerCells, Mesh
from mlfastsim.showers.io.formats import ShowerData

# CaloChallenge's readout threshold for datasets 2 and 3: 0.5 keV visible energy in Si, divided by the
# sampling fraction 0.033 to put it on the incident-particle scale our files use.  Used as the lower edge
# of the cell-energy spectrum and as the floor inside log10(layer energy) features.
CELL_ENERGY_MIN_MEV = 0.5e-3 / 0.033

# Per-layer observables (N, n_z) in the order the high-level feature vector uses them.
PER_LAYER = ("energy_per_layer", "ec_eta", "ec_phi", "width_eta", "width_phi", "ec_r", "width_r", "sparsity")


def layer_prefix(key: str) -> str:
    """Common prefix of the per-layer metric names of a :data:`PER_LAYER` observable (``energy_layer_``)."""
    return ("energy" if key == "energy_per_layer" else key) + "_layer_"


def layer_name(key: str, layer: int) -> str:
    """Metric name of one layer of a per-layer observable: ``energy_layer_07``, ``ec_eta_layer_07``..."""
    return f"{layer_prefix(key)}{layer:02d}"


# Per-shower scalars.
SCALARS = (
    "e_total",
    "e_ratio",
    "n_hits",
    "first_moment_z",
    "second_moment_z",
    "first_moment_r",
    "second_moment_r",
    "cog_x",
    "cog_y",
)


@dataclass(frozen=True)
class ObservableInfo:
    """How an observable is labelled on plots and in the report."""

    label: str
    unit: str
    log: bool = False  # plotted on a log axis


OBSERVABLE_INFO: dict[str, ObservableInfo] = {
    "e_inc": ObservableInfo("incident energy", "MeV", log=True),
    "e_total": ObservableInfo("total energy E_tot", "MeV", log=True),
    "e_ratio": ObservableInfo("E_tot / E_inc", ""),
    "n_hits": ObservableInfo("number of cells hit", ""),
    "first_moment_z": ObservableInfo("first moment in z (mean depth)", "mm"),
    "second_moment_z": ObservableInfo("second moment in z (depth variance)", "mm²"),
    "first_moment_r": ObservableInfo("first moment in r (mean radius)", "mm"),
    "second_moment_r": ObservableInfo("second moment in r (radial variance)", "mm²"),
    "cog_x": ObservableInfo("centre of gravity in x", "mm"),
    "cog_y": ObservableInfo("centre of gravity in y", "mm"),
    "energy_per_layer": ObservableInfo("energy in layer", "MeV", log=True),
    "ec_eta": ObservableInfo("centre of energy in η (x)", "mm"),
    "ec_phi": ObservableInfo("centre of energy in φ (y)", "mm"),
    "width_eta": ObservableInfo("width in η (x)", "mm"),
    "width_phi": ObservableInfo("width in φ (y)", "mm"),
    "ec_r": ObservableInfo("centre of energy in r", "mm"),
    "width_r": ObservableInfo("width in r", "mm"),
    "sparsity": ObservableInfo("sparsity", ""),
    "longitudinal_profile": ObservableInfo("longitudinal profile", "MeV"),
    "lateral_profile": ObservableInfo("lateral profile", "MeV"),
    "cell_energy": ObservableInfo("cell energy", "MeV", log=True),
}


def apply_threshold(data: ShowerData, threshold_mev: float = CELL_ENERGY_MIN_MEV) -> ShowerData:
    """Zero cells below a readout threshold, as the detector would (a generator never gives an exact zero)."""
    showers = np.where(data.showers >= threshold_mev, data.showers, 0.0).astype(np.float32)
    return ShowerData(data.energies, showers, data.mesh, data.angles, dict(data.meta))


def empty_showers(data: ShowerData) -> np.ndarray:
    """Boolean mask of showers with no deposited energy at all (their moments are undefined)."""
    return ~np.any(data.showers > 0, axis=1)


def raise_if_empty(data: ShowerData, *, where: str) -> None:
    """Refuse showers with no energy where a ratio to the total is needed (clear error, not NaN)."""
    empty = empty_showers(data)
    n_empty = int(empty.sum())
    if n_empty:
        first = int(np.argmax(empty))
        raise DataError(
            f"zero-energy showers: {n_empty} of {len(data)} showers deposit no energy (first: row {first}); "
            f"{where} divides by the total energy",
            file=data.meta.get("source"),
            field="showers",
            fix="remove them from the file, or pass --exclude-empty (exclude_empty=True) to drop them",
        )


def _cell_weights(cells: LayerCells) -> np.ndarray:
    """(cells per layer, 7 + n_r_bins + n_phi_bins) weights: layer @ W gives per-layer
    [E, Ex, Ey, Ex², Ey², Er, Er², E per ring..., E per sector...] in one matrix product.

    The flat cell index inside a layer follows the voxel order of the geometry (phi * n_r + r for the
    cylindrical mesh, y * n_x + x for a Cartesian grid); :meth:`layer_cells` gives it for both.
    """
    x, y, rr = cells.x, cells.y, cells.r
    ring = np.zeros((x.size, cells.n_r_bins))
    ring[np.arange(x.size), cells.r_bin] = 1.0
    sector = np.zeros((x.size, cells.n_phi_bins))
    sector[np.arange(x.size), cells.phi_bin] = 1.0
    return np.concatenate([np.stack([np.ones_like(x), x, y, x * x, y * y, rr, rr * rr], axis=1), ring, sector], axis=1)


def _centre_and_width(
    sum_e: np.ndarray, sum_ex: np.ndarray, sum_ex2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CaloChallenge centre of energy and width; 0 where the layer is empty (no NaN)."""
    filled = sum_e > 0
    safe = np.where(filled, sum_e, 1.0)
    centre = np.where(filled, sum_ex / safe, 0.0)
    second = np.where(filled, sum_ex2 / safe, 0.0)
    width = np.sqrt(np.clip(second - centre * centre, 0.0, None))
    return centre, width


def _moments(profile: np.ndarray, positions: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Par04 first moment and second moment (energy-weighted mean and variance) along one axis."""
    first = profile @ positions / total
    second = np.einsum("nk,nk->n", profile, (positions[None, :] - first[:, None]) ** 2) / total
    return first, np.clip(second, 0.0, None)


def compute_observables(
    data: ShowerData,
    *,
    threshold_mev: float = 0.0,
    exclude_empty: bool = False,
    chunk_size: int = 2048,
) -> dict[str, np.ndarray]:
    """All per-shower observables of ``data`` in one pass.

    Returns a dict of float64 arrays: ``e_inc`` and the :data:`SCALARS` with shape (N,), the profiles
    ``energy_per_layer`` (N, n_z), ``energy_per_r_bin`` (N, n_r), ``energy_per_phi_bin`` (N, n_phi), and
    the :data:`PER_LAYER` CaloChallenge features with shape (N, n_z).  A cell counts as hit when its
    energy is above ``threshold_mev`` (0 = any deposit, as Par04 and CaloChallenge do by default).

    Moments and E_tot-normalised quantities divide by the shower's total energy, so showers with none
    raise a :class:`DataError` naming how many there are, unless ``exclude_empty`` drops them (the arrays
    then have one row per non-empty shower, in order).
    """
    if exclude_empty:
        keep = ~empty_showers(data)
        if not keep.all():
            data = data.subset(keep)
    else:
        raise_if_empty(data, where="the moment computation")
    if np.any(data.energies <= 0):
        raise DataError(
            f"{int(np.sum(data.energies <= 0))} shower(s) with incident energy <= 0: E_tot/E_inc undefined",
            file=data.meta.get("source"),
            field="incident_energies",
            fix="remove events with zero incident energy",
        )
    mesh = data.mesh
    n = len(data)
    n_z = mesh.shape[0]
    n_cells_layer = mesh.n_voxels // n_z
    cells = mesh.layer_cells()
    weights = _cell_weights(cells)
    layers = data.showers.reshape(n, n_z, n_cells_layer)  # float32 view, layer-major as on disk

    per_layer_sums = np.empty((n, n_z, 7), dtype=np.float64)
    hits_per_layer = np.empty((n, n_z), dtype=np.int64)
    e_r = np.empty((n, cells.n_r_bins), dtype=np.float64)
    e_phi = np.empty((n, cells.n_phi_bins), dtype=np.float64)
    for lo in range(0, n, chunk_size):
        block32 = layers[lo : lo + chunk_size]
        block = block32.astype(np.float64)
        c = block.shape[0]
        sums = (block.reshape(c * n_z, n_cells_layer) @ weights).reshape(c, n_z, -1)
        per_layer_sums[lo : lo + c] = sums[..., :7]
        e_r[lo : lo + c] = sums[..., 7 : 7 + cells.n_r_bins].sum(axis=1)  # rings and sectors: summed over layers
        e_phi[lo : lo + c] = sums[..., 7 + cells.n_r_bins :].sum(axis=1)
        hits_per_layer[lo : lo + c] = np.count_nonzero(block32 > threshold_mev, axis=2)

    e_layer = per_layer_sums[..., 0]
    e_total = e_layer.sum(axis=1)
    e_inc = data.energies.astype(np.float64)
    z_first, z_second = _moments(e_layer, mesh.z_centres, e_total)
    r_first, r_second = _moments(e_r, cells.r_centres, e_total)
    ec_eta, width_eta = _centre_and_width(e_layer, per_layer_sums[..., 1], per_layer_sums[..., 3])
    ec_phi, width_phi = _centre_and_width(e_layer, per_layer_sums[..., 2], per_layer_sums[..., 4])
    ec_r, width_r = _centre_and_width(e_layer, per_layer_sums[..., 5], per_layer_sums[..., 6])
    return {
        "e_inc": e_inc,
        "e_total": e_total,
        "e_ratio": e_total / e_inc,
        "n_hits": hits_per_layer.sum(axis=1).astype(np.float64),
        "first_moment_z": z_first,
        "second_moment_z": z_second,
        "first_moment_r": r_first,
        "second_moment_r": r_second,
        "cog_x": per_layer_sums[..., 1].sum(axis=1) / e_total,
        "cog_y": per_layer_sums[..., 2].sum(axis=1) / e_total,
        "energy_per_layer": e_layer,
        "energy_per_r_bin": e_r,
        "energy_per_phi_bin": e_phi,
        "ec_eta": ec_eta,
        "ec_phi": ec_phi,
        "width_eta": width_eta,
        "width_phi": width_phi,
        "ec_r": ec_r,
        "width_r": width_r,
        "sparsity": 1.0 - hits_per_layer / float(n_cells_layer),
    }


def mean_profile(per_shower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean profile over showers and its standard error per bin (for the plotted error bands)."""
    arr = np.asarray(per_shower, dtype=np.float64)
    n = arr.shape[0]
    mean = arr.mean(axis=0)
    err = arr.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean, err


def energy_response(
    e_inc: np.ndarray, e_total: np.ndarray, edges: np.ndarray | None = None, *, max_bins: int = 6,
    min_per_bin: int = 20,
) -> dict[str, list[float]]:
    """Mean response E_tot/E_inc and relative resolution sigma(E_tot)/<E_tot> in bins of incident energy.

    Without ``edges`` the bins follow the sample: a single point per distinct energy when the sample was
    simulated at a few fixed energies, otherwise log-spaced bins holding at least ``min_per_bin``
    showers.  Pass the reference's edges to bin a candidate the same way.  The resolution's statistical
    error is sigma / sqrt(2 (n - 1)) (Gaussian approximation).
    """
    e_inc = np.asarray(e_inc, dtype=np.float64)
    e_total = np.asarray(e_total, dtype=np.float64)
    if edges is None:
        distinct = np.unique(np.round(e_inc, 3))
        if distinct.size <= max_bins:
            mids = np.sqrt(distinct[1:] * distinct[:-1]) if distinct.size > 1 else np.array([])
            edges = np.concatenate([[distinct[0] * 0.999], mids, [distinct[-1] * 1.001]])
        else:
            n_bins = int(max(1, min(max_bins, e_inc.size // max(min_per_bin, 1))))
            edges = np.quantile(np.log(e_inc), np.linspace(0, 1, n_bins + 1))
            edges = np.exp(edges)
            edges[0] *= 0.999
            edges[-1] *= 1.001
    idx = np.clip(np.searchsorted(edges, e_inc, side="right") - 1, 0, len(edges) - 2)
    out: dict[str, list[float]] = {"edges_mev": [float(x) for x in edges], "e_inc_mev": [], "response": [],
                                   "resolution": [], "resolution_error": [], "n": []}
    for b in range(len(edges) - 1):
        sel = idx == b
        n = int(sel.sum())
        if n < 2:
            continue
        mean = float(e_total[sel].mean())
        sigma = float(e_total[sel].std(ddof=1))
        out["e_inc_mev"].append(float(np.exp(np.log(e_inc[sel]).mean())))
        out["response"].append(float((e_total[sel] / e_inc[sel]).mean()))
        out["resolution"].append(sigma / mean if mean > 0 else float("nan"))
        out["resolution_error"].append(sigma / mean / np.sqrt(2.0 * (n - 1)) if mean > 0 else float("nan"))
        out["n"].append(n)
    return out


# ------------------------------------------------------------------------------------- cell spectrum
def cell_energy_edges(
    reference: ShowerData, *, n_bins: int = 50, e_min_mev: float = CELL_ENERGY_MIN_MEV
) -> np.ndarray:
    """Log-spaced cell-energy bin edges from ``e_min_mev`` to the reference's largest cell (CaloChallenge)."""
    e_max = float(reference.showers.max()) if reference.showers.size else 0.0
    if not e_max > e_min_mev:
        e_max = e_min_mev * 10.0
    edges = np.logspace(np.log10(e_min_mev), np.log10(e_max), n_bins + 1)
    edges[0], edges[-1] = e_min_mev, e_max  # exact end points, so the largest cell is not an overflow
    return edges


def cell_energy_histogram(data: ShowerData, edges: np.ndarray, *, chunk_size: int = 2048) -> np.ndarray:
    """Counts of cells with energy > 0 in [underflow, bins..., overflow] (length len(edges) + 1).

    Cells below the first edge land in the underflow and above the last edge in the overflow, so a
    candidate that deposits energy where the reference has none is still counted; the last edge is
    inclusive.  For log-uniform edges (as from :func:`cell_energy_edges`) the bin index is computed
    arithmetically from float32 log10(E), four times faster than a binary search over ~10^8 cells; the
    outer boundaries are compared exactly, interior edges to float32 precision.
    """
    edges64 = np.asarray(edges, dtype=np.float64)
    n_bins = edges64.size - 1
    edges32 = edges64.astype(np.float32)
    log_edges = np.log10(edges64)
    log_uniform = n_bins >= 1 and bool(
        np.allclose(np.diff(log_edges), log_edges[1] - log_edges[0], rtol=1e-9)
    )
    log_lo = np.float32(log_edges[0])
    inv_step = np.float32(n_bins / (log_edges[-1] - log_edges[0])) if log_uniform else np.float32(0)
    counts = np.zeros(n_bins + 2, dtype=np.int64)
    flat = data.showers
    for lo in range(0, flat.shape[0], chunk_size):
        block = flat[lo : lo + chunk_size]
        positive = block[block > 0]
        if positive.size == 0:
            continue
        if log_uniform:
            u = np.log10(positive)
            u -= log_lo
            u *= inv_step
            idx = np.clip(np.floor(u).astype(np.int64) + 1, 1, n_bins)
            idx[positive < edges32[0]] = 0
            idx[positive > edges32[-1]] = n_bins + 1
        else:
            idx = np.searchsorted(edges32, positive, side="right")
            idx[positive == edges32[-1]] = n_bins
        counts += np.bincount(idx, minlength=counts.size)
    return counts


# ------------------------------------------------------------------------------- high-level features
def high_level_feature_names(mesh: Mesh) -> list[str]:
    """Names of the columns of :func:`high_level_features`, e.g. ``log10_energy_layer_07``."""
    names = ["log10_e_inc", "log10_e_total", "e_ratio"]
    for key in PER_LAYER:
        stem = "log10_energy" if key == "energy_per_layer" else key
        names.extend(f"{stem}_layer_{layer:02d}" for layer in range(mesh.n_z))
    return names


def high_level_features(
    data: ShowerData,
    *,
    observables: Mapping[str, np.ndarray] | None = None,
    threshold_mev: float = 0.0,
) -> np.ndarray:
    """The CaloChallenge high-level feature vector per shower, shape (N, 3 + 8 n_z), float64.

    Columns (see :func:`high_level_feature_names`): log10 E_inc, log10 E_tot, E_tot/E_inc, log10 of each
    layer's energy (floored at :data:`CELL_ENERGY_MIN_MEV`, so empty layers sit at a finite value instead
    of CaloChallenge's -8), then per layer the centres of energy and widths in eta (x), phi (y) and r, in
    mm, and the sparsity.  Energies enter as logs because they span orders of magnitude; everything
    else is already O(mm).  E_tot/E_inc is added to CaloChallenge's list: it is their first histogram,
    and a classifier (or FPD) fed only log E_tot and log E_inc, each spread over three decades, misses a
    3 % energy-scale error that this ratio (a few % wide) shows at once.  Pass ``observables`` from
    :func:`compute_observables` to avoid a second pass.
    """
    obs = observables if observables is not None else compute_observables(data, threshold_mev=threshold_mev)
    cols = [
        np.log10(obs["e_inc"])[:, None],
        np.log10(np.maximum(obs["e_total"], CELL_ENERGY_MIN_MEV))[:, None],
        obs["e_ratio"][:, None],
    ]
    for key in PER_LAYER:
        values = obs[key]
        if key == "energy_per_layer":
            values = np.log10(np.maximum(values, CELL_ENERGY_MIN_MEV))
        cols.append(values)
    return np.concatenate(cols, axis=1)
