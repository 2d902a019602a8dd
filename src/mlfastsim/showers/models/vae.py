"""The Par04 / MetaHEP conditional VAE, and its registry entry (``model.type: vae``).

Encoder: [voxels, conditions] -> 100-50-20-14 (batch norm + leaky ReLU) -> (mu, log sigma^2) of a
10-dimensional latent; decoder mirrored: [z, conditions] -> 14-20-50-100 -> voxels with a sigmoid.
Loss: binary cross-entropy summed over voxels (inputs are energies / E_inc in [0, 1]) plus the KL
divergence to N(0, 1), both averaged over the batch.  Every size comes from :class:`VAEConfig`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.special import expit
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.config import StrictModel
from mlfastsim.core.trainer import SupervisedTask, TrainerConfig, TrainTask, make_optimizer, make_scheduler
from mlfastsim.showers.conditioning.base import TrainingData
from mlfastsim.showers.conditioning.em import DataConfig, EMNormalisation, load_training_data
from mlfastsim.showers.models.contract import ModelType, Normalisation
from mlfastsim.showers.models.layout import voxel_permutation

#: CaloChallenge readout threshold (15.15 keV): the VAE's default zero suppression
READOUT_THRESHOLD_MEV = 15.15e-3

# Below this many output values, GeneratorModule.generate_into finishes on the calling thread (see there).
_SERIAL_ELEMENTS = 1 << 18


class VAEConfig(StrictModel):
    """The Par04 VAE: encoder 100-50-20-14 with batch norm and leaky ReLU, latent 10, mirrored decoder."""

    type: Literal["vae"] = "vae"
    encoder_sizes: list[int] = Field(default_factory=lambda: [100, 50, 20, 14])
    latent_dim: int = Field(10, ge=1)
    batch_norm: bool = True
    leaky_relu_slope: float = 0.01
    kl_weight: float = Field(1.0, ge=0.0)
    #: generated cells below this energy (MeV) are exact zeros, in torch generation and inside the ONNX graph
    #: (0 = off).  A sigmoid never writes an exact zero, so without it every cell counts as hit.  Left out of
    #: dumps at its default, so a config, checkpoint or shipped file written before it existed is unchanged
    #: byte for byte (``scripts/make_pretrained.py --check``) and loads with zero suppression on.
    readout_threshold_mev: float = Field(READOUT_THRESHOLD_MEV, ge=0.0,
                                         exclude_if=lambda v: v == READOUT_THRESHOLD_MEV)


def _mlp(sizes: list[int], cfg: VAEConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers.append(nn.Linear(n_in, n_out))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.LeakyReLU(cfg.leaky_relu_slope))
    return nn.Sequential(*layers)


class ShowerVAE(nn.Module):
    """Conditional VAE over flattened showers (N, n_voxels) with conditions (N, n_conditions)."""

    def __init__(self, n_voxels: int, n_conditions: int, cfg: VAEConfig) -> None:
        super().__init__()
        self.n_voxels = n_voxels
        self.n_conditions = n_conditions
        self.latent_dim = cfg.latent_dim
        self.kl_weight = cfg.kl_weight
        enc = [n_voxels + n_conditions, *cfg.encoder_sizes]
        self.encoder = _mlp(enc, cfg)
        self.to_mu = nn.Linear(enc[-1], cfg.latent_dim)
        self.to_logvar = nn.Linear(enc[-1], cfg.latent_dim)
        dec = [cfg.latent_dim + n_conditions, *reversed(cfg.encoder_sizes)]
        self.decoder = _mlp(dec, cfg)
        self.to_voxels = nn.Linear(dec[-1], n_voxels)

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x, c], dim=1))
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Normalised showers in [0, 1] from latent codes and conditions."""
        return torch.sigmoid(self.to_voxels(self.decoder(torch.cat([z, c], dim=1))))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, c)
        # per-sample noise independent of how a data-parallel step splits the batch (see core.distributed)
        z = mu + dist_utils.batch_randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, c), mu, logvar

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate normalised showers for conditions ``c`` (z ~ N(0, 1)); eval mode for batch norm."""
        was_training = self.training
        self.eval()
        z = torch.randn(c.shape[0], self.latent_dim, generator=generator, device=c.device, dtype=c.dtype)
        out = self.decode(z, c)
        self.train(was_training)
        return out


def vae_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """BCE summed over voxels + kl_weight * KL, averaged over the batch (calls the model: DDP-safe)."""
    x, c = batch[0], batch[1]
    recon, mu, logvar = model(x, c)
    bce = F.binary_cross_entropy(recon, x, reduction="none").sum(dim=1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    inner = model.module if hasattr(model, "module") else model
    return {"loss": bce + inner.kl_weight * kl, "bce": bce, "kl": kl}


# -------------------------------------------------------------------------------------- generator
class GeneratorModule(nn.Module):
    """A model's generator as one function of one input: [z, E/MAX_E, angle/MAX_A, one-hot] -> [0, 1].

    The single concatenated input is Par04's contract; the last layer is kept apart from the hidden
    stack so :meth:`generate_into` can write its matrix product straight into the caller's buffer.

    Zero suppression (``threshold_mev > 0``): a cell whose energy ``out * E`` would fall below the readout
    threshold is written as exactly 0, with ``E = input[:, latent_dim] * max_energy_mev``; it is part of the
    forward pass, so the ONNX graph a C++ caller runs zero-suppresses too.  The comparison is ``out <
    threshold / E`` in every path (forward, both ``generate_into`` routes), so torch and ONNX agree.
    """

    def __init__(self, hidden: nn.Module, output: nn.Linear, *, latent_dim: int, n_conditions: int,
                 threshold_mev: float = 0.0, max_energy_mev: float = 1.0) -> None:
        super().__init__()
        if output.bias is None:
            raise ValueError("the generator's output layer needs a bias (Par04 decoders have one)")
        self.hidden = hidden
        self.output = output
        self.latent_dim = latent_dim
        self.n_conditions = n_conditions
        self.n_voxels = output.out_features
        self.threshold_mev = float(threshold_mev)
        self.max_energy_mev = float(max_energy_mev)

    def _limit(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1) output value below which a cell is not read out: threshold / E_inc."""
        e = x[:, self.latent_dim:self.latent_dim + 1] * self.max_energy_mev
        return self.threshold_mev / e.clamp_min(1e-30)

    @property
    def input_width(self) -> int:
        return self.latent_dim + self.n_conditions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(self.output(self.hidden(x)))
        if self.threshold_mev > 0:
            out = torch.where(out < self._limit(x), torch.zeros_like(out), out)
        return out

    def generate_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` written into ``out`` (no output allocation; call under ``torch.inference_mode``).

        Same operations as :meth:`forward` (the addmm that ``nn.Linear`` runs, then the sigmoid), done
        in place: a fresh 160 kB-per-shower output costs as much in page faults as the product itself.

        Small outputs (a few showers; Geant4 asks for one at a time) take another route: the product via
        GEMV for one row, then bias and sigmoid in one numpy/scipy pass on the calling thread.  torch's
        OpenMP-parallel elementwise ops (and MKL's GEMM with one row) wait for a descheduled worker
        thread whenever the machine is busy, which turned 0.5 ms showers into 10 ms ones.
        """
        h = self.hidden(x)
        weight, bias = self.output.weight, self.output.bias
        if out.device.type == "cpu" and out.numel() <= _SERIAL_ELEMENTS:
            if h.shape[0] == 1:
                torch.mv(weight, h[0], out=out[0])
            else:
                torch.mm(h, weight.t(), out=out)
            values = out.numpy()
            np.add(values, bias.detach().numpy(), out=values)
            expit(values, out=values)
            if self.threshold_mev > 0:
                values[values < self._limit(x).numpy()] = 0.0
            return out
        torch.addmm(bias, h, weight.t(), out=out)
        torch.sigmoid_(out)
        if self.threshold_mev > 0:
            out.masked_fill_(out < self._limit(x), 0.0)
        return out


def _permuted_linear(layer: nn.Linear, permutation: np.ndarray | None) -> nn.Linear:
    if permutation is None:
        return layer
    index = torch.from_numpy(permutation).to(layer.weight.device)
    new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[index])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[index])
    return new


def vae_generator(model: nn.Module, permutation: np.ndarray | None, *, threshold_mev: float = 0.0,
                  max_energy_mev: float = 1.0) -> GeneratorModule:
    """The Par04 VAE's decoder (hidden stack + voxel layer + sigmoid [+ zero suppression]) as a generator."""
    if not isinstance(model, ShowerVAE):
        raise TypeError(f"expected a ShowerVAE, got {type(model).__name__}")
    return GeneratorModule(model.decoder, _permuted_linear(model.to_voxels, permutation),
                           latent_dim=model.latent_dim, n_conditions=model.n_conditions,
                           threshold_mev=threshold_mev, max_energy_mev=max_energy_mev).eval()


# -------------------------------------------------------------------------------------- registry entry
class VAEModel(ModelType):
    """``vae``: the Par04/MetaHEP VAE on a cylindrical mesh, meta-trainable and adaptable across geometries."""

    name: ClassVar[str] = "vae"
    description: ClassVar[str] = "Par04/MetaHEP conditional VAE (cylindrical mesh, geometry one-hot)"
    config: ClassVar[type[VAEConfig]] = VAEConfig
    data_config: ClassVar[type[DataConfig]] = DataConfig
    commands: ClassVar[frozenset[str]] = frozenset({"train", "tune", "meta-train", "adapt", "generate", "export"})
    voxel_orders: ClassVar[tuple[str, ...]] = ("par04", "native")
    loss = staticmethod(vae_loss)

    def tiny_config(self) -> VAEConfig:
        return VAEConfig(encoder_sizes=[16, 8], latent_dim=3)

    def load_data(self, data_cfg: DataConfig, *, expect: Normalisation | None = None) -> TrainingData:
        mesh = expect.geometry if isinstance(expect, EMNormalisation) else None
        return load_training_data(data_cfg, mesh=mesh)

    def normalisation_from(self, meta: dict[str, Any], *, source: str | Path | None = None) -> EMNormalisation:
        return EMNormalisation.from_meta(meta, source=source)

    def build_modules(self, cfg: VAEConfig, norm: Normalisation, *, seed: int = 0) -> dict[str, nn.Module]:
        """The VAE under ``model``; weights from torch's global generator, which the caller seeds."""
        return {"model": ShowerVAE(norm.geometry.n_voxels, norm.cond_width, cfg)}

    def build_task(self, cfg: VAEConfig, norm: Normalisation, *, seed: int, trainer: TrainerConfig,
                   total_steps: int, aux: dict[str, nn.Module] | None = None) -> TrainTask:
        model = self.build_modules(cfg, norm, seed=seed)["model"]
        optimizer = make_optimizer(model.parameters(), trainer)
        return SupervisedTask(model, vae_loss, optimizer, make_scheduler(optimizer, trainer, total_steps),
                              grad_clip=trainer.grad_clip)

    def latent_dim(self, cfg: VAEConfig) -> int:
        return cfg.latent_dim

    def sampler(self, modules: dict[str, nn.Module], cfg: VAEConfig, norm: Normalisation, *,
                voxel_order: str = "native") -> GeneratorModule:
        assert isinstance(norm, EMNormalisation)
        return vae_generator(modules["model"], voxel_permutation(norm.geometry, voxel_order),
                             threshold_mev=cfg.readout_threshold_mev,
                             max_energy_mev=norm.conditioning.max_energy_gev * 1000.0)

    def output_description(self, norm: Normalisation) -> str:
        return ("multiply by the incident energy (MeV) to get the energy per voxel in MeV; cells below "
                "readout_threshold_mev are already exact zeros (0 = no zero suppression)")

    def sidecar_fields(self, cfg: VAEConfig, norm: Normalisation, latent_dim: int, voxel_order: str,
                       onnx_file: str) -> dict[str, Any]:
        """Par04's constants and macro lines: what ``Par04InferenceSetup`` must be told about this file."""
        assert isinstance(norm, EMNormalisation)
        cond, mesh = norm.conditioning, norm.geometry
        slots = cond.n_geometry_slots
        return {
            "n_geometry_slots": slots,
            "max_energy_mev": cond.max_energy_gev * 1000.0,
            "max_energy_gev": cond.max_energy_gev,
            "max_angle_deg": cond.max_angle_deg,
            "readout_threshold_mev": cfg.readout_threshold_mev,
            "geant4_par04": {
                "macro": [
                    f"/Par04/inference/setSizeLatentVector {latent_dim}",
                    f"/Par04/inference/setSizeConditionVector {2 + slots}",
                    f"/Par04/inference/setModelPathName {onnx_file}",
                    "/Par04/inference/setInferenceLibrary ONNX",
                    f"/Par04/inference/setSizeOfRhoCells {mesh.size_r} mm",
                    f"/Par04/inference/setSizeOfZCells {mesh.size_z} mm",
                    f"/Par04/inference/setNbOfRhoCells {mesh.n_r}",
                    f"/Par04/inference/setNbOfPhiCells {mesh.n_phi}",
                    f"/Par04/inference/setNbOfZCells {mesh.n_z}",
                ],
                "notes": "Par04InferenceSetup hard-codes fMaxEnergy (1024000 MeV), fMaxAngle (90 deg) and a 2-slot "
                         "one-hot; set them to max_energy_mev, max_angle_deg and the geometry slot above. "
                         + ("The output is in Par04's voxel order." if voxel_order == "par04"
                            else "The output is in mlfastsim's native voxel order, not Par04's."),
            },
        }
