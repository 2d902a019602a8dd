"""Issue 12: numbers the field can quote.

The CaloChallenge binning mode is pinned against an independent computation written here from the official
definitions (100 bins on [0.5, 1.5] for E_tot/E_inc, entries outside dropped, density normalisation, the
1e-16 in the denominator); the readout threshold is on by default and recorded; small samples validate with
finite AUCs; the official classifier recipe runs; whatever cannot be computed is recorded, never a crash.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.showers.geometry import DETECTOR_PRESETS, MESH_PRESETS
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.sim.em import make_kinematics, simulate
from mlfastsim.showers.validation.calochallenge import (
    CC_THRESHOLD_MEV,
    OFFICIAL_CLASSIFIER,
    official_edges,
    official_high_level_inputs,
    official_low_level_inputs,
)
from mlfastsim.showers.validation.classifier import ClassifierConfig, robust_scale, train_classifier
from mlfastsim.showers.validation.observables import compute_observables
from mlfastsim.showers.validation.validate import match_conditions, run_validation, summary_table

MESH = MESH_PRESETS["ds2"]


def _sample(detector: str, seed: int, energies_gev: list[float] = [10.0, 50.0],  # noqa: B006
            angles_deg: list[float] = [70.0, 90.0], n_per_point: int = 50) -> ShowerData:  # noqa: B006
    e, a = make_kinematics(energies_gev=energies_gev, angles_deg=angles_deg, n_per_point=n_per_point, seed=seed)
    data = simulate(DETECTOR_PRESETS[detector], MESH, e, a, seed=seed)
    data.meta["source"] = f"{detector}_{seed}.h5"
    return data


@pytest.fixture(scope="module")
def small() -> dict[str, ShowerData]:
    """The issue's small valid samples: 10 and 50 GeV x 70 and 90 degrees x 50 showers, seeds 1 and 2."""
    return {"a": _sample("SiW", 1), "b": _sample("SiW", 2), "scipb": _sample("SciPb", 1)}


# ------------------------------------------------------------------ independent official computation
def _official_sp(values_ref: np.ndarray, values_cand: np.ndarray, bins: np.ndarray) -> float:
    """The official recipe, from its definition: density histograms times bin widths, then eq. 15."""
    h1, _ = np.histogram(values_ref, bins=bins, density=True)
    h2, _ = np.histogram(values_cand, bins=bins, density=True)
    h1, h2 = h1 * np.diff(bins), h2 * np.diff(bins)
    return float(0.5 * np.sum((h1 - h2) ** 2 / (h1 + h2 + 1e-16)))


def _thresholded(data: ShowerData) -> np.ndarray:
    showers = data.showers.astype(np.float64)
    return np.where(showers < 0.5e-3 / 0.033, 0.0, showers)


def _official_x(mesh: object) -> np.ndarray:
    """Cell x = r cos(alpha) of one layer with the official alpha centres on [-pi, pi), voxel order (alpha, r)."""
    r_edges = np.asarray(MESH.r_edges)
    r_mid = (r_edges[1:] + r_edges[:-1]) / 2
    alpha_edges = np.linspace(-math.pi, math.pi, MESH.n_phi + 1)
    alpha_mid = (alpha_edges[1:] + alpha_edges[:-1]) / 2
    return (r_mid[None, :] * np.cos(alpha_mid[:, None])).reshape(-1)


def test_calochallenge_mode_reproduces_the_official_separation_powers(small: dict[str, ShowerData],
                                                                      tmp_path: Path) -> None:
    ref, cand = small["a"], small["scipb"]
    metrics = run_validation(ref, cand, tmp_path, classifier=False, binning_mode="calochallenge", draw_figures=False)
    official = metrics["observables_calochallenge"]
    s_ref, s_cand = _thresholded(ref), _thresholded(cand)

    # E_tot / E_inc: 100 bins on [0.5, 1.5], out-of-range entries dropped
    bins = np.linspace(0.5, 1.5, 101)
    ratio_ref = s_ref.sum(axis=1) / ref.energies.astype(np.float64)
    ratio_cand = s_cand.sum(axis=1) / cand.energies.astype(np.float64)
    expected = _official_sp(ratio_ref, ratio_cand, bins)
    assert official["e_ratio"]["separation_power"] == pytest.approx(expected, abs=1e-9)
    assert expected > 0.05  # SciPb's lower response: a real, non-trivial value is pinned
    assert official["e_ratio"]["outside_candidate"] == pytest.approx(
        np.mean((ratio_cand < 0.5) | (ratio_cand > 1.5)))

    # the centre of energy in eta of layer 20, official axis convention, 100 bins on [-30, 30]
    n_cells = MESH.n_phi * MESH.n_r
    layer_ref = s_ref[:, 20 * n_cells : 21 * n_cells]
    layer_cand = s_cand[:, 20 * n_cells : 21 * n_cells]
    x = _official_x(MESH)
    ec_ref = (layer_ref * x).sum(axis=1) / (layer_ref.sum(axis=1) + 1e-16)
    ec_cand = (layer_cand * x).sum(axis=1) / (layer_cand.sum(axis=1) + 1e-16)
    expected_ec = _official_sp(ec_ref, ec_cand, np.linspace(-30.0, 30.0, 101))
    assert official["ec_eta_layer_20"]["separation_power"] == pytest.approx(expected_ec, abs=1e-9)

    # the energy in layer 20: 39 log bins from the threshold to the reference's maximum
    e_ref, e_cand = layer_ref.sum(axis=1), layer_cand.sum(axis=1)
    log_bins = np.logspace(np.log10(0.5e-3 / 0.033), np.log10(e_ref.max()), 40)
    assert official["energy_layer_20"]["separation_power"] == pytest.approx(
        _official_sp(e_ref, e_cand, log_bins), abs=1e-9)

    # the voxel spectrum: 49 log bins from the threshold to the reference's largest cell
    cell_bins = np.logspace(np.log10(0.5e-3 / 0.033), np.log10(s_ref.max()), 50)
    assert official["cell_energy"]["separation_power"] == pytest.approx(
        _official_sp(s_ref.ravel(), s_cand.ravel(), cell_bins), abs=1e-9)

    # reported beside the adaptive values, which keep their own bins; the report says which is which
    assert metrics["observables"]["e_ratio"]["n_bins"] != 100 and metrics["binning_mode"] == "calochallenge"
    html = (tmp_path / "report.html").read_text()
    assert "SP official" in html and "CaloChallenge binning (official definitions)" in html
    table = summary_table(metrics)
    assert any("CaloChallenge bins" in str(cell) for cell in table.columns[0]._cells)


def test_official_edges_follow_the_plotting_helper() -> None:
    assert np.array_equal(official_edges("e_ratio", np.zeros(1)), np.linspace(0.5, 1.5, 101))
    assert np.array_equal(official_edges("width_r", np.zeros(1)), np.linspace(0.0, 20.0, 101))
    assert np.array_equal(official_edges("sparsity", np.zeros(1)), np.linspace(0.0, 1.0, 21))
    log = official_edges("energy_per_layer", np.array([0.0, 50.0]))
    assert log.size == 40 and log[0] == pytest.approx(CC_THRESHOLD_MEV) and log[-1] == pytest.approx(50.0)
    assert official_edges("energy_per_layer", np.zeros(5)) is None  # an empty reference layer: no binning


# ------------------------------------------------------------------------------ threshold by default
def test_small_samples_validate_with_the_threshold_on_and_finite_aucs(small: dict[str, ShowerData],
                                                                      tmp_path: Path) -> None:
    """The issue's crash: 2 x 2 points x 50 showers, seeds 1 and 2, classifier on (the default)."""
    metrics = run_validation(small["a"], small["b"], tmp_path, seed=0, draw_figures=False)
    assert metrics["threshold_mev"] == pytest.approx(0.0151515, rel=1e-5)
    for level in ("low_level", "high_level"):
        res = metrics["classifier"][level]
        assert res.get("available", True) and math.isfinite(res["auc"]) and math.isfinite(res["jsd"])
        assert res["auc_floor_sd"] > 0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["threshold_mev"] == pytest.approx(0.0151515, rel=1e-5)
    assert on_disk["kpd"]["error"] > 0 and on_disk["fpd"]["error"] > 0  # real resampling, never exactly 0
    html = (tmp_path / "report.html").read_text()
    assert "How to read this" in html and "0.01515 MeV" in html and "can be negative" in html
    assert "NaN" not in (tmp_path / "metrics.json").read_text()


def test_threshold_zero_turns_it_off(small: dict[str, ShowerData], tmp_path: Path) -> None:
    metrics = run_validation(small["a"], small["b"], tmp_path, classifier=False, threshold_mev=0.0,
                             draw_figures=False)
    assert metrics["threshold_mev"] == 0.0 and "off" in metrics["threshold_source"]


# ---------------------------------------------------------------------------------- the classifiers
def test_a_classifier_that_cannot_run_is_recorded_not_raised(small: dict[str, ShowerData], tmp_path: Path) -> None:
    ref, cand = small["a"].subset(slice(0, 15)), small["b"].subset(slice(0, 15))
    metrics = run_validation(ref, cand, tmp_path, draw_figures=False)
    assert metrics["classifier"]["low_level"]["available"] is False
    assert "at least 20 showers" in metrics["classifier"]["low_level"]["reason"]
    assert (tmp_path / "metrics.json").is_file()
    assert "unavailable" in (tmp_path / "report.html").read_text()


def test_robust_standardisation_keeps_logits_finite() -> None:
    """One feature nearly constant on the training split and huge elsewhere (the issue's -1.5e29 logits)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(200, 6))
    a[:, 0] = 0.0
    b[:, 0] = 0.0
    a[5, 0] = 1e-12  # a single tiny deposit: std ~ 1e-13 before the floor
    b[150:, 0] = 1e6  # enormous values outside the training rows
    _, std = robust_scale(torch.from_numpy(a[:100]))
    assert float(std.min()) > 1e-3 * float(std.median())
    res = train_classifier(a, b, seed=0, config=ClassifierConfig(threads=1, max_epochs=3))
    assert math.isfinite(res.auc) and math.isfinite(res.jsd)


def test_official_classifier_recipe_runs_in_float64(small: dict[str, ShowerData], tmp_path: Path) -> None:
    assert OFFICIAL_CLASSIFIER.hidden == 2048 and OFFICIAL_CLASSIFIER.n_layers == 3
    assert OFFICIAL_CLASSIFIER.dropout == 0.0 and OFFICIAL_CLASSIFIER.lr == 2e-4
    assert OFFICIAL_CLASSIFIER.max_epochs == 50 and OFFICIAL_CLASSIFIER.dtype == "float64"
    ref, cand = small["a"], small["scipb"]
    low = official_low_level_inputs(ref)
    assert low.dtype == np.float64 and low.shape == (len(ref), MESH.n_voxels + 1)
    high = official_high_level_inputs(compute_observables(ref))
    assert high.shape == (len(ref), 2 + 8 * MESH.n_z)
    # the recipe end to end, capped at one epoch of the full-size network (minutes otherwise on a CPU)
    metrics = run_validation(ref, cand, tmp_path, classifier="calochallenge",
                             classifier_config=ClassifierConfig(threads=1, max_train_seconds=0.0), draw_figures=False)
    for level in ("low_level", "high_level"):
        res = metrics["classifier"][level]
        assert res["recipe"] == "calochallenge" and res["epochs"] == 1 and math.isfinite(res["auc"])
    assert metrics["classifier_recipe"] == "calochallenge"
    small_net = replace(OFFICIAL_CLASSIFIER, hidden=32, max_epochs=5, threads=1)
    res = train_classifier(official_high_level_inputs(compute_observables(ref)),
                           official_high_level_inputs(compute_observables(cand)), config=small_net, seed=0)
    assert res.auc > 0.8  # SiW vs SciPb is easy


# -------------------------------------------------------------------------------------- conditions
def test_mismatched_conditions_warn_and_can_be_matched(tmp_path: Path) -> None:
    ref = _sample("SiW", 3, energies_gev=[10.0, 50.0], angles_deg=[90.0], n_per_point=60)
    cand = _sample("SiW", 4, energies_gev=[10.0, 50.0, 200.0], angles_deg=[90.0], n_per_point=60)
    metrics = run_validation(ref, cand, tmp_path / "plain", classifier=False, draw_figures=False)
    assert any("incident energies" in w for w in metrics["warnings"])
    assert "Warning:" in (tmp_path / "plain" / "report.html").read_text()
    r, c, summary = match_conditions(ref, cand)
    assert len(r) == len(c) == 120 and summary["points_shared"] == 2
    assert np.array_equal(np.sort(r.energies), np.sort(c.energies))
    matched = run_validation(ref, cand, tmp_path / "matched", classifier=False, match=True, draw_figures=False)
    assert matched["warnings"] == [] and matched["matched_conditions"]["kept_candidate"] == 120


def test_default_threshold_follows_the_geometry() -> None:
    from mlfastsim.showers.geometry import GRID_PRESETS
    from mlfastsim.showers.validation.validate import default_threshold

    ds2 = ShowerData(np.ones(3), np.ones((3, MESH.n_voxels), np.float32), MESH)
    value, source = default_threshold(ds2, ds2)
    assert value == pytest.approx(0.5e-3 / 0.033) and "CaloChallenge" in source
    grid = GRID_PRESETS["hcal48"]
    simulated = ShowerData(np.ones(2), np.ones((2, grid.n_voxels), np.float32), grid,
                           meta={"calorimeter": {"name": "steel_scint", "derived": {"threshold_mev": 0.26}}})
    generated = ShowerData(np.ones(2), np.ones((2, grid.n_voxels), np.float32), grid,
                           meta={"calorimeter": {"threshold_mev": 0.31}})
    assert default_threshold(simulated, generated)[0] == 0.26
    bare = ShowerData(np.ones(2), np.ones((2, grid.n_voxels), np.float32), grid)
    assert default_threshold(bare, generated)[0] == 0.31
    value, source = default_threshold(bare, bare)
    assert value == 0.0 and "--threshold-mev" in source


def test_histogram_counts_follow_numpys_rule_exactly() -> None:
    from mlfastsim.showers.validation.calochallenge import histogram_counts

    rng = np.random.default_rng(3)
    edges = np.logspace(np.log10(CC_THRESHOLD_MEV), 2.0, 50)
    values = np.concatenate([10 ** rng.uniform(-4, 2.5, 20000), edges, [0.0, edges[-1]]]).astype(np.float32)
    assert np.array_equal(histogram_counts(values, edges), np.histogram(values.astype(np.float64), edges)[0])


def test_fast_wasserstein_floor_matches_the_generic_split() -> None:
    from mlfastsim.showers.validation.metrics import reference_split_floor, wasserstein, wasserstein_split_floor

    ref = np.random.default_rng(8).gamma(2.0, size=6001)
    fast = wasserstein_split_floor(ref, 5000, n_splits=40, seed=1)
    slow = reference_split_floor(ref, lambda a, b: wasserstein(a, b)[0], 5000, n_splits=40, seed=2)
    assert fast[0] == pytest.approx(slow[0], rel=0.15) and fast[1] == pytest.approx(slow[1], rel=0.5)


def test_validate_files_refuses_calochallenge_mode_on_a_grid_and_leaves_no_folder(tmp_path: Path) -> None:
    from mlfastsim.core.errors import ConfigError
    from mlfastsim.showers.config import ValidateConfig
    from mlfastsim.showers.geometry import GRID_PRESETS
    from mlfastsim.showers.io.formats import write_native
    from mlfastsim.showers.pipeline import validate_files

    grid = GRID_PRESETS["hcal48"]
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_native(ShowerData(np.full(30, 5e4), rng.gamma(0.5, 1.0, (30, grid.n_voxels)).astype(np.float32), grid),
                     tmp_path / f"{name}.h5")
    out = tmp_path / "out"
    cfg = ValidateConfig(reference=tmp_path / "a.h5", candidate=tmp_path / "b.h5", output=out,
                         binning_mode="calochallenge", classifier=False)
    with pytest.raises(ConfigError, match="cylindrical datasets 2/3") as err:
        validate_files(cfg)
    assert err.value.field == "--binning-mode"
    assert not out.exists()  # never an empty output folder
    assert ValidateConfig(classifier=True).classifier == "fast" and ValidateConfig(classifier=False).classifier == "off"
