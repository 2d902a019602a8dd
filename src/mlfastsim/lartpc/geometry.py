"""LArTPC readout geometry: drift ticks, wire planes and the 3D voxel grid that tiling fills.

ProtoDUNE-like constants (see DESIGN.md): induction wires at ±35.7° with 4.67 mm pitch, collection wires at
0° with 4.79 mm pitch, drift velocity ≈ 1.6 mm/µs sampled at 2 MHz, i.e. ≈ 0.8 mm of drift per tick, and
≈ 2 mm voxels in the wire-plane directions.  Coordinates inside one TPC: x = drift (tick), y = vertical,
z = along the beam; TPCs sit side by side along z, so joining TPCs is a shift of z.

A wire plane at angle θ (from the vertical) measures ``u = z cos θ - y sin θ``; wire ``w`` collects the
charge with ``u_min + w·pitch <= u < u_min + (w+1)·pitch``.  Every voxel is assigned to the wire under
its centre, so projection (simulation) and tiling (reconstruction) agree voxel by voxel.
"""

from __future__ import annotations

import json
from functools import cached_property

import numpy as np
from pydantic import Field, model_validator

from mlfastsim.core.config import StrictModel

N_PLANES = 3


class TPCGeometry(StrictModel):
    """One TPC's readout; every TPC of a detector shares it, offset along z by ``size_z_mm``."""

    n_ticks: int = Field(256, ge=1)
    tick_mm: float = Field(0.8, gt=0)  # 1.6 mm/µs drift x 0.5 µs (2 MHz sampling)
    size_y_mm: float = Field(256.0, gt=0)
    size_z_mm: float = Field(256.0, gt=0)
    voxel_mm: float = Field(2.0, gt=0)
    plane_angles_deg: list[float] = Field(default_factory=lambda: [35.7, -35.7, 0.0])
    wire_pitch_mm: list[float] = Field(default_factory=lambda: [4.67, 4.67, 4.79])

    model_config = StrictModel.model_config | {"frozen": True}

    @model_validator(mode="after")
    def _check(self) -> TPCGeometry:
        if len(self.plane_angles_deg) != N_PLANES or len(self.wire_pitch_mm) != N_PLANES:
            raise ValueError(f"give {N_PLANES} plane angles and {N_PLANES} wire pitches")
        if any(p <= 0 for p in self.wire_pitch_mm):
            raise ValueError("wire pitches must be positive")
        for name, size in (("size_y_mm", self.size_y_mm), ("size_z_mm", self.size_z_mm)):
            n = size / self.voxel_mm
            if abs(n - round(n)) > 1e-6:
                raise ValueError(f"{name} ({size}) must be a whole number of voxels of {self.voxel_mm} mm")
        return self

    @property
    def n_y(self) -> int:
        return round(self.size_y_mm / self.voxel_mm)

    @property
    def n_z(self) -> int:
        return round(self.size_z_mm / self.voxel_mm)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(ticks, y voxels, z voxels): the full-resolution tiling grid of one TPC."""
        return (self.n_ticks, self.n_y, self.n_z)

    @property
    def drift_mm(self) -> float:
        return self.n_ticks * self.tick_mm

    def _u_range(self, plane: int) -> tuple[float, float]:
        th = np.deg2rad(self.plane_angles_deg[plane])
        corners = [(y, z) for y in (0.0, self.size_y_mm) for z in (0.0, self.size_z_mm)]
        us = [z * np.cos(th) - y * np.sin(th) for y, z in corners]
        return float(min(us)), float(max(us))

    def n_wires(self, plane: int) -> int:
        lo, hi = self._u_range(plane)
        return int(np.floor((hi - lo) / self.wire_pitch_mm[plane])) + 1

    def wire_index(self, plane: int, y_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """The wire of ``plane`` that collects charge drifting from (y, z)."""
        th = np.deg2rad(self.plane_angles_deg[plane])
        lo, _ = self._u_range(plane)
        u = z_mm * np.cos(th) - y_mm * np.sin(th)
        w = np.floor((u - lo) / self.wire_pitch_mm[plane]).astype(np.int32)
        return np.clip(w, 0, self.n_wires(plane) - 1)

    @cached_property
    def voxel_wires(self) -> np.ndarray:
        """``(3, n_y, n_z)`` int32: the wire of each plane under each voxel centre."""
        yc = (np.arange(self.n_y) + 0.5) * self.voxel_mm
        zc = (np.arange(self.n_z) + 0.5) * self.voxel_mm
        yy, zz = np.meshgrid(yc, zc, indexing="ij")
        return np.stack([self.wire_index(p, yy, zz) for p in range(N_PLANES)]).astype(np.int32)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TPCGeometry:
        return cls.model_validate(json.loads(text))
