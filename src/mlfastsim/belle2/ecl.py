"""Crystal-level electromagnetic calorimeter (ECL) simulation and clustering, part of the expensive stage.

Belle II's ECL is 8736 CsI(Tl) crystals of 30 cm (16.1 X0) in a barrel (46 theta rings, 32.2-128.7 deg,
inner radius 1.25 m) and two endcaps (forward 12.4-31.4 deg at z = 1.96 m, backward 130.7-155.1 deg at
z = -1.02 m).  Here the crystals are a (69 theta rings) x (144 phi) grid with the real polar coverage and
gaps (the endcaps' reduced phi segmentation is not modelled: 9936 cells).

Per event:

* photons and electrons shower: the deposited energy (longitudinal containment of 16 X0 with
  fluctuations) is split into spots spread laterally with the two-component radial profile
  f(r) = 2 r R^2 / (r^2 + R^2)^2 (core and tail radii in units of the CsI Moliere radius, 35.3 mm),
  each spot landing in a crystal;
* muons and charged hadrons leave a minimum-ionising deposit (~168 MeV over 30 cm, Landau-like
  log-normal fluctuations); hadrons interact in the crystals with the probability of 0.76 interaction
  lengths and then deposit part of their kinetic energy in a wide hadronic shower;
* every crystal gets electronic noise and the event beam-background hits (Poisson number, exponential
  energies);
* clustering: seeds are local maxima above 10 MeV, the cluster energy is the 5x5 sum around the seed
  (calibrated for the average containment), the direction the energy-weighted 3x3 centroid; clusters
  near the impact of a charged particle are track-matched, the others are photon candidates.
"""

from __future__ import annotations

import numpy as np

N_PHI = 144
#: (theta_lo, theta_hi, rings) of the forward endcap, barrel and backward endcap (degrees)
SEGMENTS = ((12.4, 31.4, 13), (32.2, 128.7, 46), (130.7, 155.1, 10))
BARREL_R_MM = 1250.0
FWD_Z_MM = 1960.0
BWD_Z_MM = -1020.0
MOLIERE_MM = 35.31  # CsI (PDG)
CORE_R, TAIL_R, CORE_FRACTION = 0.6, 2.0, 0.85  # radial profile radii in Moliere radii
HADRON_R = 2.5
SPOT_MEV = 5.0
CONTAINMENT = 0.955  # mean longitudinal containment of 16 X0 for ~0.1-3 GeV photons
MIP_MEV = 168.0  # 5.6 MeV/cm x 30 cm of CsI
P_HADRON_INTERACTS = 1.0 - np.exp(-300.0 / 393.0)  # 30 cm of CsI, nuclear interaction length 39.3 cm
NOISE_MEV = 0.5
BACKGROUND_HITS = 60.0
BACKGROUND_MEAN_MEV = 2.0
SEED_MEV = 10.0
CLUSTER_MIN_MEV = 20.0
#: the 5x5 sum of a single photon contains on average this fraction of its energy (measured with this code)
CALIBRATION = 0.907

_edges = []
_ring_lo = []
for lo, hi, n in SEGMENTS:
    e = np.linspace(lo, hi, n + 1)
    _edges.append(e)
    _ring_lo.extend(e[:-1])
RING_LO_DEG = np.array(_ring_lo)
RING_HI_DEG = np.concatenate([e[1:] for e in _edges])
RING_CENTRE = np.radians(0.5 * (RING_LO_DEG + RING_HI_DEG))
N_RING = RING_LO_DEG.size
PHI_CENTRE = (np.arange(N_PHI) + 0.5) * 2 * np.pi / N_PHI - np.pi


def face_distance(theta: np.ndarray) -> np.ndarray:
    """Distance (mm) from the IP to the crystal front face along polar angle ``theta`` (radians)."""
    s, c = np.sin(theta), np.cos(theta)
    deg = np.degrees(theta)
    return np.where(deg < SEGMENTS[0][1] + 0.4, FWD_Z_MM / np.maximum(c, 1e-6),
                    np.where(deg > SEGMENTS[2][0] - 1.0, BWD_Z_MM / np.minimum(c, -1e-6), BARREL_R_MM / s))


def cell_of(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Crystal index (ring * N_PHI + phi bin) of each direction; -1 outside the ECL or in a gap."""
    deg = np.degrees(theta)
    ring = np.searchsorted(RING_LO_DEG, deg, side="right") - 1
    ok = (ring >= 0) & (deg < RING_HI_DEG[np.clip(ring, 0, N_RING - 1)])
    iphi = np.floor((np.mod(phi + np.pi, 2 * np.pi)) / (2 * np.pi) * N_PHI).astype(np.int64) % N_PHI
    return np.where(ok, ring * N_PHI + iphi, -1)


def _spread(rng: np.random.Generator, theta: np.ndarray, phi: np.ndarray, energy: np.ndarray,
            radii: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells and energies of the spots of showers with the given axes and lateral profile."""
    n_spots = np.clip(np.round(energy / SPOT_MEV), 4, 400).astype(np.int64)
    owner = np.repeat(np.arange(energy.size), n_spots)
    e_spot = (energy / n_spots)[owner]
    comp = (rng.random(owner.size)[:, None] > np.cumsum(fractions)[None, :-1]).sum(axis=1)
    u = np.clip(rng.random(owner.size), 0.0, 0.999)
    r = radii[comp] * MOLIERE_MM * np.sqrt(u / (1.0 - u))
    alpha = rng.uniform(0.0, 2 * np.pi, owner.size)
    dist = face_distance(theta)[owner]
    th = theta[owner] + r * np.cos(alpha) / dist
    ph = phi[owner] + r * np.sin(alpha) / (dist * np.maximum(np.sin(theta[owner]), 1e-3))
    return cell_of(th, ph), e_spot


def simulate_ecl(pdg: np.ndarray, p4: np.ndarray, charge: np.ndarray, impact_phi: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Deposited energy per crystal (N_RING * N_PHI,) for one event's final-state particles (lab, MeV).

    ``impact_phi`` is the azimuth where each particle reaches the calorimeter (bent by the field for
    charged particles).
    """
    apdg = np.abs(pdg)
    pmag = np.linalg.norm(p4[:, 1:], axis=1)
    theta = np.arccos(np.clip(p4[:, 3] / np.maximum(pmag, 1e-9), -1.0, 1.0))
    cells: list[np.ndarray] = []
    energies: list[np.ndarray] = []
    em = (apdg == 22) | (apdg == 11)
    if em.any():
        e = p4[em, 0]
        e_gev = np.maximum(e / 1000.0, 1e-3)
        cont = np.clip(rng.normal(CONTAINMENT, 0.005 + 0.012 / np.sqrt(e_gev)), 0.5, 1.0)
        c, w = _spread(rng, theta[em], impact_phi[em], e * cont, np.array([CORE_R, TAIL_R]),
                       np.array([CORE_FRACTION, 1.0 - CORE_FRACTION]))
        cells.append(c)
        energies.append(w)
    mip = np.isin(apdg, (13, 211, 321, 2212)) & (charge != 0)
    if mip.any():
        e_mip = MIP_MEV * rng.lognormal(0.0, 0.12, mip.sum())
        e_mip = np.minimum(e_mip, p4[mip, 0] - np.sqrt(np.maximum(p4[mip, 0] ** 2 - pmag[mip] ** 2, 0.0)))
        cells.append(cell_of(theta[mip], impact_phi[mip]))
        energies.append(np.maximum(e_mip, 0.0))
    hadron = np.isin(apdg, (211, 321, 2212, 2112, 130))
    interacts = hadron & (rng.random(pdg.size) < P_HADRON_INTERACTS)
    if interacts.any():
        kinetic = p4[interacts, 0] - np.sqrt(np.maximum(p4[interacts, 0] ** 2 - pmag[interacts] ** 2, 0.0))
        e_had = kinetic * rng.uniform(0.1, 0.6, interacts.sum())
        c, w = _spread(rng, theta[interacts], impact_phi[interacts], e_had, np.array([HADRON_R]), np.array([1.0]))
        cells.append(c)
        energies.append(w)
    n_cells = N_RING * N_PHI
    deposit = np.zeros(n_cells)
    if cells:
        c = np.concatenate(cells)
        w = np.concatenate(energies)
        ok = c >= 0
        deposit += np.bincount(c[ok], weights=w[ok], minlength=n_cells)
    deposit += rng.normal(0.0, NOISE_MEV, n_cells)
    n_bkg = rng.poisson(BACKGROUND_HITS)
    np.add.at(deposit, rng.integers(0, n_cells, n_bkg), rng.exponential(BACKGROUND_MEAN_MEV, n_bkg))
    return deposit


def cluster(deposit: np.ndarray, matched_cells: np.ndarray) -> np.ndarray:
    """Photon candidates (n, 4) from the crystal energies: 5x5 clusters around local maxima, minus
    clusters whose seed lies within one ring and two phi bins of a charged particle's impact."""
    e = deposit.reshape(N_RING, N_PHI)
    # pad: phi wraps around, theta does not
    pad = np.pad(np.concatenate([e[:, -2:], e, e[:, :2]], axis=1), ((2, 2), (0, 0)))
    centre = pad[2:-2, 2:-2]
    is_max = centre > SEED_MEV
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_max &= centre >= pad[2 + di : pad.shape[0] - 2 + di, 2 + dj : pad.shape[1] - 2 + dj]
    seeds_r, seeds_p = np.nonzero(is_max)
    if seeds_r.size == 0:
        return np.zeros((0, 4))
    # 5x5 sums by an integral image
    integ = np.zeros((pad.shape[0] + 1, pad.shape[1] + 1))
    integ[1:, 1:] = pad.cumsum(0).cumsum(1)
    r0, c0 = seeds_r, seeds_p  # window rows r0..r0+4, cols c0..c0+4 in padded coordinates
    e5 = integ[r0 + 5, c0 + 5] - integ[r0, c0 + 5] - integ[r0 + 5, c0] + integ[r0, c0]
    # 3x3 energy-weighted centroid (phi offsets relative to the seed, so the wrap is harmless)
    offs = np.array([-1, 0, 1])
    rows = seeds_r[:, None, None] + 2 + offs[None, :, None]
    cols = seeds_p[:, None, None] + 2 + offs[None, None, :]
    w3 = np.clip(pad[rows, cols], 0.0, None)  # (n, 3 rings, 3 phi)
    tot = np.maximum(w3.sum(axis=(1, 2)), 1e-9)
    ring_idx = np.clip(seeds_r[:, None] + offs[None, :], 0, N_RING - 1)
    theta = (w3.sum(axis=2) * RING_CENTRE[ring_idx]).sum(axis=1) / tot
    dphi = (w3.sum(axis=1) * offs[None, :]).sum(axis=1) / tot * (2 * np.pi / N_PHI)
    phi = PHI_CENTRE[seeds_p] + dphi
    energy = e5 / CALIBRATION
    keep = energy > CLUSTER_MIN_MEV
    if matched_cells.size:
        m = matched_cells[matched_cells >= 0]
        mr, mp = m // N_PHI, m % N_PHI
        dr = np.abs(seeds_r[:, None] - mr[None, :])
        dp = np.abs(seeds_p[:, None] - mp[None, :])
        dp = np.minimum(dp, N_PHI - dp)
        keep &= ~np.any((dr <= 1) & (dp <= 2), axis=1)
    s = np.sin(theta[keep])
    e_k = energy[keep]
    return np.stack([e_k, e_k * s * np.cos(phi[keep]), e_k * s * np.sin(phi[keep]), e_k * np.cos(theta[keep])], 1)
