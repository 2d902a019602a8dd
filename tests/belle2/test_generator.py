"""Event generation: four-momentum conservation at every vertex, phase space, branching fractions, lifetimes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlfastsim.belle2.config import ProduceConfig
from mlfastsim.belle2.decay_table import BETA_GAMMA, SQRT_S_MEV, load_decay_table
from mlfastsim.belle2.generator import _choose_modes, generate
from mlfastsim.belle2.kinematics import boost, invariant_mass, phase_space
from mlfastsim.belle2.produce import produce


@pytest.fixture(scope="module")
def events():
    table = load_decay_table()
    return table, generate(table, 600, np.random.default_rng(11))


def test_four_momentum_conserved_at_every_vertex(events) -> None:
    _, p = events
    has_mother = p.mother >= 0
    mother_row = p.offsets[p.event[has_mother]] + p.mother[has_mother]
    sums = np.zeros_like(p.p4)
    np.add.at(sums, mother_row, p.p4[has_mother])
    decayed = np.flatnonzero(p.decayed)
    assert decayed.size > 10 * 600
    err = np.abs(sums[decayed] - p.p4[decayed]).max(axis=1) / p.p4[decayed, 0]
    assert err.max() < 1e-9
    # every particle is on its (generated) mass shell
    m = invariant_mass(p.p4)
    assert np.allclose(m, p.mass, rtol=1e-6, atol=1e-3)
    # the Upsilon(4S) carries the beams: sqrt(s) with the Belle II boost along z
    root = p.offsets[:-1]
    assert np.allclose(p.p4[root, 0], SQRT_S_MEV * np.sqrt(1 + BETA_GAMMA**2))
    assert np.allclose(p.p4[root, 3], SQRT_S_MEV * BETA_GAMMA)


def test_daughters_start_where_mothers_decay_and_lifetimes(events) -> None:
    table, p = events
    has_mother = p.mother >= 0
    mother_row = p.offsets[p.event[has_mother]] + p.mother[has_mother]
    assert np.array_equal(p.vertex[has_mother], p.decay_vertex[mother_row])
    is_b = np.isin(np.abs(table.pdg[p.species]), (511, 521))
    assert is_b.sum() == 2 * 600
    flight = np.linalg.norm(p.decay_vertex[is_b, :3] - p.vertex[is_b, :3], axis=1)
    bg = np.linalg.norm(p.p4[is_b, 1:], axis=1) / p.mass[is_b]
    proper = flight / bg  # exponential with mean c*tau
    ctau = table.ctau[p.species[is_b]]
    pull = (proper.mean() - ctau.mean()) / (ctau.mean() / np.sqrt(is_b.sum()))
    assert abs(pull) < 5, pull


def test_upsilon_branching_fractions(events) -> None:
    table, p = events
    root = table.root
    modes = list(table.modes_of(root))
    bf = table.mode_bf[modes]
    first_b = p.offsets[:-1] + 1
    charged = np.abs(table.pdg[p.species[first_b]]) == 521
    expected_charged = sum(b for m, b in zip(modes, bf, strict=True)
                           if 521 in np.abs(table.pdg[table.daughters(m)]))
    n = charged.size
    pull = (charged.mean() - expected_charged) / np.sqrt(expected_charged * (1 - expected_charged) / n)
    assert abs(pull) < 4, pull


def test_b_decay_modes_follow_branching_fractions() -> None:
    table = load_decay_table()
    s = table.index("B+")
    n = 20000
    chosen = _choose_modes(table, np.full(n, s), np.full(n, table.mass[s]), np.random.default_rng(3))
    m0, m1 = int(table.mode_start[s]), int(table.mode_start[s + 1])
    counts = np.bincount(chosen - m0, minlength=m1 - m0)
    expected = table.mode_bf[m0:m1] * n
    big = expected >= 20
    obs = np.r_[counts[big], counts[~big].sum()]
    exp = np.r_[expected[big], expected[~big].sum()]
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert big.sum() >= 10
    assert chi2 / (obs.size - 1) < 2.0, chi2 / (obs.size - 1)


def _dalitz_contains(m12: np.ndarray, m23: np.ndarray, big_m: float, m: list[float]) -> np.ndarray:
    """Inside the kinematic boundary of a three-body decay (PDG kinematics review)."""
    m1, m2, m3 = m
    s12 = np.sqrt(np.clip(m12, 1e-9, None))
    e2 = (m12 - m1**2 + m2**2) / (2 * s12)
    e3 = (big_m**2 - m12 - m3**2) / (2 * s12)
    ok = (e2 >= m2) & (e3 >= m3)
    p2 = np.sqrt(np.clip(e2**2 - m2**2, 0, None))
    p3 = np.sqrt(np.clip(e3**2 - m3**2, 0, None))
    lo = (e2 + e3) ** 2 - (p2 + p3) ** 2
    hi = (e2 + e3) ** 2 - (p2 - p3) ** 2
    return ok & (m23 >= lo) & (m23 <= hi)


def test_three_body_phase_space_is_flat_in_the_dalitz_plot() -> None:
    rng = np.random.default_rng(0)
    big_m, m = 1864.84, [493.677, 139.57039, 134.9768]
    n = 40000
    p = phase_space(rng, np.full(n, big_m), np.tile(m, (n, 1)))
    assert np.allclose(p.sum(axis=1), [big_m, 0, 0, 0], atol=1e-6)
    m12 = invariant_mass(p[:, 0] + p[:, 1]) ** 2
    m23 = invariant_mass(p[:, 1] + p[:, 2]) ** 2
    x_edges = np.linspace((m[0] + m[1]) ** 2, (big_m - m[2]) ** 2, 7)
    y_edges = np.linspace((m[1] + m[2]) ** 2, (big_m - m[0]) ** 2, 7)
    counts, _, _ = np.histogram2d(m12, m23, [x_edges, y_edges])
    # expected: proportional to the area of each cell inside the boundary (uniform points)
    u = np.random.default_rng(1)
    gx = u.uniform(x_edges[0], x_edges[-1], 2_000_000)
    gy = u.uniform(y_edges[0], y_edges[-1], 2_000_000)
    inside = _dalitz_contains(gx, gy, big_m, m)
    area, _, _ = np.histogram2d(gx[inside], gy[inside], [x_edges, y_edges])
    expected = area / area.sum() * n
    use = expected > 50
    chi2 = ((counts[use] - expected[use]) ** 2 / expected[use]).sum()
    assert chi2 / use.sum() < 2.0, chi2 / use.sum()


def test_boost_round_trip_and_mass_invariance() -> None:
    rng = np.random.default_rng(2)
    p = np.c_[np.zeros(100), rng.normal(0, 500, (100, 3))]
    p[:, 0] = np.sqrt(np.sum(p[:, 1:] ** 2, axis=1) + 139.57**2)
    beta = rng.uniform(-0.5, 0.5, (100, 3))
    q = boost(p, beta)
    assert np.allclose(invariant_mass(q), 139.57, rtol=1e-9)
    assert np.allclose(boost(q, -beta), p, atol=1e-8)


def test_production_identical_whatever_the_worker_count(tmp_path) -> None:
    out1, out2 = tmp_path / "w1.h5", tmp_path / "w2.h5"
    produce(ProduceConfig(n_events=60, chunk_size=10, seed=2, output=out1), progress=False)
    # 6 chunks through a window of 4 in flight: consumed in order, the file must not depend on the workers
    produce(ProduceConfig(n_events=60, chunk_size=10, seed=2, output=out2, parallel={"workers": 2}), progress=False)
    for key in ("particles", "events"):
        a, b = pd.read_hdf(out1, key), pd.read_hdf(out2, key)
        timing = [c for c in a.columns if c.endswith("cpu_s")]
        pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing))
