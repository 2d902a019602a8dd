"""CaloChallenge-exact histograms and classifier inputs: numbers that can sit next to a published table.

Our default separation powers use adaptive, reference-quantile bins sized to the sample (see
:mod:`mlfastsim.showers.validation.metrics`).  The CaloChallenge evaluation (``code/evaluate.py`` and
``code/evaluate_plotting_helper.py`` of CaloChallenge/homepage, datasets 2 and 3) bins every histogram on a
*fixed* grid instead, and only those numbers compare with the challenge's tables.  This module rebuilds
that binning (our code, written from the official definitions):

==================  ==============================================================  ====================
histogram           bins                                                            official hist mode
==================  ==============================================================  ====================
E_tot / E_inc       100 linear bins on [0.5, 1.5]                                    yes
E in layer l        39 log bins from the readout threshold to the reference's max   yes
EC eta, EC phi      100 linear bins on [-30, 30] mm                                 yes
width eta, phi      100 linear bins on [0, 30] mm                                   yes
EC r                100 linear bins on [0, 42] mm                                   helper only
width r             100 linear bins on [0, 20] mm                                   helper only
sparsity            20 linear bins on [0, 1]                                        helper only
voxel energy        49 log bins from the threshold to the reference's largest cell  yes
==================  ==============================================================  ====================

("helper only": the plotting helper defines these histograms, ``evaluate.py -m hist`` does not call
them.)  As there, entries outside the range are *dropped* (``np.histogram``), each histogram is normalised
to unit sum over the entries in range, and ``S = 1/2 sum (h1 - h2)^2 / (h1 + h2 + 1e-16)``.  The fraction of
each sample that fell outside the range is reported beside the value, because a candidate whose
E_tot/E_inc leaves [0.5, 1.5] is invisible to this number.  Cells are zeroed below the readout threshold
of 15.15 keV (0.5 keV / 0.033) first, as the official script does for datasets 2 and 3.

Coordinates.  The official XML handler puts alpha bin centres on [-pi, pi), our mesh on [0, 2 pi): the
same cell then has the opposite sign of x and y, so centres of energy are negated here to match the
official histograms bin for bin (widths and r are unaffected).

The official classifier inputs are built here as well (:func:`official_low_level_inputs`,
:func:`official_high_level_inputs`), with :data:`OFFICIAL_CLASSIFIER`, its network and training recipe;
the training loop itself is :func:`mlfastsim.showers.validation.classifier.train_classifier`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.validation.classifier import ClassifierConfig
from mlfastsim.showers.validation.metrics import separation_power_null
from mlfastsim.showers.validation.observables import CELL_ENERGY_MIN_MEV, PER_LAYER, layer_name

# The readout threshold of datasets 2 and 3 (0.5 keV visible / sampling fraction 0.033), in MeV.
CC_THRESHOLD_MEV = CELL_ENERGY_MIN_MEV

# Fixed linear ranges (lo, hi, number of edges) of the official helper for datasets 2 and 3.
LINEAR_BINNING: dict[str, tuple[float, float, int]] = {
    "e_ratio": (0.5, 1.5, 101),
    "ec_eta": (-30.0, 30.0, 101),
    "ec_phi": (-30.0, 30.0, 101),
    "width_eta": (0.0, 30.0, 101),
    "width_phi": (0.0, 30.0, 101),
    "ec_r": (0.0, 42.0, 101),
    "width_r": (0.0, 20.0, 101),
    "sparsity": (0.0, 1.0, 21),
}
# Log binning from the threshold to the reference's maximum: number of edges.
LOG_EDGES = {"energy_per_layer": 40, "cell_energy": 50}
# Histograms ``evaluate.py -m hist`` itself reports (the others are defined in its plotting helper only).
IN_OFFICIAL_HIST_MODE = {"e_ratio", "energy_per_layer", "ec_eta", "ec_phi", "width_eta", "width_phi",
                         "cell_energy"}
# The official axes are mirrored with respect to ours (see the module docstring).
_MIRRORED = {"ec_eta", "ec_phi"}

# The official classifier: 3 hidden layers of 2048 (an input layer and --cls_n_layer 2 more), LeakyReLU,
# no dropout, Adam at 2e-4, batch 1000, 50 epochs, the epoch with the best selection-set accuracy kept
# (stop at accuracy 1), isotonic calibration on the selection set, float64, inputs not standardised;
# 60/20/20 split of equal-sized samples (the official script fixes 60k/20k/20k for 100k showers).
OFFICIAL_CLASSIFIER = ClassifierConfig(
    hidden=2048, n_layers=3, dropout=0.0, lr=2e-4, batch_size=1000, max_epochs=50, patience=None,
    selection="accuracy", calibration="isotonic", dtype="float64", standardise=False,
    auc_from="calibrated",
)


def official_edges(key: str, reference_values: np.ndarray) -> np.ndarray | None:
    """The official bin edges of histogram ``key`` (a :data:`PER_LAYER` key, ``e_ratio`` or ``cell_energy``).

    Log-binned histograms run from the threshold to the reference's maximum; None when that maximum is
    not above the threshold (an empty reference layer: the official code cannot bin it either).
    """
    if key in LINEAR_BINNING:
        lo, hi, n = LINEAR_BINNING[key]
        return np.linspace(lo, hi, n)
    if key in LOG_EDGES:
        top = float(np.max(reference_values)) if np.size(reference_values) else 0.0
        if not top > CC_THRESHOLD_MEV:
            return None
        return np.logspace(np.log10(CC_THRESHOLD_MEV), np.log10(top), LOG_EDGES[key])
    raise KeyError(f"no CaloChallenge binning for {key!r}")


def official_separation_power(counts_reference: np.ndarray, counts_candidate: np.ndarray) -> float | None:
    """Separation power of two in-range count histograms as the official helper computes it.

    None when either histogram has no entry in range (the official density normalisation divides by 0).
    """
    c1 = np.asarray(counts_reference, dtype=np.float64)
    c2 = np.asarray(counts_candidate, dtype=np.float64)
    if not (c1.sum() > 0 and c2.sum() > 0):
        return None
    h1, h2 = c1 / c1.sum(), c2 / c2.sum()
    return float(0.5 * np.sum((h1 - h2) ** 2 / (h1 + h2 + 1e-16)))


def _entry(key: str, ref: np.ndarray, cand: np.ndarray, edges: np.ndarray | None) -> dict[str, Any]:
    """One histogram's separation power, floor and out-of-range fractions (``ref``/``cand`` 1-D values)."""
    if edges is None:
        return {"separation_power": None, "kind": "calochallenge", "official_hist_mode": key in IN_OFFICIAL_HIST_MODE,
                "unavailable": "the reference never exceeds the readout threshold here: no official binning"}
    c_ref = np.histogram(ref, edges)[0]
    c_cand = np.histogram(cand, edges)[0]
    return _counts_entry(key, c_ref, c_cand, edges, ref.size, cand.size)


def _counts_entry(key: str, c_ref: np.ndarray, c_cand: np.ndarray, edges: np.ndarray, n_ref: int,
                  n_cand: int) -> dict[str, Any]:
    sp = official_separation_power(c_ref, c_cand)
    in_ref, in_cand = int(c_ref.sum()), int(c_cand.sum())
    used = int(np.count_nonzero((c_ref + c_cand) > 0))
    floor, floor_sd = separation_power_null(max(used, 2), in_ref, in_cand)
    out: dict[str, Any] = {
        "separation_power": sp,
        "separation_power_floor": floor,
        "separation_power_floor_sd": floor_sd,
        "n_bins": int(edges.size - 1),
        "range": [float(edges[0]), float(edges[-1])],
        "outside_reference": 1.0 - in_ref / n_ref if n_ref else None,
        "outside_candidate": 1.0 - in_cand / n_cand if n_cand else None,
        "official_hist_mode": key in IN_OFFICIAL_HIST_MODE,
        "kind": "calochallenge",
    }
    if sp is None:
        out["unavailable"] = "no entries inside the official range in one of the samples"
    return out


def histogram_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Exactly ``np.histogram(values, edges)[0]``, by a binary search of each value in the edges.

    Bin i holds edges[i] <= x < edges[i + 1], the last bin includes its right edge, values outside are
    dropped: numpy's rule.  ``np.histogram`` sorts the values for non-uniform edges; searching 50 edges is
    several times faster on the 10^7 cells of a sample.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[(v >= edges[0]) & (v <= edges[-1])]
    idx = np.searchsorted(edges, v, side="right") - 1
    idx[v == edges[-1]] = edges.size - 2
    return np.bincount(idx, minlength=edges.size - 1)[: edges.size - 1]


def official_cell_counts(data: ShowerData, edges: np.ndarray, *, chunk_size: int = 1024) -> np.ndarray:
    """``np.histogram`` counts of every cell value over ``edges`` (zeros and out-of-range cells dropped).

    Chunked over showers so the 10^8 cells of a large sample are never copied at once; the counts equal
    one ``np.histogram`` of the flattened array.
    """
    counts = np.zeros(edges.size - 1, dtype=np.int64)
    for lo in range(0, len(data), chunk_size):
        block = data.showers[lo : lo + chunk_size]
        counts += histogram_counts(block[(block >= edges[0]) & (block <= edges[-1])], edges)
    return counts


def compare_calochallenge(
    obs_ref: Mapping[str, np.ndarray],
    obs_cand: Mapping[str, np.ndarray],
    reference: ShowerData,
    candidate: ShowerData,
) -> dict[str, dict[str, Any]]:
    """Every CaloChallenge histogram's separation power, binned as the official code bins it.

    ``obs_*`` are :func:`~mlfastsim.showers.validation.observables.compute_observables` of samples
    already cut at :data:`CC_THRESHOLD_MEV`; the names are those of the adaptive metrics (``e_ratio``,
    ``energy_layer_07``, ``ec_eta_layer_07``, ..., ``cell_energy``).
    """
    out: dict[str, dict[str, Any]] = {}
    ratio_ref, ratio_cand = obs_ref["e_ratio"], obs_cand["e_ratio"]
    out["e_ratio"] = _entry("e_ratio", ratio_ref, ratio_cand, official_edges("e_ratio", ratio_ref))
    for key in PER_LAYER:
        sign = -1.0 if key in _MIRRORED else 1.0
        for layer in range(obs_ref[key].shape[1]):
            ref = sign * obs_ref[key][:, layer]
            cand = sign * obs_cand[key][:, layer]
            out[layer_name(key, layer)] = _entry(key, ref, cand, official_edges(key, ref))
    top = float(reference.showers.max()) if reference.showers.size else 0.0
    edges = official_edges("cell_energy", np.array([top]))
    if edges is None:
        out["cell_energy"] = _entry("cell_energy", np.zeros(0), np.zeros(0), None)
    else:
        # fractions outside the range are of the cells with energy (zero cells are never in range)
        n_cells_ref, n_cells_cand = int(np.count_nonzero(reference.showers)), int(np.count_nonzero(candidate.showers))
        out["cell_energy"] = _counts_entry("cell_energy", official_cell_counts(reference, edges),
                                           official_cell_counts(candidate, edges), edges, n_cells_ref, n_cells_cand)
        # cells of one shower are correlated: the chi-square floor over cells is only a lower bound
        out["cell_energy"]["separation_power_floor_sd"] = None
    return out


# ------------------------------------------------------------------------------- classifier inputs
def official_low_level_inputs(data: ShowerData) -> np.ndarray:
    """(N, 1 + n_voxels) float64: log10 E_inc, then every voxel divided by E_inc (the official cls-low)."""
    e_inc = data.energies.astype(np.float64)[:, None]
    x = np.empty((len(data), data.showers.shape[1] + 1), dtype=np.float64)
    x[:, 0] = np.log10(e_inc[:, 0])
    np.divide(data.showers, e_inc, out=x[:, 1:])
    return x


def official_high_level_inputs(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, 2 + 8 n_z) float64: the official cls-high vector, in its order and scales.

    log10 E_inc, log10(E_layer + 1e-8), EC eta / 100, EC phi / 100, width eta / 100, width phi / 100 (mm),
    log10(E_tot + 1e-8), sparsity, EC r / 100, width r / 100.
    """
    cols = [
        np.log10(obs["e_inc"])[:, None],
        np.log10(obs["energy_per_layer"] + 1e-8),
        -obs["ec_eta"] / 1e2,
        -obs["ec_phi"] / 1e2,
        obs["width_eta"] / 1e2,
        obs["width_phi"] / 1e2,
        np.log10(obs["e_total"] + 1e-8)[:, None],
        obs["sparsity"],
        obs["ec_r"] / 1e2,
        obs["width_r"] / 1e2,
    ]
    return np.concatenate(cols, axis=1).astype(np.float64)
