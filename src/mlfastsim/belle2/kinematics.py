"""Vectorised relativistic kinematics: n-body phase space, boosts and Breit-Wigner masses.

Every function works on a batch of decays of the same multiplicity at once (rows), so the generator
calls them once per (decay mode, generation) instead of once per particle.  Four-vectors are arrays
``(..., 4)`` ordered ``(E, px, py, pz)`` in MeV.

Phase space follows the Raubold-Lynch method (as in GENBOD / ROOT's TGenPhaseSpace): ordered random
invariant masses of the sub-systems, a weight equal to the product of the two-body momenta, and
accept-reject against the kinematic maximum of that weight, so accepted events are distributed
uniformly in n-body Lorentz-invariant phase space.  Each two-body step conserves four-momentum exactly
(up to float rounding), hence so does the whole decay.
"""

from __future__ import annotations

import numpy as np


def two_body_momentum(m: np.ndarray, m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Momentum of either daughter in the rest frame of a mother of mass ``m`` (0 when closed)."""
    arg = (m * m - (m1 + m2) ** 2) * (m * m - (m1 - m2) ** 2)
    return np.sqrt(np.clip(arg, 0.0, None)) / (2.0 * np.maximum(m, 1e-12))


def boost(p4: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Boost four-vectors ``p4`` (..., 4) by velocity ``beta`` (..., 3) (broadcast over leading axes)."""
    b2 = np.sum(beta * beta, axis=-1, keepdims=True)
    b2 = np.clip(b2, 0.0, 1.0 - 1e-15)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    e = p4[..., :1]
    p = p4[..., 1:]
    bp = np.sum(beta * p, axis=-1, keepdims=True)
    safe_b2 = np.where(b2 > 0, b2, 1.0)
    gamma2 = np.where(b2 > 0, (gamma - 1.0) / safe_b2, 0.0)
    p_new = p + gamma2 * bp * beta + gamma * beta * e
    e_new = gamma * (e + bp)
    return np.concatenate([e_new, p_new], axis=-1)


def random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` isotropic unit vectors (n, 3)."""
    cos_t = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    return np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=-1)


def _max_weight(mother: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Upper bound of the Raubold-Lynch weight per row (TGenPhaseSpace's bound)."""
    n = masses.shape[1]
    emmax = mother - masses.sum(axis=1) + masses[:, 0]
    emmin = np.zeros_like(mother)
    wmax = np.ones_like(mother)
    for i in range(1, n):
        emmin = emmin + masses[:, i - 1]
        emmax = emmax + masses[:, i]
        wmax *= two_body_momentum(emmax, emmin, masses[:, i])
    return wmax


def phase_space(rng: np.random.Generator, mother_mass: np.ndarray, masses: np.ndarray,
                max_tries: int = 1000) -> np.ndarray:
    """Daughter four-momenta (rows, n, 4) in the mother's rest frame, uniform in n-body phase space.

    ``mother_mass`` (rows,), ``masses`` (rows, n) with ``masses.sum(1) < mother_mass``.  Rows whose
    weight is rejected are redrawn (vectorised over the still-pending rows) until all are accepted.
    """
    rows, n = masses.shape
    out = np.empty((rows, n, 4))
    if rows == 0:
        return out
    if n == 1:
        out[:, 0, 0] = mother_mass
        out[:, 0, 1:] = 0.0
        return out
    if n == 2:
        p = two_body_momentum(mother_mass, masses[:, 0], masses[:, 1])
        d = random_directions(rng, rows) * p[:, None]
        out[:, 0, 1:] = d
        out[:, 1, 1:] = -d
        out[:, :, 0] = np.sqrt(masses**2 + (p**2)[:, None])
        return out
    pending = np.arange(rows)
    wmax = _max_weight(mother_mass, masses)
    tries = 0
    rate = 0.5  # running estimate of the acceptance, to oversample the pending rows in one shot
    while pending.size:
        tries += 1
        reps = int(min(64, max(1, np.ceil(2.0 / max(rate, 1e-3)))))
        cand = np.repeat(pending, reps)
        m = masses[cand]
        big_m = mother_mass[cand]
        k = cand.size
        # ordered invariant masses of the sub-systems {1}, {1,2}, ..., {1..n}
        r = np.sort(rng.random((k, n - 2)), axis=1)
        cum = np.cumsum(m, axis=1)
        tecm = big_m - cum[:, -1]
        inv = np.empty((k, n))
        inv[:, 0] = m[:, 0]
        inv[:, 1:-1] = r * tecm[:, None] + cum[:, 1:-1]
        inv[:, -1] = big_m
        pd = two_body_momentum(inv[:, 1:], inv[:, :-1], m[:, 1:])  # (k, n-1)
        w = pd.prod(axis=1)
        accept = rng.random(k) * wmax[cand] <= w
        if tries >= max_tries:
            accept[:] = True  # never reached in practice; keeps the loop finite for pathological inputs
        rate = 0.5 * rate + 0.5 * max(accept.mean(), 1e-4)
        # the first accepted candidate of each pending row
        acc2 = accept.reshape(pending.size, reps)
        got = acc2.any(axis=1)
        first = np.argmax(acc2, axis=1)
        pick = np.flatnonzero(got) * reps + first[got]
        if pick.size:
            out[pending[got]] = _build(rng, m[pick], inv[pick], pd[pick])
        pending = pending[~got]
    return out


def _build(rng: np.random.Generator, m: np.ndarray, inv: np.ndarray, pd: np.ndarray) -> np.ndarray:
    """Momenta from accepted sub-system masses: successive two-body decays, rotations and boosts."""
    k, n = m.shape
    p4 = np.zeros((k, n, 4))
    # particles 0 and 1 back to back along y in the {0,1} rest frame
    p4[:, 0, 2] = pd[:, 0]
    p4[:, 1, 2] = -pd[:, 0]
    p4[:, 0, 0] = np.sqrt(pd[:, 0] ** 2 + m[:, 0] ** 2)
    p4[:, 1, 0] = np.sqrt(pd[:, 0] ** 2 + m[:, 1] ** 2)
    for i in range(1, n):
        # random orientation of the sub-system {0..i}
        rot = _random_rotations(rng, k)
        p4[:, : i + 1, 1:] = np.einsum("kab,kjb->kja", rot, p4[:, : i + 1, 1:])
        if i == n - 1:
            break
        # boost the sub-system along -y so that it recoils against particle i+1
        e_sub = np.sqrt(pd[:, i] ** 2 + inv[:, i] ** 2)
        beta = np.zeros((k, 3))
        beta[:, 1] = -pd[:, i] / e_sub
        p4[:, : i + 1] = boost(p4[:, : i + 1], beta[:, None, :])
        p4[:, i + 1, 2] = pd[:, i]
        p4[:, i + 1, 0] = np.sqrt(pd[:, i] ** 2 + m[:, i + 1] ** 2)
    return p4


def _random_rotations(rng: np.random.Generator, k: int) -> np.ndarray:
    """Rotation matrices (k, 3, 3) taking the y axis to an isotropic direction, with a random roll."""
    phi = rng.uniform(0.0, 2.0 * np.pi, k)
    cos_t = rng.uniform(-1.0, 1.0, k)
    sin_t = np.sqrt(1.0 - cos_t**2)
    psi = rng.uniform(0.0, 2.0 * np.pi, k)
    # R = Rz(phi) Ry(theta) Rz(psi): uniformly distributed rotations (Haar measure)
    cp, sp, cs, ss = np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi)
    rz1 = np.zeros((k, 3, 3))
    rz1[:, 0, 0], rz1[:, 0, 1], rz1[:, 1, 0], rz1[:, 1, 1], rz1[:, 2, 2] = cp, -sp, sp, cp, 1.0
    ry = np.zeros((k, 3, 3))
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2], ry[:, 1, 1] = cos_t, sin_t, -sin_t, cos_t, 1.0
    rz2 = np.zeros((k, 3, 3))
    rz2[:, 0, 0], rz2[:, 0, 1], rz2[:, 1, 0], rz2[:, 1, 1], rz2[:, 2, 2] = cs, -ss, ss, cs, 1.0
    return rz1 @ ry @ rz2


def breit_wigner(rng: np.random.Generator, m0: np.ndarray, gamma: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray) -> np.ndarray:
    """Masses from a non-relativistic Breit-Wigner truncated to [lo, hi] (inverse CDF, no rejection).

    Rows with zero width get their pole mass.
    """
    g = np.where(gamma > 0, gamma, 1.0)
    f_lo = np.arctan(2.0 * (lo - m0) / g)
    f_hi = np.arctan(2.0 * (hi - m0) / g)
    u = rng.random(m0.shape)
    m = m0 + 0.5 * g * np.tan(f_lo + u * (f_hi - f_lo))
    return np.where(gamma > 0, np.clip(m, lo, hi), m0)


def invariant_mass(p4: np.ndarray) -> np.ndarray:
    """sqrt(E^2 - p^2), clipped at 0, over the last axis."""
    m2 = p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1)
    return np.sqrt(np.clip(m2, 0.0, None))
