"""Reference electromagnetic shower simulator: the Grindhammer-Peters (GFlash) parametrisation.

The showers stand in for Geant4 in demos and tests, so the physics is a published parametrisation
with its published constants, not a toy:

    G. Grindhammer, S. Peters, "The parameterized simulation of electromagnetic showers in homogeneous
    and sampling calorimeters", hep-ex/0001020 (referred to below as GP); the same numbers are the
    defaults of Geant4's GFlash tuning classes (``GVFlashHomoShowerTuning``,
    ``GFlashSamplingShowerTuning``).

What one shower is made of
--------------------------
* **Longitudinal profile.**  dE/dt is a gamma distribution in t (radiation lengths) with shape alpha and
  depth of maximum T = (alpha - 1)/beta.  Per shower, (ln T, ln alpha) is drawn from a correlated
  bivariate normal whose means, widths and correlation are GP's functions of ln y (y = E/E_c) and Z_eff,
  with GP's sampling-calorimeter corrections through F_S = X0_eff/(d_abs + d_act) and
  e_hat = 1/(1 + 0.007 (Z_abs - Z_act)).  Energy per z-bin is a difference of the gamma CDF
  (``scipy.special.gammainc``) at the bin edges converted to X0: exact, no integration error.
* **Photons** differ from electrons only in where the cascade starts: the depth of the first conversion
  is exponential with the pair-production mean free path 9/7 X0 (PDG; the same draw Geant4 GFlash
  makes).  The mean shower maximum moves about one X0 deeper (PDG: C_gamma - C_e = 1).
* **Lateral profile.**  GP's two-component radial density in Molière radii,
  f(r) = p 2r R_C^2/(r^2+R_C^2)^2 + (1-p) 2r R_T^2/(r^2+R_T^2)^2, with R_C, R_T and p functions of the
  scaled depth tau = t/T (width grows with depth), Z and E, plus the sampling corrections.  Its CDF is
  analytic, so every radial bin (also non-uniform ``r_edges``) is integrated exactly; R_C, R_T, p are
  evaluated at the z-bin centre.
* **Incidence angle.**  The mesh follows the particle; a mesh point (r, phi, z) lies at depth
  z sin(theta) + r cos(phi) cos(theta) (see :mod:`mlfastsim.showers.geometry`).  Energy the parametrised
  shower puts in front of the front face or behind the last layer is lost, which makes the phi profile
  asymmetric and lowers containment at oblique incidence.  The inside fraction of every voxel depends
  only on (mesh, detector depth, theta); it is tabulated on a 0.5 degree grid (sub-sampled in r and
  phi, exact in z) and interpolated linearly in theta, so it costs one table look-up per shower.
* **Fluctuations.**  Three sources, in the order they act:
  1. shower-shape fluctuations (the correlated ln T, ln alpha draw, the conversion depth), which also
     drive the leakage fluctuations;
  2. cell-level fluctuations: every voxel gets Gamma(k = E_v/q_cell) * q_cell with
     q_cell = q_spot + q_samp.  q_spot = E/N_spot is GP's spot energy (N_spot = 93 ln(Z) E^0.876 for
     homogeneous, 10.3/a E^0.959 for sampling calorimeters), the granularity GP tuned so that cell
     fluctuations match full simulation; q_samp = a^2 * 1 GeV is the sampling (or photo-statistics)
     quantum.  Gamma draws with a common scale are the continuous analogue of counting quanta: cells
     stay continuous and >= 0, and cells far below q_cell are mostly empty, as in real showers;
  3. the shower total: spots are a multinomial share-out that must not change the total, so the cells
     are rescaled (a Dirichlet normalisation) to a total drawn as Gamma(E_dep/q_samp) * q_samp, which
     gives sigma/E = a/sqrt(E/GeV) exactly, times a per-shower N(1, b) for the constant term.
  For sampling calorimeters q_samp is divided by sin(theta): oblique tracks cross layers 1/sin(theta)
  thicker, and the stochastic term scales as the square root of the layer thickness.

Energies are on the incident-particle scale (visible energy divided by the sampling fraction, as in the
CaloChallenge datasets), so E_sum/E_inc is the containment.

Reproducibility: :func:`simulate_chunk` is a pure function of its arguments; its generator is
``default_rng(SeedSequence([seed, chunk_index]))`` and chunks are fixed-size slices of the event list,
so the result depends on (seed, chunk_size) and never on the number of workers or the order chunks run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import gammainc

from mlfastsim.core.errors import ConfigError
from mlfastsim.core.progress import progress_bar
from mlfastsim.showers.geometry import CylindricalMesh, Detector
from mlfastsim.showers.io.formats import ShowerData

PARTICLES: tuple[str, ...] = ("electron", "photon")
SIMULATOR_NAME = "gflash-gp"

# ------------------------------------------------------------------------------ GP / GFlash constants
# Homogeneous media, GP eqs. for the fluctuated profiles (GVFlashHomoShowerTuning defaults):
#   <ln T>     = ln(ln y + T1)                   T1 = -0.812
#   <ln alpha> = ln(A1 + (A2 + A3/Z) ln y)       A1 = 0.81, A2 = 0.458, A3 = 2.26
#   sigma(ln T) = 1/(S1 + S2 ln y)                 (-1.4, 1.26)
#   sigma(ln alpha) = 1/(S1 + S2 ln y)             (-0.58, 0.86)
#   rho(ln T, ln alpha) = R1 + R2 ln y              (0.705, -0.023)
HOM_T1 = -0.812
HOM_A1, HOM_A2, HOM_A3 = 0.81, 0.458, 2.26
HOM_SIG_LNT = (-1.4, 1.26)
HOM_SIG_LNA = (-0.58, 0.86)
HOM_RHO = (0.705, -0.023)
# Sampling calorimeters (GFlashSamplingShowerTuning defaults):
#   T_sam = T_hom + t1/F_S + t2 (1 - e_hat)      t1 = -0.55, t2 = -0.69
#   alpha_sam = alpha_hom + a1/F_S               a1 = -0.476
#   sigma(ln T) = 1/(-2.5 + 1.25 ln y), sigma(ln alpha) = 1/(-0.82 + 0.79 ln y), rho = 0.784 - 0.023 ln y
SAM_T1, SAM_T2 = -0.55, -0.69
SAM_A1 = -0.476
SAM_SIG_LNT = (-2.5, 1.25)
SAM_SIG_LNA = (-0.82, 0.79)
SAM_RHO = (0.784, -0.023)
# e_hat = e/mip = 1/(1 + EHAT_K (Z_abs - Z_act))  (GP)
EHAT_K = 0.007
# Upper bound on the ln-widths, as GFlash applies at low y where 1/(s1 + s2 ln y) diverges.
MAX_SIGMA_LN = 0.5
# Floors that keep the gamma profile well defined at very low energies (GFlash uses alpha >= 1.1).
MIN_ALPHA = 1.1
MIN_T = 0.1

# Radial profile in Molière radii (GVFlashHomoShowerTuning defaults), E in GeV:
#   R_C = z1 + z2 tau,                z1 = 0.0251 + 0.00319 ln E,  z2 = 0.1162 - 0.000381 Z
#   R_T = k1 (exp(k3 (tau - k2)) + exp(k4 (tau - k2))),
#                                     k1 = 0.659 - 0.00309 Z, k2 = 0.645, k3 = -2.59,
#                                     k4 = 0.3585 + 0.0412 ln E
#   p = p1 exp((p2 - tau)/p3 - exp((p2 - tau)/p3)),
#                                     p1 = 2.632 - 0.00094 Z, p2 = 0.401 + 0.00187 Z, p3 = 1.313 - 0.0686 ln E
RC = (0.0251, 0.00319, 0.1162, -0.000381)
RT = (0.659, -0.00309, 0.645, -2.59, 0.3585, 0.0412)
WC = (2.632, -0.00094, 0.401, 0.00187, 1.313, -0.0686)
# Sampling corrections (GFlashSamplingShowerTuning defaults):
#   R_C += c1 (1 - e_hat) + c2/F_S exp(-tau)                   c1 = -0.0203, c2 = 0.0397
#   R_T += t1 (1 - e_hat) + t2/F_S exp(-tau)                   t1 = -0.14,   t2 = -0.495
#   p   += (1 - e_hat) (w1 + w2/F_S exp(-(tau - 1)^2))         w1 = 0.348,   w2 = -0.642
SAM_RC = (-0.0203, 0.0397)
SAM_RT = (-0.14, -0.495)
SAM_WC = (0.348, -0.642)
# Spot counts (GP): N = 93 ln(Z) E^0.876 (homogeneous), N = 10.3/a E^0.959 (sampling, a = stochastic term).
HOM_SPOT_N = (93.0, 0.876)
SAM_SPOT_N = (10.3, 0.959)
# Photon pair-production mean free path in X0 (PDG: 9/7 X0), the depth of the first conversion.
PHOTON_MFP_X0 = 9.0 / 7.0

# Incidence-angle tables: grid step in degrees and sub-samples per phi and r bin.
ANGLE_STEP_DEG = 0.5
_N_ANGLE_GRID = round(90.0 / ANGLE_STEP_DEG) + 1
_PHI_SUB = 8
_R_SUB = 4
# Showers per vectorised batch inside a chunk: about this many voxel values per temporary array, which
# keeps temporaries in cache-friendly sizes and memory flat for large meshes.
_BATCH_VOXELS = 1 << 17


# ----------------------------------------------------------------------------------------- kinematics
def _as_float_list(values: Sequence[float], field: str) -> np.ndarray:
    try:
        arr = np.asarray(list(values), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"not a list of numbers ({exc})", field=field, fix="give numbers, e.g. 10,50,100"
        ) from exc
    if arr.size == 0:
        raise ConfigError("empty list", field=field, fix="give at least one value")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("values must be finite", field=field, fix="remove NaN/inf values")
    return arr


def _as_range(values: tuple[float, float], field: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"a range needs exactly two numbers ({exc})", field=field, fix="give LOW HIGH, e.g. 1 1000"
        ) from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ConfigError(f"range [{lo}, {hi}] is empty or not finite", field=field, fix="give LOW < HIGH")
    return lo, hi


#: the largest incident energy a simulation accepts, GeV: above every collider calorimeter (FCC-hh jets reach
#: tens of TeV) by a margin, below values that only a typo makes (1e30 GeV ran and wrote meaningless showers)
MAX_ENERGY_GEV = 1.0e6


def _check_energies(e: np.ndarray, field: str) -> None:
    e = np.asarray(e, dtype=np.float64)
    if not np.all(np.isfinite(e)):
        raise ConfigError("incident energies must be finite numbers", field=field,
                          fix="give energies in GeV, e.g. 10,50")
    if np.any(e <= 0):
        raise ConfigError(
            f"incident energies must be > 0 GeV, got {float(e.min())}",
            field=field,
            fix="use positive energies",
        )
    if np.any(e > MAX_ENERGY_GEV):
        raise ConfigError(
            f"incident energy {float(e.max()):g} GeV is above {MAX_ENERGY_GEV:g} GeV (1 PeV)",
            field=field,
            fix="give energies in GeV (e.g. 10,50, not MeV or eV)",
        )


def _check_angles(a: np.ndarray, field: str) -> None:
    if np.any(a <= 0) or np.any(a > 90):
        raise ConfigError(
            "incidence angles must be in (0, 90] degrees (90 = normal incidence), got "
            + (f"{a.min():g}" if a.min() == a.max() else f"{a.min():g}..{a.max():g}"),
            field=field,
            fix="give angles between the particle direction and the front face, 0 < angle <= 90",
        )


def make_kinematics(
    *,
    energies_gev: Sequence[float] | None = None,
    energy_range_gev: tuple[float, float] | None = None,
    angles_deg: Sequence[float] | None = None,
    angle_range_deg: tuple[float, float] | None = None,
    n_per_point: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Incident energies (MeV) and angles (degrees) for a simulation run.

    * Two lists: the full grid energies x angles, ``n_per_point`` showers per point (energy-major).
    * A list and a range: ``n_per_point`` showers per list value, the other quantity random in its range.
    * Two ranges: ``n_per_point`` showers in all.
    Random energies are log-uniform (equal showers per decade, as in the CaloChallenge datasets 2/3),
    random angles uniform.  Without any angle option every shower is at normal incidence (90 degrees).

    Both arrays are float32, the precision the native file stores: a shower simulated from the stored
    energy and angle sees exactly the values written next to it.
    """
    if energies_gev is not None and energy_range_gev is not None:
        raise ConfigError(
            "both an energy list and an energy range were given",
            field="--energy-gev",
            fix="give either --energy-gev or --energy-range-gev",
        )
    if energies_gev is None and energy_range_gev is None:
        raise ConfigError(
            "no incident energy given",
            field="--energy-gev",
            fix="give --energy-gev 10,50 or --energy-range-gev 1 1000",
        )
    if angles_deg is not None and angle_range_deg is not None:
        raise ConfigError(
            "both an angle list and an angle range were given",
            field="--angle-deg",
            fix="give either --angle-deg or --angle-range-deg",
        )
    if isinstance(n_per_point, bool) or not isinstance(n_per_point, int | np.integer) or n_per_point < 1:
        raise ConfigError(
            f"n_per_point must be an integer >= 1, got {n_per_point!r}",
            field="--n-per-point",
            fix="give a positive number of showers",
        )
    _check_seed(seed)

    e_list = e_range = a_list = a_range = None
    if energies_gev is not None:
        e_list = _as_float_list(energies_gev, "--energy-gev")
        _check_energies(e_list, "--energy-gev")
    else:
        assert energy_range_gev is not None
        e_range = _as_range(energy_range_gev, "--energy-range-gev")
        _check_energies(np.asarray(e_range), "--energy-range-gev")
    if angle_range_deg is not None:
        a_range = _as_range(angle_range_deg, "--angle-range-deg")
        _check_angles(np.asarray(a_range), "--angle-range-deg")
    else:
        a_list = _as_float_list(angles_deg if angles_deg is not None else [90.0], "--angle-deg")
        _check_angles(a_list, "--angle-deg")

    # A stream of its own (spawn key), so kinematics never share random numbers with chunk 0's showers.
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0x4B494E,)))
    n = int(n_per_point)

    def log_uniform(size: int) -> np.ndarray:
        assert e_range is not None
        return np.exp(rng.uniform(math.log(e_range[0]), math.log(e_range[1]), size))

    def uniform_angle(size: int) -> np.ndarray:
        assert a_range is not None
        return rng.uniform(a_range[0], a_range[1], size)

    if e_list is not None and a_list is not None:
        e = np.repeat(e_list, a_list.size * n)
        a = np.tile(np.repeat(a_list, n), e_list.size)
    elif e_list is not None:
        e = np.repeat(e_list, n)
        a = uniform_angle(e.size)
    elif a_list is not None:
        a = np.repeat(a_list, n)
        e = log_uniform(a.size)
    else:
        e = log_uniform(n)
        a = uniform_angle(n)
    # Uniform draws can round onto the open end in float32; keep angles inside (0, 90].
    angles = np.clip(a.astype(np.float32), np.nextafter(np.float32(0), np.float32(1)), np.float32(90))
    return (e * 1000.0).astype(np.float32), angles


# ------------------------------------------------------------------------------------------- medium
@dataclass(frozen=True)
class _Medium:
    """The detector facts the parametrisation needs, computed once per chunk."""

    x0: float  # mm
    rm: float  # mm
    ec: float  # MeV
    z: float
    sampling: bool
    fs_inv: float  # 1/F_S = (d_abs + d_act)/X0_eff; 0 for homogeneous media
    one_minus_ehat: float  # 0 for homogeneous media
    a: float  # stochastic term
    b: float  # constant term
    depth_mm: float

    @classmethod
    def of(cls, det: Detector) -> _Medium:
        sampling = not det.homogeneous
        fs_inv = det.layer_mm / det.x0 if sampling else 0.0
        ehat = 1.0 / (1.0 + EHAT_K * (det.absorber.z - det.active.z)) if det.active is not None else 1.0
        return cls(
            x0=det.x0,
            rm=det.rm,
            ec=det.ec,
            z=det.z_eff,
            sampling=sampling,
            fs_inv=fs_inv,
            one_minus_ehat=1.0 - ehat,
            a=det.resolution_a,
            b=det.constant_term,
            depth_mm=det.depth_mm,
        )


def _inv_width(coeffs: tuple[float, float], lny: np.ndarray) -> np.ndarray:
    """sigma = 1/(s1 + s2 ln y), capped at MAX_SIGMA_LN where the fit diverges (low y)."""
    den = coeffs[0] + coeffs[1] * lny
    return np.where(den > 1.0 / MAX_SIGMA_LN, 1.0 / np.maximum(den, 1e-12), MAX_SIGMA_LN)


def _longitudinal_parameters(
    med: _Medium, energies_mev: np.ndarray, normals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-shower (T, alpha) from two standard normals per shower, and the mean alpha.

    ``normals`` is (2, N).  Returns T (X0), alpha and alpha_mean = exp(<ln alpha>), which the lateral
    profile needs to scale depth (tau).
    """
    lny = np.log(energies_mev / med.ec)
    mu_lnt = np.log(np.maximum(lny + HOM_T1, MIN_T))
    mu_lna = np.log(np.maximum(HOM_A1 + (HOM_A2 + HOM_A3 / med.z) * lny, MIN_ALPHA))
    if med.sampling:
        t_sam = np.exp(mu_lnt) + SAM_T1 * med.fs_inv + SAM_T2 * med.one_minus_ehat
        a_sam = np.exp(mu_lna) + SAM_A1 * med.fs_inv
        mu_lnt = np.log(np.maximum(t_sam, MIN_T))
        mu_lna = np.log(np.maximum(a_sam, MIN_ALPHA))
        sig_t, sig_a, rho_c = _inv_width(SAM_SIG_LNT, lny), _inv_width(SAM_SIG_LNA, lny), SAM_RHO
    else:
        sig_t, sig_a, rho_c = _inv_width(HOM_SIG_LNT, lny), _inv_width(HOM_SIG_LNA, lny), HOM_RHO
    rho = np.clip(rho_c[0] + rho_c[1] * lny, -1.0, 1.0)
    c1, c2 = np.sqrt(0.5 * (1.0 + rho)), np.sqrt(0.5 * (1.0 - rho))
    g1, g2 = normals
    t_max = np.maximum(np.exp(mu_lnt + sig_t * (c1 * g1 + c2 * g2)), MIN_T)
    alpha = np.maximum(np.exp(mu_lna + sig_a * (c1 * g1 - c2 * g2)), MIN_ALPHA)
    return t_max, alpha, np.exp(mu_lna)


def _radial_parameters(
    med: _Medium, energies_mev: np.ndarray, tau: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GP core radius R_C, tail radius R_T (Molière radii) and core weight p at scaled depths ``tau``.

    ``tau`` is (N, n_z); energies (N,).  Returns three (N, n_z) arrays.
    """
    ln_e = np.log(energies_mev / 1000.0)[:, None]
    z = med.z
    r_core = (RC[0] + RC[1] * ln_e) + (RC[2] + RC[3] * z) * tau
    k1, k2, k3, k4 = RT[0] + RT[1] * z, RT[2], RT[3], RT[4] + RT[5] * ln_e
    r_tail = k1 * (np.exp(k3 * (tau - k2)) + np.exp(k4 * (tau - k2)))
    p1, p2, p3 = WC[0] + WC[1] * z, WC[2] + WC[3] * z, WC[4] + WC[5] * ln_e
    u = (p2 - tau) / p3
    weight = p1 * np.exp(u - np.exp(u))
    if med.sampling:
        e_tau = np.exp(-tau)
        r_core = r_core + SAM_RC[0] * med.one_minus_ehat + SAM_RC[1] * med.fs_inv * e_tau
        r_tail = r_tail + SAM_RT[0] * med.one_minus_ehat + SAM_RT[1] * med.fs_inv * e_tau
        weight = weight + med.one_minus_ehat * (
            SAM_WC[0] + SAM_WC[1] * med.fs_inv * np.exp(-((tau - 1.0) ** 2))
        )
    return np.maximum(r_core, 1e-3), np.maximum(r_tail, 1e-3), np.clip(weight, 0.0, 1.0)


# ------------------------------------------------------------------------------ incidence-angle tables
@functools.lru_cache(maxsize=512)  # a full 0-90 deg set is 181 tables (29 MiB for par04)
def _inside_fraction(mesh: CylindricalMesh, depth_mm: float, grid_index: int) -> np.ndarray:
    """Fraction of each voxel inside the calorimeter (0 <= depth <= depth_mm) at one grid angle.

    Exact in z (depth is linear in z, so the inside part of a z-bin is an interval), averaged over
    _PHI_SUB x _R_SUB sub-columns per (phi, r) cell.  Returns a read-only (n_z, n_phi, n_r) float32 array.
    """
    theta = math.radians(grid_index * ANGLE_STEP_DEG)
    sin_t, cos_t = math.sin(theta), math.cos(theta)
    if grid_index == _N_ANGLE_GRID - 1:
        cos_t = 0.0
    phi_e, r_e, z_e = mesh.phi_edges, mesh.r_edges, mesh.z_edges
    frac_sub = (np.arange(_PHI_SUB) + 0.5) / _PHI_SUB
    phi = phi_e[:-1, None] + np.diff(phi_e)[:, None] * frac_sub  # (n_phi, PS)
    frac_sub = (np.arange(_R_SUB) + 0.5) / _R_SUB
    r = r_e[:-1, None] + np.diff(r_e)[:, None] * frac_sub  # (n_r, RS)
    offset = np.cos(phi)[:, :, None, None] * r[None, None] * cos_t  # (n_phi, PS, n_r, RS)
    z_lo, z_hi = z_e[:-1], z_e[1:]
    if sin_t < 1e-12:
        inside = ((offset >= 0) & (offset <= depth_mm)).astype(np.float64)
        frac = np.broadcast_to(inside.mean(axis=(1, 3)), mesh.shape)
    else:
        z_min = (-offset / sin_t)[None]
        z_max = ((depth_mm - offset) / sin_t)[None]
        lo = np.maximum(z_lo[:, None, None, None, None], z_min)
        hi = np.minimum(z_hi[:, None, None, None, None], z_max)
        overlap = np.clip(hi - lo, 0.0, None) / (z_hi - z_lo)[:, None, None, None, None]
        frac = overlap.mean(axis=(2, 4))
    out = np.ascontiguousarray(frac, dtype=np.float32)
    out.setflags(write=False)
    return out


def _angle_grid(angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower grid index and linear-interpolation weight of the upper neighbour for each angle."""
    pos = np.asarray(angles_deg, dtype=np.float64) / ANGLE_STEP_DEG
    idx = np.clip(np.floor(pos).astype(np.int64), 0, _N_ANGLE_GRID - 1)
    return idx, np.where(idx < _N_ANGLE_GRID - 1, np.clip(pos - idx, 0.0, 1.0), 0.0)


# ----------------------------------------------------------------------------------------- simulation
def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(
            f"seed must be an integer >= 0, got {seed!r}", field="--seed", fix="give e.g. --seed 42"
        )


def _check_particle(particle: str) -> None:
    if particle not in PARTICLES:
        raise ConfigError(
            f"unknown particle {particle!r}", field="--particle", fix=f"use one of {', '.join(PARTICLES)}"
        )


def _check_inputs(energies_mev: np.ndarray, angles_deg: np.ndarray) -> None:
    if energies_mev.ndim != 1 or angles_deg.shape != energies_mev.shape:
        raise ConfigError(
            f"energies {energies_mev.shape} and angles {angles_deg.shape} must be 1-D of equal length",
            field="--energy-gev",
            fix="give one energy and one angle per shower",
        )
    if not np.all(np.isfinite(energies_mev)) or np.any(energies_mev <= 0):
        raise ConfigError(
            "incident energies must be finite and > 0", field="--energy-gev", fix="use positive energies"
        )
    if not np.all(np.isfinite(angles_deg)) or np.any(angles_deg <= 0) or np.any(angles_deg > 90):
        raise ConfigError(
            "incidence angles must be in (0, 90] degrees",
            field="--angle-deg",
            fix="use 0 < angle <= 90 (90 = normal)",
        )


# Cells below this energy (MeV) are set to exactly 0: 1 eV on the incident-particle scale, six decades
# under any readout threshold (CaloChallenge's is 15 keV).  Without it the gamma draws of nearly empty
# voxels leave float32 values down to 1e-44 MeV (denormals): physically meaningless, slow in arithmetic,
# and they count as "hit" cells for any code that tests ``> 0`` without a threshold.
CELL_ENERGY_FLOOR_MEV = 1e-6


def apply_cell_floor(showers: np.ndarray, floor_mev: float = CELL_ENERGY_FLOOR_MEV) -> np.ndarray:
    """Zero, in place, every cell below ``floor_mev`` (see :data:`CELL_ENERGY_FLOOR_MEV`); returns ``showers``."""
    showers[showers < np.float32(floor_mev)] = 0.0
    return showers


def simulate_chunk(
    detector: Detector,
    mesh: CylindricalMesh,
    energies_mev: np.ndarray,
    angles_deg: np.ndarray,
    *,
    particle: str,
    seed: int,
    chunk_index: int,
) -> np.ndarray:
    """Simulate one chunk of showers; returns (n, mesh.n_voxels) float32 energies in MeV.

    Cells below :data:`CELL_ENERGY_FLOOR_MEV` (1 eV) are exactly 0.

    A pure function: the generator is ``default_rng(SeedSequence([seed, chunk_index]))``, so a chunk gives
    the same showers in any process and in any order.  Everything is vectorised over showers and voxels.
    """
    _check_particle(particle)
    _check_seed(seed)
    e = np.asarray(energies_mev, dtype=np.float64).reshape(-1)
    theta = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    _check_inputs(e, theta)
    n = e.size
    out = np.zeros((n, mesh.n_voxels), dtype=np.float32)
    if n == 0:
        return out
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(chunk_index)]))
    med = _Medium.of(detector)

    # ---- per-shower random numbers, drawn up front in a fixed order
    normals = rng.standard_normal((2, n))
    conversion = rng.standard_exponential(n) * PHOTON_MFP_X0
    const = np.maximum(1.0 + med.b * rng.standard_normal(n), 0.0)
    t0 = conversion if particle == "photon" else np.zeros(n)

    # ---- longitudinal: fraction of the energy per z-bin (exact gamma CDF differences)
    t_max, alpha, alpha_mean = _longitudinal_parameters(med, e, normals)
    beta = (alpha - 1.0) / t_max
    t_edges = mesh.z_edges / med.x0
    s = np.maximum(t_edges[None, :] - t0[:, None], 0.0)
    long_frac = np.maximum(np.diff(gammainc(alpha[:, None], beta[:, None] * s), axis=1), 0.0)  # (n, n_z)

    # ---- lateral: fraction per r-bin from the analytic CDF, at the z-bin centre
    t_c = np.maximum(mesh.z_centres[None, :] / med.x0 - t0[:, None], 0.0)
    tau = t_c * (beta / alpha * alpha_mean / (alpha_mean - 1.0))[:, None]
    r_core, r_tail, weight = _radial_parameters(med, e, tau)
    rr = (mesh.r_edges / med.rm) ** 2  # (n_r + 1,)
    cdf = weight[:, :, None] * rr / (rr + r_core[:, :, None] ** 2) + (1.0 - weight[:, :, None]) * rr / (
        rr + r_tail[:, :, None] ** 2
    )
    rad_frac = np.diff(cdf, axis=2)  # (n, n_z, n_r)

    # ---- fluctuation quanta (MeV): sampling (angle-dependent for layered detectors) and GP spots
    q_samp = med.a**2 * 1000.0 * np.ones(n)
    if med.sampling:
        q_samp = q_samp / np.sin(np.radians(theta))
    e_gev = e / 1000.0
    if med.sampling:
        n_spot = SAM_SPOT_N[0] / med.a * e_gev ** SAM_SPOT_N[1]
    else:
        n_spot = HOM_SPOT_N[0] * math.log(med.z) * e_gev ** HOM_SPOT_N[1]
    q_cell = q_samp + e / np.maximum(n_spot, 1.0)

    # Expected energy per (z, r) ring divided by q_cell and by n_phi: the gamma shape before the angle mask.
    ring_k = ((e / (q_cell * mesh.n_phi))[:, None, None] * long_frac[:, :, None] * rad_frac).astype(
        np.float32
    )
    tables = _AngleTables(mesh, med.depth_mm, theta)

    batch = max(1, _BATCH_VOXELS // mesh.n_voxels)
    grid_out = out.reshape(n, *mesh.shape)
    for start in range(0, n, batch):
        sl = slice(start, min(start + batch, n))
        k = tables.shapes(ring_k[sl], sl)
        mean_dep = k.sum(axis=(1, 2, 3), dtype=np.float64) * q_cell[sl]
        cells = rng.standard_gamma(k, dtype=np.float32)
        drawn = cells.sum(axis=(1, 2, 3), dtype=np.float64)
        shape_tot = mean_dep / q_samp[sl]
        total = np.where(shape_tot > 0, rng.standard_gamma(np.maximum(shape_tot, 0.0)) * q_samp[sl], 0.0)
        scale = np.divide(total * const[sl], drawn, out=np.zeros_like(drawn), where=drawn > 0)
        np.multiply(cells, scale.astype(np.float32)[:, None, None, None], out=grid_out[sl])
    return apply_cell_floor(out)


class _AngleTables:
    """The inside-fraction tables one chunk needs, stacked once so each batch is a single gather.

    Shower i uses the tables of grid angles idx_i and idx_i + 1 with weights (1 - w_i, w_i).
    """

    def __init__(self, mesh: CylindricalMesh, depth_mm: float, angles_deg: np.ndarray) -> None:
        idx, w_hi = _angle_grid(angles_deg)
        hi = np.minimum(idx + 1, _N_ANGLE_GRID - 1)
        self.w_hi = w_hi
        self.interpolate = bool(np.any(w_hi > 0))
        grid_points, inverse = np.unique(np.concatenate([idx, hi]), return_inverse=True)
        self.tables = np.stack([_inside_fraction(mesh, depth_mm, int(g)) for g in grid_points])
        self.lo, self.hi = inverse[: idx.size], inverse[idx.size :]

    def shapes(self, ring_k: np.ndarray, sl: slice) -> np.ndarray:
        """Gamma shapes per voxel for showers ``sl``: ring shapes (B, n_z, n_r) spread over phi, masked."""
        w_hi = self.w_hi[sl]
        k = self.tables[self.lo[sl]]
        k *= (ring_k * (1.0 - w_hi)[:, None, None]).astype(np.float32)[:, :, None, :]
        if self.interpolate:
            upper = self.tables[self.hi[sl]]
            upper *= (ring_k * w_hi[:, None, None]).astype(np.float32)[:, :, None, :]
            k += upper
        return k


def simulate(
    detector: Detector,
    mesh: CylindricalMesh,
    energies_mev: np.ndarray,
    angles_deg: np.ndarray,
    *,
    particle: str = "electron",
    seed: int = 0,
    chunk_size: int = 1000,
    progress: bool = False,
) -> ShowerData:
    """Simulate showers serially, chunk by chunk (the same chunks a parallel run farms out).

    Chunk i holds events [i*chunk_size, (i+1)*chunk_size) and uses the stream (seed, i), so a Dask
    fan-out of :func:`simulate_chunk` over the same slices returns identical arrays.  The chunk size is
    therefore part of what defines the sample (like the seed) and is recorded in ``meta``.
    """
    _check_particle(particle)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ConfigError(
            f"chunk_size must be an integer >= 1, got {chunk_size!r}",
            field="--chunk-size",
            fix="use e.g. --chunk-size 1000",
        )
    _check_seed(seed)
    e = np.asarray(energies_mev, dtype=np.float64).reshape(-1)
    theta = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    _check_inputs(e, theta)
    n = e.size
    showers = np.empty((n, mesh.n_voxels), dtype=np.float32)
    with progress_bar(n, f"simulating {particle} showers", enabled=progress) as bar:
        for i, start in enumerate(range(0, n, chunk_size)):
            sl = slice(start, min(start + chunk_size, n))
            showers[sl] = simulate_chunk(
                detector, mesh, e[sl], theta[sl], particle=particle, seed=seed, chunk_index=i
            )
            bar.advance(sl.stop - sl.start)
    meta = {
        "detector": detector.to_dict(),
        "particle": particle,
        "seed": int(seed),
        "chunk_size": int(chunk_size),
        "simulator": SIMULATOR_NAME,
    }
    return ShowerData(energies=e, showers=showers, mesh=mesh, angles=theta, meta=meta)
