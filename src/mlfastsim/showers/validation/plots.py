"""Validation figures: the plots a calorimeter physicist looks at before trusting a fast simulation.

Every function returns a :class:`matplotlib.figure.Figure` built with the object-oriented API (no pyplot
state, so nothing leaks between calls or threads and no display is needed); :func:`save_figure` writes
it atomically as PNG through the Agg canvas.  Conventions: reference filled grey, candidate as a red
line; ratio panels show candidate / reference with the combined statistical uncertainty as a band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from mlfastsim.core.io import atomic_path
from mlfastsim.showers.geometry import Mesh
from mlfastsim.showers.validation.observables import OBSERVABLE_INFO, PER_LAYER, layer_name, mean_profile

REF_COLOUR = "0.45"
CAND_COLOUR = "tab:red"
DPI = 110


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically (tmp + rename) and return the path."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _axis_label(name: str) -> str:
    info = OBSERVABLE_INFO.get(name)
    if info is None:
        return name
    return f"{info.label} [{info.unit}]" if info.unit else info.label


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full_like(num, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _ratio_panel(
    ax: Any,
    x: np.ndarray,
    ref: np.ndarray,
    ref_err: np.ndarray,
    cand: np.ndarray,
    cand_err: np.ndarray,
    *,
    step: bool,
) -> None:
    ratio = _safe_ratio(cand, ref)
    rel = np.sqrt(
        _safe_ratio(ref_err, ref) ** 2 + _safe_ratio(cand_err, np.where(cand > 0, cand, np.nan)) ** 2
    )
    band = np.nan_to_num(ratio * rel, nan=0.0)
    where = "mid" if step else None
    ax.fill_between(
        x,
        np.nan_to_num(ratio - band, nan=1.0),
        np.nan_to_num(ratio + band, nan=1.0),
        color=CAND_COLOUR,
        alpha=0.25,
        step=where,
        linewidth=0,
    )
    if step:
        ax.step(x, ratio, where="mid", color=CAND_COLOUR, linewidth=1.2)
    else:
        ax.plot(x, ratio, color=CAND_COLOUR, linewidth=1.2)
    ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
    finite = ratio[np.isfinite(ratio)]
    spread = float(np.nanmax(np.abs(finite - 1.0))) if finite.size else 0.1
    half = min(max(1.15 * spread, 0.05), 1.0)
    lo, hi = 1.0 - half, 1.0 + half
    ax.set_ylim(lo, hi)
    # ratios beyond the panel (it stops at 0..2) are marked at its edge, so nothing off scale goes unseen
    xs = np.asarray(x, dtype=np.float64)
    above = np.isfinite(ratio) & (ratio > hi)
    below = np.isfinite(ratio) & (ratio < lo)
    if above.any():
        ax.plot(xs[above], np.full(int(above.sum()), hi - 0.04 * half), "^", color=CAND_COLOUR, markersize=4,
                clip_on=False, label="off scale")
    if below.any():
        ax.plot(xs[below], np.full(int(below.sum()), lo + 0.04 * half), "v", color=CAND_COLOUR, markersize=4,
                clip_on=False)
    ax.set_ylabel("cand./ref.", fontsize=8)
    ax.grid(alpha=0.3)


def _hist_pair(
    ax: Any, ax_ratio: Any, ref: np.ndarray, cand: np.ndarray, bins: np.ndarray, labels: Sequence[str]
) -> None:
    """Normalised histograms (density) of both samples with Poisson errors and a ratio panel."""
    widths = np.diff(bins)
    centres = 0.5 * (bins[1:] + bins[:-1])
    h_ref, _ = np.histogram(np.clip(ref, bins[0], bins[-1]), bins=bins)
    h_cand, _ = np.histogram(np.clip(cand, bins[0], bins[-1]), bins=bins)
    n_ref, n_cand = max(h_ref.sum(), 1), max(h_cand.sum(), 1)
    d_ref, d_cand = h_ref / (n_ref * widths), h_cand / (n_cand * widths)
    e_ref, e_cand = np.sqrt(h_ref) / (n_ref * widths), np.sqrt(h_cand) / (n_cand * widths)
    ax.stairs(d_ref, bins, fill=True, color=REF_COLOUR, alpha=0.35, label=labels[0])
    ax.stairs(d_cand, bins, color=CAND_COLOUR, linewidth=1.4, label=labels[1])
    ax.errorbar(centres, d_cand, yerr=e_cand, fmt="none", ecolor=CAND_COLOUR, elinewidth=0.8)
    ax.set_ylabel("normalised entries")
    if ax_ratio is not None:
        _ratio_panel(ax_ratio, centres, d_ref, e_ref, d_cand, e_cand, step=True)


def _plot_bins(ref: np.ndarray, cand: np.ndarray, *, n: int = 40, log: bool = False) -> np.ndarray:
    """Display bins from the reference's central 99 % (both samples clipped into them)."""
    ref = ref[np.isfinite(ref)]
    if log:
        positive = ref[ref > 0]
        if positive.size == 0:
            return np.logspace(-3, 0, n + 1)
        lo, hi = np.quantile(positive, [0.005, 0.995])
        hi = max(hi, lo * 10.0)
        return np.logspace(np.log10(lo), np.log10(hi), n + 1)
    lo, hi = np.quantile(ref, [0.005, 0.995]) if ref.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


def _two_row_axes(fig: Figure, n_cols: int, n_rows: int = 1) -> list[tuple[Any, Any]]:
    grid = fig.add_gridspec(2 * n_rows, n_cols, height_ratios=[3, 1] * n_rows, hspace=0.08)
    pairs = []
    for row in range(n_rows):
        for col in range(n_cols):
            ax = fig.add_subplot(grid[2 * row, col])
            axr = fig.add_subplot(grid[2 * row + 1, col], sharex=ax)
            ax.tick_params(labelbottom=False)
            pairs.append((ax, axr))
    return pairs


# -------------------------------------------------------------------------------------- figures
def profiles_figure(
    obs_ref: Mapping[str, np.ndarray],
    obs_cand: Mapping[str, np.ndarray],
    mesh: Mesh,
    labels: Sequence[str],
) -> Figure:
    """Mean longitudinal (per layer) and lateral (per radial bin) profiles with ratio panels."""
    fig = Figure(figsize=(11, 5.2), layout="constrained")
    (ax_l, axr_l), (ax_r, axr_r) = _two_row_axes(fig, 2)
    for ax, axr, key, x, xlabel in (
        (ax_l, axr_l, "energy_per_layer", mesh.z_centres, "depth z [mm]"),
        (ax_r, axr_r, "energy_per_r_bin", mesh.r_centres, "radius r [mm]"),
    ):
        m_ref, e_ref = mean_profile(obs_ref[key])
        m_cand, e_cand = mean_profile(obs_cand[key])
        ax.fill_between(x, m_ref - e_ref, m_ref + e_ref, color=REF_COLOUR, alpha=0.35, label=labels[0])
        ax.plot(x, m_ref, color=REF_COLOUR, linewidth=1.0)
        ax.errorbar(
            x,
            m_cand,
            yerr=e_cand,
            color=CAND_COLOUR,
            marker="o",
            markersize=2.5,
            linewidth=1.0,
            label=labels[1],
        )
        ax.set_yscale("log")
        ax.set_ylabel("mean energy per shower [MeV]")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        _ratio_panel(axr, x, m_ref, e_ref, m_cand, e_cand, step=False)
        axr.set_xlabel(xlabel)
    ax_l.set_title("longitudinal profile")
    ax_r.set_title("lateral profile")
    return fig


def moments_figure(
    obs_ref: Mapping[str, np.ndarray], obs_cand: Mapping[str, np.ndarray], labels: Sequence[str]
) -> Figure:
    """Distributions of the Par04 first and second moments in z and r."""
    keys = ("first_moment_z", "second_moment_z", "first_moment_r", "second_moment_r")
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    for (ax, axr), key in zip(_two_row_axes(fig, 2, 2), keys, strict=True):
        bins = _plot_bins(obs_ref[key], obs_cand[key])
        _hist_pair(ax, axr, obs_ref[key], obs_cand[key], bins, labels)
        axr.set_xlabel(_axis_label(key))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def response_figure(response_ref: Mapping[str, Any], response_cand: Mapping[str, Any], labels: Sequence[str]
                    ) -> Figure:
    """Mean response E_tot/E_inc and relative resolution vs incident energy, with a/sqrt(E) (+) b fits."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax_m, ax_r = fig.subplots(1, 2)
    for resp, label, colour, marker in ((response_ref, labels[0], REF_COLOUR, "o"),
                                        (response_cand, labels[1], CAND_COLOUR, "s")):
        e = np.asarray(resp["e_inc_mev"]) / 1000.0
        if e.size == 0:
            continue
        ax_m.plot(e, resp["response"], marker=marker, color=colour, label=label)
        ax_r.errorbar(e, resp["resolution"], yerr=resp["resolution_error"], marker=marker, color=colour,
                      label=label, capsize=2, linestyle="none")
        fit = resolution_fit(e, np.asarray(resp["resolution"]), np.asarray(resp["resolution_error"]))
        if fit is not None:
            grid = np.geomspace(e.min(), e.max(), 50)
            ax_r.plot(grid, np.hypot(fit[0] / np.sqrt(grid), fit[1]), color=colour, linewidth=0.8,
                      label=f"{label}: {100 * fit[0]:.0f}%/√E ⊕ {100 * fit[1]:.1f}%")
    for ax, ylabel in ((ax_m, "mean E_tot / E_inc"), (ax_r, "σ(E_tot) / <E_tot>")):
        ax.set_xscale("log")
        ax.set_xlabel("incident energy [GeV]")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return fig


def resolution_fit(e_gev: np.ndarray, resolution: np.ndarray, error: np.ndarray) -> tuple[float, float] | None:
    """Weighted least squares of (sigma/E)^2 = a^2/E + b^2 (linear in a^2, b^2); None if under-determined."""
    ok = np.isfinite(resolution) & np.isfinite(error) & (error > 0)
    if ok.sum() < 2 or np.unique(e_gev[ok]).size < 2:
        return None
    y = resolution[ok] ** 2
    w = 1.0 / (2.0 * resolution[ok] * error[ok]) ** 2
    design = np.stack([1.0 / e_gev[ok], np.ones(ok.sum())], axis=1)
    coef, *_ = np.linalg.lstsq(design * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)
    a2, b2 = max(float(coef[0]), 0.0), max(float(coef[1]), 0.0)
    return float(np.sqrt(a2)), float(np.sqrt(b2))


def scalar_figure(
    key: str,
    obs_ref: Mapping[str, np.ndarray],
    obs_cand: Mapping[str, np.ndarray],
    labels: Sequence[str],
    *,
    log: bool = False,
) -> Figure:
    """One per-shower observable (e.g. E_tot / E_inc) with its ratio panel."""
    fig = Figure(figsize=(6, 5.2), layout="constrained")
    ((ax, axr),) = _two_row_axes(fig, 1)
    bins = _plot_bins(obs_ref[key], obs_cand[key], n=50, log=log)
    _hist_pair(ax, axr, obs_ref[key], obs_cand[key], bins, labels)
    if log:
        ax.set_xscale("log")
    axr.set_xlabel(_axis_label(key))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def layer_energy_figure(
    obs_ref: Mapping[str, np.ndarray],
    obs_cand: Mapping[str, np.ndarray],
    labels: Sequence[str],
    layers: Sequence[int],
) -> Figure:
    """Energy deposited in a few chosen layers (log x, as CaloChallenge)."""
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    pairs = _two_row_axes(fig, 2, (len(layers) + 1) // 2)
    for (ax, axr), layer in zip(pairs, layers, strict=False):
        ref = obs_ref["energy_per_layer"][:, layer]
        cand = obs_cand["energy_per_layer"][:, layer]
        bins = _plot_bins(ref, cand, n=40, log=True)
        _hist_pair(ax, axr, ref, cand, bins, labels)
        ax.set_xscale("log")
        ax.set_title(f"layer {layer}", fontsize=9)
        axr.set_xlabel("energy in layer [MeV]")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax, axr in pairs[len(layers) :]:
        ax.set_visible(False)
        axr.set_visible(False)
    return fig


def cell_spectrum_figure(
    edges: np.ndarray, counts_ref: np.ndarray, counts_cand: np.ndarray, labels: Sequence[str]
) -> Figure:
    """Cell-energy spectrum (cells above the readout threshold), log-log, with ratio panel.

    ``counts_*`` include the underflow and overflow bins (as from ``cell_energy_histogram``); only the
    inner bins are drawn, normalised to the number of cells in them.
    """
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ((ax, axr),) = _two_row_axes(fig, 1)
    widths = np.diff(edges)
    centres = np.sqrt(edges[1:] * edges[:-1])
    inner_ref, inner_cand = counts_ref[1:-1].astype(float), counts_cand[1:-1].astype(float)
    n_ref, n_cand = max(inner_ref.sum(), 1.0), max(inner_cand.sum(), 1.0)
    d_ref, d_cand = inner_ref / (n_ref * widths), inner_cand / (n_cand * widths)
    e_ref, e_cand = np.sqrt(inner_ref) / (n_ref * widths), np.sqrt(inner_cand) / (n_cand * widths)
    ax.stairs(d_ref, edges, fill=True, color=REF_COLOUR, alpha=0.35, label=labels[0])
    ax.stairs(d_cand, edges, color=CAND_COLOUR, linewidth=1.4, label=labels[1])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("normalised cells / MeV")
    ax.set_title("cell-energy spectrum")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _ratio_panel(axr, centres, d_ref, e_ref, d_cand, e_cand, step=True)
    axr.set_xlabel("cell energy [MeV]")
    return fig


def separation_per_layer_figure(observables: Mapping[str, Mapping[str, Any]], n_layers: int) -> Figure:
    """Separation power of every per-layer CaloChallenge feature against the layer index.

    The dashed line is the statistical floor: what two samples of the same distribution would give.
    """
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    layers = np.arange(n_layers)
    floors = []
    for key in PER_LAYER:
        vals = []
        for layer in layers:
            entry = observables.get(layer_name(key, layer))
            vals.append(np.nan if entry is None else entry["separation_power"])
            if entry is not None and "separation_power_floor" in entry:
                floors.append(entry["separation_power_floor"])
        ax.plot(layers, vals, marker="o", markersize=2.5, linewidth=1.0, label=OBSERVABLE_INFO[key].label)
    if floors:
        ax.axhline(
            float(np.median(floors)), color="k", linestyle="--", linewidth=0.8, label="statistical floor"
        )
    ax.axhline(0.01, color="tab:green", linestyle=":", linewidth=1.0, label="pass limit")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("separation power")
    ax.set_title("separation power of the per-layer features")
    ax.legend(fontsize=7, ncol=4)
    ax.grid(alpha=0.3, which="both")
    return fig


def shower_3d_figure(
    shower_ref: np.ndarray,
    shower_cand: np.ndarray,
    mesh: Mesh,
    labels: Sequence[str],
    titles: Sequence[str],
) -> Figure:
    """One shower per sample in 3D: voxel centres (in x, y, z) sized and coloured by energy."""
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    cells = mesh.layer_cells()
    n_z, n_cells = mesh.shape[0], cells.x.size
    xs, ys = np.tile(cells.x, n_z), np.tile(cells.y, n_z)
    zs = np.repeat(mesh.z_centres, n_cells)
    both = np.concatenate([shower_ref.ravel(), shower_cand.ravel()])
    positive = both[both > 0]
    vmax = float(positive.max()) if positive.size else 1.0
    vmin = max(vmax * 1e-5, float(positive.min()) if positive.size else 1e-6)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    scatter = None
    for i, (shower, label, title) in enumerate(zip((shower_ref, shower_cand), labels, titles, strict=True)):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        e = np.asarray(shower, dtype=np.float64).ravel()
        hit = e > 0
        sizes = 2.0 + 60.0 * np.sqrt(e[hit] / vmax)
        scatter = ax.scatter(
            zs[hit], xs[hit], ys[hit], s=sizes, c=e[hit], cmap="viridis", norm=norm, alpha=0.6, linewidths=0
        )
        ax.set_xlim(0.0, mesh.length)
        ax.set_ylim(-mesh.radius, mesh.radius)
        ax.set_zlim(-mesh.radius, mesh.radius)
        ax.set_xlabel("z [mm]")
        ax.set_ylabel("x [mm]")
        ax.set_zlabel("y [mm]")
        ax.set_title(f"{label}: {title}", fontsize=9)
        ax.view_init(elev=20, azim=-60)
    if scatter is not None:
        fig.colorbar(scatter, ax=fig.axes, shrink=0.7, label="cell energy [MeV]")
    return fig


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> Figure:
    """ROC curves of the classifier tests; ``curves`` maps a name to (fpr, tpr, auc)."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, linewidth=1.4, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="k", linestyle="--", linewidth=0.8, label="indistinguishable")
    ax.set_xlabel("false-positive rate (candidate called reference)")
    ax.set_ylabel("true-positive rate")
    ax.set_title("classifier test")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def pick_layers(mean_layer_energy: np.ndarray, n: int = 4) -> list[int]:
    """Layers worth showing: before, at and after the shower maximum, and in the tail."""
    n_z = mean_layer_energy.size
    peak = int(np.argmax(mean_layer_energy))
    picks = [
        max(peak // 3, 0),
        peak,
        min(peak + max(n_z // 8, 1), n_z - 1),
        min(peak + max(n_z // 3, 2), n_z - 1),
    ]
    out: list[int] = []
    for p in picks:
        if p not in out:
            out.append(p)
    return out[:n]
