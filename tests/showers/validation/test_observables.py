"""Observables on hand-made showers whose answers are known on paper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlfastsim.core.errors import DataError
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.validation.observables import (
    CELL_ENERGY_MIN_MEV,
    PER_LAYER,
    cell_energy_edges,
    cell_energy_histogram,
    compute_observables,
    empty_showers,
    high_level_feature_names,
    high_level_features,
)

MESH = CylindricalMesh(n_r=4, n_phi=8, n_z=6, size_r=2.0, size_z=3.0, name="tiny")


def _showers(
    cells: list[dict[tuple[int, int, int], float]], mesh: CylindricalMesh = MESH, e_inc: float = 1000.0
) -> ShowerData:
    """Showers from {(z, phi, r): MeV} dicts."""
    grid = np.zeros((len(cells), *mesh.shape), dtype=np.float32)
    for i, shower in enumerate(cells):
        for (z, phi, r), e in shower.items():
            grid[i, z, phi, r] = e
    return ShowerData(energies=np.full(len(cells), e_inc), showers=mesh.to_flat(grid), mesh=mesh)


def test_single_voxel_moments_are_its_centre_and_widths_vanish() -> None:
    z, phi, r = 2, 3, 1
    obs = compute_observables(_showers([{(z, phi, r): 50.0}]))
    zc, rc, ac = MESH.z_centres[z], MESH.r_centres[r], MESH.phi_centres[phi]
    assert obs["first_moment_z"][0] == pytest.approx(zc)  # 7.5 mm: the cell centre, not Par04's 6 mm edge
    assert obs["first_moment_r"][0] == pytest.approx(rc)
    assert obs["second_moment_z"][0] == pytest.approx(0.0, abs=1e-12)
    assert obs["second_moment_r"][0] == pytest.approx(0.0, abs=1e-12)
    assert obs["e_total"][0] == pytest.approx(50.0)
    assert obs["e_ratio"][0] == pytest.approx(0.05)
    assert obs["n_hits"][0] == 1
    assert obs["ec_eta"][0, z] == pytest.approx(rc * math.cos(ac))
    assert obs["ec_phi"][0, z] == pytest.approx(rc * math.sin(ac))
    assert obs["ec_r"][0, z] == pytest.approx(rc)
    for key in ("width_eta", "width_phi", "width_r"):
        assert obs[key][0, z] == pytest.approx(0.0, abs=1e-9)
    # empty layers: CaloChallenge convention, centre and width 0, sparsity 1
    others = [layer for layer in range(MESH.n_z) if layer != z]
    assert np.all(obs["ec_eta"][0, others] == 0) and np.all(obs["sparsity"][0, others] == 1)
    assert obs["sparsity"][0, z] == pytest.approx(1 - 1 / (MESH.n_phi * MESH.n_r))


def test_two_voxels_give_the_energy_weighted_mean_and_variance() -> None:
    # 30 MeV in layer 0, 10 MeV in layer 4, same (phi, r): mean z = (30*1.5 + 10*13.5)/40 = 4.5 mm
    obs = compute_observables(_showers([{(0, 0, 2): 30.0, (4, 0, 2): 10.0}]))
    assert obs["first_moment_z"][0] == pytest.approx(4.5)
    assert obs["second_moment_z"][0] == pytest.approx((30 * 3.0**2 + 10 * 9.0**2) / 40)
    np.testing.assert_allclose(obs["energy_per_layer"][0], [30, 0, 0, 0, 10, 0])
    np.testing.assert_allclose(obs["energy_per_r_bin"][0], [0, 0, 40, 0])
    np.testing.assert_allclose(obs["energy_per_phi_bin"][0], [40, 0, 0, 0, 0, 0, 0, 0])


def test_opposite_cells_in_one_layer_centre_at_zero_with_width_r_cos() -> None:
    # two equal cells at alpha and alpha + pi: centre of energy at the axis, width |x| of one cell
    r = 3
    obs = compute_observables(_showers([{(1, 0, r): 5.0, (1, 4, r): 5.0}]))
    rc, a0 = MESH.r_centres[r], MESH.phi_centres[0]
    assert obs["ec_eta"][0, 1] == pytest.approx(0.0, abs=1e-9)
    assert obs["ec_phi"][0, 1] == pytest.approx(0.0, abs=1e-9)
    assert obs["width_eta"][0, 1] == pytest.approx(abs(rc * math.cos(a0)))
    assert obs["width_phi"][0, 1] == pytest.approx(abs(rc * math.sin(a0)))
    assert obs["width_r"][0, 1] == pytest.approx(0.0, abs=1e-9)
    assert obs["first_moment_r"][0] == pytest.approx(rc)


def test_non_uniform_radial_bins_use_their_centres() -> None:
    mesh = CylindricalMesh(n_r=3, n_phi=1, n_z=2, size_r=1.0, size_z=2.0, r_edges_mm=(0.0, 1.0, 3.0, 10.0))
    obs = compute_observables(_showers([{(0, 0, 2): 1.0}], mesh=mesh))
    assert obs["first_moment_r"][0] == pytest.approx(6.5)


def test_threshold_decides_what_counts_as_a_hit() -> None:
    data = _showers([{(0, 0, 0): 0.5, (1, 1, 1): 5.0}])
    assert compute_observables(data)["n_hits"][0] == 2
    assert compute_observables(data, threshold_mev=1.0)["n_hits"][0] == 1


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(3)
    grid = rng.gamma(0.3, 2.0, size=(37, *MESH.shape)).astype(np.float32)
    data = ShowerData(energies=rng.uniform(100, 1000, 37), showers=MESH.to_flat(grid), mesh=MESH)
    a = compute_observables(data, chunk_size=5)
    b = compute_observables(data, chunk_size=4096)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12, err_msg=key)
    # float64 accumulations: totals agree with a float64 sum of the float32 cells
    np.testing.assert_allclose(a["e_total"], grid.astype(np.float64).sum(axis=(1, 2, 3)), rtol=1e-13)


def test_zero_energy_showers_raise_naming_the_count() -> None:
    data = _showers([{(0, 0, 0): 1.0}, {}, {}])
    data.meta["source"] = "gen.h5"
    with pytest.raises(DataError) as err:
        compute_observables(data)
    msg = str(err.value)
    assert "zero-energy showers" in msg and "2 of 3" in msg and "gen.h5" in msg and "exclude" in msg
    assert empty_showers(data).tolist() == [False, True, True]
    obs = compute_observables(data, exclude_empty=True)
    assert obs["e_total"].shape == (1,)
    assert all(np.all(np.isfinite(v)) for v in obs.values())


def test_high_level_features_shape_names_and_floor() -> None:
    data = _showers([{(0, 0, 0): 1.0}, {(2, 3, 1): 7.0, (3, 3, 1): 2.0}])
    feats = high_level_features(data)
    names = high_level_feature_names(MESH)
    assert feats.shape == (2, 3 + len(PER_LAYER) * MESH.n_z) == (2, len(names))
    assert len(set(names)) == len(names)
    col = {n: i for i, n in enumerate(names)}
    assert feats[1, col["log10_energy_layer_02"]] == pytest.approx(math.log10(7.0))
    assert feats[1, col["log10_energy_layer_05"]] == pytest.approx(math.log10(CELL_ENERGY_MIN_MEV))
    assert feats[0, col["log10_e_inc"]] == pytest.approx(3.0)
    assert np.all(np.isfinite(feats))


def test_cell_histogram_counts_under_and_overflow() -> None:
    ref = _showers([{(0, 0, 0): 0.001, (0, 0, 1): 1.0, (1, 0, 0): 10.0}])
    edges = cell_energy_edges(ref, n_bins=5)
    assert edges[0] == pytest.approx(CELL_ENERGY_MIN_MEV) and edges[-1] == pytest.approx(10.0)
    counts = cell_energy_histogram(ref, edges)
    assert counts.size == edges.size + 1
    assert counts[0] == 1 and counts[-1] == 0 and counts[-2] == 1  # max cell is in the last bin
    assert counts.sum() == 3  # empty cells are not counted
    cand = _showers([{(0, 0, 0): 100.0}])
    assert cell_energy_histogram(cand, edges)[-1] == 1


def test_cell_histogram_with_arbitrary_edges_matches_a_binary_search() -> None:
    rng = np.random.default_rng(5)
    grid = (rng.gamma(0.5, 3.0, size=(20, *MESH.shape)) * (rng.uniform(size=(20, *MESH.shape)) < 0.5)).astype(
        np.float32
    )
    data = ShowerData(energies=np.full(20, 500.0), showers=MESH.to_flat(grid), mesh=MESH)
    positive = data.showers[data.showers > 0].astype(np.float64)
    for edges in (np.array([0.1, 1.0, 5.0, 10.0]), cell_energy_edges(data, n_bins=7)):
        expected = np.bincount(np.searchsorted(edges, positive, side="right"), minlength=edges.size + 1)
        expected[-2] += int(np.sum(positive == edges[-1]))
        expected[-1] -= int(np.sum(positive == edges[-1]))
        np.testing.assert_array_equal(cell_energy_histogram(data, edges, chunk_size=6), expected)
