"""The Cartesian grid of the hadron workflow: layout, crop around the axis, file round trip, observables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlfastsim.core.errors import ConfigError, GeometryError
from mlfastsim.showers.geometry import GRID_PRESETS, CartesianGrid, load_mesh, mesh_from_dict
from mlfastsim.showers.io.formats import ShowerData, read_native, same_mesh, write_native
from mlfastsim.showers.validation.observables import compute_observables


def test_hcal48_preset_and_layout() -> None:
    g = load_mesh("hcal48")
    assert isinstance(g, CartesianGrid) and g.shape == (48, 48, 48) and g.n_voxels == 48**3
    assert (g.axis_x, g.axis_y) == (24, 24) and g.x_centres[24] == 0.0
    flat = np.arange(2 * g.n_voxels, dtype=np.float32).reshape(2, -1)
    grid = g.to_grid(flat)
    assert grid[1, 3, 5, 7] == flat[1, (3 * 48 + 5) * 48 + 7]  # (z, y, x), x fastest
    np.testing.assert_array_equal(g.to_flat(grid), flat)


def test_crop_is_centred_on_the_axis_and_keeps_its_cells() -> None:
    g = GRID_PRESETS["hcal48"]
    c = g.cropped(25, 25)
    assert c.shape == (48, 25, 25) and (c.axis_x, c.axis_y) == (12, 12)
    flat = np.zeros((1, g.n_voxels), np.float32)
    grid = g.to_grid(flat)
    grid[0, 5, 24, 24] = 7.0  # on the axis
    grid[0, 5, 24 + 12, 24 - 12] = 3.0  # the crop's corner
    grid[0, 5, 24 + 13, 24] = 100.0  # just outside
    cropped = c.to_grid(g.crop(flat, 25, 25))
    assert cropped[0, 5, 12, 12] == 7.0 and cropped[0, 5, 24, 0] == 3.0 and cropped.sum() == 10.0
    np.testing.assert_allclose(c.x_centres, g.x_centres[12:37])


@pytest.mark.parametrize("size", [49, 0])
def test_crop_larger_than_the_grid_is_refused(size: int) -> None:
    with pytest.raises(ConfigError, match="does not fit the grid"):
        GRID_PRESETS["hcal48"].cropped(size, 25)


def test_axis_outside_the_grid_is_refused() -> None:
    with pytest.raises(GeometryError, match="axis_x"):
        CartesianGrid(n_x=4, n_y=4, n_z=2, cell_x=1, cell_y=1, cell_z=1, axis_x=4)


def test_native_round_trip_and_dict(tmp_path: Path) -> None:
    g = GRID_PRESETS["hcal48"].cropped(9, 7)
    assert mesh_from_dict(g.to_dict()) == g
    rng = np.random.default_rng(0)
    data = ShowerData(rng.uniform(1e4, 1e5, 5), rng.gamma(0.5, 1, (5, g.n_voxels)), g, angles=np.full(5, 90.0))
    back = read_native(write_native(data, tmp_path / "g.h5"))
    assert back.mesh == g and same_mesh(back.mesh, g)
    np.testing.assert_array_equal(back.showers, data.showers)
    assert not same_mesh(g, load_mesh("ds2"))


def test_observables_on_a_grid_place_energy_where_it_is() -> None:
    g = CartesianGrid(n_x=5, n_y=5, n_z=4, cell_x=10.0, cell_y=10.0, cell_z=20.0)
    flat = np.zeros((1, g.n_voxels), np.float32)
    grid = g.to_grid(flat)
    grid[0, 1, 2, 2] = 6.0  # on the axis, layer 1
    grid[0, 3, 2, 4] = 2.0  # x = +20 mm, layer 3
    obs = compute_observables(ShowerData(np.array([10.0]), flat, g))
    assert obs["e_total"][0] == pytest.approx(8.0) and obs["n_hits"][0] == 2
    assert obs["first_moment_z"][0] == pytest.approx((6 * 30 + 2 * 70) / 8)
    assert obs["first_moment_r"][0] == pytest.approx((6 * 5 + 2 * 25) / 8)  # ring centres: 0.5, 2.5 cells
    assert obs["ec_eta"][0, 3] == pytest.approx(20.0) and obs["ec_phi"][0, 3] == pytest.approx(0.0)
    np.testing.assert_allclose(obs["energy_per_layer"][0], [0, 6, 0, 2])
    assert obs["energy_per_r_bin"][0, 0] == 6 and obs["energy_per_r_bin"][0, 2] == 2
