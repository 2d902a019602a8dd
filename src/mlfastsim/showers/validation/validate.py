"""``showers validate``: compare a candidate shower sample with a reference, end to end.

:func:`run_validation` is what the CLI calls: it checks that both samples share a mesh, computes the
observables (Par04 and CaloChallenge), the distances between their distributions (separation power,
Wasserstein-1, FPD, KPD), optionally the classifier tests, draws the figures and writes
``metrics.json``, the PNGs and a self-contained ``report.html`` into the output directory.
:func:`summary_table` turns the returned metrics into the table the CLI prints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from mlfastsim.core.errors import DataError
from mlfastsim.core.io import atomic_write_json, ensure_writable_dir
from mlfastsim.core.progress import progress_bar
from mlfastsim.core.tracking import Tracker
from mlfastsim.showers.io.formats import ShowerData, same_mesh
from mlfastsim.showers.validation import plots
from mlfastsim.showers.validation.classifier import ClassifierConfig, low_level_inputs, train_classifier
from mlfastsim.showers.validation.metrics import (
    compare_histograms,
    compare_profiles,
    compare_samples,
    default_n_bins,
    fpd,
    grade,
    kpd,
)
from mlfastsim.showers.validation.observables import (
    PER_LAYER,
    SCALARS,
    apply_threshold,
    cell_energy_edges,
    cell_energy_histogram,
    compute_observables,
    empty_showers,
    energy_response,
    high_level_features,
    layer_name,
    layer_prefix,
    raise_if_empty,
)

logger = logging.getLogger(__name__)

_GRADE_STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "n/a": "dim"}


def _describe(data: ShowerData, label: str) -> str:
    source = data.meta.get("source", label)
    return f"{source}: mesh {data.mesh.describe()}, {data.showers.shape[1]} voxels"


def check_same_mesh(reference: ShowerData, candidate: ShowerData, labels: tuple[str, str]) -> None:
    """Raise a :class:`DataError` naming both geometries unless the samples are on the same mesh shape.

    Same shape but different cell sizes is allowed with a warning: the comparison then uses the
    reference mesh for positions (a file written without a geometry block gets a preset's sizes).
    """
    ref_mesh, cand_mesh = reference.mesh, candidate.mesh
    if (ref_mesh.kind != cand_mesh.kind or ref_mesh.shape != cand_mesh.shape
            or reference.showers.shape[1] != candidate.showers.shape[1]):
        raise DataError(
            "reference and candidate are on different meshes ("
            + _describe(reference, labels[0])
            + "; "
            + _describe(candidate, labels[1])
            + ")",
            file=candidate.meta.get("source"),
            field="geometry",
            fix="generate the candidate on the reference mesh, or pass the common binning with --binning",
        )
    if not same_mesh(ref_mesh, cand_mesh):
        logger.warning(
            "meshes have the same shape but different cell sizes (%s vs %s); using the reference mesh",
            ref_mesh.to_dict(),
            cand_mesh.to_dict(),
        )


def _flat_numbers(d: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in d.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            out.update(_flat_numbers(value, name))
        elif isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool):
            if np.isfinite(value):
                out[name] = float(value)
    return out


@contextmanager
def _stage(timings: dict[str, float], name: str, bar: Any) -> Iterator[None]:
    start = time.perf_counter()
    bar.update(description=f"validate: {name}")
    yield
    timings[name] = round(time.perf_counter() - start, 3)
    bar.advance(1)


def compare_all(
    obs_ref: Mapping[str, np.ndarray],
    obs_cand: Mapping[str, np.ndarray],
    reference: ShowerData,
    candidate: ShowerData,
    *,
    cell_bins: int = 50,
    cell_threshold_mev: float | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Separation power and Wasserstein-1 of every observable; also returns the cell-spectrum histograms."""
    mesh = reference.mesh
    n_ref, n_cand = len(obs_ref["e_total"]), len(obs_cand["e_total"])
    n_bins = default_n_bins(n_ref, n_cand)
    out: dict[str, dict[str, Any]] = {}
    for key in SCALARS:
        out[key] = compare_samples(obs_ref[key], obs_cand[key], n_bins=n_bins)
    out["longitudinal_profile"] = compare_profiles(
        mesh.z_centres, obs_ref["energy_per_layer"].mean(axis=0), obs_cand["energy_per_layer"].mean(axis=0)
    )
    out["lateral_profile"] = compare_profiles(
        mesh.r_centres, obs_ref["energy_per_r_bin"].mean(axis=0), obs_cand["energy_per_r_bin"].mean(axis=0)
    )
    edges = (cell_energy_edges(reference, n_bins=cell_bins) if not cell_threshold_mev
             else cell_energy_edges(reference, n_bins=cell_bins, e_min_mev=cell_threshold_mev))
    counts_ref = cell_energy_histogram(reference, edges)
    counts_cand = cell_energy_histogram(candidate, edges)
    log_edges = np.log10(edges)
    step = log_edges[1] - log_edges[0]
    centres = np.concatenate(
        [[log_edges[0] - step / 2], (log_edges[1:] + log_edges[:-1]) / 2, [log_edges[-1] + step / 2]]
    )
    out["cell_energy"] = compare_histograms(centres, counts_ref, counts_cand)
    out["cell_energy"]["unit_wasserstein"] = "decades of cell energy"
    for key in PER_LAYER:
        for layer in range(mesh.n_z):
            out[layer_name(key, layer)] = compare_samples(
                obs_ref[key][:, layer], obs_cand[key][:, layer], n_bins=n_bins
            )
    return out, {"edges": edges, "counts_reference": counts_ref, "counts_candidate": counts_cand}


def _closest_shower(data: ShowerData, energy: float) -> int:
    return int(np.argmin(np.abs(np.log(data.energies.astype(np.float64)) - np.log(energy))))


def run_validation(
    reference: ShowerData,
    candidate: ShowerData,
    outdir: str | Path,
    *,
    classifier: bool = True,
    tracker: Tracker | None = None,
    seed: int = 0,
    labels: tuple[str, str] = ("reference", "candidate"),
    progress: bool = False,
    exclude_empty: bool = False,
    classifier_config: ClassifierConfig | None = None,
    threshold_mev: float | None = None,
) -> dict[str, Any]:
    """Compare ``candidate`` with ``reference``; write metrics.json, PNGs and report.html into ``outdir``.

    Returns the metrics dict (also written as ``metrics.json``)::

        {"observables": {name: {"separation_power", "separation_power_floor", "wasserstein",
                                "wasserstein_norm", "n_bins", "kind"}},
         "conditions": {"e_inc": {...}},            # are the two samples conditioned alike?
         "classifier": {"low_level": {"auc", "auc_calibrated", "jsd", ...}, "high_level": {...}},
         "fpd": {"value", "error", "raw", ...}, "kpd": {"value", "error", "mean", "std", ...},
         "n_reference", "n_candidate", "n_excluded_empty", "labels", "inputs", "geometry",
         "figures", "timing_s", "seed"}

    Showers with no energy make moments undefined: they raise a :class:`DataError` naming the count,
    unless ``exclude_empty`` drops them from both samples (the counts are recorded).  ``threshold_mev``
    zeroes cells below it in both samples first (a readout threshold) and starts the cell spectrum there.
    """
    labels = (str(labels[0]), str(labels[1]))
    check_same_mesh(reference, candidate, labels)
    if threshold_mev:
        reference, candidate = apply_threshold(reference, threshold_mev), apply_threshold(candidate, threshold_mev)
    # files from read_native are validated already; in-memory samples from Python callers may not be
    reference.validate(source=reference.meta.get("source", labels[0]))
    candidate.validate(source=candidate.meta.get("source", labels[1]))
    excluded = {"reference": 0, "candidate": 0}
    if exclude_empty:
        for role, data in (("reference", reference), ("candidate", candidate)):
            excluded[role] = int(empty_showers(data).sum())
        if excluded["reference"]:
            reference = reference.subset(~empty_showers(reference))
        if excluded["candidate"]:
            candidate = candidate.subset(~empty_showers(candidate))
    else:
        for data in (reference, candidate):
            raise_if_empty(data, where="the moment computation")
    for role, data, label in (("reference", reference, labels[0]), ("candidate", candidate, labels[1])):
        if len(data) < 2:
            raise DataError(
                f"the {role} sample has {len(data)} usable shower(s); distributions need at least 2",
                file=data.meta.get("source", label),
                field="showers",
                fix="validate samples of at least a few hundred showers",
            )
    out = ensure_writable_dir(outdir, what="validation output")
    mesh = reference.mesh
    timings: dict[str, float] = {}
    figures: dict[str, Path] = {}
    captions: dict[str, str] = {}
    metrics: dict[str, Any] = {
        "n_reference": len(reference),
        "n_candidate": len(candidate),
        "n_excluded_empty": excluded,
        "labels": list(labels),
        "inputs": {
            "reference": str(reference.meta.get("source", labels[0])),
            "candidate": str(candidate.meta.get("source", labels[1])),
        },
        "geometry": mesh.to_dict(),
        "seed": seed,
        "threshold_mev": threshold_mev,
    }
    n_stages = 6 if classifier else 5
    t0 = time.perf_counter()
    with progress_bar(n_stages, "validate", enabled=progress) as bar:
        with _stage(timings, "observables", bar):
            obs_ref = compute_observables(reference)
            obs_cand = compute_observables(candidate)
            hlf_ref = high_level_features(reference, observables=obs_ref)
            hlf_cand = high_level_features(candidate, observables=obs_cand)

        with _stage(timings, "metrics", bar):
            observables, cells = compare_all(obs_ref, obs_cand, reference, candidate, cell_threshold_mev=threshold_mev)
            metrics["observables"] = observables
            metrics["conditions"] = {"e_inc": compare_samples(obs_ref["e_inc"], obs_cand["e_inc"])}
            if reference.angles is not None and candidate.angles is not None:
                metrics["conditions"]["angle"] = compare_samples(reference.angles, candidate.angles)
            response_ref = energy_response(obs_ref["e_inc"], obs_ref["e_total"])
            response_cand = energy_response(obs_cand["e_inc"], obs_cand["e_total"],
                                            np.asarray(response_ref["edges_mev"]))
            metrics["response"] = {"reference": response_ref, "candidate": response_cand}
            for resp in (response_ref, response_cand):
                fit = plots.resolution_fit(np.asarray(resp["e_inc_mev"]) / 1000.0, np.asarray(resp["resolution"]),
                                           np.asarray(resp["resolution_error"]))
                resp["fit_stochastic"], resp["fit_constant"] = (fit if fit is not None else (None, None))
            metrics["fpd"] = fpd(hlf_ref, hlf_cand, seed=seed)
            metrics["kpd"] = kpd(hlf_ref, hlf_cand, seed=seed)

        roc_curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        if classifier:
            with _stage(timings, "classifier", bar):
                cfg = classifier_config or ClassifierConfig()
                metrics["classifier"] = {}
                # the voxel inputs are temporaries (2 x N x n_voxels float32), freed after their run
                for level, inputs in (
                    ("low_level", lambda: (low_level_inputs(reference), low_level_inputs(candidate))),
                    ("high_level", lambda: (hlf_ref, hlf_cand)),
                ):
                    res = train_classifier(*inputs(), config=cfg, seed=seed)
                    metrics["classifier"][level] = res.as_dict()
                    roc_curves[level.replace("_", "-")] = (res.roc_fpr, res.roc_tpr, res.auc)

        with _stage(timings, "plots", bar):

            def add(name: str, fig: Any, caption: str) -> None:
                figures[name] = plots.save_figure(fig, out / f"{name}.png")
                captions[name] = caption

            add(
                "profiles",
                plots.profiles_figure(obs_ref, obs_cand, mesh, labels),
                "Mean longitudinal and lateral profiles (bands: standard error of the mean).",
            )
            add(
                "moments",
                plots.moments_figure(obs_ref, obs_cand, labels),
                "Par04 first and second moments (energy-weighted mean and variance, cell centres), z and r.",
            )
            add(
                "e_ratio",
                plots.scalar_figure("e_ratio", obs_ref, obs_cand, labels),
                "Total deposited energy over incident energy.",
            )
            add(
                "response",
                plots.response_figure(response_ref, response_cand, labels),
                "Mean response and energy resolution vs incident energy (fit: a/√E ⊕ b, E in GeV).",
            )
            add(
                "n_hits",
                plots.scalar_figure("n_hits", obs_ref, obs_cand, labels),
                "Number of cells with energy (occupancy).",
            )
            layers = plots.pick_layers(obs_ref["energy_per_layer"].mean(axis=0))
            add(
                "energy_per_layer",
                plots.layer_energy_figure(obs_ref, obs_cand, labels, layers),
                "Energy per layer before, at and after the shower maximum.",
            )
            add(
                "cell_energy",
                plots.cell_spectrum_figure(
                    cells["edges"], cells["counts_reference"], cells["counts_candidate"], labels
                ),
                "Cell-energy spectrum above the readout threshold.",
            )
            add(
                "separation_per_layer",
                plots.separation_per_layer_figure(observables, mesh.n_z),
                "Separation power of every per-layer CaloChallenge feature; dashed: statistical floor.",
            )
            e_show = float(np.median(reference.energies))
            i_ref, i_cand = _closest_shower(reference, e_show), _closest_shower(candidate, e_show)
            add(
                "shower_3d",
                plots.shower_3d_figure(
                    reference.grid[i_ref],
                    candidate.grid[i_cand],
                    mesh,
                    labels,
                    (
                        f"E_inc = {reference.energies[i_ref] / 1e3:.3g} GeV",
                        f"E_inc = {candidate.energies[i_cand] / 1e3:.3g} GeV",
                    ),
                ),
                "One shower per sample (the one closest to the reference's median energy).",
            )
            if roc_curves:
                add(
                    "roc",
                    plots.roc_figure(roc_curves),
                    "ROC curves of the classifier tests (evaluation split).",
                )

        with _stage(timings, "report", bar):
            from mlfastsim.showers.validation.report import write_report

            metrics["figures"] = {name: path.name for name, path in figures.items()}
            write_report(
                out / "report.html",
                metrics,
                figures,
                labels=labels,
                inputs=metrics["inputs"],
                geometry=metrics["geometry"],
                captions=captions,
                title=f"Shower validation: {labels[1]} vs {labels[0]}",
            )
    timings["total"] = round(time.perf_counter() - t0, 3)
    metrics["timing_s"] = timings
    atomic_write_json(out / "metrics.json", metrics)
    _log_summary(metrics)
    if tracker is not None:
        tracker.log_metrics(
            _flat_numbers(
                {
                    k: metrics[k]
                    for k in ("observables", "conditions", "classifier", "fpd", "kpd")
                    if k in metrics
                },
                "validate",
            )
        )
        for path in (*figures.values(), out / "metrics.json", out / "report.html"):
            tracker.log_artifact(path, subdir="validation")
    return metrics


def _log_summary(metrics: Mapping[str, Any]) -> None:
    obs = metrics["observables"]
    worst = max(obs, key=lambda n: obs[n]["separation_power"])
    logger.info(
        "validation: %d vs %d showers; worst separation power %.4g (%s)",
        metrics["n_reference"],
        metrics["n_candidate"],
        obs[worst]["separation_power"],
        worst,
    )
    for level, res in (metrics.get("classifier") or {}).items():
        logger.info("classifier %s: AUC %.4f, JSD %.4f", level, res["auc"], res["jsd"])
    logger.info(
        "FPD %.4g ± %.2g, KPD %.4g ± %.2g",
        metrics["fpd"]["value"],
        metrics["fpd"]["error"],
        metrics["kpd"]["value"],
        metrics["kpd"]["error"],
    )


def _graded(
    value: float | None, kind: str | None, error: float | None = None, fmt: str = ".4f"
) -> tuple[str, str]:
    if value is None:
        return "–", "n/a"
    text = f"{value:{fmt}}" if error is None else f"{value:{fmt}} ± {error:.2g}"
    return text, grade(kind, value, error) if kind else ""


def summary_table(metrics: Mapping[str, Any]) -> Table:
    """A rich table of the headline numbers: classifier, FPD/KPD, per-shower observables, per-layer maxima."""
    table = Table(
        title=f"validation: {metrics.get('n_candidate')} candidate vs {metrics.get('n_reference')} "
        "reference showers"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("W1 / std", justify="right")
    table.add_column("grade")

    def row(name: str, value: tuple[str, str], extra: str = "") -> None:
        text, g = value
        style = _GRADE_STYLE.get(g, "")
        table.add_row(name, text, extra, f"[{style}]{g}[/{style}]" if style else g)

    for level, res in (metrics.get("classifier") or {}).items():
        row(f"classifier AUC ({level})", _graded(res["auc"], "auc"))
        row(f"classifier JSD ({level})", _graded(res["jsd"], "jsd"))
    for key in ("fpd", "kpd"):
        if key in metrics:
            row(key.upper(), _graded(metrics[key]["value"], key, metrics[key]["error"], fmt=".4g"))
    obs = metrics.get("observables", {})
    for name, m in obs.items():
        if any(name.startswith(layer_prefix(key)) for key in PER_LAYER):
            continue
        norm = m.get("wasserstein_norm")
        row(
            f"SP {name}",
            _graded(m["separation_power"], "separation_power"),
            "–" if norm is None else f"{norm:.3f}",
        )
    for key in PER_LAYER:
        prefix = layer_prefix(key)
        entries = {n: m["separation_power"] for n, m in obs.items() if n.startswith(prefix)}
        if entries:
            worst = max(entries, key=lambda n: entries[n])
            row(f"SP {key} (max over layers: {worst[-2:]})", _graded(entries[worst], "separation_power"))
    return table
