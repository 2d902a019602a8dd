"""The Par04 / MetaHEP conditional VAE.

Encoder: [voxels, conditions] -> 100-50-20-14 (batch norm + leaky ReLU) -> (mu, log sigma^2) of a
10-dimensional latent; decoder mirrored: [z, conditions] -> 14-20-50-100 -> voxels with a sigmoid.
Loss: binary cross-entropy summed over voxels (inputs are energies / E_inc in [0, 1]) plus the KL
divergence to N(0, 1), both averaged over the batch.  Every size comes from :class:`VAEConfig`.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.showers.config import VAEConfig


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
