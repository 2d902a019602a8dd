"""The flow-matching family on the hadron grid (``model.type: cfm_grid``): :mod:`.cfm`'s layer transformer on
the 48 x 25 x 25 crop.

One network design for both kinds of calorimeter: a shower is a stack of layers whatever the readout (rings
and sectors of a cylindrical mesh, x-y cells of a Cartesian grid), so the same model serves both:

* the energy flow learns ``E_sum / E_inc`` and the layer shares first (``energy_param: total_first``);
  for pions this carries the non-compensating response (~0.8) and its ~20 % shower-to-shower spread, and
  the interaction depth (where the layer shares switch on);
* the shape transformer takes one token per layer (here the layer's 25 x 25 = 625 cells) and learns, in
  ``log(cell / threshold)``, where the hits are and how hot.  Hadron data are sparse (about 1 % of the
  crop's cells pass 0.5 MIP): cells below the readout threshold sit at ``empty_value``, and the assembly
  makes exact zeros of everything the flow leaves below it, so the hit count is learnt, not thresholded
  from a dense field (the failure of the first BIB-AE, whose mean showers were empty after the cut).

Only the units differ from the cylindrical family: the grid's network units are cells in MIP (the
:class:`~mlfastsim.showers.conditioning.grid.HadronNormalisation`), the condition is ``E_inc / 100 GeV``,
and the flow works in cells / E_inc as on the mesh.  :class:`GridCFM` converts in both directions inside the
graph, so training, generation and the ONNX export (the solver loop unrolled, as for ``cfm``) are the
cylindrical family's code.  Adding a particle one-hot to the conditions (one model for electrons and pions,
the AllShowers direction) widens ``n_cond`` and nothing else here; the grid data of this toolkit hold pions
only, so that is not built yet.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from mlfastsim.showers.conditioning.grid import HadronNormalisation
from mlfastsim.showers.models.cfm import CFMConfig, CFMModel, ShowerCFM, cfm_loss, solver_sidecar
from mlfastsim.showers.models.contract import Normalisation
from mlfastsim.showers.models.hadrons import _GridModel

#: where a cell starts to exist for the flow when the data carry no readout threshold, in MIP
FLOOR_MIP = 0.1


class GridCFMConfig(CFMConfig):
    """:class:`~mlfastsim.showers.models.cfm.CFMConfig` on the hadron grid.

    ``readout_threshold_mev``: cells below it are empty for the flow and exact zeros in its output; null
    (the default) takes the calorimeter's readout threshold from the data (0.5 MIP on hcal48), or
    ``0.1 MIP`` where the data have none.
    """

    type: Literal["cfm_grid"] = "cfm_grid"  # type: ignore[assignment]
    readout_threshold_mev: float | None = Field(None, ge=0)  # type: ignore[assignment]
    energy_param: Literal["per_layer", "total_first"] = "total_first"
    # shape-loss weight of a cell: floor + how often it is hit at this energy / the mean (GridCFM.cell_weights);
    # null: every cell weighs the same
    cell_weight_floor: float | None = Field(None, ge=0)
    # occupancy: counted: a kept cell starts from at least this many MIP before its layer is scaled to its energy
    # (0: from the threshold).  Measured on hcal48 pions (one model, 1000 showers): hit-energy SP 0.009 and the
    # MIP peak at 1.18 MIP (data 1.28) with 1, against 0.073 and 0.63 MIP from the threshold, where the cells the
    # flow left near the empty level came out as a pile of hits just above 0.5 MIP
    hit_floor_mip: float = Field(1.0, ge=0)


def flow_threshold_mev(cfg: GridCFMConfig, norm: HadronNormalisation) -> float:
    """The threshold the flow works above (see :class:`GridCFMConfig`)."""
    if cfg.readout_threshold_mev is not None:
        return float(cfg.readout_threshold_mev)
    return norm.threshold_mev if norm.threshold_mev > 0 else FLOOR_MIP * norm.energy_scale_mev


class GridCFM(ShowerCFM):
    """:class:`ShowerCFM` reading and writing the grid's network units (cells in MIP, condition E / 100 GeV).

    ``unit = energy_scale_mev / (energy_norm_gev * 1000)``: a cell of ``x`` MIP at condition ``c`` is
    ``x * unit / c`` of the incident energy, the flow's units.  Same parameter names as ``cfm`` (``energy.``,
    ``shape.``), so ``trainable`` prefixes and staged training read the same.
    """

    def __init__(self, grid_shape: tuple[int, int, int], cfg: GridCFMConfig, norm: HadronNormalisation) -> None:
        nz, ny, nx = grid_shape
        super().__init__(nz, ny * nx, norm.cond_width, norm.energy_norm_gev * 1000.0, cfg,
                         threshold_mev=flow_threshold_mev(cfg, norm))
        self.unit = float(norm.energy_scale_mev / (norm.energy_norm_gev * 1000.0))
        # y_max: the hottest cell the training data allow per layer and ring (the energy baseline's log_max: the
        # largest log hit energy in MIP + 0.5), in the flow's y units; a flow solved in a few Euler steps
        # overshoots in its rare tail (measured: y up to 4.5 against the data's 1.7), and one such cell takes
        # the layer's energy from all the others when the layer is scaled to its generated energy
        a, b, log_max = norm.baseline_fields() or (None, None, None)
        log_mip = math.log(norm.energy_scale_mev / max(self.threshold_mev, 1e-12))  # a MIP, log(signal / threshold)

        def per_cell(v: np.ndarray | None, fill: float) -> torch.Tensor:
            return torch.full((nz, ny * nx), fill) if v is None else torch.from_numpy(v).reshape(nz, ny * nx)

        # non-persistent buffers: rebuilt from the normalisation, never weights
        self.register_buffer("y_max", (per_cell(log_max, math.inf) + log_mip) / cfg.log_scale,
                             persistent=False)
        # how often each cell is hit at condition e: the baseline's hit log-odds, a + b * log(e) (see cell_weights)
        self.register_buffer("occ_a", per_cell(None if a is None else a[0], 0.0), persistent=False)
        self.register_buffer("occ_b", per_cell(None if b is None else b[0], 0.0), persistent=False)
        self.hit_floor_log = max(math.log(cfg.hit_floor_mip) + log_mip, 0.0) if cfg.hit_floor_mip > 0 else 0.0

    def to_units(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frac = x.reshape(x.shape[0], -1) * (self.unit / c[:, :1].clamp_min(1e-6))
        return super().to_units(frac, c)

    def assemble(self, w: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return super().assemble(w, torch.minimum(y, self.y_max), c) * (c[:, :1] / self.unit)

    def cell_weights(self, c: torch.Tensor) -> torch.Tensor | None:
        """Shape-loss weight of each cell: ``cell_weight_floor + P(hit | cell, e) / mean P`` from the energy
        baseline's hit log-odds (a function of the cell and the condition only, so the optimum is unchanged)."""
        if self.cfg.cell_weight_floor is None:
            return None
        p = torch.sigmoid(self.occ_a + self.occ_b * torch.log(c[:, :1, None].clamp_min(1e-6)))  # (B, L, P)
        return self.cfg.cell_weight_floor + p / p.mean(dim=(1, 2), keepdim=True).clamp_min(1e-6)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flow-matching losses; ``c`` is the hadron data's (N,) energy condition."""
        return super().forward(x.reshape(x.shape[0], -1), c.reshape(-1, 1))


class GridCFMModel(_GridModel):
    """``cfm_grid``: the flow-matching layer transformer on the Cartesian hadron grid."""

    name: ClassVar[str] = "cfm_grid"
    description: ClassVar[str] = ("conditional flow matching, layer transformer, energies first "
                                  "(Cartesian hadron grid)")
    config: ClassVar[type[GridCFMConfig]] = GridCFMConfig
    solver_steps_field: ClassVar[str | None] = "steps"
    # the per-cell head holds (rows, 48, 625, cell_head) floats: ~0.25 GB a tensor at 256 rows and width 8
    max_batch_size: ClassVar[int | None] = 256
    loss = staticmethod(cfm_loss)

    def tiny_config(self) -> GridCFMConfig:
        # every option of the presets, so the shared suite's ONNX parity covers the ranked assembly and the cell head
        return GridCFMConfig(width=16, depth=1, heads=2, energy_width=16, energy_depth=1, time_frequencies=2, steps=2,
                             cell_head=4, occupancy="counted", cell_weight_floor=0.1)

    def build_modules(self, cfg: GridCFMConfig, norm: Normalisation, *, seed: int = 0) -> dict[str, nn.Module]:
        """Weights from torch's global generator (seeded by the caller), as for ``cfm``."""
        assert isinstance(norm, HadronNormalisation)
        return {"model": GridCFM(norm.grid.shape, cfg, norm)}

    # cfm's: a supervised task on the core trainer, noise as wide as the energies plus the cells, the solver sampler
    build_task = CFMModel.build_task
    latent_width = CFMModel.latent_width
    sampler = CFMModel.sampler

    def sidecar_fields(self, cfg: GridCFMConfig, norm: Normalisation, latent_dim: int, voxel_order: str,
                       onnx_file: str) -> dict[str, Any]:
        assert isinstance(norm, HadronNormalisation)
        return {"solver": {**solver_sidecar(cfg, norm.grid.n_z), "flow_threshold_mev": flow_threshold_mev(cfg, norm)}}
