"""Shower geometry: the scoring mesh and the detectors it sits in.

Two ideas are kept apart on purpose:

* a :class:`CylindricalMesh` is *where energy is scored*: cylinders aligned with the incident particle
  axis (as in Geant4's Par04 and the CaloChallenge datasets 2 and 3), independent of the material;
* a :class:`Detector` is *what the particle traverses*: materials and layer structure, with the facts a
  parametrised simulator needs (X0, Molière radius, critical energy, Z, sampling fraction).

Voxel order everywhere on disk is the CaloChallenge one: flat index = (z * n_phi + phi) * n_r + r, i.e.
r fastest.  In memory physics code works on ``(N, n_z, n_phi, n_r)``; :meth:`CylindricalMesh.to_grid`
and :meth:`CylindricalMesh.to_flat` are the only places that reshape.

Mesh frame: z along the particle direction, starting at the entry point on the calorimeter front face.
For an incidence angle theta (degrees between the particle direction and the front face; 90 = normal
incidence) the azimuth phi = 0 points along the in-plane direction that goes *deeper* into the detector,
so a mesh point (r, phi, z) sits at depth ``z*sin(theta) + r*cos(phi)*cos(theta)`` below the front face.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlfastsim.core.errors import DataError, GeometryError

# Rossi's scale energy E_s = m_e c^2 sqrt(4 pi / alpha), MeV: R_M = E_s X0 / E_c.
ES_MEV = 21.2052


# --------------------------------------------------------------------------------------------- mesh
@dataclass(frozen=True)
class CylindricalMesh:
    """A cylindrical scoring mesh aligned with the particle axis.

    ``size_r`` and ``size_z`` are cell sizes in mm.  ``r_edges`` may be given for non-uniform radial
    binning (as a CaloChallenge XML allows); it then overrides ``size_r`` for the bin boundaries.
    """

    n_r: int
    n_phi: int
    n_z: int
    size_r: float
    size_z: float
    r_edges_mm: tuple[float, ...] | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_r", "n_phi", "n_z"):
            if int(getattr(self, key)) < 1:
                raise GeometryError(f"{key} must be >= 1", field=key, fix="use a positive number of cells")
        for key in ("size_r", "size_z"):
            if not float(getattr(self, key)) > 0:
                raise GeometryError(f"{key} must be > 0 mm", field=key, fix="use a positive cell size")
        if self.r_edges_mm is not None:
            edges = np.asarray(self.r_edges_mm, dtype=float)
            if edges.size != self.n_r + 1 or edges[0] != 0 or np.any(np.diff(edges) <= 0):
                raise GeometryError(
                    "r_edges must start at 0, increase strictly and have n_r + 1 entries",
                    field="r_edges",
                    fix="check the radial bin edges",
                )

    # ---- sizes and coordinates
    @property
    def shape(self) -> tuple[int, int, int]:
        """In-memory shape of one shower: (n_z, n_phi, n_r)."""
        return (self.n_z, self.n_phi, self.n_r)

    @property
    def n_voxels(self) -> int:
        return self.n_r * self.n_phi * self.n_z

    @property
    def r_edges(self) -> np.ndarray:
        """Radial bin edges in mm, length n_r + 1."""
        if self.r_edges_mm is not None:
            return np.asarray(self.r_edges_mm, dtype=np.float64)
        return np.arange(self.n_r + 1, dtype=np.float64) * self.size_r

    @property
    def r_centres(self) -> np.ndarray:
        e = self.r_edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def phi_edges(self) -> np.ndarray:
        """Azimuthal bin edges in radians, [0, 2 pi]."""
        return np.linspace(0.0, 2.0 * math.pi, self.n_phi + 1)

    @property
    def phi_centres(self) -> np.ndarray:
        e = self.phi_edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def z_edges(self) -> np.ndarray:
        """Longitudinal bin edges in mm along the particle axis."""
        return np.arange(self.n_z + 1, dtype=np.float64) * self.size_z

    @property
    def z_centres(self) -> np.ndarray:
        e = self.z_edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def radius(self) -> float:
        """Outer radius of the mesh in mm."""
        return float(self.r_edges[-1])

    @property
    def length(self) -> float:
        """Length of the mesh along the particle axis in mm."""
        return float(self.n_z * self.size_z)

    def cell_volumes(self) -> np.ndarray:
        """Cell volumes in mm^3, shape (n_z, n_phi, n_r)."""
        e = self.r_edges
        ring = math.pi * (e[1:] ** 2 - e[:-1] ** 2) / self.n_phi * self.size_z
        return np.broadcast_to(ring, self.shape).copy()

    # ---- the one place that reshapes
    def to_grid(self, flat: np.ndarray) -> np.ndarray:
        """(N, n_voxels) -> (N, n_z, n_phi, n_r); a view, no copy."""
        arr = np.asarray(flat)
        if arr.shape[-1] != self.n_voxels:
            raise DataError(
                f"showers have {arr.shape[-1]} voxels but the mesh {self.describe()} has {self.n_voxels}",
                field="showers",
                fix="pass the geometry the file was made with (--mesh or --binning)",
            )
        return arr.reshape(*arr.shape[:-1], *self.shape)

    def to_flat(self, grid: np.ndarray) -> np.ndarray:
        """(N, n_z, n_phi, n_r) -> (N, n_voxels); a view when contiguous."""
        arr = np.asarray(grid)
        if tuple(arr.shape[-3:]) != self.shape:
            raise DataError(
                f"grid shape {arr.shape[-3:]} does not match mesh shape {self.shape}",
                field="showers",
                fix="pass the geometry the showers were made with",
            )
        return arr.reshape(*arr.shape[:-3], self.n_voxels)

    def describe(self) -> str:
        return f"'{self.name}' ({self.n_r} r x {self.n_phi} phi x {self.n_z} z)"

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cylindrical",
            "name": self.name,
            "n_r": self.n_r,
            "n_phi": self.n_phi,
            "n_z": self.n_z,
            "size_r_mm": self.size_r,
            "size_z_mm": self.size_z,
            "r_edges_mm": list(map(float, self.r_edges)),
            "voxel_order": "z,phi,r (r fastest)",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None) -> CylindricalMesh:
        try:
            n_r = int(d["n_r"])
            r_edges = d.get("r_edges_mm")
            edges = tuple(float(x) for x in r_edges) if r_edges is not None else None
            size_r = float(d.get("size_r_mm", d.get("size_r", edges[1] if edges else 0.0)))
            uniform = edges is not None and np.allclose(np.diff(edges), size_r)
            return cls(
                n_r=n_r,
                n_phi=int(d["n_phi"]),
                n_z=int(d["n_z"]),
                size_r=size_r,
                size_z=float(d.get("size_z_mm", d.get("size_z"))),
                r_edges_mm=None if (edges is None or uniform) else edges,
                name=str(d.get("name", "custom")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(
                f"incomplete mesh description ({exc})",
                file=source,
                field="geometry",
                fix="give n_r, n_phi, n_z, size_r_mm and size_z_mm",
            ) from exc


MESH_PRESETS: dict[str, CylindricalMesh] = {
    # Geant4 Par04 default mesh: Delta r = 0.25 R_M(W), Delta z = 2 SiW layers.
    "par04": CylindricalMesh(n_r=18, n_phi=50, n_z=45, size_r=2.325, size_z=3.4, name="par04"),
    # CaloChallenge dataset 3 uses the Par04 mesh.
    "ds3": CylindricalMesh(n_r=18, n_phi=50, n_z=45, size_r=2.325, size_z=3.4, name="ds3"),
    # CaloChallenge dataset 2: coarser, 6480 voxels.
    "ds2": CylindricalMesh(n_r=9, n_phi=16, n_z=45, size_r=4.65, size_z=3.4, name="ds2"),
}


def read_binning_xml(path: str | Path, *, particle: str | None = None, size_z: float = 3.4) -> CylindricalMesh:
    """Read a CaloChallenge binning XML (``<Bins><Bin pid name><Layer id r_edges n_bin_alpha/>``).

    Only regular binnings (the same r edges and alpha bins in every layer, as in datasets 2 and 3)
    map onto a cylindrical mesh; irregular ones are refused with a clear message.  The XML carries no
    layer thickness, so ``size_z`` (mm) is taken from the caller (3.4 mm for datasets 2 and 3).
    """
    p = Path(path)
    if not p.is_file():
        raise GeometryError("binning XML does not exist", file=p, fix="check the --binning path")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise GeometryError(f"malformed binning XML ({exc})", file=p, fix="pass a CaloChallenge binning file") from exc
    if root.tag != "Bins":
        raise GeometryError(
            f"root element is <{root.tag}>, expected <Bins>", file=p, fix="pass a CaloChallenge binning file"
        )
    bins = root.findall("Bin")
    if particle is not None:
        bins = [b for b in bins if b.get("name") == particle or b.get("pid") == str(particle)]
    if not bins:
        raise GeometryError(
            "no <Bin> element" + (f" for particle {particle!r}" if particle else ""),
            file=p,
            field="Bin",
            fix="check the particle name or the file",
        )
    layers = bins[0].findall("Layer")
    if not layers:
        raise GeometryError("<Bin> has no <Layer> elements", file=p, field="Layer", fix="pass a complete binning file")
    edges_set, alpha_set = set(), set()
    for layer in layers:
        try:
            edges = tuple(float(x) for x in layer.attrib["r_edges"].split(","))
            alpha = int(layer.attrib.get("n_bin_alpha", "1"))
        except (KeyError, ValueError) as exc:
            raise GeometryError(
                f"layer {layer.get('id')}: bad or missing r_edges/n_bin_alpha ({exc})",
                file=p,
                field="Layer",
                fix="each Layer needs r_edges='0,...' and n_bin_alpha='N'",
            ) from exc
        edges_set.add(edges)
        alpha_set.add(alpha)
    if len(edges_set) != 1 or len(alpha_set) != 1:
        raise GeometryError(
            "layers have different r_edges or n_bin_alpha; only regular binnings (datasets 2 and 3) map onto a mesh",
            file=p,
            fix="use a regular binning",
        )
    edges = np.array(next(iter(edges_set)))
    n_r = edges.size - 1
    if n_r < 1:
        raise GeometryError("r_edges needs at least two values", file=p, field="r_edges", fix="check the file")
    uniform = bool(np.allclose(np.diff(edges), edges[1] - edges[0]))
    return CylindricalMesh(
        n_r=n_r,
        n_phi=next(iter(alpha_set)),
        n_z=len(layers),
        size_r=float(edges[1] - edges[0]),
        size_z=size_z,
        r_edges_mm=None if uniform else tuple(edges.tolist()),
        name=p.stem,
    )


def load_mesh(spec: str | Path) -> CylindricalMesh:
    """A mesh from a preset name, a CaloChallenge binning XML or a YAML file with the mesh fields."""
    key = str(spec)
    if key.lower() in MESH_PRESETS:
        return MESH_PRESETS[key.lower()]
    p = Path(key)
    if p.suffix.lower() == ".xml":
        return read_binning_xml(p)
    if p.suffix.lower() in (".yaml", ".yml"):
        return CylindricalMesh.from_dict(_read_yaml(p), source=str(p))
    raise GeometryError(
        f"unknown mesh {key!r}",
        field="mesh",
        fix=f"use one of {', '.join(sorted(MESH_PRESETS))}, a binning .xml or a mesh .yaml",
    )


# ------------------------------------------------------------------------------------------ materials
@dataclass(frozen=True)
class Material:
    """Electromagnetic properties of one material (PDG atomic and nuclear properties).

    ``dedx_mip`` is the minimum-ionisation stopping power in MeV/mm, which sets the MIP sampling fraction.
    """

    name: str
    z: float
    a: float
    density: float  # g/cm^3
    x0: float  # mm
    rm: float  # mm
    ec: float  # MeV (electron critical energy)
    dedx_mip: float  # MeV/mm


MATERIALS: dict[str, Material] = {
    # PDG: X0 3.504 mm, R_M 9.327 mm, Ec 7.97 MeV, <dE/dx>min 1.145 MeV cm2/g * 19.30 g/cm3
    "W": Material("W", 74, 183.84, 19.30, 3.504, 9.327, 7.97, 2.210),
    # PDG: X0 5.612 mm, R_M 16.02 mm, Ec 7.43 MeV, 1.122 MeV cm2/g * 11.35 g/cm3
    "Pb": Material("Pb", 82, 207.2, 11.35, 5.612, 16.02, 7.43, 1.273),
    # PDG: X0 8.903 mm, R_M 19.59 mm, Ec 9.64 MeV, 1.229 MeV cm2/g * 8.30 g/cm3; Z, A are mass-weighted means
    "PbWO4": Material("PbWO4", 75.8, 183.0, 8.30, 8.903, 19.59, 9.64, 1.020),
    # PDG: X0 93.70 mm, Ec 40.19 MeV, R_M = E_s X0 / Ec = 49.44 mm, 1.664 MeV cm2/g * 2.329 g/cm3
    "Si": Material("Si", 14, 28.0855, 2.329, 93.70, 49.44, 40.19, 0.3876),
    # PDG polystyrene scintillator: X0 413.1 mm, Ec 93.11 MeV, R_M 94.1 mm, 1.936 MeV cm2/g * 1.06 g/cm3
    "Scintillator": Material("Scintillator", 5.6, 11.2, 1.06, 413.1, 94.1, 93.11, 0.2052),
    # PDG iron: X0 17.57 mm, R_M 17.19 mm, Ec 21.68 MeV, 1.451 MeV cm2/g * 7.874 g/cm3
    "Fe": Material("Fe", 26, 55.845, 7.874, 17.57, 17.19, 21.68, 1.143),
}


def _material(spec: str | dict[str, Any], *, source: str | None = None) -> Material:
    if isinstance(spec, dict):
        try:
            return Material(**spec)
        except TypeError as exc:
            raise GeometryError(
                f"bad material definition ({exc})",
                file=source,
                field="material",
                fix="give name, z, a, density, x0, rm, ec, dedx_mip",
            ) from exc
    if spec not in MATERIALS:
        raise GeometryError(
            f"unknown material {spec!r}", file=source, field="material", fix=f"use one of {', '.join(MATERIALS)}"
        )
    return MATERIALS[spec]


# ------------------------------------------------------------------------------------------ detectors
@dataclass(frozen=True)
class Detector:
    """A calorimeter: a stack of ``n_layers`` x [absorber + active], or one homogeneous block.

    Effective properties of the stack follow the usual thickness-weighted mixing rules:
    1/X0 = sum f_i/X0_i, E_c/X0 = sum f_i E_c,i/X0_i, hence 1/R_M = sum f_i/R_M,i.
    Resolution terms default to physics estimates (Wigmans' sampling term 2.7 % sqrt(d_active/f_samp)
    for sampling calorimeters) and can be set explicitly.
    """

    name: str
    absorber: Material
    absorber_mm: float
    n_layers: int
    active: Material | None = None
    active_mm: float = 0.0
    stochastic_term: float | None = None  # a in sigma/E = a/sqrt(E/GeV)
    constant_term: float = 0.01  # b
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def homogeneous(self) -> bool:
        return self.active is None

    @property
    def layer_mm(self) -> float:
        return self.absorber_mm + self.active_mm

    @property
    def depth_mm(self) -> float:
        return self.n_layers * self.layer_mm

    def _fractions(self) -> list[tuple[Material, float]]:
        if self.active is None:
            return [(self.absorber, 1.0)]
        t = self.layer_mm
        return [(self.absorber, self.absorber_mm / t), (self.active, self.active_mm / t)]

    @property
    def x0(self) -> float:
        """Effective radiation length, mm."""
        return 1.0 / sum(f / m.x0 for m, f in self._fractions())

    @property
    def rm(self) -> float:
        """Effective Molière radius, mm."""
        return 1.0 / sum(f / m.rm for m, f in self._fractions())

    @property
    def ec(self) -> float:
        """Effective critical energy, MeV."""
        return self.x0 * sum(f * m.ec / m.x0 for m, f in self._fractions())

    @property
    def z_eff(self) -> float:
        """Mass-weighted mean Z (as in GFlash)."""
        masses = [(m, f * m.density) for m, f in self._fractions()]
        total = sum(w for _, w in masses)
        return sum(m.z * w for m, w in masses) / total

    @property
    def sampling_fraction(self) -> float:
        """MIP sampling fraction: visible (active) over total energy loss of a minimum-ionising particle."""
        if self.active is None:
            return 1.0
        vis = self.active_mm * self.active.dedx_mip
        return vis / (vis + self.absorber_mm * self.absorber.dedx_mip)

    @property
    def resolution_a(self) -> float:
        """Stochastic term a of sigma/E = a/sqrt(E [GeV]) (+) b."""
        if self.stochastic_term is not None:
            return float(self.stochastic_term)
        if self.active is None:
            return 0.03
        return 0.027 * math.sqrt(self.active_mm / self.sampling_fraction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "absorber": self.absorber.name,
            "absorber_mm": self.absorber_mm,
            "active": self.active.name if self.active else None,
            "active_mm": self.active_mm,
            "n_layers": self.n_layers,
            "x0_mm": self.x0,
            "rm_mm": self.rm,
            "ec_mev": self.ec,
            "z_eff": self.z_eff,
            "sampling_fraction": self.sampling_fraction,
            "stochastic_term": self.resolution_a,
            "constant_term": self.constant_term,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None) -> Detector:
        """Build a detector from YAML fields (materials by preset name or as full dicts)."""
        known = {
            "name", "absorber", "absorber_mm", "n_layers", "active", "active_mm",
            "stochastic_term", "constant_term", "description",
        }
        unknown = set(d) - known
        if unknown:
            raise GeometryError(
                f"unknown detector key(s) {sorted(unknown)}",
                file=source,
                field=sorted(unknown)[0],
                fix=f"allowed keys: {', '.join(sorted(known))}",
            )
        try:
            det = cls(
                name=str(d["name"]),
                absorber=_material(d["absorber"], source=source),
                absorber_mm=float(d["absorber_mm"]),
                n_layers=int(d.get("n_layers", 1)),
                active=_material(d["active"], source=source) if d.get("active") else None,
                active_mm=float(d.get("active_mm", 0.0)),
                stochastic_term=None if d.get("stochastic_term") is None else float(d["stochastic_term"]),
                constant_term=float(d.get("constant_term", 0.01)),
                description=str(d.get("description", "")),
            )
        except KeyError as exc:
            raise GeometryError(
                f"missing detector key {exc.args[0]!r}",
                file=source,
                field=str(exc.args[0]),
                fix="a detector needs name, absorber, absorber_mm (and active, active_mm, n_layers if sampling)",
            ) from exc
        except (TypeError, ValueError) as exc:
            raise GeometryError(f"bad detector value ({exc})", file=source, fix="check the numbers") from exc
        if det.absorber_mm <= 0 or det.n_layers < 1 or (det.active is not None and det.active_mm <= 0):
            raise GeometryError(
                "thicknesses and n_layers must be positive", file=source, fix="check absorber_mm, active_mm, n_layers"
            )
        return det


DETECTOR_PRESETS: dict[str, Detector] = {
    # Par04 / CaloChallenge ds2-ds3 detector: 90 x (1.4 mm W + 0.3 mm Si).
    "SiW": Detector("SiW", MATERIALS["W"], 1.4, 90, MATERIALS["Si"], 0.3, description="90 x [1.4 mm W + 0.3 mm Si]"),
    # Shashlik-like sampling calorimeter: 45 x (1.4 mm Pb + 1.2 mm scintillator).
    "SciPb": Detector(
        "SciPb", MATERIALS["Pb"], 1.4, 45, MATERIALS["Scintillator"], 1.2,
        description="45 x [1.4 mm Pb + 1.2 mm scint.]",
    ),
    # Homogeneous crystal block, 230 mm long (CMS-like, 25.8 X0); a, b as measured for the CMS ECAL.
    "PbWO4": Detector(
        "PbWO4", MATERIALS["PbWO4"], 230.0, 1, stochastic_term=0.028, constant_term=0.003,
        description="homogeneous PbWO4 block, 230 mm",
    ),
    # FCC-ee-like Si-W ECAL: 40 x (1.8 mm W + 0.5 mm Si).
    "FCCeeSiW": Detector(
        "FCCeeSiW", MATERIALS["W"], 1.8, 40, MATERIALS["Si"], 0.5, description="40 x [1.8 mm W + 0.5 mm Si]"
    ),
}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GeometryError("file does not exist", file=path, fix="check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GeometryError(f"invalid YAML ({exc})".replace("\n", " "), file=path, fix="fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise GeometryError("expected a mapping at the top level", file=path, fix="write key: value pairs")
    return data


def load_detector(spec: str | Path | dict[str, Any]) -> Detector:
    """A detector from a preset name (case-insensitive), a YAML file, or a dict of fields."""
    if isinstance(spec, dict):
        return Detector.from_dict(spec)
    key = str(spec)
    for name, det in DETECTOR_PRESETS.items():
        if name.lower() == key.lower():
            return det
    p = Path(key)
    if p.suffix.lower() in (".yaml", ".yml"):
        return Detector.from_dict(_read_yaml(p), source=str(p))
    raise GeometryError(
        f"unknown detector {key!r}",
        field="detector",
        fix=f"use one of {', '.join(DETECTOR_PRESETS)} or a detector .yaml",
    )
