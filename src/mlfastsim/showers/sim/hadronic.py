"""Reference hadron-shower simulator: charged pions in a highly granular steel/scintillator calorimeter.

The showers stand in for Geant4 in the hadron workflow (issue 4), so the model is a two-component
parametrisation built from published ingredients, applied spot by spot so that cells are sparse and
fluctuate as in a real granular calorimeter.

One shower
----------
1. **Track before the first interaction.**  The depth of the first inelastic interaction is exponential
   with mean lambda_I (PDG: Fe 167.7 mm, polystyrene 770.7 mm; homogenised over the layer pitch).  Until
   then the pion is a MIP: one track segment per layer in the entry cell, each a Landau-distributed
   signal (Moyal approximation) with the most probable value of a MIP in 3 mm of scintillator.
2. **Electromagnetic fraction.**  Per shower f_em ~ Beta with mean 1 - (E/E0)^(m-1) (PDG review
   "Calorimetry"; Gabriel et al., NIM A338 (1994) 336: E0 ~ 1 GeV, 0.80 <= m <= 0.87 for pions) and a
   fixed width sigma(f_em).  The electromagnetic part is seen at the electron scale, the rest at the
   h/e scale (non-compensation, e/h ~ 1.35 for steel/scintillator; nuclear binding energy and other
   invisible energy are what make h < e).  E_sum/E_inc therefore sits below 1 and rises with E.
3. **Longitudinal profiles** (Bock et al., NIM 186 (1981) 533), both measured from the first interaction:
   the electromagnetic part a gamma distribution in X0 with shape a and rate b, the hadronic part a gamma
   distribution in lambda_I with shape a and rate d, a = 0.6165 + 0.3183 ln E, b = 0.2198,
   d = 0.9099 - 0.0237 ln E (E in GeV; checked, see ``BOCK_*``).  The shape a fluctuates from
   shower to shower (log-normal with mean a, sigma_ln_a below) so that the profiles of single
   showers differ, as they do in data.  The
   electromagnetic spots are grouped into a few pi0 sub-showers (1 + Poisson(2 ln E_em/GeV)) that start
   at Gamma(a_s)/b and spread Gamma(a - a_s)/b beyond: the sum is Gamma(a)/b, so Bock's mean profile is
   kept exactly while single showers are clumpy.
4. **Lateral profiles.**  Every deposit sits at a radius drawn from a two-dimensional exponential density
   (r ~ Gamma(2, rho)): the electromagnetic spots in a narrow core of Molière scale that widens with
   depth (each pi0 sub-shower leaves the axis at an angle ~ p_T/E), the hadronic deposits in a core of ~0.1 lambda_I
   plus a wide halo of ~0.3 lambda_I (neutrons, spallation protons).  The widths are set so that ~95 % of
   the energy lies within one lambda_I of the axis (PDG review "Calorimetry").
5. **Spots and fluctuations.**  Energy is deposited in discrete spots drawn as compound Poisson
   processes, whose variance is the calorimeter's sampling fluctuation:
   * electromagnetic spots: counts from Grindhammer-Peters (hep-ex/0001020) for sampling calorimeters,
     N = 10.3/a_em E^0.959, spot energies Gamma-distributed such that the sum fluctuates with the EM
     sampling term a_em = 2.7 % sqrt(d_act/f_mip) (Livan & Wigmans, "Calorimetry for Collider Physics");
   * hadronic part: MIP-like track segments of relativistic charged hadrons (Landau signal times the
     1/cos path length of an inclined track) and "nuclear" spots (spallation protons, fragments) with
     Gamma-distributed energies, tuned so that the hadronic part fluctuates with the hadronic sampling
     term a_had = 11.5 % sqrt(dE_mip/MeV) (Drews et al., NIM A290 (1990) 335), dE_mip the energy a MIP
     loses in one sampling layer;
   * per cell: photo-electron statistics, Gamma(E/q_pe) q_pe with q_pe = 1 MIP / N_pe (N_pe ~ 15 for
     the CALICE AHCAL tiles, JINST 5 (2010) P05004), applied per spot, which is the same in distribution
     as per cell because Gamma variables with one scale add;
   * the f_em fluctuation times (1 - h/e) is the constant term of non-compensating calorimeters.
   Together these give sigma/E ~ 55 %/sqrt(E) (+) a few %, like the CALICE steel AHCAL (57.6 %/sqrt(E)
   (+) 1.6 %, JINST 7 (2012) P09017).
6. **Readout.**  Cells below ``threshold_mip`` MIP are zeroed (0.5 MIP as in CALICE).

Energies are on the incident-particle (electromagnetic) scale: visible energy divided by the electron
sampling fraction, so an electron would give E_sum/E_inc ~ 1 and a pion gives the containment times the
pion response.  One MIP in a cell is then ``HadronCalorimeter.mip_mev`` (~20.7 MeV for ``steel_scint``).

Reproducibility: every shower has its own counter-based random stream, keyed by (seed, global event
index) through SplitMix64, so the result depends only on the seed and the event's position in the input,
never on ``chunk_size``, the number of threads or the order in which chunks run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np
import yaml

import mlfastsim.core.numba_setup  # noqa: F401  (threading layer before the kernels)
from mlfastsim.core.errors import ConfigError
from mlfastsim.core.progress import progress_bar
from mlfastsim.showers.geometry import CartesianGrid
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.sim.em import apply_cell_floor

SIMULATOR_NAME = "bock-twocomponent-spots"
PARTICLE = "pion"

# ------------------------------------------------------------------------------------ published constants
# Bock, Hansl-Kozanecka and Shah, "Parametrization of the longitudinal development of hadronic showers in
# sequential sampling calorimeters", NIM 186 (1981) 533; longitudinal profile from the shower start, one
# shape a for both terms, b a rate per X0 and d a rate per lambda_I (E in GeV):
#   dE/dx = k [w (x/X0)^(a-1) exp(-b x/X0) + (1 - w) (x/lambda)^(a-1) exp(-d x/lambda)]
#   a = 0.6165 + 0.3183 ln E,  b = 0.2198,  d = 0.9099 - 0.0237 ln E,  w = 0.4634
# Checked (issue 14): the functional form and the roles of a, b, d, w against Eq. 1 of Kulchitsky &
# Vinogradov, hep-ex/9903019, which quotes the paper (their Ref. 3; they then use refitted values, a =
# 0.786 + 0.427 ln E, b = 0.29, d = 0.978, w = 1.032 - 0.159 ln E, not Bock's); the numbers are Bock's
# as they are commonly quoted (the original scan was not at hand).  Note that w weighs the *amplitudes*
# of the two terms, not their energies: the electromagnetic energy fraction it implies is w X0 / b^a over
# w X0 / b^a + (1 - w) lambda / d^a (:func:`bock_em_fraction`), 0.37 at 10 GeV and 0.58 at 100 GeV for
# hcal48; the simulator's visible f_em (Gabriel et al.) comes within 0.05 of it (0.39, 0.62; tested).
BOCK_A = (0.6165, 0.3183)
BOCK_B = 0.2198
BOCK_D = (0.9099, -0.0237)
BOCK_W = 0.4634
# Shape parameters below this make the gamma profile pathological (all energy at the start point).
MIN_SHAPE = 0.3
# Grindhammer & Peters (hep-ex/0001020), spot count in sampling calorimeters: N = 10.3/a E^0.959 (E in GeV).
GP_SPOT_N = (10.3, 0.959)
# Livan & Wigmans: EM sampling term a = 2.7 % sqrt(d/f_mip), d the active layer thickness in mm.
EM_SAMPLING_COEFF = 0.027
# Drews et al., NIM A290 (1990) 335: hadronic sampling term a = 11.5 % sqrt(dE_mip / MeV).
HAD_SAMPLING_COEFF = 0.115
# Grindhammer & Peters: e/mip = 1 / (1 + 0.007 (Z_abs - Z_act)).
EHAT_K = 0.007
# Rossi scale energy (MeV): R_M = E_s X0 / E_c.
ES_MEV = 21.2052
# Moyal width / Landau xi: the FWHM of the Landau density is 4.018 xi, of the Moyal density 3.59 sigma.
MOYAL_SIGMA_PER_XI = 4.018 / 3.590
_EULER_GAMMA = 0.5772156649015329


# ------------------------------------------------------------------------------------------ calorimeter
@dataclass(frozen=True)
class HadronCalorimeter:
    """A steel (or other absorber) / plastic-scintillator sampling hadron calorimeter.

    Material numbers are PDG "Atomic and nuclear properties of materials" values; the response and
    shower-shape parameters cite their sources in the comments.  All lengths in mm, energies in MeV.
    """

    name: str = "steel_scint"
    # ---- absorber (PDG iron: X0 13.84 g/cm2 = 17.57 mm, lambda_I 132.1 g/cm2 = 167.7 mm, R_M 17.19 mm,
    # E_c(e-) 21.68 MeV, <dE/dx>min 1.451 MeV cm2/g * 7.874 g/cm3 = 1.143 MeV/mm, Z = 26)
    absorber: str = "Fe"
    absorber_mm: float = 20.0
    absorber_x0_mm: float = 17.57
    absorber_lambda_mm: float = 167.7
    absorber_rm_mm: float = 17.19
    absorber_ec_mev: float = 21.68
    absorber_dedx_mev_per_mm: float = 1.143
    absorber_z: float = 26.0
    # ---- active layer (PDG polystyrene: X0 43.79 g/cm2 = 413.1 mm, lambda_I 81.7 g/cm2 = 770.7 mm,
    # <dE/dx>min 1.936 MeV cm2/g * 1.06 g/cm3 = 0.2052 MeV/mm, Z_eff 5.6)
    active: str = "polystyrene scintillator"
    active_mm: float = 3.0
    active_x0_mm: float = 413.1
    active_lambda_mm: float = 770.7
    active_dedx_mev_per_mm: float = 0.2052
    active_z: float = 5.6
    # Landau most probable signal and width xi of a MIP in the active layer (MeV visible).  PDG
    # Landau-Vavilov-Bichsel formula for 0.318 g/cm2 polystyrene (I = 68.7 eV, Sternheimer density
    # correction): Delta_p = 0.47 MeV at the Fermi plateau (0.476 at minimum ionisation), xi = 0.0263 MeV.
    active_mip_mpv_mev: float = 0.474
    active_landau_xi_mev: float = 0.0263
    # Layer pitch: absorber + active + readout board and air (hcal48: 26.5 mm).  The extra 3.5 mm are
    # treated as empty space (a 1 mm FR4 board is 0.006 lambda_I per layer).
    layer_pitch_mm: float = 26.5
    n_layers: int = 48
    # ---- response
    # e/h: steel/plastic-scintillator calorimeters are non-compensating, e/h ~ 1.3-1.4 (Wigmans,
    # "Calorimetry", 2nd ed., ch. 3); with <f_em> below it gives e/pi ~ 1.2 at 10 GeV.
    e_over_h: float = 1.35
    # <f_em> = 1 - (E/E0)^(m-1) (PDG "Calorimetry" review; Gabriel et al. NIM A338 (1994) 336: pion
    # showers E0 ~ 1 GeV, m = 0.80-0.87).
    f_em_e0_gev: float = 1.0
    f_em_m: float = 0.83
    # Event-to-event spread of f_em (model choice, not a fit): f_em fluctuates by O(0.1) at 10-100 GeV
    # (Wigmans, "Calorimetry", sect. 2.3); times (1 - h/e) it makes the constant term of a few %.
    f_em_sigma: float = 0.11
    # Share of the visible hadronic energy carried by relativistic charged hadrons (MIP-like track
    # segments); the rest is deposited by spallation protons and nuclear fragments, which dominate the
    # non-EM signal (Wigmans, "Calorimetry", ch. 2).  Model choice: 25 % gives a clear MIP peak in the
    # hit-energy spectrum, as the CALICE AHCAL data show.
    track_fraction: float = 0.25
    # Energies of the "nuclear" spots are Gamma(k) distributed; k = 1 (exponential).
    nuclear_spot_shape: float = 1.0
    # Log-normal shower-to-shower spread of the Bock shape parameter a (model choice: makes single
    # shower profiles fluctuate around Bock's mean profile).
    sigma_ln_shape: float = 0.2
    # ---- lateral (2D exponential densities, r ~ Gamma(2, rho)); tuned so that ~95 % of the energy is
    # within 1 lambda_I (PDG "Calorimetry" review) and the EM core is of Molière scale
    em_core_rho_rm: float = 0.257  # 90 % of a 2D exponential lies within 3.89 rho: 90 % within 1 R_M
    # pi0 sub-showers (model choice): 1 + Poisson(c ln(E_em/GeV)) clusters with Dirichlet energy shares,
    # each leaving the axis at an angle drawn from a 2D exponential of scale em_angle_rad (mean angle
    # 2 x 0.05 = 0.1 rad ~ <p_T>/E of a few-GeV pi0), starting a fraction of Bock's shape into the shower.
    em_angle_rad: float = 0.05
    em_clusters_per_ln_e: float = 2.0
    em_start_shape_fraction: float = 0.4
    had_core_rho_lambda: float = 0.08
    had_core_growth_per_lambda: float = 0.5
    had_halo_rho_lambda: float = 0.28
    had_core_weight: float = 0.6
    # ---- readout
    photoelectrons_per_mip: float = 15.0  # CALICE AHCAL tiles, JINST 5 (2010) P05004
    threshold_mip: float = 0.5  # CALICE AHCAL hit threshold

    def __post_init__(self) -> None:
        positive = (
            "absorber_mm", "absorber_x0_mm", "absorber_lambda_mm", "absorber_rm_mm", "absorber_ec_mev",
            "absorber_dedx_mev_per_mm", "active_mm", "active_x0_mm", "active_lambda_mm",
            "active_dedx_mev_per_mm", "active_mip_mpv_mev", "active_landau_xi_mev", "layer_pitch_mm",
            "e_over_h", "f_em_e0_gev", "nuclear_spot_shape", "em_core_rho_rm", "had_core_rho_lambda",
            "had_halo_rho_lambda", "photoelectrons_per_mip",
        )
        for key in positive:
            value = float(getattr(self, key))
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be > 0, got {value}", field=key, fix="give a positive number")
        if self.absorber_mm + self.active_mm > self.layer_pitch_mm + 1e-9:
            raise ConfigError(
                f"absorber {self.absorber_mm} mm + active {self.active_mm} mm exceed the layer pitch "
                f"{self.layer_pitch_mm} mm", field="layer_pitch_mm", fix="check the layer structure",
            )
        if not 0 < float(self.em_start_shape_fraction) < 1:
            raise ConfigError("em_start_shape_fraction must be in (0, 1)", field="em_start_shape_fraction",
                              fix="give a fraction such as 0.4")
        for key in ("f_em_m", "track_fraction", "had_core_weight"):
            if not 0 <= float(getattr(self, key)) <= 1:
                raise ConfigError(f"{key} must be in [0, 1]", field=key, fix="give a fraction")
        for key in ("f_em_sigma", "sigma_ln_shape", "em_angle_rad", "had_core_growth_per_lambda",
                    "threshold_mip", "em_clusters_per_ln_e"):
            if not float(getattr(self, key)) >= 0:
                raise ConfigError(f"{key} must be >= 0", field=key, fix="give a non-negative number")

    # ---- derived quantities
    @property
    def lambda_per_layer(self) -> float:
        """Interaction lengths per layer."""
        return self.absorber_mm / self.absorber_lambda_mm + self.active_mm / self.active_lambda_mm

    @property
    def x0_per_layer(self) -> float:
        """Radiation lengths per layer."""
        return self.absorber_mm / self.absorber_x0_mm + self.active_mm / self.active_x0_mm

    @property
    def lambda_eff_mm(self) -> float:
        """Interaction length of the stack homogenised over the layer pitch (mm of calorimeter depth)."""
        return self.layer_pitch_mm / self.lambda_per_layer

    @property
    def x0_eff_mm(self) -> float:
        return self.layer_pitch_mm / self.x0_per_layer

    @property
    def rm_eff_mm(self) -> float:
        """Molière radius of the stack: E_s X0_eff / E_c (the absorber's E_c dominates)."""
        return ES_MEV * self.x0_eff_mm / self.absorber_ec_mev

    @property
    def depth_lambda(self) -> float:
        return self.n_layers * self.lambda_per_layer

    @property
    def mip_layer_loss_mev(self) -> float:
        """Mean energy a minimum-ionising particle loses in one layer (absorber + active), MeV."""
        return self.absorber_mm * self.absorber_dedx_mev_per_mm + self.active_mm * self.active_dedx_mev_per_mm

    @property
    def sampling_fraction_mip(self) -> float:
        return self.active_mm * self.active_dedx_mev_per_mm / self.mip_layer_loss_mev

    @property
    def e_over_mip(self) -> float:
        """Electron to MIP response ratio (Grindhammer-Peters e-hat)."""
        return 1.0 / (1.0 + EHAT_K * (self.absorber_z - self.active_z))

    @property
    def sampling_fraction_em(self) -> float:
        """Visible fraction of electromagnetic energy: the scale that converts visible energy to MeV here."""
        return self.sampling_fraction_mip * self.e_over_mip

    @property
    def mip_mev(self) -> float:
        """Most probable MIP signal per cell (normal incidence) on the incident-particle energy scale."""
        return self.active_mip_mpv_mev / self.sampling_fraction_em

    @property
    def threshold_mev(self) -> float:
        return self.threshold_mip * self.mip_mev

    @property
    def em_sampling_term(self) -> float:
        """a_em = 2.7 % sqrt(d_act / f_mip) (Livan & Wigmans), per sqrt(GeV)."""
        return EM_SAMPLING_COEFF * math.sqrt(self.active_mm / self.sampling_fraction_mip)

    @property
    def had_sampling_term(self) -> float:
        """a_had = 11.5 % sqrt(dE_mip/MeV) (Drews et al.), per sqrt(GeV)."""
        return HAD_SAMPLING_COEFF * math.sqrt(self.mip_layer_loss_mev)

    def mean_f_em(self, energy_gev: np.ndarray | float) -> np.ndarray:
        """<f_em>(E) = 1 - (E/E0)^(m-1), clipped to [0, 1]."""
        e = np.asarray(energy_gev, dtype=np.float64)
        return np.clip(1.0 - (np.maximum(e, 1e-9) / self.f_em_e0_gev) ** (self.f_em_m - 1.0), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Parameters and the derived numbers a reader of the file wants to see (metadata block)."""
        d: dict[str, Any] = asdict(self)
        d["derived"] = {
            "lambda_per_layer": self.lambda_per_layer,
            "x0_per_layer": self.x0_per_layer,
            "depth_lambda": self.depth_lambda,
            "rm_eff_mm": self.rm_eff_mm,
            "sampling_fraction_mip": self.sampling_fraction_mip,
            "sampling_fraction_em": self.sampling_fraction_em,
            "e_over_mip": self.e_over_mip,
            "mip_mev": self.mip_mev,
            "threshold_mev": self.threshold_mev,
            "em_sampling_term": self.em_sampling_term,
            "had_sampling_term": self.had_sampling_term,
            "energy_scale": "incident-particle (electromagnetic) scale: visible / sampling_fraction_em",
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HadronCalorimeter:
        if not isinstance(d, dict):
            raise ConfigError(f"calorimeter must be a mapping, got {type(d).__name__}", field="calorimeter",
                              fix="give HadronCalorimeter fields")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__) - {"derived"})
        if unknown:
            raise ConfigError(f"unknown calorimeter field(s): {', '.join(unknown)}", field="calorimeter",
                              fix=f"use fields of HadronCalorimeter ({', '.join(cls.__dataclass_fields__)})")
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ConfigError(f"bad calorimeter description ({exc})", field="calorimeter",
                              fix="give HadronCalorimeter fields") from exc


HADRON_CALORIMETERS: dict[str, HadronCalorimeter] = {
    # 48 x (20 mm steel + 3 mm scintillator + 3.5 mm readout/air), 30 mm cells: matches GRID_PRESETS["hcal48"].
    "steel_scint": HadronCalorimeter(),
}


def bock_parameters(energy_gev: float) -> tuple[float, float, float, float]:
    """Bock et al.'s (a, b, d, w) at ``energy_gev`` (shape, EM rate per X0, hadronic rate per lambda, weight).

    The shape is floored at :data:`MIN_SHAPE` as in the simulator (a < 0.3 would put all the energy at the
    interaction point; Bock's fit covers 10-140 GeV, where a > 1.3).
    """
    ln_e = math.log(max(float(energy_gev), 1e-3))
    return max(BOCK_A[0] + BOCK_A[1] * ln_e, MIN_SHAPE), BOCK_B, max(BOCK_D[0] + BOCK_D[1] * ln_e, 0.1), BOCK_W


def bock_em_fraction(energy_gev: float, lambda_over_x0: float) -> float:
    """The (visible) electromagnetic energy fraction implied by Bock's amplitude weight w.

    Integrating each term of the profile: the EM term holds w X0 Gamma(a) / b^a, the hadronic term
    (1 - w) lambda Gamma(a) / d^a; Gamma(a) cancels.  This is what w means in energy, and what the
    simulator's <f_em> (seen at the e and h scales) should come close to.
    """
    a, b, d, w = bock_parameters(energy_gev)
    em = w / b**a
    had = (1.0 - w) * float(lambda_over_x0) / d**a
    return em / (em + had)


def load_calorimeter(spec: str | Path | dict[str, Any] | HadronCalorimeter) -> HadronCalorimeter:
    """A calorimeter from a preset name, a YAML/JSON file of :class:`HadronCalorimeter` fields or a dict.

    A file may hold the fields at top level or under ``calorimeter:`` (the block a shower file's metadata
    stores), so the calorimeter of an existing sample can be reused; the ``derived`` block is ignored.
    """
    if isinstance(spec, HadronCalorimeter):
        return spec
    if isinstance(spec, dict):
        return HadronCalorimeter.from_dict(spec.get("calorimeter", spec))
    key = str(spec)
    if key in HADRON_CALORIMETERS:
        return HADRON_CALORIMETERS[key]
    path = Path(key)
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        try:
            d = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read calorimeter file {path} ({exc})", field="--calorimeter",
                              fix="give a YAML mapping of HadronCalorimeter fields") from exc
        if not isinstance(d, dict):
            raise ConfigError(f"calorimeter file {path} is not a mapping", field="--calorimeter",
                              fix="give a YAML mapping of HadronCalorimeter fields")
        return HadronCalorimeter.from_dict(d.get("calorimeter", d))
    raise ConfigError(f"unknown hadron calorimeter {key!r}", field="--calorimeter",
                      fix=f"use one of {', '.join(HADRON_CALORIMETERS)} or a .yaml file of its fields")


# --------------------------------------------------------------------------------- random numbers (numba)
# SplitMix64 (Steele, Lea, Flood, OOPSLA 2014): a counter-based stream per shower.  All operands are
# uint64 so that numba keeps integer arithmetic (mixing with int64 would promote to float).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_M53 = 2.0**-53


@nb.njit(cache=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@nb.njit(cache=True, inline="always")
def _uniform(st: np.ndarray) -> float:
    """Uniform in the open interval (0, 1)."""
    st[0] += _GOLDEN
    return (float(_mix(st[0]) >> _S11) + 0.5) * _TWO_M53


@nb.njit(cache=True)
def _normal(st: np.ndarray) -> float:
    u1 = _uniform(st)
    u2 = _uniform(st)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@nb.njit(cache=True)
def _gamma(st: np.ndarray, k: float) -> float:
    """Standard Gamma(k) (Marsaglia & Tsang 2000; k < 1 through Gamma(k + 1) U^(1/k))."""
    if k <= 0.0:
        return 0.0
    boost = 1.0
    if k < 1.0:
        boost = _uniform(st) ** (1.0 / k)
        k += 1.0
    d = k - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = _normal(st)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = _uniform(st)
        if u < 1.0 - 0.0331 * x * x * x * x or math.log(u) < 0.5 * x * x + d * (1.0 - v + math.log(v)):
            return d * v * boost


@nb.njit(cache=True)
def _poisson(st: np.ndarray, lam: float) -> int:
    """Poisson(lam): multiplication method below 10, PTRS (Hörmann 1993, as numpy) above."""
    if lam <= 0.0:
        return 0
    if lam < 10.0:
        limit = math.exp(-lam)
        n = 0
        p = _uniform(st)
        while p > limit:
            n += 1
            p *= _uniform(st)
        return n
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = _uniform(st) - 0.5
        v = _uniform(st)
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return int(k)
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= -lam + k * loglam - math.lgamma(k + 1.0):
            return int(k)


@nb.njit(cache=True)
def _moyal(st: np.ndarray, mpv: float, sigma: float) -> float:
    """Moyal approximation of the Landau distribution: mode ``mpv``, X = mpv - sigma ln(g^2), g ~ N(0, 1)."""
    g = _normal(st)
    return mpv - sigma * math.log(max(g * g, 1e-300))


# ------------------------------------------------------------------------------------------ the kernel
# Layout of the float64 parameter vector handed to the kernel (numba cannot take the dataclass).
(
    _P_LAMBDA_MM, _P_X0_MM, _P_CELL_X, _P_CELL_Y, _P_CELL_Z, _P_MIP_CELL, _P_MIP_SIGMA, _P_MIP_LOSS,
    _P_H_OVER_E, _P_FEM_E0, _P_FEM_M, _P_FEM_SIGMA, _P_TRACK_FRAC, _P_NUC_K, _P_SIG_LNA, _P_A_EM, _P_A_HAD,
    _P_EM_RHO0, _P_EM_SPREAD, _P_HC_RHO, _P_HC_GROWTH, _P_HH_RHO, _P_HC_WEIGHT, _P_Q_PE, _P_THRESHOLD,
    _P_EM_CLUSTERS, _P_EM_START_FRAC, _N_PARAMS,
) = range(28)
# Upper bound on pi0 sub-showers per shower (keeps the per-shower scratch arrays small).
MAX_EM_CLUSTERS = 64


@nb.njit(cache=True)
def _deposit(out: np.ndarray, i: int, touched: np.ndarray, n_touched: int, z_mm: float, x_mm: float,
             y_mm: float, energy: float, par: np.ndarray, dims: np.ndarray, st: np.ndarray) -> int:
    """Photo-statistics smearing of one spot and its scatter into the grid; returns the new touched count."""
    iz = math.floor(z_mm / par[_P_CELL_Z])
    ix = dims[3] + math.floor(x_mm / par[_P_CELL_X] + 0.5)
    iy = dims[4] + math.floor(y_mm / par[_P_CELL_Y] + 0.5)
    if iz < 0 or iz >= dims[2] or ix < 0 or ix >= dims[0] or iy < 0 or iy >= dims[1] or energy <= 0.0:
        return n_touched  # leaks out of the grid (longitudinally or laterally)
    q = par[_P_Q_PE]
    e = _gamma(st, energy / q) * q
    cell = (iz * dims[1] + iy) * dims[0] + ix
    out[i, cell] += e
    touched[n_touched] = cell
    return n_touched + 1


@nb.njit(cache=True)
def _spot_xy(st: np.ndarray, rho: float) -> tuple[float, float]:
    """A point of the 2D exponential density exp(-r/rho): r ~ Gamma(2, rho), phi uniform."""
    r = rho * (-math.log(_uniform(st) * _uniform(st)))
    phi = 2.0 * math.pi * _uniform(st)
    return r * math.cos(phi), r * math.sin(phi)


@nb.njit(cache=True, parallel=True)
def _simulate_kernel(out: np.ndarray, energies: np.ndarray, event_ids: np.ndarray, key: np.uint64,
                     par: np.ndarray, dims: np.ndarray) -> None:
    """Fill ``out`` (n, n_voxels) float32, zero on entry, with one shower per energy (MeV)."""
    n = energies.shape[0]
    n_z = dims[2]
    depth_mm = n_z * par[_P_CELL_Z]
    lam_mm = par[_P_LAMBDA_MM]
    x0_mm = par[_P_X0_MM]
    for i in nb.prange(n):
        st = np.empty(1, dtype=np.uint64)
        st[0] = _mix(key ^ _mix(np.uint64(event_ids[i]) * _GOLDEN + _GOLDEN))
        e_inc = energies[i]

        # ---- first interaction, MIP track before it
        z_int = -math.log(_uniform(st)) * lam_mm
        n_pre = min(int(z_int // par[_P_CELL_Z]), n_z)
        e_int = e_inc - n_pre * par[_P_MIP_LOSS]
        interacts = z_int < depth_mm and e_int > 0.0

        # ---- energy split (drawn before the counts so that the buffer can be sized)
        n_em = n_tr = n_nuc = 0
        e_em = e_had = q_em = k_em = q_nuc = e_seg = a_em = a_had = d_rate = 0.0
        if interacts:
            e_gev = e_int / 1000.0
            mu = 1.0 - (max(e_gev, 1e-9) / par[_P_FEM_E0]) ** (par[_P_FEM_M] - 1.0)
            mu = min(max(mu, 0.01), 0.99)
            sig = par[_P_FEM_SIGMA]
            f_em = mu
            if sig > 0.0:
                nu = max(mu * (1.0 - mu) / (sig * sig) - 1.0, 2.0)
                g1 = _gamma(st, mu * nu)
                g2 = _gamma(st, (1.0 - mu) * nu)
                f_em = g1 / (g1 + g2) if g1 + g2 > 0.0 else mu
            e_em = f_em * e_int
            e_had = (1.0 - f_em) * e_int * par[_P_H_OVER_E]
            # Bock shapes with a log-normal shower-to-shower spread; rates in 1/X0 and 1/lambda.
            ln_e = math.log(max(e_gev, 1e-3))
            a_mean = max(BOCK_A[0] + BOCK_A[1] * ln_e, MIN_SHAPE)
            # log-normal with unit mean (the -sigma^2/2): <a> is Bock's a, so the mean profile keeps
            # Bock's mean depth a/b (a/d) instead of drifting deeper by exp(sigma^2/2)
            s_ln = par[_P_SIG_LNA]
            a_em = max(a_mean * math.exp(s_ln * _normal(st) - 0.5 * s_ln * s_ln), MIN_SHAPE)
            a_had = max(a_mean * math.exp(s_ln * _normal(st) - 0.5 * s_ln * s_ln), MIN_SHAPE)
            d_rate = max(BOCK_D[0] + BOCK_D[1] * ln_e, 0.1)
            # EM spots: GP count, Gamma energies whose compound-Poisson variance is a_em^2 * E.
            var_em = par[_P_A_EM] ** 2 * 1000.0  # MeV^2 per MeV
            e_em_gev = max(e_em / 1000.0, 1e-6)
            q_em = e_em / max(GP_SPOT_N[0] / par[_P_A_EM] * e_em_gev ** GP_SPOT_N[1], 1.0)
            k_em = 1.0 / (var_em / q_em - 1.0) if var_em > 1.05 * q_em else 20.0
            n_em = _poisson(st, e_em / q_em)
            # Hadronic part: track segments (mean energy e_seg, second moment m2_seg) + nuclear spots.
            mpv = par[_P_MIP_CELL]
            s_rel = par[_P_MIP_SIGMA] / mpv
            # path factor 1/c, c ~ U(0.5, 1): <1/c> = 2 ln 2, <1/c^2> = 2
            moyal_m1 = 1.0 + s_rel * (_EULER_GAMMA + math.log(2.0))
            moyal_m2 = moyal_m1 * moyal_m1 + 0.5 * (math.pi * s_rel) ** 2
            e_seg = mpv * moyal_m1 * 2.0 * math.log(2.0)
            m2_seg = mpv * mpv * moyal_m2 * 2.0
            f_tr = par[_P_TRACK_FRAC]
            n_tr = _poisson(st, f_tr * e_had / e_seg)
            var_had = par[_P_A_HAD] ** 2 * 1000.0
            k_nuc = par[_P_NUC_K]
            rest = var_had - f_tr * m2_seg / e_seg  # variance per MeV left for the nuclear spots
            q_nuc = max(rest / (1.0 - f_tr) / (1.0 + 1.0 / k_nuc), mpv) if f_tr < 1.0 else mpv
            n_nuc = _poisson(st, (1.0 - f_tr) * e_had / q_nuc) if f_tr < 1.0 else 0

        touched = np.empty(n_pre + n_em + n_tr + n_nuc + 1, dtype=np.int64)
        nt = 0
        for layer in range(n_pre):  # the incoming pion: one MIP segment per layer in the entry cell
            e = _moyal(st, par[_P_MIP_CELL], par[_P_MIP_SIGMA])
            nt = _deposit(out, i, touched, nt, (layer + 0.5) * par[_P_CELL_Z], 0.0, 0.0, e, par, dims, st)

        if interacts:
            # electromagnetic spots, grouped into pi0 sub-showers: cluster c starts at Gamma(a_s)/b X0 and
            # leaves the axis at a small angle (tx, ty); its spots lie Gamma(a_em - a_s)/b X0 further on, so
            # every spot's depth is Gamma(a_em)/b (gamma variables of one rate add): Bock's mean profile is
            # kept exactly while single showers are clumpy.
            n_cl = 1 + _poisson(st, par[_P_EM_CLUSTERS] * math.log(max(e_em / 1000.0, 1.0)))
            n_cl = min(n_cl, MAX_EM_CLUSTERS)
            a_start = par[_P_EM_START_FRAC] * a_em
            cum = np.empty(n_cl)
            start = np.empty(n_cl)
            tx = np.empty(n_cl)
            ty = np.empty(n_cl)
            total = 0.0
            for c in range(n_cl):
                total += -math.log(_uniform(st))  # Dirichlet(1, ..., 1) energy shares
                cum[c] = total
                start[c] = _gamma(st, a_start) / BOCK_B * x0_mm
                tx[c], ty[c] = _spot_xy(st, par[_P_EM_SPREAD])
            scale_em = q_em / k_em
            for _ in range(n_em):
                pick = _uniform(st) * total
                c = 0
                while c < n_cl - 1 and cum[c] < pick:
                    c += 1
                dz = start[c] + _gamma(st, a_em - a_start) / BOCK_B * x0_mm
                x, y = _spot_xy(st, par[_P_EM_RHO0])
                e = _gamma(st, k_em) * scale_em
                nt = _deposit(out, i, touched, nt, z_int + dz, x + tx[c] * dz, y + ty[c] * dz, e, par, dims, st)
            # hadronic track segments and nuclear spots: depth ~ Gamma(a_had)/d lambda, core + halo
            scale_nuc = q_nuc / par[_P_NUC_K]
            for j in range(n_tr + n_nuc):
                dl = _gamma(st, a_had) / d_rate
                if _uniform(st) < par[_P_HC_WEIGHT]:
                    rho = par[_P_HC_RHO] * lam_mm * (1.0 + par[_P_HC_GROWTH] * dl)
                else:
                    rho = par[_P_HH_RHO] * lam_mm
                x, y = _spot_xy(st, rho)
                if j < n_tr:
                    path = 1.0 / (0.5 + 0.5 * _uniform(st))
                    e = _moyal(st, par[_P_MIP_CELL], par[_P_MIP_SIGMA]) * path
                else:
                    e = _gamma(st, par[_P_NUC_K]) * scale_nuc
                nt = _deposit(out, i, touched, nt, z_int + dl * lam_mm, x, y, e, par, dims, st)

        # ---- readout threshold on every touched cell (the others are exactly zero)
        thr = par[_P_THRESHOLD]
        for j in range(nt):
            c = touched[j]
            if out[i, c] < thr:
                out[i, c] = 0.0


def _kernel_inputs(grid: CartesianGrid, calo: HadronCalorimeter) -> tuple[np.ndarray, np.ndarray]:
    """The float64 parameter vector and int64 dims (n_x, n_y, n_z, axis_x, axis_y) for the kernel."""
    par = np.zeros(_N_PARAMS, dtype=np.float64)
    # A grid layer may differ from the sampling pitch (custom grids); MIP signals scale with the number
    # of active layers per grid layer.
    per_layer = grid.cell_z / calo.layer_pitch_mm
    par[_P_LAMBDA_MM] = calo.lambda_eff_mm
    par[_P_X0_MM] = calo.x0_eff_mm
    par[_P_CELL_X], par[_P_CELL_Y], par[_P_CELL_Z] = grid.cell_x, grid.cell_y, grid.cell_z
    par[_P_MIP_CELL] = calo.mip_mev * per_layer
    par[_P_MIP_SIGMA] = MOYAL_SIGMA_PER_XI * calo.active_landau_xi_mev / calo.sampling_fraction_em * per_layer
    par[_P_MIP_LOSS] = calo.mip_layer_loss_mev * per_layer
    par[_P_H_OVER_E] = 1.0 / calo.e_over_h
    par[_P_FEM_E0], par[_P_FEM_M], par[_P_FEM_SIGMA] = calo.f_em_e0_gev, calo.f_em_m, calo.f_em_sigma
    par[_P_TRACK_FRAC], par[_P_NUC_K] = calo.track_fraction, calo.nuclear_spot_shape
    par[_P_SIG_LNA] = calo.sigma_ln_shape
    par[_P_A_EM], par[_P_A_HAD] = calo.em_sampling_term, calo.had_sampling_term
    par[_P_EM_RHO0] = calo.em_core_rho_rm * calo.rm_eff_mm
    par[_P_EM_SPREAD] = calo.em_angle_rad
    par[_P_EM_CLUSTERS], par[_P_EM_START_FRAC] = calo.em_clusters_per_ln_e, calo.em_start_shape_fraction
    par[_P_HC_RHO], par[_P_HC_GROWTH] = calo.had_core_rho_lambda, calo.had_core_growth_per_lambda
    par[_P_HH_RHO], par[_P_HC_WEIGHT] = calo.had_halo_rho_lambda, calo.had_core_weight
    par[_P_Q_PE] = calo.mip_mev / calo.photoelectrons_per_mip
    par[_P_THRESHOLD] = calo.threshold_mev
    dims = np.array([grid.n_x, grid.n_y, grid.n_z, grid.axis_x, grid.axis_y], dtype=np.int64)
    return par, dims


# ----------------------------------------------------------------------------------------------- API
def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}", field="--seed", fix="give e.g. --seed 42")


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}", field="--chunk-size",
                          fix="use e.g. --chunk-size 1000")


def _stream_key(seed: int) -> np.uint64:
    """A well-mixed 64-bit key for the seed (SeedSequence hashes small integers apart)."""
    return np.uint64(np.random.SeedSequence(int(seed)).generate_state(1, dtype=np.uint64)[0])


def make_pion_energies(
    *,
    energies_gev: list[float] | tuple[float, ...] | np.ndarray | None = None,
    energy_range_gev: tuple[float, float] | None = None,
    n_per_point: int,
    seed: int,
) -> np.ndarray:
    """Incident energies (MeV, float32) for a pion run: fixed values or **uniform** in a range.

    Issue 4 asks for pions "of 10-100 GeV (uniform or fixed)", as in the "Hadrons, better, faster,
    stronger" sample; the EM :func:`~mlfastsim.showers.sim.em.make_kinematics` draws ranges
    log-uniformly instead.  ``n_per_point`` showers per listed energy, or ``n_per_point`` in all for a
    range.  The draw uses its own stream (spawn key), never the showers' streams.
    """
    _check_seed(seed)
    if isinstance(n_per_point, bool) or not isinstance(n_per_point, int | np.integer) or n_per_point < 1:
        raise ConfigError(f"n_per_point must be an integer >= 1, got {n_per_point!r}", field="--n-per-point",
                          fix="give a positive number of showers")
    if (energies_gev is None) == (energy_range_gev is None):
        raise ConfigError("give exactly one of an energy list and an energy range", field="--energy-gev",
                          fix="use --energy-gev 10,50 or --energy-range-gev 10 100")
    if energies_gev is not None:
        e = np.repeat(np.asarray(energies_gev, dtype=np.float64).reshape(-1), int(n_per_point))
    else:
        assert energy_range_gev is not None
        lo, hi = (float(v) for v in energy_range_gev)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise ConfigError(f"energy range [{lo}, {hi}] must satisfy 0 < low < high", field="--energy-range-gev",
                              fix="give LOW HIGH in GeV, e.g. 10 100")
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0x50494F4E,)))
        e = rng.uniform(lo, hi, int(n_per_point))
    if e.size == 0 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ConfigError("energies must be finite and > 0 GeV", field="--energy-gev", fix="use positive energies")
    return (e * 1000.0).astype(np.float32)


def simulate_pions(
    energies_mev: np.ndarray,
    grid: CartesianGrid,
    calo: HadronCalorimeter,
    seed: int,
    *,
    chunk_size: int = 1000,
    first_event: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Simulate charged-pion showers; returns (N, grid.n_voxels) float32 cell energies in MeV.

    Cells below :data:`~mlfastsim.showers.sim.em.CELL_ENERGY_FLOOR_MEV` (1 eV) are exactly 0.

    The particle enters the front face at the centre of cell (axis_x, axis_y), at normal incidence.
    Shower i uses the random stream (seed, first_event + i), so the result is identical for any
    ``chunk_size`` and any number of numba threads, and a job farmed out in slices (each called with
    ``first_event`` = its offset) reproduces the serial run exactly; chunks only bound the work between
    progress updates.
    """
    if not isinstance(grid, CartesianGrid):
        raise ConfigError(f"the hadron simulator scores on a Cartesian grid, got {type(grid).__name__}",
                          field="--grid", fix="use --grid hcal48 or a cartesian mesh YAML")
    if not isinstance(calo, HadronCalorimeter):
        raise ConfigError(f"calo must be a HadronCalorimeter, got {type(calo).__name__}", field="calorimeter",
                          fix=f"use one of {', '.join(HADRON_CALORIMETERS)}")
    _check_seed(seed)
    _check_chunk_size(chunk_size)
    if isinstance(first_event, bool) or not isinstance(first_event, int | np.integer) or first_event < 0:
        raise ConfigError(f"first_event must be an integer >= 0, got {first_event!r}", field="first_event",
                          fix="pass the index of the slice's first shower in the whole run")
    e = np.asarray(energies_mev, dtype=np.float64)
    if e.ndim != 1:
        raise ConfigError(f"energies must be 1-D, got shape {e.shape}", field="--energy-gev",
                          fix="give one energy per shower")
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ConfigError("incident energies must be finite and > 0", field="--energy-gev",
                          fix="use positive energies")
    n = e.size
    out = np.zeros((n, grid.n_voxels), dtype=np.float32)
    if n == 0:
        return out
    par, dims = _kernel_inputs(grid, calo)
    key = _stream_key(seed)
    with progress_bar(n, "simulating pion showers", enabled=progress) as bar:
        for start in range(0, n, int(chunk_size)):
            stop = min(start + int(chunk_size), n)
            ids = np.arange(first_event + start, first_event + stop, dtype=np.int64)
            _simulate_kernel(out[start:stop], e[start:stop], ids, key, par, dims)
            bar.advance(stop - start)
    return apply_cell_floor(out)


def simulate_pions_data(
    energies_mev: np.ndarray,
    grid: CartesianGrid,
    calo: HadronCalorimeter,
    seed: int,
    *,
    chunk_size: int = 1000,
    first_event: int = 0,
    progress: bool = False,
) -> ShowerData:
    """:func:`simulate_pions` wrapped as :class:`ShowerData` (normal incidence, provenance in ``meta``)."""
    showers = simulate_pions(energies_mev, grid, calo, seed, chunk_size=chunk_size, first_event=first_event,
                             progress=progress)
    e = np.asarray(energies_mev, dtype=np.float64)
    meta = {
        "particle": PARTICLE,
        "calorimeter": calo.to_dict(),
        "seed": int(seed),
        "first_event": int(first_event),
        "simulator": SIMULATOR_NAME,
    }
    return ShowerData(energies=e, showers=showers, mesh=grid, angles=np.full(e.size, 90.0), meta=meta)
