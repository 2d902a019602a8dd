"""What every family's data loading hands the trainer (kept apart from :mod:`..models` so that models may
import the conditioning modules and never the other way round)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlfastsim.showers.io.native import ShowerData


@dataclass
class TrainingData:
    """Showers as the trainer sees them: network inputs, conditions, and how they were made.

    ``norm`` is the family's normalisation (see :class:`mlfastsim.showers.models.contract.Normalisation`);
    ``samples`` keeps the files' showers in MeV for validation plots and meta-learning.
    """

    x: torch.Tensor
    c: torch.Tensor
    norm: Any
    files: list[Path]
    samples: list[ShowerData] = field(default_factory=list)
    geometry_index: list[int] = field(default_factory=list)

    @property
    def mesh(self) -> Any:
        return self.norm.geometry
