"""The simulators write no sub-physical cell energies: below 1 eV a cell is exactly 0 (issue 12)."""

from __future__ import annotations

import numpy as np

from mlfastsim.showers.geometry import load_detector, load_mesh
from mlfastsim.showers.sim.em import CELL_ENERGY_FLOOR_MEV, apply_cell_floor, simulate_chunk


def test_em_showers_have_no_cells_below_the_floor() -> None:
    out = simulate_chunk(load_detector("SiW"), load_mesh("ds2"), np.array([1000.0, 50000.0]),
                         np.array([60.0, 90.0]), particle="electron", seed=3, chunk_index=0)
    positive = out[out > 0]
    assert positive.size > 0
    assert positive.min() >= np.float32(CELL_ENERGY_FLOOR_MEV)


def test_apply_cell_floor_zeroes_denormals_in_place() -> None:
    x = np.array([[1e-44, 1e-30, 5e-7, 1e-6, 2.0]], dtype=np.float32)
    y = apply_cell_floor(x)
    assert y is x
    np.testing.assert_array_equal(x, np.array([[0, 0, 0, 1e-6, 2.0]], dtype=np.float32))
