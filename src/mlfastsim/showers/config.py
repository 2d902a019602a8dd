"""Config models of the shower commands (one YAML file per experiment, validated here)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mlfastsim.core.config import StrictModel
from mlfastsim.core.parallel import ParallelConfig
from mlfastsim.core.tracking import TrackingConfig


class SimulateConfig(StrictModel):
    """``showers simulate``: which detector, mesh, particle and kinematics to simulate."""

    detector: str = "SiW"
    mesh: str = "ds2"
    particle: Literal["electron", "photon"] = "electron"
    energies_gev: list[float] | None = None
    energy_range_gev: tuple[float, float] | None = None
    angles_deg: list[float] | None = None
    angle_range_deg: tuple[float, float] | None = None
    n_per_point: int = Field(1000, ge=1)
    seed: int = 1
    chunk_size: int = Field(1000, ge=1)
    output: Path = Path("showers.h5")
    parallel: ParallelConfig = ParallelConfig()

    @model_validator(mode="after")
    def _one_of_each(self) -> SimulateConfig:
        if self.energies_gev is not None and self.energy_range_gev is not None:
            raise ValueError("give energies_gev (--energy-gev) or energy_range_gev (--energy-range-gev), not both")
        if self.angles_deg is not None and self.angle_range_deg is not None:
            raise ValueError("give angles_deg (--angle-deg) or angle_range_deg (--angle-range-deg), not both")
        return self


class ConvertConfig(StrictModel):
    """``showers convert``: from one layout to another."""

    source_format: str = "calochallenge"
    target_format: str = "native"
    inputs: list[Path] = Field(default_factory=list)
    output: Path = Path("converted.h5")
    mesh: str | None = None
    binning: Path | None = None


class ValidateConfig(StrictModel):
    """``showers validate``: compare a candidate sample with a reference sample."""

    reference: Path | None = None
    candidate: Path | None = None
    output: Path = Path("validation")
    binning: Path | None = None
    mesh: str | None = None
    classifier: bool = True
    exclude_empty: bool = False
    seed: int = 0
    tracking: TrackingConfig = TrackingConfig()
