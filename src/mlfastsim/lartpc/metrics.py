"""Deghosting and charge metrics, and their figures.

* real-voxel efficiency (sensitivity) = kept real / all real; ghost rejection = removed ghosts / all ghosts;
  purity = real among kept.  The trivial baseline keeps everything: efficiency 1, rejection 0, purity =
  the real fraction.
* rejection at 95 % efficiency: the cut that keeps 95 % of the real voxels, and the ghosts it removes.
* the sensitivity-purity curve over all cuts (what a user picks a working point from).
* charge resolution of real voxels: the spread of (predicted - true) / true (half the 16-84 % interval,
  robust to the tails), and its median (the bias); the same per bin of true charge
  (``CHARGE_BIN_EDGES_MEV``), and the closure of the summed charge (sum predicted / sum true - 1).
* charge per wire plane: the real voxels' charges summed per (event, tick, wire) of each plane, predicted
  against true -- what that plane's wire measured, so a charge prediction that "adds up" closes on every
  plane.  Downsampled voxels are assigned to the wire under their centre (an approximation at coarse
  downsampling, the same for prediction and truth).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlfastsim.core.errors import ConfigError
from mlfastsim.core.io import atomic_path
from mlfastsim.lartpc.geometry import N_PLANES, TPCGeometry

EFFICIENCY_TARGET = 0.95


def rates(score: np.ndarray, real: np.ndarray, cut: float) -> dict[str, float]:
    keep = score >= cut
    n_real, n_ghost = int(real.sum()), int((~real).sum())
    kept_real = int((keep & real).sum())
    return {
        "efficiency": kept_real / n_real if n_real else float("nan"),
        "rejection": int((~keep & ~real).sum()) / n_ghost if n_ghost else float("nan"),
        "purity": kept_real / int(keep.sum()) if keep.any() else float("nan"),
    }


def rejection_at_efficiency(score: np.ndarray, real: np.ndarray, target: float = EFFICIENCY_TARGET) -> float:
    """Ghost rejection of the loosest cut that still keeps ``target`` of the real voxels."""
    if not real.any() or real.all():
        return float("nan")
    rs = np.sort(score[real])
    cut = rs[int(np.floor((1.0 - target) * len(rs)))]  # at least ``target`` of the real scores are >= cut
    return float((score[~real] < cut).mean())


def sensitivity_purity_curve(score: np.ndarray, real: np.ndarray, n_points: int = 101) -> dict[str, np.ndarray]:
    """Efficiency, purity and rejection for cuts at the score quantiles (vectorised with cumulative sums)."""
    order = np.argsort(-score, kind="stable")
    r = real[order]
    tp = np.cumsum(r)
    fp = np.cumsum(~r)
    n_real, n_ghost = max(int(r.sum()), 1), max(int((~r).sum()), 1)
    pick = np.unique(np.linspace(0, len(score) - 1, n_points).astype(np.int64)) if len(score) else np.zeros(0, int)
    kept = pick + 1
    return {"cut": score[order][pick], "efficiency": tp[pick] / n_real, "purity": tp[pick] / kept,
            "rejection": 1.0 - fp[pick] / n_ghost}


def auc(score: np.ndarray, real: np.ndarray) -> float:
    """Probability that a real voxel scores above a ghost (Mann-Whitney, ties counted half)."""
    n_real, n_ghost = int(real.sum()), int((~real).sum())
    if not n_real or not n_ghost:
        return float("nan")
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    return float((ranks[real].sum() - n_real * (n_real + 1) / 2.0) / (n_real * n_ghost))


def charge_resolution(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(resolution, bias) of (pred - true) / true over real voxels."""
    if len(true) == 0:
        return float("nan"), float("nan")
    rel = (pred - true) / true
    lo, med, hi = np.percentile(rel, [15.865, 50.0, 84.135])
    return float((hi - lo) / 2.0), float(med)


#: bin edges of true voxel charge (MeV) for the per-bin charge bias and resolution (plus under/overflow bins)
CHARGE_BIN_EDGES_MEV = (0.1, 0.3, 1.0, 3.0)


def _bin_label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}-inf"


def charge_by_bin(pred: np.ndarray, true: np.ndarray, edges: tuple[float, ...] = CHARGE_BIN_EDGES_MEV
                  ) -> dict[str, float]:
    """Bias and resolution of (pred - true) / true in bins of true charge, and the summed-charge closure.

    Keys ``charge_bias_q{lo}-{hi}``, ``charge_resolution_q{lo}-{hi}``, ``charge_fraction_q{lo}-{hi}``
    (share of the real voxels in the bin) and ``charge_sum_bias``; empty bins give NaN.
    """
    out: dict[str, float] = {}
    bounds = [0.0, *edges, np.inf]
    for lo, hi in itertools.pairwise(bounds):
        sel = (true > lo) & (true <= hi) if lo > 0 else true <= hi
        res, bias = charge_resolution(pred[sel], true[sel])
        key = _bin_label(lo, hi)
        out[f"charge_bias_q{key}"], out[f"charge_resolution_q{key}"] = bias, res
        out[f"charge_fraction_q{key}"] = float(sel.mean()) if len(true) else float("nan")
    out["charge_sum_bias"] = float(pred.sum() / true.sum() - 1.0) if true.sum() > 0 else float("nan")
    return out


def charge_per_plane(coords: np.ndarray, event_index: np.ndarray, pred: np.ndarray, true: np.ndarray,
                     geometry: TPCGeometry, downsample: tuple[int, int, int] | list[int]) -> dict[str, float]:
    """Bias and resolution of the per-(event, tick, wire) charge sums on each wire plane (real voxels).

    ``coords`` are the (downsampled) ``[tick, y, z]`` voxel indices inside one TPC.  Keys
    ``charge_bias_plane{p}`` and ``charge_resolution_plane{p}`` for p = 0, 1, 2 (u, v, w).
    """
    out: dict[str, float] = {}
    ds = np.asarray(downsample, dtype=np.float64)
    y_mm = (coords[:, 1] * ds[1] + ds[1] / 2.0) * geometry.voxel_mm
    z_mm = (coords[:, 2] * ds[2] + ds[2] / 2.0) * geometry.voxel_mm
    n_ticks = int(coords[:, 0].max()) + 1 if len(coords) else 1
    for p in range(N_PLANES):
        wire = geometry.wire_index(p, y_mm, z_mm).astype(np.int64)
        key = (event_index.astype(np.int64) * n_ticks + coords[:, 0]) * geometry.n_wires(p) + wire
        _, inv = np.unique(key, return_inverse=True)
        qp, qt = np.bincount(inv, weights=pred), np.bincount(inv, weights=true)
        res, bias = charge_resolution(qp[qt > 0], qt[qt > 0])
        out[f"charge_bias_plane{p}"], out[f"charge_resolution_plane{p}"] = bias, res
    return out


def summarise(score: np.ndarray, true_charge: np.ndarray, threshold: float,
              pred_charge: np.ndarray | None = None, cut: float = 0.5) -> dict[str, float]:
    """Every per-epoch number: working point at ``cut``, rejection at 95 % efficiency, AUC, charge."""
    real = true_charge > threshold
    out = {"n_voxels": float(len(real)), "real_fraction": float(real.mean()) if len(real) else float("nan"),
           **rates(score, real, cut), "rejection_at_95": rejection_at_efficiency(score, real), "auc": auc(score, real),
           "baseline_efficiency": 1.0, "baseline_rejection": 0.0,
           "baseline_purity": float(real.mean()) if len(real) else float("nan")}
    if pred_charge is not None:
        out["charge_resolution"], out["charge_bias"] = charge_resolution(pred_charge[real], true_charge[real])
        out.update(charge_by_bin(pred_charge[real], true_charge[real]))
    return out


METRICS: dict[str, Callable[[dict[str, float]], float]] = {
    name: (lambda s, _n=name: s[_n])
    for name in ("rejection_at_95", "efficiency", "rejection", "purity", "auc", "charge_resolution", "charge_bias")
}


def check_metric(name: str, model_type: str) -> None:
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}", field="metric", fix=f"use one of {', '.join(METRICS)}")
    if name.startswith("charge") and model_type != "charge":
        raise ConfigError(f"metric {name!r} needs a charge model", field="metric",
                          fix="use rejection_at_95, efficiency, rejection, purity or auc for a binary model")


def plot_summary(rows: list[dict[str, float]], curve: dict[str, np.ndarray] | None, path: Path,
                 charge: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Per-epoch metrics, the latest sensitivity-purity curve and (charge nets) the charge residuals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n_panels = 3 if charge is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4))
    ep = [r["epoch"] for r in rows]
    ax = axes[0]
    for key, style in (("efficiency", "o-"), ("rejection", "s-"), ("purity", "^-"), ("rejection_at_95", "d-")):
        ax.plot(ep, [r.get(key, np.nan) for r in rows], style, label=key)
    ax.axhline(0.0, color="grey", ls=":", label="keep-all rejection")
    ax.set(xlabel="epoch", ylabel="fraction", ylim=(-0.02, 1.02), title="deghosting per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.25, 1.75 ticks
    ax.legend(fontsize=8)
    ax = axes[1]
    if curve is not None and len(curve["efficiency"]):
        ax.plot(curve["efficiency"], curve["purity"], "-", label="model")
        base = rows[-1].get("baseline_purity", np.nan) if rows else np.nan
        ax.plot([1.0], [base], "k*", ms=10, label="keep everything")
        ax.axvline(EFFICIENCY_TARGET, color="grey", ls=":")
    ax.set(xlabel="real-voxel efficiency (sensitivity)", ylabel="purity", title="sensitivity-purity",
           xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=8)
    if charge is not None:
        pred, true = charge
        ax = axes[2]
        rel = (pred - true) / np.maximum(true, 1e-12)
        ax.hist(np.clip(rel, -2, 2), bins=60)
        res = rows[-1].get("charge_resolution", np.nan) if rows else np.nan
        ax.set(xlabel="(predicted - true) / true charge, real voxels", ylabel="voxels",
               title=f"charge resolution {res:.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
