"""Conditional 3D WGAN-GP for hadron showers, with an energy regressor ("constrainer").

The networks follow Buhmann et al., "Hadrons, better, faster, stronger" (arXiv:2112.09709):

* :class:`Generator`: (noise, incident energy) -> dense layer -> reshape to a coarse 3D grid ->
  ConvTranspose3d upsampling stages -> ReLU output.  The coarse grid is ``ceil(grid / 2**n_up)`` so the
  upsampled grid covers any requested shape; it is then *cropped* (plain slicing, which exports to ONNX as
  a static Slice) to the exact (n_z, n_y, n_x) given at build time.  The ReLU keeps cell energies >= 0 and
  lets the generator produce exact zeros, which sparse showers need.  The incident energy is also fed to
  every stage as an extra constant channel, so the conditioning cannot be "forgotten" deep in the stack.
* :class:`Critic`: 3D residual blocks, then the flattened features concatenated with the incident energy
  (and the log of the shower's energy sum, which makes an energy-response mismatch easy to see) before
  a dense head.  No batch norm: the gradient penalty is defined per sample, and batch norm couples the
  samples of a batch (Gulrajani et al. 2017, "Improved training of Wasserstein GANs", arXiv:1704.00028,
  recommend layer norm instead, which :class:`Critic` offers as ``GroupNorm(1, C)``).
* :class:`EnergyRegressor`: a small 3D conv net predicting the incident energy from a shower.  It is
  trained first (:class:`RegressorTask`), frozen, and added to the generator loss as
  ``regressor_weight * MSE(regressor(fake), e)`` so generated showers carry the energy they were asked
  for (the "constrainer" of arXiv:2112.09709 and of Erdmann et al. arXiv:1807.01954).
* :func:`gradient_penalty`: ``lambda * (||grad_x critic(x_hat)|| - 1)**2`` on random interpolates between
  real and generated showers (WGAN-GP, arXiv:1704.00028, Eq. 3).  The interpolation weights come from
  ``torch.rand`` on the default generator, so the trainer's checkpointed RNG state covers them.

:class:`WGANTask` performs ``n_critic`` critic updates per generator update (arXiv:1704.00028, Alg. 1):
the trainer's batch is split into ``n_critic`` slices and each critic update uses one slice (with fresh
noise), so one trainer step consumes exactly one batch and the batch order stays a pure function of
(seed, step) for exact resume.  The generator update then uses the conditions of the whole batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.core.trainer import Batch, SupervisedTask
from mlfastsim.showers.models.losses import sorted_hit_mmd, standardised_mmd

GridShape = tuple[int, int, int]
# the energy baseline of the hit head (conditioning/grid.py): (a, b) each (3, n_z, n_y, n_x), the fields
# a + b * log(e), and log_max (n_z, n_y, n_x) or None, the largest log hit energy a cell may take
Baseline = tuple[Any, Any, Any]


# ------------------------------------------------------------------------------------------- configs
class RegressorConfig(StrictModel):
    """The energy regressor ("constrainer"), trained first with ``showers train-regressor``."""

    type: Literal["regressor"] = "regressor"
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=1)
    hidden: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    leaky_slope: float = Field(0.2, ge=0, lt=1)


class WGANConfig(StrictModel):
    """Conditional WGAN-GP; defaults follow arXiv:1704.00028 (lambda=10, n_critic=5, Adam betas (0.5, 0.9))."""

    type: Literal["wgan"] = "wgan"
    latent_dim: int = Field(64, ge=1)
    generator_channels: list[int] = Field(default_factory=lambda: [64, 32, 16], min_length=1)
    critic_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    critic_hidden: int = Field(128, ge=1)
    critic_layer_norm: bool = True  # GroupNorm(1, C), as the WGAN-GP paper advises; its double backward
    # (the gradient penalty) is ~20x slower than the convolutions on CPU: the CPU configs switch it off
    leaky_slope: float = Field(0.2, ge=0, lt=1)
    lambda_gp: float = Field(10.0, ge=0)
    n_critic: int = Field(5, ge=1)
    lr_generator: float = Field(1e-4, gt=0)
    lr_critic: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    # The generator has the occupancy-aware "hits" output (:func:`sample_hits`, hits >= 0.5 MIP).
    # energy_baseline: add the training data's energy baseline (conditioning/grid.py) to the hit head, so
    # the network learns residuals around the right energy scaling; false rebuilds models made before it
    energy_baseline: bool = False
    depth_shift: bool = False  # with the baseline: shift it along z per shower (the interaction depth)
    critic_log_input: bool = True  # the critic sees log(1 + x): hit energies span four decades
    # Unpaired auxiliary generator losses that give the adversarial game a head start on a CPU budget:
    # sorted-hit MMD (the hit-energy spectrum) and an MMD of (e, log(1 + E_sum), log(1 + n_hits)).
    hit_mmd_weight: float = Field(0.0, ge=0)
    summary_mmd_weight: float = Field(0.0, ge=0)
    # the constrainer: 0 disables it; > 0 needs a trained regressor (regressor_checkpoint)
    regressor_weight: float = Field(1.0, ge=0)
    regressor_checkpoint: Path | None = None
    # architecture of that regressor, so a WGAN checkpoint can be rebuilt without the regressor's file
    regressor: RegressorConfig = Field(default_factory=RegressorConfig)


# ------------------------------------------------------------------------------------------- helpers
def check_grid_shape(grid_shape: Sequence[int]) -> GridShape:
    """A 3-tuple of positive ints, or a one-line :class:`ConfigError`."""
    shape = tuple(int(s) for s in grid_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ConfigError(f"grid shape {tuple(grid_shape)} is not three positive sizes (n_z, n_y, n_x)",
                          field="grid", fix="give the cropped grid as [n_z, n_y, n_x]")
    return shape  # type: ignore[return-value]


def check_batch(batch: Batch | None, grid_shape: GridShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack ``(x, e)`` and refuse showers of another grid shape with a one-line :class:`DataError`."""
    if batch is None or len(batch) < 2:
        raise DataError("a hadron-shower batch must be (showers, incident energies)", field="data",
                        fix="train on a hadron-shower data set")
    x, e = batch[0], batch[1]
    if tuple(x.shape[1:]) != tuple(grid_shape):
        raise DataError(f"showers have grid shape {tuple(x.shape[1:])}, the model was built for {tuple(grid_shape)}",
                        field="data", fix="crop the data to the model's grid (data.crop) or use a model of that grid")
    return x, e.reshape(-1).to(x.dtype)


def energy_channel(e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``e`` (B,) broadcast to a constant channel (B, 1, *like.shape[2:]); ONNX-friendly (no dynamic expand)."""
    return e.reshape(-1, 1, 1, 1, 1) * torch.ones_like(like[:, :1])


def log_energy_sum(x: torch.Tensor) -> torch.Tensor:
    """log(1 + sum of cells) per sample and channel: (B, C, ...) -> (B, C); x >= 0 so it is differentiable."""
    return torch.log1p(x.flatten(2).sum(dim=2).clamp_min(0.0))


def summary_features(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Per-shower (e, log(1 + E_sum), log(1 + n_hits)) (B, 3), for an MMD of the conditional distribution.

    The hit "count" is ``sum(x / (x + 0.5))`` (a hit of >= 0.5 MIP counts 0.5-1): smooth, so gradients reach
    straight-through hits without the 1/x blow-up of an exact count.
    """
    flat = x.flatten(1)
    return torch.stack([e.reshape(-1).to(x.dtype), torch.log1p(flat.sum(1)),
                        torch.log1p((flat / (flat + 0.5)).sum(1))], dim=1)


def seeded_build(seed: int, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Build modules with a seeded initialisation without touching the global RNG streams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _conv_out(n: int, stride: int) -> int:
    """Output size of a 3-wide, padding-1 convolution with ``stride``."""
    return (n + 2 - 3) // stride + 1


# ------------------------------------------------------------------------------------------- hit head
# A cell of a pion shower is either empty (>95 % of the 30k cells) or holds a hit of >= 0.5 MIP whose energy
# spans four decades (MIP-like track segments to dense EM cores).  A decoder that outputs one non-negative
# number per cell learns the cell's *mean*: a diffuse haze below the readout threshold.  The "hits" head
# instead outputs per cell a hit logit and a location and log-width of log(E) (a normal truncated at the
# threshold), i.e. a factorised likelihood given the latent code; a shower is then *sampled*: hit where
# u1 < p, energy from the truncated normal's quantile at u2.  The uniforms come from z itself
# (:func:`hash_uniforms`), so the sampler stays one deterministic function [z, e] -> cells that exports to
# ONNX, gives the same shower for the same z, and needs no per-cell noise input.

HIT_CHANNELS = 3  # hit logit, location of log E, log width of log E
_NOISE_SEED = 0x48495453  # fixed: the z -> uniforms map is part of the architecture, never trained or saved
_NOISE_SCALE = 1000.0
_LOG_SIGMA_RANGE = (-3.0, 1.0)
_MAX_LOG_ENERGY = math.log(1.0e4)  # 10^4 MIP per cell: far above any hadron-shower cell


def noise_weight(latent_dim: int, n_cells: int) -> torch.Tensor:
    """The fixed float64 (latent_dim, n_cells) projection behind :func:`hash_uniforms` (seeded, not stored)."""
    g = torch.Generator().manual_seed(_NOISE_SEED)
    return torch.randn(latent_dim, n_cells, generator=g, dtype=torch.float64) * _NOISE_SCALE


def hash_uniforms(z: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (B, n_cells) U(0, 1) fields from z: the fractional parts of a large random projection of z.

    ``t = z @ W`` with W ~ N(0, 1000^2) varies by many periods between any two cells or two codes, so
    ``frac(t)`` is uniform and (empirically) independent across cells and showers; ``frac(8192 t)`` reads
    further digits of the same number for a second field.  Computed in float64 so that torch and ONNX
    Runtime agree to ~1e-10 (a hit decision flips only when u1 lies that close to p).
    """
    t = z.to(torch.float64) @ weight
    u1 = t - torch.floor(t)
    t2 = u1 * 8192.0
    u2 = t2 - torch.floor(t2)
    return u1.to(z.dtype), u2.to(z.dtype)


def _probit(v: torch.Tensor) -> torch.Tensor:
    """Tukey-lambda approximation of the normal quantile (|error| < 0.01 for 1e-4 < v < 1 - 1e-4).

    erfinv has no ONNX operator; the approximation is plain powers and stays bounded in the tails.
    """
    return 4.91 * (v.pow(0.14) - (1.0 - v).pow(0.14))


def _hit_parts(params: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(B, 3, ...) head -> logit, location, width of log E and log(threshold)."""
    logit, loc = params[:, 0], params[:, 1]
    sigma = torch.exp(params[:, 2].clamp(*_LOG_SIGMA_RANGE))
    return logit, loc, sigma, math.log(threshold)


def sample_hits(params: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, threshold: float, *,
                straight_through: bool = False, log_max: torch.Tensor | None = None) -> torch.Tensor:
    """A shower (B, ...) from the head (B, 3, ...) and uniforms (B, ...): hit if u1 < sigmoid(logit), its
    energy ``exp(loc + sigma * probit(v))`` with v uniform above the threshold's quantile (inverse-CDF
    sampling of the truncated normal), so every hit is >= ``threshold``.  ``log_max`` (broadcastable to
    the cells): also truncate above, at log E = log_max; a log-normal's upper tail is far heavier than a
    hadron shower's hottest cells (with a log-width ~2 its 4-sigma hits were 10^4 MIP against <= 550 in
    data, and a few such cells made the energy sum's spread five times too wide).

    ``straight_through``: the hit indicator's gradient is that of its probability (Bengio et al. 2013), so
    an adversarial loss can move hit probabilities; the energies are reparametrised and differentiable.
    """
    logit, loc, sigma, lo = _hit_parts(params, threshold)
    p = torch.sigmoid(logit)
    hit = (u1 < p).to(params.dtype)
    if straight_through:
        hit = hit + p - p.detach()
    f_lo = 0.5 * (1.0 + torch.erf((lo - loc) / (sigma * math.sqrt(2.0))))
    f_hi = 1.0 if log_max is None else 0.5 * (1.0 + torch.erf((log_max - loc) / (sigma * math.sqrt(2.0))))
    v = (f_lo + u2 * (f_hi - f_lo)).clamp(1e-6, 1.0 - 1e-6)
    y = (loc + sigma * _probit(v)).clamp(lo, _MAX_LOG_ENERGY)
    if log_max is not None:
        y = torch.minimum(y, log_max)
    return hit * torch.exp(y)


def hit_nll(params: torch.Tensor, x: torch.Tensor, threshold: float, *, log_max: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Negative log-likelihood (B,) of showers ``x`` under the head: Bernoulli occupancy for every cell plus,
    for hit cells, a normal in log E truncated at log(threshold) (and above at ``log_max``, as
    :func:`sample_hits`).  Summed over cells (nats per shower).

    Cells below the threshold (a sample read out without one) count as hits at the threshold.
    """
    logit, loc, sigma, lo = _hit_parts(params, threshold)
    occ = (x > 0).to(x.dtype)
    bce = F.binary_cross_entropy_with_logits(logit, occ, reduction="none")
    y = torch.log(x.clamp_min(threshold))
    zed = (y - loc) / sigma
    # truncation: divide the density by P(log E > lo) = Phi((loc - lo) / sigma), or by
    # P(lo < log E < hi) = Phi(A) - Phi(B), A = (loc - lo) / sigma > B = (loc - hi) / sigma, in logs
    log_mass = torch.special.log_ndtr((loc - lo) / sigma)
    if log_max is not None:
        y = torch.minimum(y, log_max)
        zed = (y - loc) / sigma
        ratio = (torch.special.log_ndtr((loc - log_max) / sigma) - log_mass).clamp_max(-1e-6)
        log_mass = log_mass + torch.log1p(-torch.exp(ratio))
    nll_e = 0.5 * zed.pow(2) + torch.log(sigma) + 0.5 * math.log(2 * math.pi) + log_mass
    return (bce + occ * nll_e).flatten(1).sum(dim=1)


# A hadron shower starts where the pion first interacts, an exponential depth that differs from shower to
# shower by several layers; the baseline is the *mean* profile.  With only cell-by-cell residuals the
# generated showers' centres of gravity scatter too little around it (hadron_study: SP of the CoG depth
# ~0.35-0.39 at every budget while the mean profile's SP was 0.001).  ``depth_shift`` lets the generator
# move the whole baseline along z by a per-shower amount from (z, e), so the start depth is one number.
MAX_SHIFT_LAYERS = 12.0
SHIFT_GAIN = 10.0


def shifted_along_z(field: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``field`` (C, n_z, n_y, n_x) read at layer ``l - shift`` (B,) for every layer l, linearly
    interpolated between layers and clamped to the first and last layer: (B, C, n_z, n_y, n_x).

    A positive shift moves the shower deeper.  Differentiable in ``shift``; gathers on static shapes, so it
    exports to ONNX.
    """
    c, nz, ny, nx = field.shape
    pos = (torch.arange(nz, dtype=field.dtype, device=field.device)[None, :] - shift[:, None]).clamp(0.0, nz - 1.0)
    i0 = torch.floor(pos).detach()
    w = (pos - i0).reshape(-1, 1, nz, 1, 1)
    i0 = i0.long()
    i1 = (i0 + 1).clamp_max(nz - 1)
    flat = field.reshape(c, nz, ny * nx)
    lo = flat[:, i0].permute(1, 0, 2, 3).reshape(-1, c, nz, ny, nx)  # (B, C, n_z, cells)
    hi = flat[:, i1].permute(1, 0, 2, 3).reshape(-1, c, nz, ny, nx)
    return lo + w * (hi - lo)


# ------------------------------------------------------------------------------------------- networks
class Generator(nn.Module):
    """(z, e) -> shower of exactly ``grid_shape``; also the BIB-AE decoder.

    ``output`` "hits" (default): the last layer gives the 3-channel hit head and the shower is sampled from
    it with uniforms derived from z (:func:`sample_hits`); "relu": one ReLU channel (the cell's value).
    ``channels[0]`` is the width of the coarse grid after the dense layer; each further entry is one
    ConvTranspose3d(kernel 4, stride 2, padding 1) stage that doubles every axis (the checkerboard-free
    kernel/stride ratio of Odena et al. 2016), followed by a 3x3x3 convolution (1x1x1 after the last
    stage with the hits output).  ``baseline`` (a, b): the hit head becomes ``a + b * log(e) + network``,
    the training data's energy dependence per layer and ring (conditioning/grid.py:
    :func:`~mlfastsim.showers.conditioning.grid.fit_energy_baseline`), so the network starts from showers
    of the right size at every energy and only learns the residuals.
    """

    def __init__(self, grid_shape: Sequence[int], latent_dim: int, channels: Sequence[int],
                 leaky_slope: float = 0.2, *, output: str = "hits", hit_threshold: float = 0.5,
                 baseline: Baseline | None = None, depth_shift: bool = False) -> None:
        super().__init__()
        if output not in ("relu", "hits"):
            raise ConfigError(f"unknown generator output {output!r}", field="model.output", fix="use relu or hits")
        self.grid_shape = check_grid_shape(grid_shape)
        self.latent_dim = int(latent_dim)
        self.output = output
        self.hit_threshold = float(hit_threshold)
        self.channels = [int(c) for c in channels]
        factor = 2 ** (len(self.channels) - 1)
        self.base = tuple(math.ceil(s / factor) for s in self.grid_shape)
        self.fc = nn.Linear(self.latent_dim + 1, self.channels[0] * math.prod(self.base))
        self.act = nn.LeakyReLU(leaky_slope)
        self.up = nn.ModuleList()
        self.refine = nn.ModuleList()
        # hits: the head's fields (p, location, width) are smooth given z, so at full resolution only 1x1x1
        # convolutions follow the last upsampling (3x3x3 there is ~60 % of a CPU step)
        k_last = 1 if output == "hits" else 3
        pairs = list(itertools.pairwise(self.channels))
        for i, (c_in, c_out) in enumerate(pairs):
            k = k_last if i == len(pairs) - 1 else 3
            self.up.append(nn.ConvTranspose3d(c_in + 1, c_out, kernel_size=4, stride=2, padding=1))
            self.refine.append(nn.Conv3d(c_out, c_out, kernel_size=k, padding=k // 2))
        n_out = HIT_CHANNELS if output == "hits" else 1
        self.out = nn.Conv3d(self.channels[-1] + 1, n_out, kernel_size=k_last, padding=k_last // 2)
        self.has_baseline = baseline is not None
        if baseline is not None:
            if output != "hits":
                raise ConfigError("the energy baseline is one of the hit head's", field="model.energy_baseline",
                                  fix="use output: hits, or set energy_baseline: false")
            a, b = (torch.as_tensor(v, dtype=torch.float32) for v in baseline[:2])
            if tuple(a.shape) != (HIT_CHANNELS, *self.grid_shape) or a.shape != b.shape:
                raise ConfigError(f"energy baseline of shape {tuple(a.shape)} does not fit grid {self.grid_shape}",
                                  field="model.energy_baseline", fix="build the model from its normalisation")
            # from the normalisation (which travels in the checkpoint), so not saved with the weights
            self.register_buffer("base_a", a, persistent=False)
            self.register_buffer("base_b", b, persistent=False)
            if baseline[2] is not None:
                self.register_buffer("log_max", torch.as_tensor(baseline[2], dtype=torch.float32), persistent=False)
        self.has_log_max = baseline is not None and baseline[2] is not None
        self.depth_shift = bool(depth_shift) and baseline is not None
        if self.depth_shift:
            # one number per shower from (z, e): how many layers deeper (or shallower) the baseline starts,
            # at most MAX_SHIFT_LAYERS either way.  It starts as a ~3-layer spread driven by z (a zero start
            # stays at zero: z carries no depth while the decoder ignores it, and the decoder ignores z while
            # z carries none), and SHIFT_GAIN makes Adam's steps on it SHIFT_GAIN times larger
            self.shift_head = nn.Linear(self.latent_dim + 1, 1)
            with torch.no_grad():
                self.shift_head.weight.normal_(0.0, 0.25 / SHIFT_GAIN / math.sqrt(self.latent_dim))
                self.shift_head.weight[:, -1].zero_()
                self.shift_head.bias.zero_()
        if output == "hits":
            with torch.no_grad():  # without a baseline: start sparse (p ~ 2 %) with MIP-like hits, not p = 0.5
                self.out.bias.copy_(torch.zeros(3) if baseline is not None else torch.tensor([-4.0, 0.5, -0.5]))
            # fixed, seeded, not saved (persistent=False): rebuilt identically with the architecture
            self.register_buffer("noise_weight", noise_weight(self.latent_dim, math.prod(self.grid_shape)),
                                 persistent=False)

    def params(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The raw output (B, C, n_z, n_y, n_x): C = 3 hit-head channels, or 1 pre-ReLU channel."""
        e = e.reshape(-1)
        h = self.act(self.fc(torch.cat([z, e[:, None]], dim=1)))
        h = h.reshape(-1, self.channels[0], *self.base)
        for up, refine in zip(self.up, self.refine, strict=True):
            h = self.act(up(torch.cat([h, energy_channel(e, h)], dim=1)))
            h = self.act(refine(h))
        h = self.out(torch.cat([h, energy_channel(e, h)], dim=1))
        nz, ny, nx = self.grid_shape
        h = h[:, :, :nz, :ny, :nx]
        if self.has_baseline:
            log_e = torch.log(e.clamp_min(1e-6)).reshape(-1, 1, 1, 1, 1)
            if self.depth_shift:
                pre = SHIFT_GAIN * self.shift_head(torch.cat([z, e[:, None]], dim=1))[:, 0]
                shift = MAX_SHIFT_LAYERS * torch.tanh(pre)
                h = h + shifted_along_z(self.base_a, shift) + shifted_along_z(self.base_b, shift) * log_e
            else:
                h = h + self.base_a + self.base_b * log_e
        return h

    def sample_from(self, params: torch.Tensor, z: torch.Tensor, *, straight_through: bool = False) -> torch.Tensor:
        """The shower for a head output of code ``z`` (uniforms from z, see :func:`hash_uniforms`)."""
        if self.output == "relu":
            return F.relu(params[:, 0])
        u1, u2 = hash_uniforms(z, self.noise_weight)
        shape = (-1, *self.grid_shape)
        return sample_hits(params, u1.reshape(shape), u2.reshape(shape), self.hit_threshold,
                           straight_through=straight_through, log_max=self.log_max if self.has_log_max else None)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-shower negative log-likelihood of ``x`` (the "hits" head only)."""
        if self.output != "hits":
            raise ConfigError("a likelihood needs the hits output", field="model.output", fix="set output: hits")
        return hit_nll(params, x, self.hit_threshold, log_max=self.log_max if self.has_log_max else None)

    def forward(self, z: torch.Tensor, e: torch.Tensor, *, straight_through: bool = False) -> torch.Tensor:
        """(z, e) -> shower (B, n_z, n_y, n_x) in network units: a ReLU grid or sampled hits."""
        return self.sample_from(self.params(z, e), z, straight_through=straight_through)


class ResBlock3d(nn.Module):
    """conv-act-conv residual block; ``stride`` 2 halves the grid (1x1x1 strided conv on the skip path)."""

    def __init__(self, c_in: int, c_out: int, stride: int, layer_norm: bool, leaky_slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1)
        self.conv2 = nn.Conv3d(c_out, c_out, kernel_size=3, padding=1)
        self.norm1: nn.Module = nn.GroupNorm(1, c_out) if layer_norm else nn.Identity()
        self.norm2: nn.Module = nn.GroupNorm(1, c_out) if layer_norm else nn.Identity()
        self.skip: nn.Module = (nn.Conv3d(c_in, c_out, kernel_size=1, stride=stride)
                                if stride != 1 or c_in != c_out else nn.Identity())
        self.act = nn.LeakyReLU(leaky_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


class Critic(nn.Module):
    """WGAN critic: (x, e) -> (B,) unbounded score.  ``in_channels`` 2 is the BIB-AE's main critic.

    x is (B, n_z, n_y, n_x) for one channel, or (B, C, n_z, n_y, n_x).  The first block keeps the
    resolution, every further one halves it; the flattened features (exact size computed at build time,
    so any grid works and the head keeps positional information) are concatenated with ``e`` and the log
    energy sum of every input channel before the dense head.
    """

    def __init__(self, grid_shape: Sequence[int], channels: Sequence[int], hidden: int = 128, *,
                 in_channels: int = 1, layer_norm: bool = True, leaky_slope: float = 0.2) -> None:
        super().__init__()
        self.grid_shape = check_grid_shape(grid_shape)
        self.in_channels = int(in_channels)
        chans = [int(c) for c in channels]
        blocks = []
        c_prev = self.in_channels
        size = list(self.grid_shape)
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            blocks.append(ResBlock3d(c_prev, c, stride, layer_norm, leaky_slope))
            size = [_conv_out(s, stride) for s in size]
            c_prev = c
        self.blocks = nn.Sequential(*blocks)
        n_feat = c_prev * math.prod(size) + 1 + self.in_channels
        self.head = nn.Sequential(nn.Linear(n_feat, hidden), nn.LeakyReLU(leaky_slope), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x[:, None]
        h = self.blocks(x).flatten(1)
        h = torch.cat([h, e.reshape(-1, 1).to(h.dtype), log_energy_sum(x)], dim=1)
        return self.head(h)[:, 0]


class EnergyRegressor(nn.Module):
    """The constrainer: shower (B, n_z, n_y, n_x) -> incident energy / 100 GeV (B,).

    Strided 3x3x3 convolutions then a dense head that also sees log(1 + energy sum), the single most
    informative feature for the incident energy of a (non-compensating) calorimeter shower.
    """

    def __init__(self, grid_shape: Sequence[int], cfg: RegressorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RegressorConfig()
        self.grid_shape = check_grid_shape(grid_shape)
        layers: list[nn.Module] = []
        c_prev, size = 1, list(self.grid_shape)
        for i, c in enumerate(self.cfg.channels):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv3d(c_prev, c, kernel_size=3, stride=stride, padding=1),
                       nn.LeakyReLU(self.cfg.leaky_slope)]
            size = [_conv_out(s, stride) for s in size]
            c_prev = c
        self.features = nn.Sequential(*layers)
        n_feat = c_prev * math.prod(size) + 1
        self.head = nn.Sequential(nn.Linear(n_feat, self.cfg.hidden), nn.LeakyReLU(self.cfg.leaky_slope),
                                  nn.Linear(self.cfg.hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None] if x.dim() == 4 else x
        h = torch.cat([self.features(x).flatten(1), log_energy_sum(x)], dim=1)
        return self.head(h)[:, 0]


# ------------------------------------------------------------------------------------------- losses
def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, e: torch.Tensor | None = None,
                     lambda_gp: float = 10.0) -> torch.Tensor:
    """WGAN-GP penalty ``lambda * E[(||grad critic(x_hat)||_2 - 1)^2]`` (arXiv:1704.00028, Eq. 3).

    ``x_hat = a * real + (1 - a) * fake`` with one ``a ~ U(0, 1)`` per sample drawn by ``torch.rand`` on the
    default generator (checkpointed by the trainer, so resume is exact).  ``critic`` is called as
    ``critic(x_hat, e)``, or ``critic(x_hat)`` when ``e`` is None (the BIB-AE latent critic).  The graph is
    kept (``create_graph``) so the penalty trains the critic.
    """
    # drawn per global-batch sample under torchrun (core.distributed), plain torch.rand otherwise
    alpha = dist_utils.batch_rand_like(real.new_empty((real.shape[0],) + (1,) * (real.dim() - 1)))
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    score = critic(x_hat) if e is None else critic(x_hat, e)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    # eps inside the sqrt: the norm's derivative is finite even where the gradient vanishes
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + 1e-12)
    return lambda_gp * (norm - 1).pow(2).mean()


def _eval_generator(seed: int) -> torch.Generator:
    """A private, freshly seeded generator for validation noise: every evaluation draws the same noise and
    the training RNG streams are untouched (so evaluation frequency cannot change the trained weights)."""
    return torch.Generator().manual_seed(seed)


def _randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batch-first noise; without a private generator it is drawn so a data-parallel step (torchrun) gives
    each sample the noise one process would (:func:`mlfastsim.core.distributed.batch_randn`)."""
    if generator is None:
        return dist_utils.batch_randn(shape, like)
    return torch.randn(*shape, generator=generator).to(device=like.device, dtype=like.dtype)


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


class _CriticFrozen:
    """Context manager: no parameter gradients for ``module`` during the generator step (saves the work)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.module.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        self.module.requires_grad_(True)


# ------------------------------------------------------------------------------------------- tasks
def regressor_loss(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """MSE between predicted and true incident energy (both / 100 GeV); calls the model (DDP-safe)."""
    x, e = batch[0], batch[1].reshape(-1).to(batch[0].dtype)
    pred = model(x)
    loss = F.mse_loss(pred, e)
    return {"loss": loss, "mae": (pred - e).abs().mean().detach()}


class RegressorTask(SupervisedTask):
    """Trains the :class:`EnergyRegressor` on MSE(pred, e); a :class:`SupervisedTask` (so DDP works)."""

    def __init__(self, regressor: EnergyRegressor, cfg: RegressorConfig) -> None:
        opt = torch.optim.Adam(regressor.parameters(), lr=cfg.lr, betas=cfg.betas)
        super().__init__(regressor, regressor_loss, opt)
        self.grid_shape = regressor.grid_shape

    def modules(self) -> dict[str, nn.Module]:
        return {"regressor": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"regressor": self.optimizer}

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        check_batch(batch, self.grid_shape)
        return super().train_step(batch, step)

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        check_batch(batch, self.grid_shape)
        return super().eval_step(batch)


class WGANTask:
    """WGAN-GP training with an optional frozen energy constrainer.

    Per trainer step (one batch of B showers): ``n_critic`` critic updates, update i on slice
    ``i mod k`` of the batch split into ``k = min(n_critic, B)`` slices, each with fresh noise and the
    conditions of that slice; then one generator update on fresh noise with the conditions of the whole
    batch.  Critic loss ``C(fake) - C(real) + GP``; generator loss ``-C(fake) + regressor_weight *
    MSE(regressor(fake), e)``.  Logged ``loss`` is the critic's Wasserstein estimate ``C(real) - C(fake)``
    (the quantity that tracks sample quality in WGAN training, arXiv:1704.00028).

    Data-parallel under torchrun without the DDP wrapper (DDP does not support the double backward of the
    gradient penalty): every optimiser step is preceded by :func:`~mlfastsim.core.distributed.all_reduce_grads`,
    which averages the gradients over ranks (a no-op in one process).
    """

    def __init__(self, generator: Generator, critic: Critic, cfg: WGANConfig, *,
                 regressor: nn.Module | None = None, seed: int = 0) -> None:
        self.generator, self.critic, self.cfg = generator, critic, cfg
        self.grid_shape = generator.grid_shape
        self.regressor = _freeze(regressor) if regressor is not None else None
        self.seed = seed
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator, betas=cfg.betas)
        self.opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr_critic, betas=cfg.betas)

    def wrap(self, wrapper: Any) -> None:
        """Data parallel without the DDP ``wrapper``: gradients are averaged by ``all_reduce_grads``."""

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"generator": self.generator, "critic": self.critic}
        if self.regressor is not None:
            mods["regressor"] = self.regressor  # frozen, saved so the checkpoint records the constrainer used
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "critic": self.opt_c}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def _c(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The critic on the representation it judges: log(1 + x) when ``critic_log_input``."""
        return self.critic(torch.log1p(x.clamp_min(0.0)) if self.cfg.critic_log_input else x, e)

    def _critic_view(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(x.clamp_min(0.0)) if self.cfg.critic_log_input else x

    def _aux(self, real: torch.Tensor, fake: torch.Tensor, e: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unpaired auxiliary generator terms (sorted-hit MMD, summary MMD); empty when their weights are 0."""
        out: dict[str, torch.Tensor] = {}
        if self.cfg.hit_mmd_weight > 0:
            out["hit_mmd"] = sorted_hit_mmd(real, fake, 400, log=True)
        if self.cfg.summary_mmd_weight > 0:
            out["summary_mmd"] = standardised_mmd(summary_features(real, e), summary_features(fake, e))
        return out

    def _constraint(self, fake: torch.Tensor, e: torch.Tensor) -> torch.Tensor | None:
        if self.regressor is None or self.cfg.regressor_weight == 0:
            return None
        self.regressor.eval()
        return F.mse_loss(self.regressor(fake), e)

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        x, e = check_batch(batch, self.grid_shape)
        self.generator.train()
        self.critic.train()
        n = x.shape[0]
        slices = torch.arange(n, device=x.device).tensor_split(min(self.cfg.n_critic, n))
        logs: dict[str, float] = {}
        for i in range(self.cfg.n_critic):
            idx = slices[i % len(slices)]
            xr, er = x[idx], e[idx]
            with torch.no_grad():
                fake = self.generator(_randn((len(idx), self.cfg.latent_dim), x), er)
            c_real = self._c(xr, er).mean()
            c_fake = self._c(fake, er).mean()
            gp = gradient_penalty(self.critic, self._critic_view(xr), self._critic_view(fake), er, self.cfg.lambda_gp)
            loss_c = c_fake - c_real + gp
            self.opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            dist_utils.all_reduce_grads(self.critic.parameters())
            self.opt_c.step()
        logs.update(critic_loss=float(loss_c.detach()), gp=float(gp.detach()),
                    loss=float((c_real - c_fake).detach()))
        with _CriticFrozen(self.critic):
            fake = self.generator(_randn((n, self.cfg.latent_dim), x), e, straight_through=True)
            adv = -self._c(fake, e).mean()
            reg = self._constraint(fake, e)
            loss_g = adv if reg is None else adv + self.cfg.regressor_weight * reg
            aux = self._aux(x, fake, e)
            for key, weight in (("hit_mmd", self.cfg.hit_mmd_weight), ("summary_mmd", self.cfg.summary_mmd_weight)):
                if key in aux:
                    loss_g = loss_g + weight * aux[key]
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            dist_utils.all_reduce_grads(self.generator.parameters())
            self.opt_g.step()
        logs.update(generator_loss=float(loss_g.detach()), generator_adv=float(adv.detach()),
                    **{k: float(v.detach()) for k, v in aux.items()})
        if reg is not None:
            logs["regressor_mse"] = float(reg.detach())
        return logs

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        x, e = check_batch(batch, self.grid_shape)
        self.generator.eval()
        self.critic.eval()
        fake = self.generator(_randn((x.shape[0], self.cfg.latent_dim), x, _eval_generator(self.seed)), e)
        c_real, c_fake = self._c(x, e).mean(), self._c(fake, e).mean()
        sum_real, sum_fake = x.flatten(1).sum(1).mean(), fake.flatten(1).sum(1).mean()
        hits_real, hits_fake = (x > 0).flatten(1).sum(1).float().mean(), (fake > 0).flatten(1).sum(1).float().mean()
        out = {"loss": float(c_real - c_fake), "critic_real": float(c_real), "critic_fake": float(c_fake),
               "esum_ratio": float(sum_fake / sum_real.clamp_min(1e-12)),
               "nhits_ratio": float(hits_fake / hits_real.clamp_min(1.0)),
               **{k: float(v) for k, v in self._aux(x, fake, e).items()}}
        reg = self._constraint(fake, e)
        if reg is not None:
            out["regressor_mse"] = float(reg)
        return out


class WGANSampler(nn.Module):
    """Generation/export module: (B, latent_dim + 1) = [z, e] -> (B, n_z * n_y * n_x) in scaled units."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator
        self.latent_dim = generator.latent_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        z, e = inputs[:, : self.latent_dim], inputs[:, self.latent_dim]
        return self.generator(z, e).flatten(1)
