"""Upsilon(4S) -> B Bbar event generation from the resolved Belle II decay table.

The generator works breadth first over a whole chunk of events: at each generation every unstable
particle of every event picks a decay mode (by branching fraction, among the modes kinematically open
at its drawn mass), then all decays sharing a mode are done in one vectorised phase-space call and
boosted to the lab.  Per event, the cost is a few numpy calls per *mode in use*, not per particle.

Production vertices come from the lifetimes: a particle decays after a proper time drawn from its
exponential law, i.e. at ``x_decay = x_prod + (p/m) * c*tau * Exp(1)``, where its daughters are produced.
The Upsilon(4S) is produced at the interaction point, drawn from the SuperKEKB luminous region, moving
along +z with the Belle II boost (beta*gamma = 0.28).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlfastsim.belle2.decay_table import BETA_GAMMA, SQRT_S_MEV, DecayTable
from mlfastsim.belle2.kinematics import boost, breit_wigner, phase_space

C_MM_PER_NS = 299.792458
#: Gaussian size of the luminous region (mm): x, y, z.  Nano-beam scheme: ~10 um x 0.2 um x 0.35 mm.
BEAM_SPOT_MM = (0.010, 0.0002, 0.35)


@dataclass
class Particles:
    """Generator-level particles of many events, sorted by event then by generation (BFS order)."""

    event: np.ndarray  # (n,) int64, local event number in the chunk
    species: np.ndarray  # (n,) int64 index into the decay table
    mother: np.ndarray  # (n,) int64 index *within the event* (-1 for the Upsilon(4S))
    index: np.ndarray  # (n,) int64 index within the event
    mass: np.ndarray  # (n,) MeV (as generated: Breit-Wigner for resonances)
    p4: np.ndarray  # (n, 4) MeV, lab
    vertex: np.ndarray  # (n, 4) production point: x, y, z (mm), t (ns)
    decay_vertex: np.ndarray  # (n, 4) decay point (NaN for stable particles)
    decayed: np.ndarray  # (n,) bool
    offsets: np.ndarray  # (n_events + 1,) rows of event i are offsets[i]:offsets[i+1]
    mode: np.ndarray  # (n,) int64 chosen decay mode (-1 for stable)


def generate(table: DecayTable, n_events: int, rng: np.random.Generator, max_generations: int = 32) -> Particles:
    """Generate ``n_events`` Upsilon(4S) events."""
    m_root = SQRT_S_MEV
    gamma = np.sqrt(1.0 + BETA_GAMMA**2)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in ("event", "species", "parent", "mass", "p4", "vertex")}

    ev = np.arange(n_events, dtype=np.int64)
    species = np.full(n_events, table.root, dtype=np.int64)
    mass = np.full(n_events, m_root)
    p4 = np.zeros((n_events, 4))
    p4[:, 0] = gamma * m_root
    p4[:, 3] = BETA_GAMMA * m_root
    vertex = np.zeros((n_events, 4))
    vertex[:, :3] = rng.normal(0.0, 1.0, (n_events, 3)) * np.asarray(BEAM_SPOT_MM)
    parent = np.full(n_events, -1, dtype=np.int64)
    n_total = 0
    all_decay_vertex: list[np.ndarray] = []
    all_mode: list[np.ndarray] = []

    for _ in range(max_generations):
        n_gen = ev.size
        if n_gen == 0:
            break
        gid = np.arange(n_total, n_total + n_gen)
        for key, arr in (("event", ev), ("species", species), ("parent", parent), ("mass", mass), ("p4", p4),
                         ("vertex", vertex)):
            chunks[key].append(arr)
        n_total += n_gen
        decay_vertex = np.full((n_gen, 4), np.nan)
        mode = np.full(n_gen, -1, dtype=np.int64)
        unstable = np.flatnonzero(~table.stable[species])
        if unstable.size:
            mode[unstable] = _choose_modes(table, species[unstable], mass[unstable], rng)
            has_mode = unstable[mode[unstable] >= 0]
            # decay point from the lifetime
            ctau = table.ctau[species[has_mode]]
            flight = np.where(np.isfinite(ctau) & (ctau > 0), ctau, 0.0) * rng.exponential(1.0, has_mode.size)
            pvec = p4[has_mode, 1:]
            m = mass[has_mode][:, None]
            decay_vertex[has_mode, :3] = vertex[has_mode, :3] + pvec / m * flight[:, None]
            decay_vertex[has_mode, 3] = vertex[has_mode, 3] + p4[has_mode, 0] / m[:, 0] * flight / C_MM_PER_NS
        all_decay_vertex.append(decay_vertex)
        all_mode.append(mode)
        # daughters, one vectorised block per decay mode in use
        decaying = np.flatnonzero(mode >= 0)
        nxt: dict[str, list[np.ndarray]] = {k: [] for k in ("event", "species", "parent", "mass", "p4", "vertex")}
        if decaying.size:
            order = decaying[np.argsort(mode[decaying], kind="stable")]
            modes_sorted = mode[order]
            starts = np.flatnonzero(np.r_[True, modes_sorted[1:] != modes_sorted[:-1]])
            ends = np.r_[starts[1:], order.size]
            for s, e in zip(starts, ends, strict=True):
                rows = order[s:e]
                dau = table.daughters(int(modes_sorted[s]))
                d_mass = _daughter_masses(table, dau, mass[rows], rng)
                rest = phase_space(rng, mass[rows], d_mass)
                beta = p4[rows, 1:] / p4[rows, :1]
                lab = boost(rest, beta[:, None, :])
                k = dau.size
                nxt["event"].append(np.repeat(ev[rows], k))
                nxt["species"].append(np.tile(dau, rows.size))
                nxt["parent"].append(np.repeat(gid[rows], k))
                nxt["mass"].append(d_mass.reshape(-1))
                nxt["p4"].append(lab.reshape(-1, 4))
                nxt["vertex"].append(np.repeat(decay_vertex[rows], k, axis=0))
        if not nxt["event"]:
            ev = np.zeros(0, dtype=np.int64)
            break
        ev = np.concatenate(nxt["event"])
        species = np.concatenate(nxt["species"])
        parent = np.concatenate(nxt["parent"])
        mass = np.concatenate(nxt["mass"])
        p4 = np.concatenate(nxt["p4"])
        vertex = np.concatenate(nxt["vertex"])
    else:
        raise RuntimeError("decay chain deeper than max_generations")  # a cycle would be a table bug

    event = np.concatenate(chunks["event"])
    order = np.argsort(event, kind="stable")  # within an event, generation (BFS) order
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    event = event[order]
    counts = np.bincount(event, minlength=n_events)
    offsets = np.r_[0, np.cumsum(counts)]
    index = np.arange(order.size) - offsets[event]
    parent_g = np.concatenate(chunks["parent"])[order]
    mother = np.where(parent_g >= 0, index[inverse[np.maximum(parent_g, 0)]], -1)
    return Particles(
        event=event,
        species=np.concatenate(chunks["species"])[order],
        mother=mother,
        index=index,
        mass=np.concatenate(chunks["mass"])[order],
        p4=np.concatenate(chunks["p4"])[order],
        vertex=np.concatenate(chunks["vertex"])[order],
        decay_vertex=np.concatenate(all_decay_vertex)[order],
        decayed=np.concatenate(all_mode)[order] >= 0,
        offsets=offsets,
        mode=np.concatenate(all_mode)[order],
    )


def _choose_modes(table: DecayTable, species: np.ndarray, mass: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A decay mode per particle, by branching fraction among the modes open at its mass (-1: none open)."""
    out = np.full(species.size, -1, dtype=np.int64)
    u = rng.random(species.size)
    order = np.argsort(species, kind="stable")
    sp_sorted = species[order]
    starts = np.flatnonzero(np.r_[True, sp_sorted[1:] != sp_sorted[:-1]])
    ends = np.r_[starts[1:], order.size]
    for s, e in zip(starts, ends, strict=True):
        rows = order[s:e]
        sp = int(sp_sorted[s])
        m0, m1 = int(table.mode_start[sp]), int(table.mode_start[sp + 1])
        bf = table.mode_bf[m0:m1]
        open_ = table.mode_threshold[m0:m1][None, :] <= mass[rows, None] + 1e-6
        cum = np.cumsum(bf[None, :] * open_, axis=1)
        total = cum[:, -1]
        pick = (cum < (u[rows] * total)[:, None]).sum(axis=1)
        out[rows] = np.where(total > 0, m0 + np.minimum(pick, m1 - m0 - 1), -1)
    return out


def _daughter_masses(table: DecayTable, dau: np.ndarray, mother_mass: np.ndarray, rng: np.random.Generator,
                     max_tries: int = 100) -> np.ndarray:
    """Daughter masses (rows, n): Breit-Wigner for resonances, redrawn until they fit in the mother."""
    rows = mother_mass.size
    n = dau.size
    if n == 1:
        return mother_mass[:, None].copy()  # e.g. K0 -> K_S0: the daughter takes the mother's four-momentum
    m0 = np.broadcast_to(table.mass[dau], (rows, n))
    w = np.broadcast_to(table.width[dau], (rows, n))
    lo = np.broadcast_to(table.mass_lo[dau], (rows, n))
    hi = np.broadcast_to(table.mass_hi[dau], (rows, n))
    masses = np.array(m0, dtype=float)
    if not np.any(table.width[dau] > 0):
        return masses
    pending = np.arange(rows)
    for _ in range(max_tries):
        masses[pending] = breit_wigner(rng, m0[pending], w[pending], lo[pending], hi[pending])
        bad = masses[pending].sum(axis=1) >= mother_mass[pending]
        pending = pending[bad]
        if pending.size == 0:
            return masses
    # share the available energy above the thresholds (the mode was chosen among open modes, so it exists)
    spare = (mother_mass[pending] - lo[pending].sum(axis=1))[:, None]
    masses[pending] = lo[pending] + np.clip(spare, 0.0, None) * 0.5 / n
    return masses
