"""``showers validate``: compare a candidate shower sample with a reference, end to end.

:func:`run_validation` is what the CLI calls: it checks that both samples share a mesh, applies the
geometry's readout threshold (:func:`default_threshold`), computes the observables (Par04 and
CaloChallenge), the distances between their distributions (separation power, Wasserstein-1, FPD, KPD),
each with its same-vs-same statistical floor, optionally the CaloChallenge-exact histograms
(``binning_mode="calochallenge"``) and the classifier tests (our fast recipe or the official one), draws
the figures and writes ``metrics.json``, the PNGs and a self-contained ``report.html`` into the output
directory.  A metric that cannot be computed is recorded as unavailable with its reason; the folder is
never left empty.  :func:`summary_table` turns the returned metrics into the table the CLI prints.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.core.io import atomic_write_json, ensure_writable_dir, staged_dir
from mlfastsim.core.progress import progress_bar
from mlfastsim.core.tracking import Tracker
from mlfastsim.showers.io.formats import ShowerData, same_mesh
from mlfastsim.showers.validation import plots
from mlfastsim.showers.validation.calochallenge import (
    CC_THRESHOLD_MEV,
    OFFICIAL_CLASSIFIER,
    compare_calochallenge,
    official_high_level_inputs,
    official_low_level_inputs,
)
from mlfastsim.showers.validation.classifier import ClassifierConfig, low_level_inputs, train_classifier
from mlfastsim.showers.validation.metrics import (
    EXCESS_LIMITS,
    combined_excess,
    compare_histograms,
    compare_profiles,
    compare_samples,
    default_n_bins,
    distance_grade,
    excess,
    fpd,
    grade,
    grade_excess,
    kpd,
    reference_split_floor,
    separation_power,
    wasserstein,
    wasserstein_split_floor,
)
from mlfastsim.showers.validation.observables import (
    CELL_ENERGY_MIN_MEV,
    OBSERVABLE_INFO,
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


def condition_strata(data: ShowerData, *, max_points: int = 64) -> np.ndarray | None:
    """One label per shower naming its (energy, angle) point, for samples made at a few fixed points.

    Reference-split floors halve each point separately with these (a sample with a fixed number of
    showers per point has no mixture fluctuation between energies); None for continuous conditions.
    """
    labels = _point_labels(data, None, None)
    return labels if np.unique(labels).size <= max_points else None


def compare_all(
    obs_ref: Mapping[str, np.ndarray],
    obs_cand: Mapping[str, np.ndarray],
    reference: ShowerData,
    candidate: ShowerData,
    *,
    cell_bins: int = 50,
    cell_threshold_mev: float | None = None,
    seed: int = 0,
    n_splits: int = 5,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Separation power and Wasserstein-1 of every observable, each with its same-vs-same floor.

    Separation powers of per-shower observables get the analytic chi-square floor; Wasserstein-1
    distances, mean profiles and the cell spectrum get a floor measured on ``n_splits`` random halves of
    the reference (:func:`~mlfastsim.showers.validation.metrics.reference_split_floor`).  Also returns the
    cell-spectrum histograms.
    """
    mesh = reference.mesh
    n_ref, n_cand = len(obs_ref["e_total"]), len(obs_cand["e_total"])
    n_bins = default_n_bins(n_ref, n_cand)
    out: dict[str, dict[str, Any]] = {}
    strata = condition_strata(reference) if len(reference) == n_ref else None

    def per_shower(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
        m = compare_samples(ref, cand, n_bins=n_bins)
        m["wasserstein_floor"], m["wasserstein_floor_sd"] = wasserstein_split_floor(
            ref, cand.size, n_splits=n_splits, seed=seed, strata=strata)
        return m

    for key in SCALARS:
        out[key] = per_shower(obs_ref[key], obs_cand[key])
        out[key]["unit_wasserstein"] = OBSERVABLE_INFO[key].unit if key in OBSERVABLE_INFO else ""
    for name, positions, key in (("longitudinal_profile", mesh.z_centres, "energy_per_layer"),
                                 ("lateral_profile", mesh.r_centres, "energy_per_r_bin")):
        out[name] = compare_profiles(positions, obs_ref[key].mean(axis=0), obs_cand[key].mean(axis=0))
        out[name]["separation_power_floor"], out[name]["separation_power_floor_sd"] = reference_split_floor(
            obs_ref[key], lambda a, b: separation_power(a.mean(axis=0), b.mean(axis=0)), n_cand,
            n_splits=n_splits, seed=seed, power=1.0, strata=strata)
        out[name]["wasserstein_floor"], out[name]["wasserstein_floor_sd"] = reference_split_floor(
            obs_ref[key], lambda a, b, x=positions: wasserstein(x, x, ref_weights=a.mean(axis=0),
                                                                cand_weights=b.mean(axis=0))[0],
            n_cand, n_splits=n_splits, seed=seed, strata=strata)
        out[name]["unit_wasserstein"] = "mm"
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
    # floor: the spectra of random halves of the reference showers (cells of one shower stay together)
    groups = _group_histograms(reference, edges, seed=seed)
    out["cell_energy"]["separation_power_floor"], out["cell_energy"]["separation_power_floor_sd"] = (
        reference_split_floor(groups, lambda a, b: separation_power(a.sum(axis=0), b.sum(axis=0)), n_cand,
                              n_splits=n_splits, seed=seed, power=1.0, showers_per_row=n_ref / _N_GROUPS))
    out["cell_energy"]["wasserstein_floor"], out["cell_energy"]["wasserstein_floor_sd"] = reference_split_floor(
        groups, lambda a, b: wasserstein(centres, centres, ref_weights=a.sum(axis=0), cand_weights=b.sum(axis=0))[0],
        n_cand, n_splits=n_splits, seed=seed, showers_per_row=n_ref / _N_GROUPS)
    for key in PER_LAYER:
        unit = OBSERVABLE_INFO[key].unit
        for layer in range(mesh.n_z):
            name = layer_name(key, layer)
            out[name] = per_shower(obs_ref[key][:, layer], obs_cand[key][:, layer])
            out[name]["unit_wasserstein"] = unit
    return out, {"edges": edges, "counts_reference": counts_ref, "counts_candidate": counts_cand}


_N_GROUPS = 16


def _group_histograms(data: ShowerData, edges: np.ndarray, *, seed: int) -> np.ndarray:
    """Cell-spectrum counts of :data:`_N_GROUPS` random groups of showers, shape (groups, bins + 2)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(len(data)) % _N_GROUPS)
    return np.stack([cell_energy_histogram(data.subset(labels == g), edges) if np.any(labels == g)
                     else np.zeros(edges.size + 1, dtype=np.int64) for g in range(_N_GROUPS)])


def _closest_shower(data: ShowerData, energy: float) -> int:
    return int(np.argmin(np.abs(np.log(data.energies.astype(np.float64)) - np.log(energy))))


# ------------------------------------------------------------------------------ readout threshold
def default_threshold(reference: ShowerData, candidate: ShowerData) -> tuple[float, str]:
    """The readout threshold the geometry defines (MeV) and where it comes from.

    Cylindrical meshes (CaloChallenge datasets 2/3, the Par04 mesh and any binning XML) use the
    challenge's 0.5 keV visible / 0.033 sampling fraction = 15.15 keV on the incident-particle scale;
    hadron grids the calorimeter's threshold (0.5 MIP) from the file's metadata.  Anything else: 0, and
    the reason says so.
    """
    from mlfastsim.showers.geometry import CylindricalMesh

    if isinstance(reference.mesh, CylindricalMesh):
        return CELL_ENERGY_MIN_MEV, "CaloChallenge datasets 2/3 readout (0.5 keV / 0.033)"
    for data in (reference, candidate):
        calo = data.meta.get("calorimeter")
        if isinstance(calo, Mapping):
            value = calo.get("threshold_mev", (calo.get("derived") or {}).get("threshold_mev"))
            if isinstance(value, int | float) and value >= 0:
                return float(value), f"calorimeter threshold from the file's metadata ({calo.get('name', 'hadron')})"
    return 0.0, "none: the files name no calorimeter threshold (pass --threshold-mev)"


# ------------------------------------------------------------------------------------- conditions
def _point_labels(data: ShowerData, energy_edges: np.ndarray | None, angle_edges: np.ndarray | None) -> np.ndarray:
    """One label per shower: its (energy, angle) point, or its cell on the given bin edges."""
    e = np.asarray(data.energies, dtype=np.float64)
    a = np.asarray(data.angles, dtype=np.float64) if data.angles is not None else np.full(e.size, 90.0)
    ke = np.round(e, 3) if energy_edges is None else np.searchsorted(energy_edges, e, side="right")
    ka = np.round(a, 2) if angle_edges is None else np.searchsorted(angle_edges, a, side="right")
    return np.array([f"{x}|{y}" for x, y in zip(ke, ka, strict=True)])


def match_conditions(
    reference: ShowerData, candidate: ShowerData, *, seed: int = 0, max_points: int = 64, n_energy_bins: int = 10,
    n_angle_bins: int = 4,
) -> tuple[ShowerData, ShowerData, dict[str, Any]]:
    """Subsample both samples so each (energy, angle) point holds as many reference as candidate showers.

    Samples simulated at a few fixed points (up to ``max_points`` distinct ones) are matched point by
    point; continuous conditions by cells of the reference's log-energy quantiles x angle quantiles.
    Points present in only one sample are dropped.  Returns the two subsets and a summary of what was kept.
    """
    rng = np.random.default_rng(seed)
    points = {f"{x}|{y}" for x, y in zip(np.round(reference.energies, 3),
                                         np.round(reference.angles if reference.angles is not None
                                                  else np.full(len(reference), 90.0), 2), strict=True)}
    if len(points) <= max_points:
        e_edges = a_edges = None
        how = "per (energy, angle) point"
    else:
        e_edges = np.unique(np.quantile(np.log(reference.energies.astype(np.float64)),
                                        np.linspace(0, 1, n_energy_bins + 1))[1:-1])
        e_edges = np.exp(e_edges)
        a_ref = reference.angles if reference.angles is not None else np.full(len(reference), 90.0)
        a_edges = np.unique(np.quantile(a_ref.astype(np.float64), np.linspace(0, 1, n_angle_bins + 1))[1:-1])
        how = f"per cell of {e_edges.size + 1} energy x {a_edges.size + 1} angle quantile bins"
    lab_r = _point_labels(reference, e_edges, a_edges)
    lab_c = _point_labels(candidate, e_edges, a_edges)
    keep_r, keep_c = [], []
    for label in np.intersect1d(np.unique(lab_r), np.unique(lab_c)):
        ir, ic = np.flatnonzero(lab_r == label), np.flatnonzero(lab_c == label)
        m = min(ir.size, ic.size)
        keep_r.append(rng.choice(ir, m, replace=False))
        keep_c.append(rng.choice(ic, m, replace=False))
    idx_r = np.sort(np.concatenate(keep_r)) if keep_r else np.zeros(0, dtype=int)
    idx_c = np.sort(np.concatenate(keep_c)) if keep_c else np.zeros(0, dtype=int)
    summary = {"how": how, "kept_reference": int(idx_r.size), "kept_candidate": int(idx_c.size),
               "of_reference": len(reference), "of_candidate": len(candidate),
               "points_shared": len(keep_r)}
    return reference.subset(idx_r), candidate.subset(idx_c), summary


def _condition_warnings(conditions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A warning per condition (incident energy, angle) whose two distributions differ beyond the floor."""
    out = []
    for name, m in conditions.items():
        z = excess(m.get("separation_power"), m.get("separation_power_floor"), m.get("separation_power_floor_sd"))
        if z is not None and z > EXCESS_LIMITS[1]:
            what = "incident energies" if name == "e_inc" else "incidence angles"
            out.append(
                f"the two samples' {what} are distributed differently (separation power "
                f"{m['separation_power']:.3g}, statistical floor {m['separation_power_floor']:.2g}): "
                "energy- and angle-dependent observables then differ whatever the model does; generate the "
                "candidate at the reference's conditions or pass --match-conditions")
    return out


# ----------------------------------------------------------------------------------- unavailable
def _unavailable(what: str, exc: BaseException) -> dict[str, Any]:
    """The record of a metric that could not be computed (the rest of the validation goes on)."""
    reason = f"{type(exc).__name__}: {exc}".strip()
    logger.warning("%s unavailable: %s", what, reason)
    return {"available": False, "reason": reason}


CLASSIFIER_RECIPES = ("fast", "calochallenge")
BINNING_MODES = ("adaptive", "calochallenge")


class _DeferredArtifacts:
    """A tracker whose artifacts are logged once they sit in their final folder (see :func:`_staged`)."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._artifacts: list[tuple[str, str | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self._artifacts.append((Path(path).name, subdir))

    def flush(self, directory: Path) -> None:
        for name, subdir in self._artifacts:
            self._tracker.log_artifact(directory / name, subdir=subdir)


def _staged(fn: Any) -> Any:
    """Build the output in a staging folder inside ``outdir``, move the files in once all are written
    (metrics.json last): a full disk or a crash never leaves figures without their metrics.json."""

    @functools.wraps(fn)
    def wrapper(reference: ShowerData, candidate: ShowerData, outdir: str | Path, *,
                tracker: Tracker | None = None, **kwargs: Any) -> dict[str, Any]:
        deferred = None if tracker is None else _DeferredArtifacts(tracker)
        with staged_dir(outdir, what="validation output", last=("metrics.json",)) as stage:
            metrics = fn(reference, candidate, stage, tracker=deferred, **kwargs)
        if deferred is not None:
            deferred.flush(Path(outdir))
        return metrics

    return wrapper


@_staged
def run_validation(
    reference: ShowerData,
    candidate: ShowerData,
    outdir: str | Path,
    *,
    classifier: bool | str = True,
    tracker: Tracker | None = None,
    seed: int = 0,
    labels: tuple[str, str] = ("reference", "candidate"),
    progress: bool = False,
    exclude_empty: bool = False,
    classifier_config: ClassifierConfig | None = None,
    threshold_mev: float | None = None,
    binning_mode: str = "adaptive",
    match: bool = False,
    draw_figures: bool = True,
) -> dict[str, Any]:
    """Compare ``candidate`` with ``reference``; write metrics.json, PNGs and report.html into ``outdir``.

    Returns the metrics dict (also written as ``metrics.json``)::

        {"observables": {name: {"separation_power", "separation_power_floor", "separation_power_floor_sd",
                                "wasserstein", "wasserstein_floor", "wasserstein_floor_sd",
                                "wasserstein_norm", "n_bins", "kind"}},
         "observables_calochallenge": {name: {...}},   # --binning-mode calochallenge only
         "conditions": {"e_inc": {...}, "angle": {...}}, "warnings": [...],
         "classifier": {"low_level": {"auc", "auc_floor_sd", "jsd", ...} or {"available": False, "reason"}},
         "fpd": {"value", "error", "raw", "method"}, "kpd": {"value", "error", "mean", "std", ...},
         "threshold_mev", "threshold_source", "binning_mode", "classifier_recipe",
         "n_reference", "n_candidate", "n_excluded_empty", "labels", "inputs", "geometry",
         "figures", "timing_s", "seed"}

    ``threshold_mev`` zeroes cells below it in both samples first (a readout threshold) and starts the
    cell spectrum there; None takes the geometry's own (:func:`default_threshold`: 15.15 keV on
    CaloChallenge meshes, the calorimeter's 0.5 MIP on hadron grids), 0 turns it off.  ``classifier``:
    True or ``"fast"`` (our quick recipe), ``"calochallenge"`` (the official network and inputs), False
    (none).  ``binning_mode="calochallenge"`` adds every CaloChallenge histogram binned exactly as the
    official code bins it (:mod:`~mlfastsim.showers.validation.calochallenge`).  ``match`` subsamples both
    samples to the same (energy, angle) points first (:func:`match_conditions`).  ``draw_figures=False``
    skips the PNGs (most of the time on small samples; for scripted studies that only need the numbers).

    Showers with no energy make moments undefined: they raise a :class:`DataError` naming the count,
    unless ``exclude_empty`` drops them from both samples (the counts are recorded).  A metric that
    cannot be computed (a classifier on too few showers, say) is recorded as unavailable with the
    reason; the report and metrics.json are still written.
    """
    from mlfastsim.showers.geometry import CylindricalMesh

    labels = (str(labels[0]), str(labels[1]))
    recipe = {True: "fast", False: None}.get(classifier, classifier) if isinstance(classifier, bool) else classifier
    if recipe is not None and recipe not in CLASSIFIER_RECIPES:
        raise ConfigError(f"unknown classifier {recipe!r}", field="--classifier",
                          fix=f"use one of {', '.join(CLASSIFIER_RECIPES)} (or --no-classifier)")
    if binning_mode not in BINNING_MODES:
        raise ConfigError(f"unknown binning mode {binning_mode!r}", field="--binning-mode",
                          fix=f"use one of {', '.join(BINNING_MODES)}")
    check_same_mesh(reference, candidate, labels)
    needs_cc = binning_mode == "calochallenge" or recipe == "calochallenge"
    if needs_cc and not isinstance(reference.mesh, CylindricalMesh):
        raise ConfigError(
            f"CaloChallenge binning and classifier are defined for its cylindrical datasets 2/3, "
            f"not for {reference.mesh.describe()}",
            field="--binning-mode" if binning_mode == "calochallenge" else "--classifier",
            fix="use --binning-mode adaptive and --classifier fast on this geometry")
    if threshold_mev is None:
        threshold_mev, threshold_source = default_threshold(reference, candidate)
    else:
        threshold_source = "given (--threshold-mev)" if threshold_mev > 0 else "off (--threshold-mev 0)"
    if threshold_mev > 0:
        reference, candidate = apply_threshold(reference, threshold_mev), apply_threshold(candidate, threshold_mev)
    # files from read_native are validated already; in-memory samples from Python callers may not be
    reference.validate(source=reference.meta.get("source", labels[0]))
    candidate.validate(source=candidate.meta.get("source", labels[1]))
    matched = None
    if match:
        reference, candidate, matched = match_conditions(reference, candidate, seed=seed)
        logger.info("matched conditions %s: kept %d of %d reference and %d of %d candidate showers",
                    matched["how"], matched["kept_reference"], matched["of_reference"],
                    matched["kept_candidate"], matched["of_candidate"])
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
                fix="validate samples of at least a few hundred showers"
                + (" (--match-conditions kept only the shared points)" if match else ""),
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
        "threshold_mev": float(threshold_mev),
        "threshold_source": threshold_source,
        "binning_mode": binning_mode,
        "classifier_recipe": recipe,
        "warnings": [],
    }
    if matched is not None:
        metrics["matched_conditions"] = matched
    n_stages = 3 + bool(recipe) + draw_figures  # observables, metrics, report (+ classifier, plots)
    t0 = time.perf_counter()
    with progress_bar(n_stages, "validate", enabled=progress) as bar:
        with _stage(timings, "observables", bar):
            obs_ref = compute_observables(reference)
            obs_cand = compute_observables(candidate)
            hlf_ref = high_level_features(reference, observables=obs_ref)
            hlf_cand = high_level_features(candidate, observables=obs_cand)
            if needs_cc:
                if abs(threshold_mev - CC_THRESHOLD_MEV) < 1e-12:
                    cc_ref, cc_cand, cc_obs_ref, cc_obs_cand = reference, candidate, obs_ref, obs_cand
                else:  # the official numbers always use the official threshold
                    cc_ref, cc_cand = apply_threshold(reference, CC_THRESHOLD_MEV), apply_threshold(candidate,
                                                                                                   CC_THRESHOLD_MEV)
                    cc_obs_ref, cc_obs_cand = compute_observables(cc_ref), compute_observables(cc_cand)

        with _stage(timings, "metrics", bar):
            observables, cells = compare_all(obs_ref, obs_cand, reference, candidate,
                                             cell_threshold_mev=threshold_mev or None, seed=seed)
            metrics["observables"] = observables
            if binning_mode == "calochallenge":
                metrics["observables_calochallenge"] = compare_calochallenge(cc_obs_ref, cc_obs_cand, cc_ref, cc_cand)
            metrics["conditions"] = {"e_inc": compare_samples(obs_ref["e_inc"], obs_cand["e_inc"])}
            if reference.angles is not None and candidate.angles is not None:
                metrics["conditions"]["angle"] = compare_samples(reference.angles, candidate.angles)
            for warning in _condition_warnings(metrics["conditions"]):
                logger.warning("%s", warning)
                metrics["warnings"].append(warning)
            response_ref = energy_response(obs_ref["e_inc"], obs_ref["e_total"])
            response_cand = energy_response(obs_cand["e_inc"], obs_cand["e_total"],
                                            np.asarray(response_ref["edges_mev"]))
            metrics["response"] = {"reference": response_ref, "candidate": response_cand}
            for resp in (response_ref, response_cand):
                fit = plots.resolution_fit(np.asarray(resp["e_inc_mev"]) / 1000.0, np.asarray(resp["resolution"]),
                                           np.asarray(resp["resolution_error"]))
                resp["fit_stochastic"], resp["fit_constant"] = (fit if fit is not None else (None, None))
            for key, func in (("fpd", fpd), ("kpd", kpd)):
                try:
                    metrics[key] = func(hlf_ref, hlf_cand, seed=seed)
                except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
                    metrics[key] = _unavailable(key.upper(), exc)

        roc_curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        if recipe:
            with _stage(timings, "classifier", bar):
                metrics["classifier"] = {}
                if recipe == "calochallenge":
                    cfg = OFFICIAL_CLASSIFIER
                    if classifier_config is not None:  # threads and a wall-time cap may still be set
                        cfg = replace(cfg, threads=classifier_config.threads,
                                      max_train_seconds=classifier_config.max_train_seconds)
                    levels = (
                        ("low_level", lambda: (official_low_level_inputs(cc_ref), official_low_level_inputs(cc_cand))),
                        ("high_level", lambda: (official_high_level_inputs(cc_obs_ref),
                                                official_high_level_inputs(cc_obs_cand))),
                    )
                else:
                    cfg = classifier_config or ClassifierConfig()
                    # the voxel inputs are temporaries (2 x N x n_voxels float32), freed after their run
                    levels = (
                        ("low_level", lambda: (low_level_inputs(reference), low_level_inputs(candidate))),
                        ("high_level", lambda: (hlf_ref, hlf_cand)),
                    )
                for level, inputs in levels:
                    try:
                        res = train_classifier(*inputs(), config=cfg, seed=seed, recipe=recipe)
                    except (DataError, ValueError, RuntimeError, FloatingPointError) as exc:
                        metrics["classifier"][level] = _unavailable(f"classifier ({level})", exc)
                        continue
                    metrics["classifier"][level] = res.as_dict()
                    roc_curves[level.replace("_", "-")] = (res.roc_fpr, res.roc_tpr, res.auc)

        if draw_figures:
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


def _available(m: Any) -> bool:
    return isinstance(m, Mapping) and m.get("available", True) is not False


def _log_summary(metrics: Mapping[str, Any]) -> None:
    obs = metrics["observables"]
    worst = max(obs, key=lambda n: obs[n]["separation_power"])
    logger.info(
        "validation: %d vs %d showers (threshold %.4g MeV); worst separation power %.4g (%s)",
        metrics["n_reference"],
        metrics["n_candidate"],
        metrics.get("threshold_mev") or 0.0,
        obs[worst]["separation_power"],
        worst,
    )
    for level, res in (metrics.get("classifier") or {}).items():
        if _available(res):
            logger.info("classifier %s: AUC %.4f, JSD %.4f", level, res["auc"], res["jsd"])
    for key in ("fpd", "kpd"):
        m = metrics.get(key)
        if _available(m):
            logger.info("%s %.4g ± %.2g", key.upper(), m["value"], m["error"])


def observable_grade(m: Mapping[str, Any], what: str = "separation_power") -> str:
    """Grade of one observable's separation power or Wasserstein-1 against its same-vs-same floor."""
    return grade(what, m.get(what), floor=m.get(f"{what}_floor"), floor_sd=m.get(f"{what}_floor_sd"))


def classifier_grade(res: Mapping[str, Any]) -> str:
    """Grade of a classifier AUC against the AUC of an uninformative classifier on the same split."""
    return grade("auc", res.get("auc"), floor=res.get("auc_floor", 0.5), floor_sd=res.get("auc_floor_sd"))


def _fmt_value(value: float | None, fmt: str = ".4f", error: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:{fmt}}" if error is None else f"{value:{fmt}} ± {error:.2g}"


def summary_table(metrics: Mapping[str, Any]) -> Table:
    """A rich table of the headline numbers, each with its statistical floor and the grade against it.

    Rows: classifier AUC and JSD, FPD/KPD, per-shower observables, the worst layer of each per-layer
    family, and, in CaloChallenge binning mode, the official E_tot/E_inc and worst per-layer values.
    """
    table = Table(
        title=f"validation: {metrics.get('n_candidate')} candidate vs {metrics.get('n_reference')} "
        f"reference showers, threshold {metrics.get('threshold_mev') or 0:.4g} MeV",
        caption="grade: excess over the same-vs-same floor in units of its spread; pass <= 3, warn <= 10; "
        "per-layer features: the summed excess of all layers",
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("floor", justify="right")
    table.add_column("W1 [unit]", justify="right")
    table.add_column("grade")

    def row(name: str, value: str, floor: str, g: str, extra: str = "") -> None:
        style = _GRADE_STYLE.get(g, "")
        table.add_row(name, value, floor, extra, f"[{style}]{g}[/{style}]" if style else g)

    for level, res in (metrics.get("classifier") or {}).items():
        if not _available(res):
            row(f"classifier ({level})", "unavailable", "", "n/a", "")
            continue
        tag = "" if res.get("recipe", "fast") == "fast" else f", {res['recipe']}"
        row(f"classifier AUC ({level}{tag})", _fmt_value(res["auc"]),
            f"0.5 ± {res.get('auc_floor_sd', 0):.2g}", classifier_grade(res))
        row(f"classifier JSD ({level}{tag})", _fmt_value(res["jsd"]), "–", "n/a")
    for key in ("fpd", "kpd"):
        m = metrics.get(key)
        if m is None:
            continue
        if not _available(m):
            row(key.upper(), "unavailable", "", "n/a")
            continue
        row(key.upper(), _fmt_value(m["value"], ".4g", m["error"]), "0", distance_grade(key, m))
    obs = metrics.get("observables", {})
    for name, m in obs.items():
        if any(name.startswith(layer_prefix(key)) for key in PER_LAYER):
            continue
        w = m.get("wasserstein")
        unit = m.get("unit_wasserstein", "")
        row(f"SP {name}", _fmt_value(m["separation_power"], ".4g"), _fmt_value(m.get("separation_power_floor"), ".2g"),
            observable_grade(m), "–" if w is None else f"{w:.3g} {unit}".strip())
    def families(source: Mapping[str, Mapping[str, Any]], tag: str) -> None:
        for key in PER_LAYER:
            prefix = layer_prefix(key)
            entries = {n: e for n, e in source.items()
                       if n.startswith(prefix) and e.get("separation_power") is not None}
            if entries:
                worst = max(entries, key=lambda n: entries[n]["separation_power"])
                m = entries[worst]
                row(f"SP {key}{tag} ({len(entries)} layers; worst {worst[-2:]})", _fmt_value(m["separation_power"]),
                    _fmt_value(m.get("separation_power_floor"), ".2g"), family_grade(entries.values()))

    families(obs, "")
    cc = metrics.get("observables_calochallenge")
    if cc:
        m = cc["e_ratio"]
        row("SP E_tot/E_inc (CaloChallenge bins)", _fmt_value(m.get("separation_power")),
            _fmt_value(m.get("separation_power_floor"), ".2g"), observable_grade(m))
        families(cc, ", CaloChallenge bins")
        m = cc["cell_energy"]
        row("SP cell energy (CaloChallenge bins)", _fmt_value(m.get("separation_power"), ".3g"),
            _fmt_value(m.get("separation_power_floor"), ".2g"), "n/a")
    return table


def family_grade(entries: Iterable[Mapping[str, Any]]) -> str:
    """One grade for all layers of a per-layer feature: their summed excess over the floors."""
    return grade_excess(combined_excess(entries))
