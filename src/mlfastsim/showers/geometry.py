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
from typing import Any, ClassVar

import numpy as np
import yaml

from mlfastsim.core.errors import ConfigError, DataError, GeometryError

# Rossi's scale energy E_s = m_e c^2 sqrt(4 pi / alpha), MeV: R_M = E_s X0 / E_c.
ES_MEV = 21.2052


# --------------------------------------------------------------------------------------------- mesh
@dataclass(frozen=True)
class LayerCells:
    """The cells of one layer, flat in voxel order: what observables and plots need of any geometry.

    ``x``, ``y`` are centres in mm in the plane transverse to the shower axis (axis at 0), ``r`` their
    distance from it; ``r_bin`` / ``phi_bin`` assign each cell to a lateral-profile ring and an azimuthal
    sector (the mesh's own bins for a cylindrical mesh, rings one cell wide and 8 sectors for a grid).
    """

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    r_bin: np.ndarray
    phi_bin: np.ndarray
    r_centres: np.ndarray
    n_phi_bins: int

    @property
    def n_r_bins(self) -> int:
        return int(self.r_centres.size)


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
    kind: ClassVar[str] = "cylindrical"

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

    # ---- the per-layer cell layout observables and plots share with CartesianGrid
    def layer_cells(self) -> LayerCells:
        """Positions and radial/azimuthal bins of the cells of one layer, in the flat (phi, r) order."""
        r = np.broadcast_to(self.r_centres[None, :], (self.n_phi, self.n_r))
        alpha = np.broadcast_to(self.phi_centres[:, None], (self.n_phi, self.n_r))
        r_bin = np.broadcast_to(np.arange(self.n_r)[None, :], (self.n_phi, self.n_r))
        phi_bin = np.broadcast_to(np.arange(self.n_phi)[:, None], (self.n_phi, self.n_r))
        return LayerCells(
            x=(r * np.cos(alpha)).reshape(-1), y=(r * np.sin(alpha)).reshape(-1), r=r.reshape(-1).copy(),
            r_bin=r_bin.reshape(-1).copy(), phi_bin=phi_bin.reshape(-1).copy(), r_centres=self.r_centres,
            n_phi_bins=self.n_phi,
        )

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



@dataclass(frozen=True)
class CartesianGrid:
    """A Cartesian scoring grid of a highly granular calorimeter: ``n_z`` layers of ``n_y`` x ``n_x`` cells.

    Used by the hadron-shower workflow (48 layers of 30 mm x 30 mm cells, cropped to 25 x 25 around the
    shower axis for training).  z runs along the beam (one index per sampling layer), the particle enters
    the front face at the centre of cell (``axis_x``, ``axis_y``).  Flat voxel order is (z, y, x) with x
    fastest, the same "last axis fastest" rule as the cylindrical mesh; :meth:`to_grid` / :meth:`to_flat`
    are the only places that reshape.
    """

    n_x: int
    n_y: int
    n_z: int
    cell_x: float  # mm
    cell_y: float  # mm
    cell_z: float  # mm, layer pitch
    axis_x: int | None = None  # cell the particle enters; default n // 2
    axis_y: int | None = None
    name: str = "custom"
    kind: ClassVar[str] = "cartesian"

    def __post_init__(self) -> None:
        for key in ("n_x", "n_y", "n_z"):
            if int(getattr(self, key)) < 1:
                raise GeometryError(f"{key} must be >= 1", field=key, fix="give a positive number of cells")
        for key in ("cell_x", "cell_y", "cell_z"):
            if not float(getattr(self, key)) > 0:
                raise GeometryError(f"{key} must be > 0 mm", field=key, fix="give the cell size in mm")
        object.__setattr__(self, "axis_x", self.n_x // 2 if self.axis_x is None else int(self.axis_x))
        object.__setattr__(self, "axis_y", self.n_y // 2 if self.axis_y is None else int(self.axis_y))
        for key, n in (("axis_x", self.n_x), ("axis_y", self.n_y)):
            if not 0 <= int(getattr(self, key)) < n:
                raise GeometryError(f"{key} = {getattr(self, key)} lies outside the grid (0..{n - 1})", field=key,
                                    fix="put the shower axis inside the grid")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_z, n_y, n_x): the in-memory grid of one shower."""
        return (self.n_z, self.n_y, self.n_x)

    @property
    def n_voxels(self) -> int:
        return self.n_x * self.n_y * self.n_z

    @property
    def x_centres(self) -> np.ndarray:
        """Cell centres in mm, relative to the shower axis."""
        return (np.arange(self.n_x) - self.axis_x) * self.cell_x

    @property
    def y_centres(self) -> np.ndarray:
        return (np.arange(self.n_y) - self.axis_y) * self.cell_y

    @property
    def z_centres(self) -> np.ndarray:
        return (np.arange(self.n_z) + 0.5) * self.cell_z

    def radial_distances(self) -> np.ndarray:
        """(n_y, n_x) distance of each cell centre from the shower axis, mm."""
        return np.hypot(self.y_centres[:, None], self.x_centres[None, :])

    @property
    def ring_width(self) -> float:
        """Width of the lateral-profile rings: one cell."""
        return float(min(self.cell_x, self.cell_y))

    @property
    def r_centres(self) -> np.ndarray:
        """Centres of the lateral-profile rings (one cell wide, out to the farthest cell centre), mm."""
        n = int(np.floor(self.radial_distances().max() / self.ring_width)) + 1
        return (np.arange(n) + 0.5) * self.ring_width

    @property
    def radius(self) -> float:
        """Largest distance of a cell centre from the axis (plot range), mm."""
        return float(self.radial_distances().max() + 0.5 * self.ring_width)

    @property
    def length(self) -> float:
        return float(self.n_z * self.cell_z)

    def layer_cells(self) -> LayerCells:
        """Positions, rings and azimuthal sectors of the cells of one layer, flat in (y, x) order."""
        x = np.broadcast_to(self.x_centres[None, :], (self.n_y, self.n_x)).reshape(-1)
        y = np.broadcast_to(self.y_centres[:, None], (self.n_y, self.n_x)).reshape(-1)
        r = np.hypot(x, y)
        sectors = 8
        phi = np.mod(np.arctan2(y, x), 2.0 * math.pi)
        return LayerCells(
            x=x.copy(), y=y.copy(), r=r, r_bin=np.floor(r / self.ring_width).astype(np.int64),
            phi_bin=np.minimum((phi / (2.0 * math.pi) * sectors).astype(np.int64), sectors - 1),
            r_centres=self.r_centres, n_phi_bins=sectors,
        )

    def to_grid(self, flat: np.ndarray) -> np.ndarray:
        """(N, n_voxels) -> (N, n_z, n_y, n_x) view."""
        flat = np.asarray(flat)
        if flat.shape[-1] != self.n_voxels:
            raise DataError(
                f"expected {self.n_voxels} voxels for {self.describe()}, got {flat.shape[-1]}",
                field="showers", fix="pass showers scored on this grid",
            )
        return flat.reshape(*flat.shape[:-1], *self.shape)

    def to_flat(self, grid: np.ndarray) -> np.ndarray:
        grid = np.asarray(grid)
        if tuple(grid.shape[-3:]) != self.shape:
            raise DataError(
                f"expected grids of shape {self.shape} for {self.describe()}, got {tuple(grid.shape[-3:])}",
                field="showers", fix="pass showers scored on this grid",
            )
        return grid.reshape(*grid.shape[:-3], self.n_voxels)

    def crop_window(self, n_x: int, n_y: int) -> tuple[slice, slice]:
        """(y slice, x slice) of an ``n_y`` x ``n_x`` window centred on the shower axis."""
        for key, want, have in (("crop x", n_x, self.n_x), ("crop y", n_y, self.n_y)):
            if not 1 <= want <= have:
                raise ConfigError(
                    f"{key} = {want} cells does not fit the grid {self.describe()}",
                    field="data.crop", fix=f"use a crop of at most {have} cells",
                )
        x0, y0 = self.axis_x - n_x // 2, self.axis_y - n_y // 2
        if x0 < 0 or y0 < 0 or x0 + n_x > self.n_x or y0 + n_y > self.n_y:
            raise ConfigError(
                f"a {n_y}x{n_x} window centred on the axis cell ({self.axis_y}, {self.axis_x}) "
                f"leaves {self.describe()}",
                field="data.crop", fix="use a smaller crop",
            )
        return slice(y0, y0 + n_y), slice(x0, x0 + n_x)

    def cropped(self, n_x: int, n_y: int) -> CartesianGrid:
        """The grid of a crop made by :meth:`crop_window` (axis cell recomputed, name suffixed)."""
        ys, xs = self.crop_window(n_x, n_y)
        return CartesianGrid(n_x=n_x, n_y=n_y, n_z=self.n_z, cell_x=self.cell_x, cell_y=self.cell_y,
                             cell_z=self.cell_z, axis_x=self.axis_x - xs.start, axis_y=self.axis_y - ys.start,
                             name=f"{self.name}_crop{n_y}x{n_x}")

    def crop(self, flat: np.ndarray, n_x: int, n_y: int) -> np.ndarray:
        """Crop flat showers (N, n_voxels) to the window; returns flat showers on :meth:`cropped`."""
        ys, xs = self.crop_window(n_x, n_y)
        return np.ascontiguousarray(self.to_grid(flat)[..., ys, xs]).reshape(len(flat), -1)

    def describe(self) -> str:
        return (f"'{self.name}' ({self.n_z} layers x {self.n_y} x {self.n_x} cells of "
                f"{self.cell_x:g} x {self.cell_y:g} mm)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "n_x": self.n_x, "n_y": self.n_y, "n_z": self.n_z,
            "cell_x_mm": self.cell_x, "cell_y_mm": self.cell_y, "cell_z_mm": self.cell_z,
            "axis_x": self.axis_x, "axis_y": self.axis_y, "voxel_order": "z,y,x (x fastest)",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None) -> CartesianGrid:
        try:
            return cls(n_x=int(d["n_x"]), n_y=int(d["n_y"]), n_z=int(d["n_z"]), cell_x=float(d["cell_x_mm"]),
                       cell_y=float(d["cell_y_mm"]), cell_z=float(d["cell_z_mm"]), axis_x=d.get("axis_x"),
                       axis_y=d.get("axis_y"), name=str(d.get("name", "custom")))
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(
                f"incomplete grid description ({exc})", file=source, field="geometry",
                fix="give n_x, n_y, n_z, cell_x_mm, cell_y_mm and cell_z_mm",
            ) from exc


Mesh = CylindricalMesh | CartesianGrid

GRID_PRESETS: dict[str, CartesianGrid] = {
    # A highly granular steel/scintillator hadron calorimeter as in the "Hadrons, better, faster,
    # stronger" study: 48 layers, 30 mm x 30 mm cells; layer pitch 20 mm steel + 3 mm scintillator +
    # readout and air, 26.5 mm in total (1.3 m of calorimeter, ~6 lambda_I of steel).
    "hcal48": CartesianGrid(n_x=48, n_y=48, n_z=48, cell_x=30.0, cell_y=30.0, cell_z=26.5, name="hcal48"),
}


def mesh_from_dict(d: dict[str, Any], *, source: str | None = None) -> Mesh:
    """A cylindrical mesh or Cartesian grid from its ``to_dict`` form (``kind`` tells which)."""
    kind = d.get("kind", "cylindrical") if isinstance(d, dict) else None
    if kind == "cartesian":
        return CartesianGrid.from_dict(d, source=source)
    if kind == "cylindrical":
        return CylindricalMesh.from_dict(d, source=source)
    raise GeometryError(f"unknown geometry kind {kind!r}", file=source, field="geometry.kind",
                        fix="use 'cylindrical' or 'cartesian'")

#: CaloChallenge binning files shipped in mlfastsim/data/binning, by the mesh preset they describe
SHIPPED_BINNINGS = {"ds2": "binning_dataset_2.xml", "ds3": "binning_dataset_3.xml", "par04": "binning_dataset_3.xml"}


def binning_path(spec: str | Path) -> Path:
    """``--binning`` as a file, or a shipped binning: a preset name (ds2, ds3) or the shipped file's name.

    The CaloChallenge XMLs ship inside the package, so ``--binning ds2`` (as ``--mesh ds2``) and
    ``--binning binning_dataset_2.xml`` work from any directory; a file of that name here wins.
    """
    p = Path(spec)
    if p.is_file():
        return p
    from importlib import resources

    shipped = resources.files("mlfastsim") / "data" / "binning"
    name = SHIPPED_BINNINGS.get(str(spec), p.name if p.parent == Path() else None)
    if name is not None and (shipped / name).is_file():
        return Path(str(shipped / name))
    return p


def read_binning_xml(path: str | Path, *, particle: str | None = None, size_z: float = 3.4) -> CylindricalMesh:
    """Read a CaloChallenge binning XML (``<Bins><Bin pid name><Layer id r_edges n_bin_alpha/>``).

    Only regular binnings (the same r edges and alpha bins in every layer, as in datasets 2 and 3)
    map onto a cylindrical mesh; irregular ones are refused with a clear message.  The XML carries no
    layer thickness, so ``size_z`` (mm) is taken from the caller (3.4 mm for datasets 2 and 3).
    """
    p = binning_path(path)
    if not p.is_file():
        raise GeometryError("binning XML does not exist", file=p,
                            fix=f"check the --binning path, or name a shipped one ({', '.join(SHIPPED_BINNINGS)})")
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


def load_mesh(spec: str | Path) -> Mesh:
    """A mesh from a preset name (cylindrical or Cartesian), a CaloChallenge binning XML or a YAML file.

    A YAML file holds the ``to_dict`` fields; ``kind: cartesian`` makes it a :class:`CartesianGrid`.
    """
    key = str(spec)
    if key.lower() in MESH_PRESETS:
        return MESH_PRESETS[key.lower()]
    if key.lower() in GRID_PRESETS:
        return GRID_PRESETS[key.lower()]
    p = Path(key)
    if p.suffix.lower() == ".xml":
        return read_binning_xml(p)
    if p.suffix.lower() in (".yaml", ".yml"):
        return mesh_from_dict(_read_yaml(p), source=str(p))
    raise GeometryError(
        f"unknown mesh {key!r}",
        field="mesh",
        fix=f"use one of {', '.join(sorted(MESH_PRESETS) + sorted(GRID_PRESETS))}, a binning .xml or a mesh .yaml",
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
            mat = Material(**spec)
        except TypeError as exc:
            raise GeometryError(
                f"bad material definition ({exc})",
                file=source,
                field="material",
                fix="give name, z, a, density, x0, rm, ec, dedx_mip",
            ) from exc
        # physical sanity: a zero density or a negative X0 gives E_tot/E_inc = 0 or NaN only after the
        # whole simulation has run
        for key in ("z", "a", "density", "x0", "rm", "ec", "dedx_mip"):
            value = getattr(mat, key)
            try:
                ok = math.isfinite(float(value)) and float(value) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise GeometryError(f"material {mat.name!r}: {key} must be a finite number > 0, got {value!r}",
                                    file=source, field=f"material.{key}",
                                    fix="use the PDG value (density g/cm3, x0/rm mm, ec MeV, dedx_mip MeV/mm)")
        return mat
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
        def positive(x: float) -> bool:
            return math.isfinite(x) and x > 0  # NaN compares False to everything: test it explicitly

        if not positive(det.absorber_mm) or det.n_layers < 1 or (det.active is not None
                                                                 and not positive(det.active_mm)):
            raise GeometryError(
                "thicknesses must be finite numbers > 0 mm and n_layers >= 1", file=source,
                fix="check absorber_mm, active_mm, n_layers"
            )
        for key in ("stochastic_term", "constant_term"):
            value = getattr(det, key)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise GeometryError(f"{key} must be a finite number >= 0, got {value!r}", file=source, field=key,
                                    fix="give the resolution term as a fraction (e.g. 0.1), or leave it out")
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
