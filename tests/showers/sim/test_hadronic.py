"""Tests of the reference hadron-shower simulator against the physics it claims.

Statistical tolerances are a few standard errors of 300 showers; what they guard against: a wrong
lambda_I or Bock shape moves the depth or kills its log E growth, a forgotten h/e or sampling-fraction
correction moves E_sum/E_inc far from 0.8-0.9, a wrong MIP scale moves the MIP peak of the hit spectrum,
a missing threshold leaves tiny cells, and a shared random stream breaks chunk invariance.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlfastsim.core.errors import ConfigError
from mlfastsim.showers.geometry import GRID_PRESETS, CartesianGrid, CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.sim.hadronic import (
    BOCK_A,
    BOCK_B,
    BOCK_D,
    BOCK_W,
    HADRON_CALORIMETERS,
    HadronCalorimeter,
    bock_em_fraction,
    bock_parameters,
    load_calorimeter,
    make_pion_energies,
    simulate_pions,
    simulate_pions_data,
)

CALO = HADRON_CALORIMETERS["steel_scint"]
HCAL48 = GRID_PRESETS["hcal48"]
ENERGIES_GEV = (10.0, 30.0, 100.0)
N_SHOWERS = 300
# Deep and wide grid (9 lambda_I, +-480 mm) for the resolution: leakage out of the 5.9 lambda_I of hcal48
# adds a large, non-Gaussian constant term that would hide the intrinsic a/sqrt(E).
DEEP = CartesianGrid(n_x=32, n_y=32, n_z=72, cell_x=30.0, cell_y=30.0, cell_z=26.5, name="deep")


def _summaries(grid: CartesianGrid, e_gev: float, seed: int) -> dict[str, np.ndarray]:
    """Per-shower observables, so the fixtures do not keep 100k-voxel arrays around."""
    showers = simulate_pions(np.full(N_SHOWERS, e_gev * 1e3), grid, CALO, seed)
    cells = grid.to_grid(showers)
    e_sum = showers.sum(axis=1, dtype=np.float64)
    layer = cells.sum(axis=(2, 3), dtype=np.float64)
    cog = (layer * grid.z_centres).sum(axis=1) / np.maximum(e_sum, 1e-12)
    transverse = cells.sum(axis=1, dtype=np.float64)
    r = grid.radial_distances()
    hits = showers[showers > 0]
    return {
        "e_sum": e_sum,
        "cog_z": cog,
        "n_hits": (showers > 0).sum(axis=1),
        "core": (transverse * (r <= 1.5 * grid.cell_x)).sum(axis=(1, 2)) / np.maximum(e_sum, 1e-12),
        "halo": (transverse * (r > 3.5 * grid.cell_x)).sum(axis=(1, 2)) / np.maximum(e_sum, 1e-12),
        "hits_mip": hits / CALO.mip_mev,
        "min_nonzero": np.array([hits.min() if hits.size else np.inf]),
        "negative_or_nan": np.array([int((showers < 0).sum() + (~np.isfinite(showers)).sum())]),
    }


@pytest.fixture(scope="module")
def hcal48() -> dict[float, dict[str, np.ndarray]]:
    return {e: _summaries(HCAL48, e, seed=5) for e in ENERGIES_GEV}


@pytest.fixture(scope="module")
def deep() -> dict[float, dict[str, np.ndarray]]:
    return {e: _summaries(DEEP, e, seed=6) for e in ENERGIES_GEV}


# ------------------------------------------------------------------------------------------ constants
def test_calorimeter_constants_match_pdg_and_hcal48() -> None:
    assert CALO.absorber_x0_mm == 17.57 and CALO.absorber_lambda_mm == 167.7  # PDG Fe
    assert CALO.layer_pitch_mm == HCAL48.cell_z and CALO.n_layers == HCAL48.n_z
    assert 5.5 < CALO.depth_lambda < 6.3  # 48 x 20 mm Fe ~ 5.9 lambda_I
    assert 0.024 < CALO.sampling_fraction_mip < 0.028  # 3 mm scint / (20 mm Fe + 3 mm scint), by dE/dx
    assert 18.0 < CALO.mip_mev < 24.0  # Landau MPV 0.47 MeV visible over the electron sampling fraction
    assert CALO.threshold_mev == pytest.approx(0.5 * CALO.mip_mev)
    f = CALO.mean_f_em(np.array([10.0, 100.0]))
    assert 0.25 < f[0] < 0.4 and 0.45 < f[1] < 0.6  # PDG: 1 - (E/1 GeV)^(m - 1)
    d = CALO.to_dict()
    json.dumps(d)
    assert HadronCalorimeter.from_dict(d) == CALO


def test_load_calorimeter(tmp_path) -> None:
    assert load_calorimeter("steel_scint") is CALO
    assert load_calorimeter(CALO.to_dict()) == CALO
    path = tmp_path / "calo.yaml"
    path.write_text("calorimeter:\n  name: thick\n  absorber_mm: 22.0\n")
    thick = load_calorimeter(path)
    assert thick.absorber_mm == 22.0 and thick.lambda_per_layer > CALO.lambda_per_layer
    with pytest.raises(ConfigError):
        load_calorimeter("lead_glass")
    with pytest.raises(ConfigError):
        load_calorimeter({"absorber_thickness": 3.0})


def test_bad_calorimeter_and_inputs_are_refused() -> None:
    with pytest.raises(ConfigError):
        HadronCalorimeter(absorber_mm=30.0)  # thicker than the pitch
    with pytest.raises(ConfigError):
        HadronCalorimeter(e_over_h=0.0)
    with pytest.raises(ConfigError):
        simulate_pions(np.array([1e4, -1.0]), HCAL48, CALO, 0)
    with pytest.raises(ConfigError):
        simulate_pions(np.array([1e4]), HCAL48, CALO, -1)
    with pytest.raises(ConfigError):
        simulate_pions(np.array([1e4]), CylindricalMesh(n_r=2, n_phi=2, n_z=2, size_r=1, size_z=1), CALO, 0)
    assert simulate_pions(np.array([]), HCAL48, CALO, 0).shape == (0, HCAL48.n_voxels)


def test_pion_energies_fixed_or_uniform() -> None:
    fixed = make_pion_energies(energies_gev=[10, 50], n_per_point=3, seed=0)
    np.testing.assert_array_equal(fixed, np.float32([1e4, 1e4, 1e4, 5e4, 5e4, 5e4]))
    e = make_pion_energies(energy_range_gev=(10, 100), n_per_point=4000, seed=1)
    assert e.dtype == np.float32 and 1e4 <= e.min() and e.max() <= 1e5
    assert abs(float(np.median(e)) - 55e3) < 3e3  # uniform (a log-uniform draw has median 31.6 GeV)
    np.testing.assert_array_equal(e, make_pion_energies(energy_range_gev=(10, 100), n_per_point=4000, seed=1))
    with pytest.raises(ConfigError):
        make_pion_energies(energy_range_gev=(100, 10), n_per_point=4, seed=1)
    with pytest.raises(ConfigError):
        make_pion_energies(energies_gev=[10], energy_range_gev=(10, 100), n_per_point=4, seed=1)


# ---------------------------------------------------------------------------------- reproducibility
def test_deterministic_and_independent_of_chunk_size() -> None:
    grid = HCAL48.cropped(25, 25)
    e = np.array([10e3, 50e3, 20e3, 90e3, 15e3, 100e3, 30e3])
    a = simulate_pions(e, grid, CALO, seed=3)
    assert a.dtype == np.float32 and a.shape == (e.size, grid.n_voxels)
    np.testing.assert_array_equal(a, simulate_pions(e, grid, CALO, seed=3))
    np.testing.assert_array_equal(a, simulate_pions(e, grid, CALO, seed=3, chunk_size=2))
    np.testing.assert_array_equal(a[3:], simulate_pions(e, grid, CALO, seed=3, chunk_size=3)[3:])
    # slices farmed out with their offset reproduce the serial run (the Dask fan-out in the pipeline)
    np.testing.assert_array_equal(a[3:], simulate_pions(e[3:], grid, CALO, seed=3, first_event=3))
    assert not np.array_equal(a, simulate_pions(e, grid, CALO, seed=4))
    # showers are independent draws, not copies of one another
    b = simulate_pions(np.full(4, 50e3), grid, CALO, seed=3)
    assert len({x.tobytes() for x in b}) == 4


def test_shower_data_wrapper() -> None:
    data = simulate_pions_data(np.array([20e3, 40e3]), HCAL48, CALO, 9)
    assert isinstance(data, ShowerData) and data.mesh == HCAL48
    assert data.meta["particle"] == "pion" and data.meta["seed"] == 9
    assert data.meta["calorimeter"]["name"] == "steel_scint"
    np.testing.assert_array_equal(data.angles, [90.0, 90.0])
    data.validate()
    json.dumps(data.meta)


# -------------------------------------------------------------------------------------------- physics
def test_sanity_threshold_and_energy(hcal48: dict[float, dict[str, np.ndarray]]) -> None:
    for e_gev, s in hcal48.items():
        assert s["negative_or_nan"][0] == 0
        assert s["min_nonzero"][0] >= np.float32(CALO.threshold_mev), e_gev  # no hit below threshold
        ratio = s["e_sum"] / (e_gev * 1e3)
        assert ratio.max() < 1.6, e_gev  # fluctuations, never a multiple of the energy
        assert np.percentile(ratio, 95) < 1.15, e_gev  # the bulk is below the electromagnetic scale
        assert (ratio > 0).all()


def test_non_compensation_response_below_one_and_rising(deep: dict[float, dict[str, np.ndarray]],
                                                        hcal48: dict[float, dict[str, np.ndarray]]) -> None:
    for sample in (deep, hcal48):
        resp = [float(np.mean(sample[e]["e_sum"])) / (e * 1e3) for e in ENERGIES_GEV]
        assert all(0.65 < r < 0.95 for r in resp), resp
        # f_em grows with E: 10 -> 100 GeV raises the contained response by ~7 %; errors ~1 %
        assert resp[2] - resp[0] > 0.02, resp
    deep_resp = [float(np.mean(deep[e]["e_sum"])) / (e * 1e3) for e in ENERGIES_GEV]
    assert deep_resp[0] < deep_resp[1] < deep_resp[2], deep_resp


def test_resolution_stochastic_term(deep: dict[float, dict[str, np.ndarray]]) -> None:
    """sigma/E = a/sqrt(E) (+) b: least squares of (sigma/E)^2 on 1/E; a in 0.40-0.70, b a few %."""
    inv_e = np.array([1.0 / e for e in ENERGIES_GEV])
    rel2 = np.array([(np.std(deep[e]["e_sum"]) / np.mean(deep[e]["e_sum"])) ** 2 for e in ENERGIES_GEV])
    slope, intercept = np.polyfit(inv_e, rel2, 1)
    a, b = math.sqrt(max(slope, 0.0)), math.sqrt(max(intercept, 0.0))
    assert 0.40 < a < 0.70, (a, b, rel2)
    assert b < 0.08, (a, b, rel2)


def test_mean_depth_grows_with_log_energy(hcal48: dict[float, dict[str, np.ndarray]]) -> None:
    ln_e = np.log(ENERGIES_GEV)
    cog = np.array([np.mean(hcal48[e]["cog_z"]) for e in ENERGIES_GEV])
    err = np.array([np.std(hcal48[e]["cog_z"]) / math.sqrt(N_SHOWERS) for e in ENERGIES_GEV])
    slope = np.polyfit(ln_e, cog, 1)[0]
    slope_err = math.sqrt(np.sum(err**2)) / (ln_e[-1] - ln_e[0])  # conservative
    assert slope > 2 * slope_err, (cog, slope, slope_err)
    # the shower starts ~1 lambda_eff (215 mm) in and develops over ~1-2 lambda: 300-700 mm
    assert 300 < cog[0] < cog[-1] < 700, cog


def test_occupancy_sparse_and_growing(hcal48: dict[float, dict[str, np.ndarray]]) -> None:
    occ = [float(np.mean(hcal48[e]["n_hits"])) / HCAL48.n_voxels for e in ENERGIES_GEV]
    assert 3e-4 < occ[0] < occ[1] < occ[2] < 2e-2, occ  # ~100 hits at 10 GeV, several hundred at 100


def test_lateral_core_and_halo(hcal48: dict[float, dict[str, np.ndarray]]) -> None:
    for e_gev, s in hcal48.items():
        core, halo = float(np.mean(s["core"])), float(np.mean(s["halo"]))
        assert core > 0.5, (e_gev, core)  # the 3 x 3 cells around the axis hold most of the energy
        assert 0.03 < halo < 0.3, (e_gev, halo)  # but a halo beyond 3.5 cells (> 0.5 lambda_I) exists


def test_hit_spectrum_has_mip_peak(hcal48: dict[float, dict[str, np.ndarray]]) -> None:
    hits = np.concatenate([s["hits_mip"] for s in hcal48.values()])
    counts, edges = np.histogram(hits, bins=np.arange(0.5, 5.0, 0.1))
    peak = edges[np.argmax(counts)] + 0.05
    assert 0.7 < peak < 1.6, peak  # the most probable hit is a MIP (Landau peak at 1 MIP)
    assert np.mean(hits > 10) > 0.05  # dense EM cores and nuclear spots make a long tail


# ------------------------------------------------------------------------------------------ Bock et al.
def test_bock_constants_are_the_published_ones() -> None:
    """NIM 186 (1981) 533: a = 0.6165 + 0.3183 ln E, b = 0.2198, d = 0.9099 - 0.0237 ln E, w = 0.4634."""
    assert (BOCK_A, BOCK_B, BOCK_D, BOCK_W) == ((0.6165, 0.3183), 0.2198, (0.9099, -0.0237), 0.4634)
    a, b, d, w = bock_parameters(100.0)
    assert a == pytest.approx(0.6165 + 0.3183 * math.log(100.0))
    assert d == pytest.approx(0.9099 - 0.0237 * math.log(100.0))
    assert (b, w) == (0.2198, 0.4634)


def test_bock_weight_and_gabriel_f_em_agree() -> None:
    """Two independent published parametrisations of the EM share agree: the visible EM energy fraction
    implied by Bock's amplitude weight w, and the simulator's <f_em> (Gabriel et al.) seen at the e and h
    scales.  A wrong a, b or d (or X0 and lambda swapped) breaks this by far more than the 0.06 allowed."""
    ratio = CALO.lambda_eff_mm / CALO.x0_eff_mm
    for e_gev in (10.0, 30.0, 100.0):
        f = float(CALO.mean_f_em(e_gev))
        visible = f / (f + (1.0 - f) / CALO.e_over_h)
        assert abs(visible - bock_em_fraction(e_gev, ratio)) < 0.06, (e_gev, visible, bock_em_fraction(e_gev, ratio))


def test_kernel_mean_depth_is_bocks() -> None:
    """The energy-weighted mean depth of showers in a deep, wide calorimeter is lambda_eff (first
    interaction) + Bock's mean depths a/b X0 and a/d lambda, weighted by the visible EM fraction.  Shape
    and f_em fluctuations off, no threshold: this pins the kernel's units (rate per X0, rate per lambda)."""
    calo = HadronCalorimeter(f_em_sigma=0.0, sigma_ln_shape=0.0, threshold_mip=0.0)
    grid = CartesianGrid(n_x=16, n_y=16, n_z=150, cell_x=60.0, cell_y=60.0, cell_z=26.5, name="deeper")
    n, e_gev = 300, 50.0
    cells = grid.to_grid(simulate_pions(np.full(n, e_gev * 1e3), grid, calo, 11))
    layer = cells.sum(axis=(2, 3), dtype=np.float64)
    depth = (layer * grid.z_centres).sum(axis=1) / layer.sum(axis=1)
    a, b, d, _ = bock_parameters(e_gev - 0.2)  # ~8 layers of MIP losses before the interaction
    f = float(calo.mean_f_em(e_gev))
    w_vis = f / (f + (1.0 - f) / calo.e_over_h)
    expected = calo.lambda_eff_mm + w_vis * a / b * calo.x0_eff_mm + (1.0 - w_vis) * a / d * calo.lambda_eff_mm
    err = depth.std() / math.sqrt(n)
    assert abs(depth.mean() - expected) < 4 * err + 5.0, (depth.mean(), expected, err)
