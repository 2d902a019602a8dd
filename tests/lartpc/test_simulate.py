"""The reference simulator's physics facts, and per-event seeding (results independent of chunking)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from mlfastsim.lartpc.simulate import (
    LAR_X0_MM,
    MIP_DEDX_MEV_PER_MM,
    muon_track,
    project,
    proton_track,
    shower,
    simulate_to_dir,
    voxelise,
)
from tests.lartpc.conftest import TINY, tiny_sim_config


def test_muon_is_minimum_ionising_and_scatters_with_the_highland_width() -> None:
    rng = np.random.default_rng(0)
    length, p = 1000.0, 300.0
    angles = []
    for _ in range(40):
        d = muon_track(np.zeros(3), p, length, rng)
        assert abs(d.energy.sum() / length - MIP_DEDX_MEV_PER_MM) < 0.01 * MIP_DEDX_MEV_PER_MM * 5
        first = d.xyz[20] - d.xyz[0]
        last = d.xyz[-1] - d.xyz[-21]
        angles.append(np.arccos(np.clip(first @ last / np.linalg.norm(first) / np.linalg.norm(last), -1, 1)))
    # space angle after 1 m: Highland theta0 (plane) = 13.6/(beta p) sqrt(L/X0)(1 + 0.038 ln(L/X0)); the
    # space angle's RMS is sqrt(2) theta0 (segment-wise it is a little smaller: the log term is per segment)
    beta = p / np.hypot(p, 105.66)
    theta0 = 13.6 / (beta * p) * np.sqrt(length / LAR_X0_MM)
    rms = np.sqrt(np.mean(np.square(angles)))
    assert 0.6 * np.sqrt(2) * theta0 < rms < 1.3 * np.sqrt(2) * theta0


def test_proton_has_a_bragg_peak() -> None:
    d = proton_track(np.zeros(3), 60.0, np.random.default_rng(1))
    s = np.linalg.norm(d.xyz, axis=1)
    early = d.energy[s < 30].mean()
    late = d.energy[s > 57].mean()
    assert late > 2.5 * early
    # total deposit = the integral of 17 R^-0.42 MeV/cm over the 6 cm range (~ 60 MeV)
    expected = 17.0 / 0.58 * 6.0 ** 0.58
    assert abs(d.energy.sum() - expected) / expected < 0.1


def test_shower_deposits_its_energy() -> None:
    rng = np.random.default_rng(2)
    totals = [shower(np.zeros(3), 500.0, rng).energy.sum() for _ in range(20)]
    assert abs(np.mean(totals) - 500.0) / 500.0 < 0.15


def test_projection_conserves_charge_on_every_plane() -> None:
    rng = np.random.default_rng(3)
    coords = np.stack([rng.integers(0, n, 50) for n in TINY.grid_shape], 1).astype(np.int32)
    q = rng.uniform(0.1, 1.0, 50).astype(np.float32)
    for w in project(coords, q, TINY):
        assert abs(w.sum() - q.sum()) < 1e-4
    c, charge = voxelise(type("D", (), {"xyz": np.array([[1.0, 1.0, 1.0], [1.1, 1.2, 1.3], [1.0, 1.0, 40.0]]),
                                         "energy": np.array([1.0, 2.0, 5.0])})(), TINY, 0)
    assert c.tolist() == [[1, 0, 0]] and charge.tolist() == [3.0]  # the point at z = 40 mm is in the next TPC


def test_events_do_not_depend_on_chunking(tmp_path: Path) -> None:
    simulate_to_dir(tiny_sim_config(tmp_path / "a", n_events=5, chunk_size=2), progress=False)
    simulate_to_dir(tiny_sim_config(tmp_path / "b", n_events=5, chunk_size=5), progress=False)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 10
    for name in names:
        with h5py.File(tmp_path / "a" / name) as fa, h5py.File(tmp_path / "b" / name) as fb:
            for key in ("X/plane_0", "X/plane_2", "Y/charge"):
                np.testing.assert_array_equal(fa[key][...], fb[key][...])
