"""Conditional flow matching with a layer transformer, energies first (``model.type: cfm``).

What it learns (both by conditional flow matching on the straight, optimal-transport path
``x_t = (1 - t) z + t x_1``, target velocity ``x_1 - z``, as in rectified flow / CaloDREAM):

1. **Layer energies first**: a small MLP velocity field over the layer energies, in one of two
   parametrisations (``energy_param``):

   * ``total_first`` (the presets): ``log(E_tot / E_inc) / total_scale`` as its own coordinate, then each layer's
     share of the total, ``(log(E_layer / E_tot + floor) + 7) / 4``; generation renormalises the shares to sum to
     one, so ``E_tot / E_inc`` is exactly the generated total.  The response of a calorimeter is narrow
     (SiW 0.99 +- 0.03), and a one-dimensional conditional density that narrow is easy for a flow;
   * ``per_layer`` (``cfm_ds2`` v1): ``w = (log(E_layer / E_inc + floor) + 7) / 4`` per layer and the total as
     their sum.  Measured on SiW: the sum of 45 generated layers had E_tot/E_inc 1.13 +- 0.73 against
     0.99 +- 0.03 (each layer's error adds up), whatever the training budget (36x more steps on a GPU did not
     narrow it), so the total needs its own coordinate.

   Either way E_tot/E_inc comes from a model of the energies rather than from the sum of 6480 noisy cells (the
   issue-13 prototype trained in log-cell space alone had E_tot/E_inc 1.33 +- 0.44 against 0.99 +- 0.03).
2. **Shapes second**: a transformer with one token per layer (the layer's ``n_phi x n_r`` cells as one patch),
   adaLN-zero conditioning on (log E, angle, geometry one-hot, time) and, per token, the layer's energy.
   Cells are ``y = log(cell / threshold)`` (positive for every cell the readout sees) and empty cells sit at
   a fixed ``empty_value`` below zero, not at random values (which blurred the threshold in the prototype).
3. **Assembly** (inside the sampler, hence inside the ONNX graph): cells ``threshold * exp(y)`` where
   ``y > 0`` else exactly 0, each layer rescaled to its generated energy, cells below the readout threshold
   zeroed again.  The output is cells / E_inc (the VAE's network units), so generation multiplies by E_inc.

Why the solver loop is inside the graph: a C++ caller (Geant4) then gets a shower from one ``Run`` call on one
input row ``[z, conditions]``, exactly like the VAE; the loop is unrolled at export with the step count of
``steps`` (recorded in the sidecar's ``solver``), weights shared between steps.  A single-step graph with the
loop in the caller would make every caller re-implement the solver, the layer assembly and the threshold.

Data and conditions are the VAE's (:mod:`mlfastsim.showers.conditioning.em`): the same files, one-hot slots
and checkpoint keys, so ``meta-train`` and ``adapt`` (slot 0 for a new geometry) work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.config import StrictModel
from mlfastsim.core.trainer import SupervisedTask, TrainerConfig, TrainTask, make_optimizer, make_scheduler
from mlfastsim.showers.conditioning.em import DataConfig, EMNormalisation
from mlfastsim.showers.models.contract import ModelType, Normalisation
from mlfastsim.showers.models.vae import VAEModel

#: CaloChallenge readout threshold: cells below it are not read out (exact zeros)
READOUT_THRESHOLD_MEV = 15.15e-3
# fixed affine maps to O(1) network units (the same for every geometry, so adaptation keeps them)
_W_SHIFT, _W_SCALE = 7.0, 4.0
_N_SHIFT, _N_SCALE = 1.5, 1.5  # hit counts: (log(1 + n) - 1.5) / 1.5, i.e. -1 for none, 2 for ~90 hits


class CFMConfig(StrictModel):
    """Sizes of the layer transformer and the layer-energy network, and the solver's default step count."""

    type: Literal["cfm"] = "cfm"
    width: int = Field(128, ge=8)  # token width of the shape transformer
    depth: int = Field(4, ge=1)  # transformer blocks
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    energy_width: int = Field(128, ge=8)  # hidden width of the layer-energy velocity MLP
    energy_depth: int = Field(3, ge=1)
    time_frequencies: int = Field(8, ge=1)
    steps: int = Field(8, ge=1, le=256)  # solver steps of each ODE in the sampler (and so in the ONNX graph)
    solver: Literal["euler", "midpoint"] = "euler"  # midpoint: 2nd order, two network calls per step
    energy_steps: int | None = Field(None, ge=1, le=1024)  # the energy ODE's own step count (None: steps)
    readout_threshold_mev: float = Field(READOUT_THRESHOLD_MEV, ge=0)
    empty_value: float = Field(-2.0, lt=0)  # log(cell / threshold) given to empty cells
    log_scale: float = Field(4.0, gt=0)  # network units of a cell: log(cell / threshold) / log_scale
    energy_floor: float = Field(1e-6, gt=0)
    energy_weight: float = Field(1.0, ge=0)  # weight of the layer-energy loss next to the shape loss
    # how the layer energies are coordinates of the energy flow (module docstring); per_layer for checkpoints
    # written before the option (cfm_ds2 v1), whose configs do not name it
    energy_param: Literal["per_layer", "total_first"] = "per_layer"
    total_scale: float = Field(0.2, gt=0)  # total_first: network units of log(E_tot / E_inc)
    # hidden width of the per-cell head (0: none, the token's linear read-out alone; see ShapeNet)
    cell_head: int = Field(0, ge=0)
    # which cells of a layer are hits: "threshold" = where the generated y > 0; "counted" = the energy flow also
    # learns each layer's hit count and the assembly keeps that many cells of highest y (sparse data, where a
    # flow trained by least squares under-produces the rare hits: see ShowerCFM.assemble)
    occupancy: Literal["threshold", "counted"] = "threshold"


def n_energy_coordinates(cfg: CFMConfig, n_layers: int) -> int:
    """Width of the energy flow (and of its noise in the sampler's input): one per layer, plus the total, plus
    one hit count per layer (``occupancy: counted``)."""
    return _n_energy_part(cfg, n_layers) + (n_layers if cfg.occupancy == "counted" else 0)


def _n_energy_part(cfg: CFMConfig, n_layers: int) -> int:
    return n_layers + (1 if cfg.energy_param == "total_first" else 0)


def _time_features(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) -> (B, 2n) sinusoidal features of the flow time in [0, 1]."""
    freqs = torch.pow(2.0, torch.arange(n, dtype=t.dtype, device=t.device)) * math.pi
    a = t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def _log_energy_conditions(c: torch.Tensor) -> torch.Tensor:
    """Conditions with E/MAX replaced by a centred log: the three decades of energies spread over O(1)."""
    return torch.cat([(torch.log(c[:, :1].clamp_min(1e-6)) + 3.5) / 2.0, c[:, 1:]], dim=1)


class EnergyNet(nn.Module):
    """Velocity field of the per-layer energies: MLP of [w_t, conditions, time features]."""

    def __init__(self, n_layers: int, n_cond: int, cfg: CFMConfig) -> None:
        super().__init__()
        n_in = n_layers + n_cond + 2 * cfg.time_frequencies
        layers: list[nn.Module] = [nn.Linear(n_in, cfg.energy_width), nn.SiLU()]
        for _ in range(cfg.energy_depth - 1):
            layers += [nn.Linear(cfg.energy_width, cfg.energy_width), nn.SiLU()]
        layers.append(nn.Linear(cfg.energy_width, n_layers))
        self.net = nn.Sequential(*layers)
        self.n_freq = cfg.time_frequencies

    def forward(self, w: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([w, cond, _time_features(t, self.n_freq)], dim=1))


class _Block(nn.Module):
    """Pre-LN transformer block with adaLN-zero modulation (shift, scale, gate per sub-layer)."""

    def __init__(self, d: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.mod = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        s1, g1, a1, s2, g2, a2 = self.mod(emb)[:, None, :].chunk(6, dim=2)
        x = self.norm1(h) * (1 + g1) + s1
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        h = h + a1 * self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return h + a2 * self.mlp(self.norm2(h) * (1 + g2) + s2)


class ShapeNet(nn.Module):
    """Velocity field of the cells: a transformer over layers (one token = one layer's cells).

    The token is ``width`` numbers for the layer's ``patch`` cells.  The velocity of a cell is ``x_1 - z``,
    its own noise included, so a token narrower than its patch cannot carry it through: fine on the ds2 mesh
    (144 cells, width 128-192), not on the hadron grid (625 cells).  There ``cell_head > 0`` adds a per-cell
    MLP that reads the cell's own value ``y_t``, its position in the layer (a learnt embedding) and the
    token's context, so each cell decides "hit or not, and how hot" from its own noise and the layer's
    state (measured on hcal48 pions: without it the hits were spread evenly over the 25 x 25 cells).
    """

    def __init__(self, n_layers: int, patch: int, n_cond: int, cfg: CFMConfig) -> None:
        super().__init__()
        d = cfg.width
        self.n_freq = cfg.time_frequencies
        # the layer's cells, its energy and (occupancy: counted) its hit count
        self.embed = nn.Linear(patch + (2 if cfg.occupancy == "counted" else 1), d)
        self.pos = nn.Parameter(torch.randn(1, n_layers, d) * 0.02)
        self.cond = nn.Sequential(nn.Linear(n_cond + 2 * cfg.time_frequencies, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(_Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_mod = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, patch)
        for layer in (self.final_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.cell: nn.ModuleDict | None = None
        if cfg.cell_head > 0:
            h = cfg.cell_head
            self.cell = nn.ModuleDict({"context": nn.Linear(d, h), "value": nn.Linear(1, h, bias=False),
                                       "hidden": nn.Linear(h, h), "out": nn.Linear(h, 1)})
            self.cell_pos = nn.Parameter(torch.randn(patch, h) * 0.02)
            nn.init.zeros_(self.cell["out"].weight)
            nn.init.zeros_(self.cell["out"].bias)

    def forward(self, y: torch.Tensor, w: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """y: (B, L, P) cells at time t; w: (B, L) or (B, L, k) per-layer inputs; cond: (B, C); t: (B,) ->
        (B, L, P)."""
        h = self.embed(torch.cat([y, w[:, :, None] if w.ndim == 2 else w], dim=2)) + self.pos
        emb = nn.functional.silu(self.cond(torch.cat([cond, _time_features(t, self.n_freq)], dim=1)))
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.final_mod(emb)[:, None, :].chunk(2, dim=2)
        h = self.norm(h) * (1 + scale) + shift
        v = self.out(h)
        if self.cell is None:
            return v
        cell = self.cell  # (B, L, P, hidden): the cell's value, its place in the layer, the layer's context
        a = nn.functional.silu(cell["context"](h)[:, :, None, :] + self.cell_pos + cell["value"](y[..., None]))
        return v + cell["out"](nn.functional.silu(cell["hidden"](a)))[..., 0]


class ShowerCFM(nn.Module):
    """Both velocity fields and the maps between cells / E_inc and their network units.

    ``max_energy_mev`` (from the conditioning) turns the E/MAX condition into MeV for the threshold; it is
    rebuilt from the checkpoint's conditioning, not stored as a weight.  ``threshold_mev`` is where a cell
    starts to exist for the flow (``cfg.readout_threshold_mev`` when not given; the grid family passes its
    calorimeter's readout threshold).
    """

    def __init__(self, n_layers: int, patch: int, n_cond: int, max_energy_mev: float, cfg: CFMConfig, *,
                 threshold_mev: float | None = None) -> None:
        super().__init__()
        self.n_layers, self.patch, self.n_cond = n_layers, patch, n_cond
        self.max_energy_mev = float(max_energy_mev)
        self.threshold_mev = float(cfg.readout_threshold_mev if threshold_mev is None else threshold_mev)
        self.cfg = cfg
        self.n_energy = n_energy_coordinates(cfg, n_layers)
        self._n_part = _n_energy_part(cfg, n_layers)  # the energy coordinates; the hit counts follow them
        # occupancy: counted: the smallest signal a kept cell starts from, log(signal / threshold) (the threshold
        # itself here; the grid family sets its MIP)
        self.hit_floor_log = 0.0
        self.energy = EnergyNet(self.n_energy, n_cond, cfg)
        self.shape = ShapeNet(n_layers, patch, n_cond, cfg)

    # ------------------------------------------------------------------------------------ units
    def _log_share(self, u: torch.Tensor) -> torch.Tensor:
        return (torch.log(u + self.cfg.energy_floor) + _W_SHIFT) / _W_SCALE

    def _share(self, w: torch.Tensor) -> torch.Tensor:
        return (torch.exp(w * _W_SCALE - _W_SHIFT) - self.cfg.energy_floor).clamp_min(0.0)

    def energy_units(self, u: torch.Tensor, n: torch.Tensor | None = None) -> torch.Tensor:
        """Layer energies / E_inc (B, L) and hit counts n (B, L) -> the energy flow's coordinates (B, n_energy)."""
        if self.cfg.energy_param == "per_layer":
            w = self._log_share(u)
        else:
            total = u.sum(dim=1, keepdim=True).clamp_min(1e-3)
            w = torch.cat([torch.log(total) / self.cfg.total_scale, self._log_share(u / total)], dim=1)
        if self.cfg.occupancy == "counted":
            assert n is not None
            w = torch.cat([w, (torch.log1p(n) - _N_SHIFT) / _N_SCALE], dim=1)
        return w

    def layer_energies(self, e: torch.Tensor) -> torch.Tensor:
        """The energy flow's coordinates (B, n_energy) -> layer energies / E_inc (B, L), never negative."""
        if self.cfg.energy_param == "per_layer":
            return self._share(e[:, :self.n_layers])
        total = torch.exp((e[:, :1] * self.cfg.total_scale).clamp(max=5.0))
        shares = self._share(e[:, 1:self._n_part])
        return total * shares / shares.sum(dim=1, keepdim=True).clamp_min(1e-30)

    def hit_counts(self, e: torch.Tensor) -> torch.Tensor:
        """``occupancy: counted``: the energy flow's coordinates -> hits per layer (B, L), whole numbers in [0, P]."""
        n = torch.expm1((e[:, self._n_part:] * _N_SCALE + _N_SHIFT).clamp(max=20.0))
        return torch.round(n).clamp(0.0, float(self.patch))

    def shape_condition(self, e: torch.Tensor) -> torch.Tensor:
        """What the shape network sees per layer: ``(log(E_layer / E_inc + floor) + 7) / 4`` (B, L), and with
        ``occupancy: counted`` the hit-count coordinate next to it (B, L, 2)."""
        if self.cfg.energy_param == "per_layer":
            w = e[:, :self.n_layers]  # already that (kept bit-identical for per_layer checkpoints)
        else:
            w = self._log_share(self.layer_energies(e))
        if self.cfg.occupancy == "counted":
            return torch.stack([w, e[:, self._n_part:]], dim=2)
        return w

    def to_units(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cells / E_inc (B, n_voxels) -> (energy-flow coordinates (B, n_energy), cells y (B, L, P))."""
        cfg = self.cfg
        cells = x.reshape(-1, self.n_layers, self.patch)
        e_mev = (c[:, 0] * self.max_energy_mev)[:, None, None]
        thr = max(self.threshold_mev, 1e-12)
        mev = cells * e_mev
        hit = mev >= thr
        w = self.energy_units(cells.sum(dim=2), hit.sum(dim=2).to(x.dtype))
        y = torch.where(hit, torch.log(mev.clamp_min(thr) / thr), torch.full_like(mev, cfg.empty_value))
        return w, y / cfg.log_scale

    def assemble(self, w: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Network units -> cells / E_inc (B, n_voxels): the hit cells, each layer scaled to its energy.

        Hits are the cells where y > 0 (``occupancy: threshold``), or the layer's generated hit count of cells
        of highest y (``counted``).  Why counted: in hadron data ~1 % of the cells are hits, and a flow trained
        by least squares shrinks rare modes, so the cells it lifts above zero were too few (measured on hcal48
        pions: 84 hits per shower against 282); the number of hits of each layer is then learnt where it is one
        number (the energy flow, next to the layer's energy), and the cells' flow only has to rank them.
        """
        cfg = self.cfg
        thr = max(self.threshold_mev, 1e-12)
        e_mev = (c[:, 0] * self.max_energy_mev)[:, None]
        u = self.layer_energies(w)  # (B, L) fractions of E_inc
        logs = (y * cfg.log_scale).clamp(max=40.0)
        if cfg.occupancy == "counted":
            n = self.hit_counts(w)[:, :, None]  # (B, L, 1)
            ranked = torch.sort(y, dim=2, descending=True).values
            kth = ranked.gather(2, (n.clamp_min(1.0) - 1.0).long())  # the n-th highest y of each layer
            keep = (y >= kth) & (n > 0)
            # a kept cell is a hit: it starts from at least hit_floor_log, not from where the flow left it (the
            # flow lifts too few cells out of the empty level; those it leaves there would get a negligible share
            # of the layer's energy and fall below the threshold again)
            cells = torch.where(keep, torch.exp(logs.clamp(min=self.hit_floor_log)), torch.zeros_like(logs))
        else:
            cells = torch.where(logs > 0, torch.exp(logs), torch.zeros_like(logs))  # in units of the threshold
        total = cells.sum(dim=2, keepdim=True)
        frac = cells / total.clamp_min(1e-30)  # shape of each layer; an empty layer stays empty
        out = frac * u[:, :, None]
        if self.threshold_mev > 0:
            out = torch.where(out * e_mev[:, :, None] >= thr, out, torch.zeros_like(out))
        return out.reshape(out.shape[0], -1)

    # ------------------------------------------------------------------------------------ training
    def cell_weights(self, c: torch.Tensor) -> torch.Tensor | None:
        """Weights of the cells in the shape loss, (B, L, P) or None for equal weights.

        A weight that depends only on the cell and the condition leaves the flow's optimum (the conditional
        mean velocity of each cell) where it is and only says where the network's capacity goes; the grid
        family weights by how often a cell is hit, so the ~1 % of hit cells are not drowned by empty ones.
        """
        return None

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flow-matching losses for a batch (random times and noise drawn split-invariantly for DDP)."""
        w1, y1 = self.to_units(x, c)
        cond = _log_energy_conditions(c)
        b = x.shape[0]
        t = dist_utils.batch_randn((b, 1), x).sigmoid().reshape(b)  # logit-normal times: mid-path weighted
        zw = dist_utils.batch_randn_like(w1)
        zy = dist_utils.batch_randn_like(y1)
        te = t[:, None]
        zero = x.new_zeros(())
        # a network frozen whole (train/adapt with ``trainable``) learns nothing from its loss: skip its pass
        # (the shape transformer is most of the cost when only the energy network trains)
        energy, shape = zero, zero
        if _learns(self.energy):
            vw = self.energy((1 - te) * zw + te * w1, cond, t)
            energy = ((vw - (w1 - zw)) ** 2).mean(dim=1).mean()
        if _learns(self.shape):
            vy = self.shape((1 - te[:, :, None]) * zy + te[:, :, None] * y1, self.shape_condition(w1), cond, t)
            err = (vy - (y1 - zy)) ** 2
            weights = self.cell_weights(c)
            shape = (err if weights is None else err * weights).mean(dim=(1, 2)).mean()
        return {"loss": shape + self.cfg.energy_weight * energy, "shape": shape, "energy": energy}

    # ------------------------------------------------------------------------------------ sampling
    def sample_units(self, zw: torch.Tensor, zy: torch.Tensor, c: torch.Tensor,
                     steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrate both ODEs from noise to data: layer energies first, then shapes given them.

        ``steps`` solver steps for the shapes (``cfg.solver``: Euler, or the midpoint rule at two network calls
        per step); the energy ODE takes ``cfg.energy_steps`` if set (its MLP costs next to nothing, and
        E_tot/E_inc is the most precise number a calorimeter gives).
        """
        cond = _log_energy_conditions(c)
        method = self.cfg.solver
        w = _integrate(lambda w, t: self.energy(w, cond, t), zw, self.cfg.energy_steps or steps, method)
        given = self.shape_condition(w)
        y = _integrate(lambda y, t: self.shape(y, given, cond, t), zy, steps, method)
        return w, y


def _integrate(field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int,
               method: str) -> torch.Tensor:
    """Fixed-step ODE solve of dx/dt = field(x, t) from t = 0 to 1 (unrolled in the ONNX graph)."""
    b = x.shape[0]
    dt = 1.0 / steps
    for i in range(steps):
        v = field(x, torch.full((b,), i * dt, dtype=x.dtype, device=x.device))
        if method == "midpoint":
            v = field(x + 0.5 * dt * v, torch.full((b,), (i + 0.5) * dt, dtype=x.dtype, device=x.device))
        x = x + dt * v
    return x


def _learns(net: nn.Module) -> bool:
    return any(p.requires_grad for p in net.parameters())


def cfm_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Shape + energy_weight * layer-energy flow-matching loss (calls the model: DDP-safe)."""
    return model(batch[0], batch[1])


class CFMSampler(nn.Module):
    """[z_energies (n_energy), z_cells (n_voxels), conditions] -> cells / E_inc: both ODE loops and the assembly.

    This is the exported ONNX graph (the loop unrolled, ``steps`` Euler steps per ODE).
    """

    def __init__(self, model: ShowerCFM, steps: int) -> None:
        super().__init__()
        self.model = model
        self.steps = int(steps)
        self.n_voxels = model.n_layers * model.patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        n_e = m.n_energy
        latent = n_e + self.n_voxels
        zw, zy, c = x[:, :n_e], x[:, n_e:latent], x[:, latent:]
        w, y = m.sample_units(zw, zy.reshape(-1, m.n_layers, m.patch), c, self.steps)
        return m.assemble(w, y, c)


# -------------------------------------------------------------------------------------- registry entry
class CFMModel(ModelType):
    """``cfm``: flow-matching layer transformer on a cylindrical mesh, meta-trainable and adaptable like the VAE."""

    name: ClassVar[str] = "cfm"
    description: ClassVar[str] = ("conditional flow matching, layer transformer, energies first "
                                  "(cylindrical mesh, geometry one-hot)")
    config: ClassVar[type[CFMConfig]] = CFMConfig
    data_config: ClassVar[type[DataConfig]] = DataConfig
    commands: ClassVar[frozenset[str]] = frozenset({"train", "tune", "meta-train", "adapt", "generate", "export"})
    voxel_orders: ClassVar[tuple[str, ...]] = ("native",)
    solver_steps_field: ClassVar[str | None] = "steps"
    max_parity_samples: ClassVar[int] = 64
    loss = staticmethod(cfm_loss)

    def tiny_config(self) -> CFMConfig:
        return CFMConfig(width=16, depth=1, heads=2, energy_width=16, energy_depth=1, time_frequencies=2, steps=2,
                         energy_param="total_first")

    # the VAE's data, conditions and checkpoint keys: same files, slots and adaptation route
    load_data = VAEModel.load_data
    normalisation_from = VAEModel.normalisation_from

    def build_modules(self, cfg: CFMConfig, norm: Normalisation, *, seed: int = 0) -> dict[str, nn.Module]:
        """The two velocity fields under ``model``; weights from torch's global generator (seeded by the caller)."""
        assert isinstance(norm, EMNormalisation)
        mesh = norm.geometry
        return {"model": ShowerCFM(mesh.n_z, mesh.n_phi * mesh.n_r, norm.cond_width,
                                   norm.conditioning.max_energy_gev * 1000.0, cfg)}

    def build_task(self, cfg: CFMConfig, norm: Normalisation, *, seed: int, trainer: TrainerConfig,
                   total_steps: int, aux: dict[str, nn.Module] | None = None) -> TrainTask:
        model = self.build_modules(cfg, norm, seed=seed)["model"]
        optimizer = make_optimizer(model.parameters(), trainer)
        return SupervisedTask(model, cfm_loss, optimizer, make_scheduler(optimizer, trainer, total_steps),
                              grad_clip=trainer.grad_clip)

    def latent_width(self, cfg: CFMConfig, norm: Normalisation) -> int:
        """One noise value per energy coordinate and one per cell: the ODEs start from noise of the data's shape."""
        mesh = norm.geometry
        return n_energy_coordinates(cfg, mesh.n_z) + mesh.n_voxels

    def sampler(self, modules: dict[str, nn.Module], cfg: CFMConfig, norm: Normalisation, *,
                voxel_order: str = "native") -> CFMSampler:
        return CFMSampler(modules["model"], cfg.steps).eval()

    def output_description(self, norm: Normalisation) -> str:
        return ("multiply by the incident energy (MeV) to get the energy per voxel in MeV; cells below the readout "
                "threshold are already exact zeros")

    def sidecar_fields(self, cfg: CFMConfig, norm: Normalisation, latent_dim: int, voxel_order: str,
                       onnx_file: str) -> dict[str, Any]:
        assert isinstance(norm, EMNormalisation)
        return {
            "n_geometry_slots": norm.conditioning.n_geometry_slots,
            "max_energy_mev": norm.conditioning.max_energy_gev * 1000.0,
            "max_angle_deg": norm.conditioning.max_angle_deg,
            "readout_threshold_mev": cfg.readout_threshold_mev,
            "solver": solver_sidecar(cfg, norm.geometry.n_z),
        }


def solver_sidecar(cfg: CFMConfig, n_layers: int) -> dict[str, Any]:
    """The sidecar's ``solver`` block: how the graph integrates, and which noise columns feed which ODE."""
    n_e = n_energy_coordinates(cfg, n_layers)
    first = f"layer energies ({cfg.energy_param}" + (", hit counts" if cfg.occupancy == "counted" else "") + ", first)"
    return {
        "method": cfg.solver, "steps": cfg.steps, "energy_steps": cfg.energy_steps or cfg.steps,
        "loop": "inside the graph (unrolled at export)",
        "odes": [f"{first}, noise z[0:{n_e}]", f"cells given them, noise z[{n_e}:]"],
        "note": "one Run call per batch gives finished showers; re-export with --steps N for another count",
    }
