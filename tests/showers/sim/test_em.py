"""Tests of the reference EM shower simulator against the physics it claims.

Every statistical tolerance is set so that statistical noise passes and a real bug fails: swapping
electrons and photons moves the shower maximum by more than 1 X0, a wrong X0 or a forgotten sampling
fraction shifts it or the energy scale by large factors, and a missing angle mask leaves energy outside
the calorimeter.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from mlfastsim.core.errors import ConfigError
from mlfastsim.showers.geometry import DETECTOR_PRESETS, MESH_PRESETS, CylindricalMesh, Detector
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.sim.em import (
    PARTICLES,
    make_kinematics,
    simulate,
    simulate_chunk,
)

SIW = DETECTOR_PRESETS["SiW"]
PBWO4 = DETECTOR_PRESETS["PbWO4"]
DS2 = MESH_PRESETS["ds2"]


def _full(n: int, value: float) -> np.ndarray:
    return np.full(n, value, dtype=np.float64)


def _longitudinal_mesh(det: Detector, step_x0: float = 0.25) -> CylindricalMesh:
    """One radial bin of 10 R_M and fine z-bins over the whole detector: the longitudinal profile."""
    n_z = int(det.depth_mm / (step_x0 * det.x0))
    return CylindricalMesh(n_r=1, n_phi=1, n_z=n_z, size_r=10 * det.rm, size_z=step_x0 * det.x0)


def _shower_max_x0(data: ShowerData, det: Detector) -> float:
    """Depth (X0) of the maximum of the mean longitudinal profile: parabola in ln(profile) at the peak."""
    profile = data.grid.mean(axis=0).sum(axis=(1, 2))
    t = data.mesh.z_centres / det.x0
    i = int(np.argmax(profile))
    window = np.abs(t - t[i]) <= 1.5
    c2, c1, _ = np.polyfit(t[window], np.log(profile[window]), 2)
    return float(-c1 / (2 * c2))


# ------------------------------------------------------------------------------------ longitudinal
@pytest.fixture(scope="module")
def shower_maxima() -> dict[str, dict[float, float]]:
    """t_max - ln(E/Ec) in the homogeneous PbWO4 block, for electrons and photons."""
    mesh = _longitudinal_mesh(PBWO4)
    out: dict[str, dict[float, float]] = {}
    for particle in PARTICLES:
        out[particle] = {}
        for e_gev in (10.0, 50.0, 200.0, 500.0):
            data = simulate(
                PBWO4, mesh, _full(1500, e_gev * 1e3), _full(1500, 90.0), particle=particle, seed=11
            )
            out[particle][e_gev] = _shower_max_x0(data, PBWO4)
    return out


def test_shower_max_follows_ln_y_plus_c(shower_maxima: dict[str, dict[float, float]]) -> None:
    """t_max = ln(E/Ec) + C with C ~ -0.5 (e) and +0.5 (gamma) (PDG), photons about 1 X0 deeper."""
    for e_gev, t_e in shower_maxima["electron"].items():
        ln_y = math.log(e_gev * 1e3 / PBWO4.ec)
        c_e = t_e - ln_y
        c_g = shower_maxima["photon"][e_gev] - ln_y
        assert abs(c_e - (-0.5)) < 0.7, (e_gev, c_e)
        assert abs(c_g - 0.5) < 0.7, (e_gev, c_g)
        assert 0.6 < c_g - c_e < 1.8, (e_gev, c_g - c_e)


def test_shower_max_grows_linearly_with_ln_e(shower_maxima: dict[str, dict[float, float]]) -> None:
    for particle, maxima in shower_maxima.items():
        e = np.array(sorted(maxima))
        slope = np.polyfit(np.log(e), [maxima[k] for k in e], 1)[0]
        assert abs(slope - 1.0) < 0.2, (particle, slope)


def test_sampling_calorimeter_maximum_has_gp_correction() -> None:
    """The visible profile of Si-W peaks earlier than a homogeneous medium's (GP: t1/F_S + t2 (1 - e_hat))."""
    e_mev = 100e3
    data = simulate(SIW, _longitudinal_mesh(SIW), _full(1500, e_mev), _full(1500, 90.0), seed=5)
    f_s = SIW.x0 / SIW.layer_mm
    ehat = 1.0 / (1.0 + 0.007 * (SIW.absorber.z - SIW.active.z))  # type: ignore[union-attr]
    expected = math.log(e_mev / SIW.ec) - 0.812 - 0.55 / f_s - 0.69 * (1.0 - ehat)
    assert abs(_shower_max_x0(data, SIW) - expected) < 0.3


# ------------------------------------------------------------------------------------------- lateral
@pytest.mark.parametrize("det", [PBWO4, SIW], ids=lambda d: d.name)
def test_lateral_containment_in_moliere_radii(det: Detector) -> None:
    """~90 % of the energy within 1 R_M and ~95 % within 2 R_M; non-uniform r bins integrate exactly."""
    rm = det.rm
    edges = rm * np.r_[np.arange(0.0, 2.0, 0.1), np.arange(2.0, 4.0, 0.5), np.arange(4.0, 10.1, 2.0)]
    mesh = CylindricalMesh(
        n_r=edges.size - 1,
        n_phi=1,
        n_z=int(det.depth_mm // det.x0),
        size_r=0.1 * rm,
        size_z=det.x0,
        r_edges_mm=tuple(edges.tolist()),
    )
    data = simulate(det, mesh, _full(400, 50e3), _full(400, 90.0), seed=3)
    grid = data.grid.mean(axis=0)[:, 0, :]  # (n_z, n_r)
    radial = grid.sum(axis=0)
    cum = np.cumsum(radial) / radial.sum()
    in_1 = cum[np.searchsorted(edges, rm * (1 - 1e-9)) - 1]
    in_2 = cum[np.searchsorted(edges, 2 * rm * (1 - 1e-9)) - 1]
    assert abs(in_1 - 0.90) < 0.04, in_1
    assert abs(in_2 - 0.95) < 0.03, in_2
    # The shower widens with depth: the 1 R_M core holds much less of a layer well past the maximum.
    per_layer_in_1 = np.cumsum(grid, axis=1)[:, np.searchsorted(edges, rm * (1 - 1e-9)) - 1] / grid.sum(
        axis=1
    )
    t_max = int(np.argmax(grid.sum(axis=1)))
    assert per_layer_in_1[2 * t_max] < per_layer_in_1[t_max] - 0.1


# --------------------------------------------------------------------------- energy scale, resolution
def test_energy_scale_is_incident_scale_on_ds2() -> None:
    """E_sum/E_inc is the containment (0.9-1.0), not the visible fraction (3.6 % for SiW)."""
    data = simulate(SIW, DS2, _full(300, 50e3), _full(300, 90.0), seed=2)
    ratio = data.showers.sum(axis=1) / data.energies
    assert 0.95 < ratio.mean() < 1.0
    assert data.meta["detector"]["sampling_fraction"] == pytest.approx(SIW.sampling_fraction)


def test_resolution_stochastic_and_constant_terms() -> None:
    """Fit sigma/E = a/sqrt(E) (+) b: a within 25 % of the detector's stochastic term."""
    mesh = CylindricalMesh(n_r=2, n_phi=1, n_z=4, size_r=5 * SIW.rm, size_z=SIW.depth_mm / 4)
    energies_gev = np.array([2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0])
    rel_var = []
    for i, e_gev in enumerate(energies_gev):
        data = simulate(SIW, mesh, _full(2000, e_gev * 1e3), _full(2000, 90.0), seed=100 + i)
        tot = data.showers.sum(axis=1, dtype=np.float64)
        rel_var.append(tot.var() / tot.mean() ** 2)
    a2, b2 = np.linalg.lstsq(np.c_[1.0 / energies_gev, np.ones_like(energies_gev)], rel_var, rcond=None)[0]
    a_fit, b_fit = math.sqrt(max(a2, 0.0)), math.sqrt(max(b2, 0.0))
    assert abs(a_fit / SIW.resolution_a - 1.0) < 0.25, (a_fit, SIW.resolution_a)
    assert b_fit < 0.025, b_fit


def test_oblique_sampling_term_grows_as_inverse_sqrt_sin() -> None:
    """Oblique tracks cross layers 1/sin(theta) thicker: the sampling variance grows as 1/sin(theta).

    The same seed gives the same shower shapes (and leakage) with a near-noiseless twin detector, so the
    variance of the difference isolates the sampling term from the leakage that also grows at 50 deg.
    """
    mesh = CylindricalMesh(n_r=1, n_phi=1, n_z=4, size_r=3 * SIW.rm, size_z=SIW.depth_mm / 4)
    quiet = dataclasses.replace(SIW, stochastic_term=1e-4)
    var, dep = {}, {}
    for theta in (90.0, 50.0):
        kw = {"seed": 8, "chunk_size": 4000}
        noisy = simulate(SIW, mesh, _full(3000, 20e3), _full(3000, theta), **kw).showers.sum(
            axis=1, dtype=np.float64
        )
        ref = simulate(quiet, mesh, _full(3000, 20e3), _full(3000, theta), **kw).showers.sum(
            axis=1, dtype=np.float64
        )
        var[theta], dep[theta] = np.var(noisy - ref), ref.mean()
    expected = dep[50.0] / dep[90.0] / math.sin(math.radians(50.0))  # q/sin(theta) * E_dep
    assert abs(var[50.0] / var[90.0] / expected - 1.0) < 0.08, (var[50.0] / var[90.0], expected)
    # and the 90 deg sampling variance is a^2 E: q = a^2 * 1 GeV per MeV deposited
    assert abs(var[90.0] / (SIW.resolution_a**2 * 1e3 * dep[90.0]) - 1.0) < 0.08


# ------------------------------------------------------------------------------------ incidence angle
def test_oblique_incidence_is_phi_asymmetric_and_loses_energy() -> None:
    cos_phi = np.cos(DS2.phi_centres)
    ratio, total = {}, {}
    for theta in (90.0, 50.0):
        data = simulate(SIW, DS2, _full(1000, 100e3), _full(1000, theta), seed=4)
        grid = data.grid.sum(axis=0)
        early_outer = grid[:4, :, 1:]  # first 4 layers, r > 4.65 mm: where the front face cuts
        ratio[theta] = early_outer[:, cos_phi < 0].sum() / early_outer[:, cos_phi > 0].sum()
        whole = grid.sum(axis=(0, 2))
        total[theta] = whole.sum()
        if theta == 90.0:
            # Normal incidence: symmetric in phi, shower by shower on average.
            assert abs(whole[cos_phi > 0].sum() / whole[cos_phi < 0].sum() - 1.0) < 0.01
    assert abs(ratio[90.0] - 1.0) < 0.1, ratio
    assert ratio[50.0] < 0.9, ratio  # the side towards the front face (phi = pi) loses energy
    assert total[50.0] < total[90.0]


@pytest.mark.parametrize("theta", [40.0, 90.0])
def test_no_energy_outside_the_calorimeter(theta: float) -> None:
    """Voxels wholly in front of the front face or behind the last layer stay exactly empty."""
    thin = Detector("thin SiW", SIW.absorber, SIW.absorber_mm, 30, SIW.active, SIW.active_mm)  # 51 mm, 12 X0
    data = simulate(thin, DS2, _full(50, 200e3), _full(50, theta), seed=9)
    s, c = math.sin(math.radians(theta)), math.cos(math.radians(theta))
    z = DS2.z_edges[:, None, None]
    phi = DS2.phi_edges[None, :, None]
    r = DS2.r_edges[None, None, :]
    # Depth at the voxel corners (cos(phi) is monotone between phi edges except at 0 and pi: add those).
    depths = []
    for zz in (z[:-1], z[1:]):
        for rr in (r[..., :-1], r[..., 1:]):
            for pp in (phi[:, :-1], phi[:, 1:]):
                depths.append(zz * s + rr * np.cos(pp) * c)
    depths = np.broadcast_arrays(*depths)
    lo, hi = np.min(depths, axis=0), np.max(depths, axis=0)
    outside = (hi < -1e-9) | (lo > thin.depth_mm + 1e-9)
    assert outside.sum() > 100
    assert np.all(data.grid[:, outside] == 0.0)
    assert np.all(data.grid[:, ~outside].sum(axis=1) > 0)
    if theta == 90.0:
        # A 12 X0 calorimeter leaks a good part of a 200 GeV shower out of the back.
        assert (data.showers.sum(axis=1) / data.energies).mean() < 0.8


# ---------------------------------------------------------------------------------- reproducibility
def test_same_seed_same_showers_and_order_independent_chunks() -> None:
    e, a = make_kinematics(
        energy_range_gev=(1.0, 300.0), angle_range_deg=(50.0, 90.0), n_per_point=150, seed=1
    )
    first = simulate(SIW, DS2, e, a, particle="photon", seed=21, chunk_size=64)
    again = simulate(SIW, DS2, e, a, particle="photon", seed=21, chunk_size=64)
    assert np.array_equal(first.showers, again.showers)
    other = simulate(SIW, DS2, e, a, particle="photon", seed=22, chunk_size=64)
    assert not np.array_equal(first.showers, other.showers)
    # Chunks computed in any order (as Dask workers would) reassemble into the serial result.
    starts = list(range(0, e.size, 64))
    parts = {
        i: simulate_chunk(SIW, DS2, e[s : s + 64], a[s : s + 64], particle="photon", seed=21, chunk_index=i)
        for i, s in reversed(list(enumerate(starts)))
    }
    assert np.array_equal(np.concatenate([parts[i] for i in range(len(starts))]), first.showers)
    # One chunk covering everything is chunk 0.
    whole = simulate(SIW, DS2, e, a, particle="photon", seed=21, chunk_size=e.size)
    assert np.array_equal(
        whole.showers, simulate_chunk(SIW, DS2, e, a, particle="photon", seed=21, chunk_index=0)
    )
    assert first.meta == {
        "detector": SIW.to_dict(),
        "particle": "photon",
        "seed": 21,
        "chunk_size": 64,
        "simulator": "gflash-gp",
    }


def test_worker_processes_reproduce_the_serial_run() -> None:
    """Chunks farmed out to fresh processes (as Dask workers are) give bit-identical showers."""
    e, a = make_kinematics(energies_gev=[3.0, 30.0], angle_range_deg=(50.0, 90.0), n_per_point=40, seed=2)
    serial = simulate(SIW, DS2, e, a, seed=13, chunk_size=25)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                simulate_chunk,
                SIW,
                DS2,
                e[s : s + 25],
                a[s : s + 25],
                particle="electron",
                seed=13,
                chunk_index=i,
            )
            for i, s in enumerate(range(0, e.size, 25))
        ]
        parallel = np.concatenate([f.result() for f in futures])
    assert np.array_equal(parallel, serial.showers)


@pytest.mark.parametrize("mesh_name", ["ds2", "par04"])
@pytest.mark.parametrize("det_name", list(DETECTOR_PRESETS))
def test_output_is_finite_non_negative_float32(det_name: str, mesh_name: str) -> None:
    mesh = MESH_PRESETS[mesh_name]
    e, a = make_kinematics(energies_gev=[1.0, 1000.0], angles_deg=[30.0, 90.0], n_per_point=3, seed=0)
    for particle in PARTICLES:
        data = simulate(DETECTOR_PRESETS[det_name], mesh, e, a, particle=particle, seed=3, chunk_size=5)
        assert data.showers.dtype == np.float32
        assert data.showers.shape == (12, mesh.n_voxels)
        assert np.all(np.isfinite(data.showers)) and np.all(data.showers >= 0)
        ratio = data.showers.sum(axis=1) / data.energies
        # Catches scale errors (a forgotten sampling fraction is x0.04 or x28); leakage and fluctuations
        # legitimately span 0.25 (1 TeV in the 11 X0 SciPb) to ~1.3 (1 GeV at 30 deg).
        assert np.all(ratio > 0.15) and np.all(ratio < 1.6)
        data.validate()
        assert np.array_equal(data.energies, e) and np.array_equal(data.angles, a)


def test_low_energy_cells_are_sparse() -> None:
    """Cells far below the fluctuation quantum are mostly empty, as in full simulation."""
    data = simulate(PBWO4, MESH_PRESETS["par04"], _full(20, 1e3), _full(20, 90.0), seed=1)
    assert (data.showers < 1e-3).mean() > 0.5


# --------------------------------------------------------------------------------------- kinematics
def test_kinematics_grid_from_lists() -> None:
    e, a = make_kinematics(energies_gev=[10, 100], angles_deg=[50, 90], n_per_point=3, seed=0)
    assert e.dtype == np.float32 and a.dtype == np.float32
    assert e.tolist() == [1e4] * 6 + [1e5] * 6
    assert a.tolist() == [50.0] * 3 + [90.0] * 3 + [50.0] * 3 + [90.0] * 3


def test_kinematics_ranges_and_mixed() -> None:
    e, a = make_kinematics(energy_range_gev=(1, 1000), angle_range_deg=(50, 90), n_per_point=4000, seed=5)
    assert e.shape == a.shape == (4000,)
    assert e.min() >= 1e3 and e.max() <= 1e6 and a.min() >= 50 and a.max() <= 90
    # log-uniform: a third of the showers per decade
    per_decade = np.histogram(np.log10(e / 1e3), bins=[0, 1, 2, 3])[0] / e.size
    assert np.allclose(per_decade, 1 / 3, atol=0.03)
    again = make_kinematics(energy_range_gev=(1, 1000), angle_range_deg=(50, 90), n_per_point=4000, seed=5)
    assert np.array_equal(e, again[0]) and np.array_equal(a, again[1])

    e, a = make_kinematics(energies_gev=[20, 40], angle_range_deg=(60, 80), n_per_point=5, seed=1)
    assert e.tolist() == [2e4] * 5 + [4e4] * 5 and np.all((a >= 60) & (a <= 80))
    e, a = make_kinematics(energy_range_gev=(2, 4), angles_deg=[70], n_per_point=5, seed=1)
    assert np.all(a == 70) and np.all((e >= 2e3) & (e <= 4e3))
    e, a = make_kinematics(energies_gev=[5], n_per_point=2, seed=1)
    assert a.tolist() == [90.0, 90.0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"energies_gev": [10, -1]}, "--energy-gev"),
        ({"energies_gev": []}, "--energy-gev"),
        ({}, "--energy-gev"),
        ({"energies_gev": [10], "energy_range_gev": (1, 2)}, "--energy-gev"),
        ({"energy_range_gev": (100, 10)}, "--energy-range-gev"),
        ({"energy_range_gev": (0, 10)}, "--energy-range-gev"),
        ({"energies_gev": [10], "angles_deg": [0]}, "--angle-deg"),
        ({"energies_gev": [10], "angles_deg": [91]}, "--angle-deg"),
        ({"energies_gev": [10], "angle_range_deg": (80, 95)}, "--angle-range-deg"),
        ({"energies_gev": [10], "angle_range_deg": (60, 60)}, "--angle-range-deg"),
        ({"energies_gev": [10], "n_per_point": 0}, "--n-per-point"),
        ({"energies_gev": [10], "seed": -1}, "--seed"),
        ({"energies_gev": [1e30]}, "--energy-gev"),  # a typo, not an energy: refused, not simulated
        ({"energies_gev": [10, float("inf")]}, "--energy-gev"),
        ({"energy_range_gev": (10, float("nan"))}, "--energy-range-gev"),
        ({"energy_range_gev": (10, 2e6)}, "--energy-range-gev"),
    ],
)
def test_bad_kinematics_name_the_option(kwargs: dict, field: str) -> None:
    args = {"n_per_point": 2, "seed": 0, **kwargs}
    with pytest.raises(ConfigError) as info:
        make_kinematics(**args)
    assert info.value.field == field
    assert info.value.fix


def test_bad_particle_and_inputs_raise_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        simulate(SIW, DS2, _full(2, 1e4), _full(2, 90.0), particle="pion")
    assert info.value.field == "--particle" and "electron" in (info.value.fix or "")
    with pytest.raises(ConfigError):
        simulate_chunk(SIW, DS2, _full(2, 1e4), _full(2, 90.0), particle="muon", seed=0, chunk_index=0)
    with pytest.raises(ConfigError):
        simulate(SIW, DS2, _full(2, 1e4), _full(2, 0.0))
    with pytest.raises(ConfigError):
        simulate(SIW, DS2, np.array([1e4, np.nan]), _full(2, 90.0))
    with pytest.raises(ConfigError):
        simulate(SIW, DS2, _full(2, 1e4), _full(3, 90.0))
    with pytest.raises(ConfigError) as info:
        simulate(SIW, DS2, _full(2, 1e4), _full(2, 90.0), chunk_size=0)
    assert info.value.field == "--chunk-size"
    with pytest.raises(ConfigError) as info:
        simulate_chunk(SIW, DS2, _full(2, 1e4), _full(2, 90.0), particle="electron", seed=-3, chunk_index=0)
    assert info.value.field == "--seed"
