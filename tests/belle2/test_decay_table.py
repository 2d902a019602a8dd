"""The resolved Belle II decay table: what is dropped, renormalisation, and that everything left is generable."""

from __future__ import annotations

import numpy as np

from mlfastsim.belle2.decay_table import FRAGMENTATION_MODELS, ROOT_NAME, load_decay_table


def test_branching_fractions_renormalised_and_fragmentation_dropped() -> None:
    t = load_decay_table()
    for s in range(t.n_species):
        modes = t.modes_of(s)
        if t.stable[s]:
            assert len(modes) == 0
            continue
        assert len(modes) > 0, t.names[s]
        assert abs(t.mode_bf[modes.start : modes.stop].sum() - 1.0) < 1e-9, t.names[s]
    assert not any(tag in m.upper() for m in t.mode_model for tag in FRAGMENTATION_MODELS)
    report = t.report()
    # DECAY_BELLE2.DEC hands a large part of B decays to PYTHIA: it must be reported, not hidden
    assert 0.2 < report["dropped_fraction_B"] < 0.8
    assert set(report["dropped_fraction_per_B"]) == {"B+", "B-", "B0", "anti-B0"}


def test_root_is_upsilon4s_to_bbbar_only() -> None:
    t = load_decay_table()
    assert t.names[t.root] == ROOT_NAME
    finals = {tuple(sorted(t.names[d] for d in t.daughters(m))) for m in t.modes_of(t.root)}
    assert finals == {("B+", "B-"), ("B0", "anti-B0")}


def test_every_daughter_is_a_known_species_and_thresholds_open() -> None:
    t = load_decay_table()
    assert t.mode_daughters.min() >= 0 and t.mode_daughters.max() < t.n_species
    assert np.all(t.mass_lo <= t.mass_hi)
    # at its highest mass every unstable species has at least one open mode
    for s in np.flatnonzero(~t.stable):
        modes = t.modes_of(s)
        assert t.mode_threshold[modes.start : modes.stop].min() <= t.mass_hi[s] + 1e-6, t.names[s]
    # long-lived hadrons are left to the detector simulation, as in Belle II
    for name in ("K_S0", "pi+", "K+", "Lambda0", "gamma"):
        assert t.stable[t.index(name)]
    assert not t.stable[t.index("pi0")] and not t.stable[t.index("D0")]
