"""The "expensive" stage: a Belle II-like detector response, reconstruction and a hadronic B-tag skim.

It stands in for Geant4 simulation plus reconstruction, and is deliberately done the honest way so its
cost is real and measured per event (the speed-up of a filter is computed from these times):

* **Tracking**: charged final-state particles inside the CDC acceptance (17-150 degrees) follow a helix in
  the 1.5 T solenoid through the 6 VXD and 56 CDC layers; every layer adds a multiple-scattering kink
  (Highland formula) that displaces the later hits, hits are smeared (VXD 15 um, CDC 120 um) and lost
  with a per-layer inefficiency; low-pT tracks curl before the outer layers and lose hits.  A track with
  at least ``MIN_HITS`` hits is fitted with an algebraic circle fit (Kasa) giving the measured pT.
* **Particle identification**: a momentum-independent confusion matrix between e, mu, pi, K, p.
* **Calorimeter**: photons inside the ECL (12.4-155.1 degrees) with the Belle II ECL energy resolution;
  K_S0 are reconstructed as V0s with a fixed efficiency.
* **Skim**: a hadronic B-tag-like selection: D0 -> K pi, K pi pi pi, K pi pi0 and D+ -> K pi pi candidates
  in mass windows, combined with one or two pions into B candidates; the event passes if a candidate
  has Mbc and Delta E in the signal region, with at least 3 tracks and R2 < 0.4 (continuum-like shapes
  fail).  Skim variables (best Mbc, Delta E, track and photon counts, visible energy, R2) are kept
  for the bias checks of the filtered samples.
"""

from __future__ import annotations

import numpy as np

from mlfastsim.belle2.decay_table import BETA_GAMMA, SQRT_S_MEV
from mlfastsim.belle2.ecl import cell_of, cluster, face_distance, simulate_ecl
from mlfastsim.belle2.kinematics import boost

B_FIELD_T = 1.5
#: pT (MeV) = CURV * R (mm) in the solenoid field.
CURV = 0.299792458 * B_FIELD_T
LAYER_R_MM = np.r_[np.array([14.0, 22.0, 39.0, 80.0, 104.0, 135.0]), np.linspace(168.0, 1111.0, 56)]
LAYER_SIGMA_MM = np.r_[np.full(6, 0.015), np.full(56, 0.12)]
#: material per layer in radiation lengths (VXD ~0.2-0.6 % X0, CDC gas + wires ~0.02 % X0 per layer)
LAYER_X0 = np.r_[np.full(2, 0.002), np.full(4, 0.006), np.full(56, 0.0002)]
LAYER_EFF = 0.97
MIN_HITS = 15
CDC_THETA_DEG = (17.0, 150.0)
KS_EFF = 0.8
MASS = {"e": 0.51099895, "mu": 105.6583755, "pi": 139.57039, "K": 493.677, "p": 938.27208943}
HYPOTHESES = ("e", "mu", "pi", "K", "p")
#: P(reconstructed as column | true row), rows/columns in HYPOTHESES order
PID_CONFUSION = np.array([
    [0.95, 0.00, 0.05, 0.00, 0.00],
    [0.00, 0.90, 0.10, 0.00, 0.00],
    [0.01, 0.02, 0.92, 0.05, 0.00],
    [0.00, 0.00, 0.10, 0.88, 0.02],
    [0.00, 0.00, 0.05, 0.05, 0.90],
])
PDG_TO_HYP = {11: 0, 13: 1, 211: 2, 321: 3, 2212: 4}
M_D0, M_DP, M_PI0 = 1864.84, 1869.66, 134.9768
D_WINDOW_MEV = 20.0
MBC_MIN_MEV = 5250.0
DELTA_E_MEV = (-150.0, 100.0)
R2_MAX = 0.4
MIN_TRACKS = 3
LEPTON_PSTAR_MEV = 1000.0
M_B = 5279.5
SKIM_VARIABLES = ("mbc_mev", "delta_e_mev", "n_tracks", "n_photons", "e_vis_mev", "r2")

_CMS_BETA = np.array([0.0, 0.0, -BETA_GAMMA / np.sqrt(1.0 + BETA_GAMMA**2)])
_PID_CUM = np.cumsum(PID_CONFUSION, axis=1)
_HYP_MASS = np.array([MASS[h] for h in HYPOTHESES])
# lower-triangular lever arms: displacement at layer l from a kink at layer k < l is theta_k * (r_l - r_k)
_LEVER = np.clip(LAYER_R_MM[:, None] - LAYER_R_MM[None, :], 0.0, None)


def simulate_event(pdg: np.ndarray, p4: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Detector response, reconstruction and skim of one event's final-state particles (lab frame, MeV)."""
    tracks, hyp = _tracking(pdg, p4, rng)
    photons = _calorimeter(pdg, p4, rng)
    ks = _kshorts(pdg, p4, rng)
    return _skim(tracks, hyp, photons, ks)


def _calorimeter(pdg: np.ndarray, p4: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ECL showers, noise, background and clustering; photon candidates are the unmatched clusters."""
    apdg = np.abs(pdg)
    charge = np.where(np.isin(apdg, list(PDG_TO_HYP)), np.sign(pdg) * np.where(np.isin(apdg, (11, 13)), -1, 1), 0)
    pmag = np.linalg.norm(p4[:, 1:], axis=1)
    pt = np.hypot(p4[:, 1], p4[:, 2])
    theta = np.arccos(np.clip(p4[:, 3] / np.maximum(pmag, 1e-9), -1.0, 1.0))
    phi = np.arctan2(p4[:, 2], p4[:, 1])
    # charged particles bend in the solenoid: azimuth at the calorimeter face, NaN if they curl before it
    r_face = face_distance(theta) * np.sin(theta)
    radius = pt / CURV
    reach = (charge == 0) | (2.0 * radius > r_face)
    bend = np.arcsin(np.clip(r_face / np.maximum(2.0 * radius, 1e-9), -1.0, 1.0))
    impact_phi = np.where(charge != 0, phi - charge * bend, phi)
    impact_phi = np.where(reach, impact_phi, np.nan)
    visible = reach & (pmag > 0)
    deposit = simulate_ecl(pdg[visible], p4[visible], charge[visible], impact_phi[visible], rng)
    track_like = visible & (charge != 0) & (pt > 100.0)
    matched = cell_of(theta[track_like], impact_phi[track_like])
    return cluster(deposit, matched)


def _tracking(pdg: np.ndarray, p4: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    apdg = np.abs(pdg)
    charged = np.isin(apdg, list(PDG_TO_HYP))
    p = p4[charged, 1:]
    q = np.sign(pdg[charged]) * np.where(np.isin(apdg[charged], (11, 13)), -1, 1)
    true_hyp = np.array([PDG_TO_HYP[int(a)] for a in apdg[charged]], dtype=np.int64)
    pt = np.hypot(p[:, 0], p[:, 1])
    ptot = np.linalg.norm(p, axis=1)
    theta = np.degrees(np.arccos(np.clip(p[:, 2] / np.maximum(ptot, 1e-9), -1, 1)))
    acc = (theta > CDC_THETA_DEG[0]) & (theta < CDC_THETA_DEG[1]) & (pt > 1.0)
    p, q, pt, ptot, true_hyp = p[acc], q[acc], pt[acc], ptot[acc], true_hyp[acc]
    n = pt.size
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    radius = pt / CURV  # mm
    phi = np.arctan2(p[:, 1], p[:, 0])
    r = LAYER_R_MM[None, :]
    reach = r < 2.0 * radius[:, None]
    alpha = np.arcsin(np.clip(r / (2.0 * radius[:, None]), -1.0, 1.0))
    ang = phi[:, None] - q[:, None] * alpha
    x = r * np.cos(ang)
    y = r * np.sin(ang)
    # multiple scattering kinks (Highland), accumulated as lateral displacements of the later hits
    beta = ptot / np.sqrt(ptot**2 + _HYP_MASS[true_hyp] ** 2)
    sin_t = np.maximum(pt / np.maximum(ptot, 1e-9), 0.05)
    path_x0 = LAYER_X0[None, :] / sin_t[:, None]
    theta0 = 13.6 / (beta * ptot)[:, None] * np.sqrt(path_x0) * (1.0 + 0.038 * np.log(path_x0))
    kinks = rng.normal(0.0, 1.0, theta0.shape) * theta0 * reach
    lateral = kinks @ _LEVER.T + rng.normal(0.0, 1.0, kinks.shape) * LAYER_SIGMA_MM[None, :]
    x = x - lateral * np.sin(ang)
    y = y + lateral * np.cos(ang)
    hit = reach & (rng.random(reach.shape) < LAYER_EFF)
    n_hits = hit.sum(axis=1)
    # Kasa fit: x^2 + y^2 + D x + E y + F = 0, weighted least squares per track (masked hits weight 0)
    w = hit.astype(float)
    a = np.stack([x, y, np.ones_like(x)], axis=-1) * w[..., None]
    b = -(x * x + y * y) * w
    ata = np.einsum("tli,tlj->tij", a, a) + np.eye(3)[None] * 1e-9
    atb = np.einsum("tli,tl->ti", a, b)
    sol = np.linalg.solve(ata, atb[..., None])[..., 0]
    r_fit = np.sqrt(np.clip(sol[:, 0] ** 2 / 4 + sol[:, 1] ** 2 / 4 - sol[:, 2], 0.0, None))
    ok = (n_hits >= MIN_HITS) & np.isfinite(r_fit) & (r_fit > 0)
    pt_meas = CURV * r_fit[ok]
    scale = pt_meas / pt[ok]
    # direction from the first hits: smear the angles by the VXD resolution
    dphi = rng.normal(0.0, 1e-3, ok.sum())
    dtheta = rng.normal(0.0, 1e-3, ok.sum())
    pm = p[ok] * scale[:, None]
    phi_m = np.arctan2(pm[:, 1], pm[:, 0]) + dphi
    th_m = np.arctan2(pt_meas, pm[:, 2]) + dtheta
    pmag = pt_meas / np.maximum(np.sin(th_m), 1e-6)
    pvec = np.stack([pmag * np.sin(th_m) * np.cos(phi_m), pmag * np.sin(th_m) * np.sin(phi_m),
                     pmag * np.cos(th_m)], axis=1)
    # particle identification
    u = rng.random(ok.sum())
    hyp = (u[:, None] > _PID_CUM[true_hyp[ok]]).sum(axis=1)
    hyp = np.minimum(hyp, len(HYPOTHESES) - 1)
    energy = np.sqrt(np.sum(pvec**2, axis=1) + _HYP_MASS[hyp] ** 2)
    charge = q[ok]
    # tracks as (E, px, py, pz) plus the charge kept in a parallel array through the sign of hyp code
    tracks = np.concatenate([energy[:, None], pvec], axis=1)
    return tracks, hyp * charge.astype(np.int64) + charge.astype(np.int64) * 10  # signed code: q*(10+hyp)


def _kshorts(pdg: np.ndarray, p4: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = p4[pdg == 310]
    if k.size == 0:
        return np.zeros((0, 4))
    keep = rng.random(k.shape[0]) < KS_EFF
    pvec = k[keep, 1:] * (1.0 + 0.005 * rng.normal(0.0, 1.0, (keep.sum(), 1)))
    return np.concatenate([np.sqrt(np.sum(pvec**2, axis=1) + 497.611**2)[:, None], pvec], axis=1)


def _mass(p4: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1), 0.0, None))


def _skim(tracks: np.ndarray, code: np.ndarray, photons: np.ndarray, ks: np.ndarray) -> dict[str, float]:
    """Reconstruct D and B candidates and apply the skim; returns the skim variables and ``label``."""
    charge = np.sign(code)
    hyp = np.abs(code) - 10
    e_beam = SQRT_S_MEV / 2.0
    # pion hypothesis for every track not identified as K, kaon hypothesis for identified kaons
    is_k = hyp == 3
    pi_p4 = tracks.copy()
    pi_p4[:, 0] = np.sqrt(np.sum(tracks[:, 1:] ** 2, axis=1) + MASS["pi"] ** 2)
    k_p4 = tracks.copy()
    k_p4[:, 0] = np.sqrt(np.sum(tracks[:, 1:] ** 2, axis=1) + MASS["K"] ** 2)
    pions = np.flatnonzero(~is_k)
    kaons = np.flatnonzero(is_k)
    # pi0 -> gamma gamma
    if photons.shape[0] >= 2:
        i, j = np.triu_indices(photons.shape[0], 1)
        m = _mass(photons[i] + photons[j])
        sel = (m > 115.0) & (m < 150.0)
        pi0 = photons[i[sel]] + photons[j[sel]]
    else:
        pi0 = np.zeros((0, 4))
    b_cands: list[np.ndarray] = []
    # D candidates as (p4, flavour sign, used-track mask) -> combine with bachelor pions
    d_list: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []  # p4 (c,4), charge (c,), tracks (c,k)
    if kaons.size and pions.size:
        kk, pp = np.meshgrid(kaons, pions, indexing="ij")
        kk, pp = kk.ravel(), pp.ravel()
        ok = charge[kk] == -charge[pp]
        kk, pp = kk[ok], pp[ok]
        kpi = k_p4[kk] + pi_p4[pp]
        sel = np.abs(_mass(kpi) - M_D0) < D_WINDOW_MEV
        d_list.append((kpi[sel], np.zeros(sel.sum()), np.stack([kk[sel], pp[sel]], 1), M_D0))
        if pi0.shape[0]:
            c = kpi[:, None, :] + pi0[None, :, :]
            sel = np.abs(_mass(c) - M_D0) < 2 * D_WINDOW_MEV
            ii, _ = np.nonzero(sel)
            d_list.append((c[sel], np.zeros(ii.size), np.stack([kk[ii], pp[ii]], 1), M_D0))
        if pions.size >= 2:
            # K- pi+ pi+ -> D+, and K- pi+ pi+ pi- -> D0
            a, b = np.triu_indices(pions.size, 1)
            pa, pb = pions[a], pions[b]
            same = charge[pa] == charge[pb]
            for kidx in kaons:
                s = same & (charge[pa] == -charge[kidx])
                c3 = k_p4[kidx] + pi_p4[pa[s]] + pi_p4[pb[s]]
                sel = np.abs(_mass(c3) - M_DP) < D_WINDOW_MEV
                trk = np.stack([np.full(sel.sum(), kidx), pa[s][sel], pb[s][sel]], 1)
                d_list.append((c3[sel], -charge[kidx] * np.ones(sel.sum()), trk, M_DP))
            if pions.size >= 3 and pions.size <= 25:
                for kidx in kaons:
                    s = same & (charge[pa] == -charge[kidx])
                    pairs_a, pairs_b = pa[s], pb[s]
                    opp = pions[charge[pions] == charge[kidx]]
                    if pairs_a.size == 0 or opp.size == 0:
                        continue
                    c4 = (k_p4[kidx] + pi_p4[pairs_a] + pi_p4[pairs_b])[:, None, :] + pi_p4[opp][None, :, :]
                    sel = np.abs(_mass(c4) - M_D0) < D_WINDOW_MEV
                    ia, io = np.nonzero(sel)
                    trk = np.stack([np.full(ia.size, kidx), pairs_a[ia], pairs_b[ia], opp[io]], 1)
                    d_list.append((c4[sel], np.zeros(ia.size), trk, M_D0))
    for d_p4, d_q, d_trk, d_mass in d_list:
        if d_p4.shape[0] == 0 or pions.size == 0:
            continue
        # mass-constrained D energy improves Delta E (as a vertex/mass fit would)
        d_fit = d_p4.copy()
        d_fit[:, 0] = np.sqrt(np.sum(d_p4[:, 1:] ** 2, axis=1) + d_mass**2)
        used = (d_trk[:, :, None] == pions[None, None, :]).any(axis=1)
        # B -> D pi: bachelor pion of the charge that makes a B (D0 pi-, anti-D0 pi+, D+ pi-)
        c = d_fit[:, None, :] + pi_p4[pions][None, :, :]
        ok = ~used
        if d_mass == M_DP:
            ok &= charge[pions][None, :] == -d_q[:, None]
        b_cands.append(c[ok])
    if not b_cands:
        b_p4 = np.zeros((0, 4))
    else:
        b_p4 = np.concatenate(b_cands)
    # event shape and visible energy in the CMS
    vis = np.concatenate([pi_p4, photons, ks])
    vis_cms = boost(vis, _CMS_BETA[None, :]) if vis.size else vis
    e_vis = float(vis_cms[:, 0].sum()) if vis.size else 0.0
    r2 = _fox_wolfram_r2(vis_cms[:, 1:]) if vis.shape[0] >= 2 else 1.0
    mbc, de = np.nan, np.nan
    hadronic = False
    if b_p4.shape[0]:
        b_cms = boost(b_p4, _CMS_BETA[None, :])
        p2 = np.sum(b_cms[:, 1:] ** 2, axis=1)
        mbc_all = np.sqrt(np.clip(e_beam**2 - p2, 0.0, None))
        de_all = b_cms[:, 0] - e_beam
        best = int(np.argmin(np.abs(de_all)))
        mbc, de = float(mbc_all[best]), float(de_all[best])
        in_box = (mbc_all > MBC_MIN_MEV) & (de_all > DELTA_E_MEV[0]) & (de_all < DELTA_E_MEV[1])
        if in_box.any():
            hadronic = True
            k = int(np.flatnonzero(in_box)[np.argmax(mbc_all[in_box])])
            mbc, de = float(mbc_all[k]), float(de_all[k])
    # semileptonic tag: a D candidate and an identified lepton compatible with B -> D l nu
    semileptonic = False
    leptons = np.flatnonzero(hyp <= 1)
    d_all = [d[0] for d in d_list if d[0].shape[0]]
    if leptons.size and d_all:
        lep = tracks[leptons].copy()
        lep[:, 0] = np.sqrt(np.sum(lep[:, 1:] ** 2, axis=1) + _HYP_MASS[hyp[leptons]] ** 2)
        lep_cms = boost(lep, _CMS_BETA[None, :])
        fast = lep_cms[np.linalg.norm(lep_cms[:, 1:], axis=1) > LEPTON_PSTAR_MEV]
        if fast.shape[0]:
            y = boost(np.concatenate(d_all), _CMS_BETA[None, :])[:, None, :] + fast[None, :, :]
            p_b = np.sqrt(max(e_beam**2 - M_B**2, 0.0))
            m_y2 = y[..., 0] ** 2 - np.sum(y[..., 1:] ** 2, axis=-1)
            p_y = np.linalg.norm(y[..., 1:], axis=-1)
            cos_by = (2 * e_beam * y[..., 0] - M_B**2 - m_y2) / np.maximum(2 * p_b * p_y, 1e-9)
            semileptonic = bool(np.any(np.abs(cos_by) < 1.0))
    n_tracks = int(tracks.shape[0])
    passed = n_tracks >= MIN_TRACKS and r2 < R2_MAX and (hadronic or semileptonic)
    return {"label": int(passed), "mbc_mev": mbc, "delta_e_mev": de, "n_tracks": n_tracks,
            "n_photons": int(photons.shape[0]), "e_vis_mev": e_vis, "r2": float(r2)}


def _fox_wolfram_r2(p: np.ndarray) -> float:
    """Second normalised Fox-Wolfram moment H2/H0 of a set of momenta."""
    mag = np.linalg.norm(p, axis=1)
    mag = np.where(mag > 0, mag, 1e-12)
    cos = np.clip((p @ p.T) / np.outer(mag, mag), -1.0, 1.0)
    ww = np.outer(mag, mag)
    h0 = ww.sum()
    h2 = (ww * 0.5 * (3.0 * cos**2 - 1.0)).sum()
    return float(h2 / h0) if h0 > 0 else 1.0
