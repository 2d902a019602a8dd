"""The expensive stage: calorimeter response and clustering, tracking resolution, skim bookkeeping."""

from __future__ import annotations

import numpy as np

from mlfastsim.belle2.detector import SKIM_VARIABLES, _tracking, simulate_event
from mlfastsim.belle2.ecl import N_PHI, N_RING, cell_of, cluster, simulate_ecl


def _photon(e: float, theta: float, phi: float) -> np.ndarray:
    return np.array([[e, e * np.sin(theta) * np.cos(phi), e * np.sin(theta) * np.sin(phi), e * np.cos(theta)]])


def test_single_photons_are_calibrated_with_a_resolution() -> None:
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(150):
        th, ph = np.radians(rng.uniform(40, 120)), rng.uniform(-3, 3)
        dep = simulate_ecl(np.array([22]), _photon(1000.0, th, ph), np.array([0]), np.array([ph]), rng)
        assert dep.shape == (N_RING * N_PHI,)
        c = cluster(dep, np.zeros(0, dtype=np.int64))
        best = c[np.argmax(c[:, 0])]
        ratios.append(best[0] / 1000.0)
        direction = best[1:] / np.linalg.norm(best[1:])
        truth = _photon(1.0, th, ph)[0, 1:]
        assert np.degrees(np.arccos(np.clip(direction @ truth, -1, 1))) < 2.0
    ratios = np.array(ratios)
    assert abs(ratios.mean() - 1.0) < 0.02, ratios.mean()
    assert 0.005 < ratios.std() < 0.04, ratios.std()


def test_track_matched_clusters_are_not_photons_and_gaps_lose_particles() -> None:
    rng = np.random.default_rng(1)
    th, ph = np.radians(80.0), 0.3
    dep = simulate_ecl(np.array([22]), _photon(800.0, th, ph), np.array([0]), np.array([ph]), rng)
    assert cluster(dep, np.zeros(0, dtype=np.int64)).shape[0] >= 1
    matched = cell_of(np.array([th]), np.array([ph]))
    energies = cluster(dep, matched)[:, 0]
    assert not np.any(energies > 400.0)
    assert cell_of(np.radians(np.array([31.8, 129.5, 5.0, 170.0])), np.zeros(4)).tolist() == [-1, -1, -1, -1]


def test_tracking_momentum_resolution() -> None:
    rng = np.random.default_rng(2)
    n = 400
    p = 1000.0
    th = np.radians(rng.uniform(40, 120, n))
    ph = rng.uniform(-np.pi, np.pi, n)
    mom = np.stack([p * np.sin(th) * np.cos(ph), p * np.sin(th) * np.sin(ph), p * np.cos(th)], 1)
    p4 = np.c_[np.sqrt(p**2 + 139.57**2) * np.ones(n), mom]
    tracks, code = _tracking(np.full(n, 211), p4, rng)
    assert tracks.shape[0] > 0.95 * n * 0.9  # efficiency: layer inefficiency and PID never lose a 1 GeV track
    pt_meas = np.hypot(tracks[:, 1], tracks[:, 2])
    pt_true = np.hypot(mom[:, 0], mom[:, 1])
    rel = np.sort(pt_meas)[n // 10 : -n // 10].mean() / np.sort(pt_true)[n // 10 : -n // 10].mean()
    assert abs(rel - 1.0) < 0.01
    assert set(np.unique(np.sign(code))) == {1}


def test_simulate_event_returns_the_skim_variables() -> None:
    rng = np.random.default_rng(3)
    out = simulate_event(np.array([211, -211, 22]), np.r_[_photon(900.0, 1.2, 0.1), _photon(800.0, 1.5, 2.0),
                                                            _photon(500.0, 1.0, -2.0)], rng)
    assert set(SKIM_VARIABLES) <= set(out) and out["label"] in (0, 1)
