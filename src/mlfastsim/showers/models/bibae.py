"""BIB-AE for hadron showers, and the post-processor that fixes the hit-energy spectrum.

Following Buhmann et al., "Getting high" (arXiv:2005.05334) and "Hadrons, better, faster, stronger"
(arXiv:2112.09709), after the Bounded-Information-Bottleneck autoencoder of Voloshynovskiy
et al. (arXiv:1912.00830):

* :class:`BIBAE`: a conditional conv encoder (x, e) -> (mu, logvar) and the :class:`~.wgan.Generator`
  architecture as decoder (z, e) -> ReLU grid.
* Latent regularisation: KL to N(0, 1), a latent MMD (:func:`mmd`, mixture of RBF and inverse
  multiquadric kernels as in the WAE of Tolstikhin et al. arXiv:1711.01558, which is robust to the
  bandwidth choice) and a :class:`LatentCritic` telling encoded z from N(0, 1) samples.  Together they
  push the aggregate posterior onto the prior so that decoding z ~ N(0, 1) gives realistic showers.
* :class:`MainCritic`: a WGAN-GP critic on (input, reconstruction) pairs stacked as 2 channels, versus
  (input, input): it learns a reconstruction distance instead of a pixel-wise one, which blurs sparse,
  fluctuating showers (the central idea of the BIB-AE).
* :class:`PostProcessor`: 1x1x1 convolutions applied cell by cell to the BIB-AE output, conditioned on the
  shower's energy sum and the incident energy (broadcast as extra channels), predicting a residual
  correction (a per-cell gain and offset) with a ReLU output.  It is trained after the BIB-AE, with the
  BIB-AE frozen, on :func:`sorted_hit_mmd`: an MMD between the sorted top cell energies of real and
  generated showers, which is what makes the per-cell energy spectrum and the MIP peak come out right
  (arXiv:2005.05334; arXiv:2112.09709).

Tasks: :class:`BIBAETask` (per trainer step and on the same batch: ``n_critic`` updates of each critic,
then one encoder/decoder update) and :class:`PostProcessTask` (the post-processor alone).  Both evaluate
with a private, freshly seeded generator, so validation scalars are comparable across evaluations and the
training RNG streams are left alone.
"""

from __future__ import annotations

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
from mlfastsim.core.trainer import Batch
from mlfastsim.showers.models.losses import mmd, sorted_hit_mmd, standardised_mmd
from mlfastsim.showers.models.wgan import (
    Baseline,
    Critic,
    Generator,
    _conv_out,
    _CriticFrozen,
    _eval_generator,
    _freeze,
    _randn,
    check_batch,
    check_grid_shape,
    energy_channel,
    gradient_penalty,
    log_energy_sum,
)


# ------------------------------------------------------------------------------------------- configs
class BIBAEConfig(StrictModel):
    """BIB-AE sizes and loss weights; adversarial parts are WGAN-GP (lambda 10, Adam betas (0.5, 0.9))."""

    type: Literal["bibae"] = "bibae"
    latent_dim: int = Field(24, ge=1)
    encoder_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    encoder_hidden: int = Field(256, ge=1)
    decoder_channels: list[int] = Field(default_factory=lambda: [64, 32, 16], min_length=1)
    critic_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    critic_hidden: int = Field(128, ge=1)
    critic_layer_norm: bool = True  # GroupNorm(1, C) in the main critic; its double backward is slow on CPU
    latent_critic_hidden: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    leaky_slope: float = Field(0.2, ge=0, lt=1)
    # Decoder output (issue 14).  "hits": the occupancy-aware head of :func:`~.wgan.sample_hits`, trained on
    # its likelihood (Bernoulli occupancy + truncated normal in log E: a loss whose optimum is the cell's
    # distribution, not its mean), sampled at generation.  "relu": one value per cell with the squared
    # error, which converges to the mean shower (diffuse, empty after the 0.5 MIP threshold).
    output: Literal["relu", "hits"] = "hits"
    hit_threshold: float = Field(0.5, gt=0)  # smallest hit in network units (the 0.5 MIP readout threshold)
    # the decoder's hit head adds the training data's energy baseline (conditioning/grid.py), so the energy
    # dependence need not pass through z (false rebuilds models made before it)
    energy_baseline: bool = False
    depth_shift: bool = False  # with the baseline: the decoder shifts it along z per shower (interaction depth)
    recon_weight: float = Field(1.0, ge=0)
    kl_weight: float = Field(0.05, ge=0)
    mmd_weight: float = Field(1.0, ge=0)
    latent_critic_weight: float = Field(0.1, ge=0)
    main_critic_weight: float = Field(0.1, ge=0)
    lambda_gp: float = Field(10.0, ge=0)
    n_critic: int = Field(1, ge=1)
    lr_autoencoder: float = Field(5e-4, gt=0)
    lr_critic: float = Field(5e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)


class PostProcessConfig(StrictModel):
    """The post-processor, trained with the BIB-AE frozen (``showers train-postprocess``).

    ``bibae`` is the architecture of the BIB-AE being post-processed (copy it from the BIB-AE checkpoint's
    ``model_config``), so a post-processing checkpoint, which holds both networks, can be rebuilt alone.
    """

    type: Literal["postprocess"] = "postprocess"
    bibae_checkpoint: Path | None = None
    bibae: BIBAEConfig = Field(default_factory=BIBAEConfig)
    channels: list[int] = Field(default_factory=lambda: [32, 32, 32], min_length=1)
    leaky_slope: float = Field(0.2, ge=0, lt=1)
    sorted_k: int = Field(100, ge=1)  # clipped to the number of cells
    sorted_hit_log: bool = False  # compare log(1 + E) instead of E (weights low-energy hits more)
    # What the post-processor is trained on: BIB-AE showers decoded from the prior ("prior", what generation
    # produces; the energy-sum term is then an MMD of (e, log E_sum)) or reconstructions of the batch
    # ("recon"; paired energy-sum and reconstruction terms).
    input: Literal["prior", "recon"] = "prior"
    mmd_weight: float = Field(1.0, ge=0)
    esum_weight: float = Field(1.0, ge=0)
    recon_weight: float = Field(0.01, ge=0)
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)


# ------------------------------------------------------------------------------------------- losses
def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def recon_error(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over cells, averaged over showers (a Gaussian log-likelihood, on the KL's scale)."""
    return (recon - x).pow(2).flatten(1).sum(dim=1).mean()


# ------------------------------------------------------------------------------------------- networks
class Encoder(nn.Module):
    """(x, e) -> (mu, logvar): strided 3x3x3 convolutions on [x, e-channel], then a dense layer."""

    def __init__(self, grid_shape: Sequence[int], latent_dim: int, channels: Sequence[int], hidden: int,
                 leaky_slope: float = 0.2) -> None:
        super().__init__()
        self.grid_shape = check_grid_shape(grid_shape)
        layers: list[nn.Module] = []
        c_prev, size = 2, list(self.grid_shape)
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv3d(c_prev, int(c), kernel_size=3, stride=stride, padding=1), nn.LeakyReLU(leaky_slope)]
            size = [_conv_out(s, stride) for s in size]
            c_prev = int(c)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c_prev * math.prod(size) + 2, hidden), nn.LeakyReLU(leaky_slope))
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x[:, None]
        h = self.features(torch.cat([x, energy_channel(e, x)], dim=1)).flatten(1)
        h = self.fc(torch.cat([h, e.reshape(-1, 1), log_energy_sum(x)], dim=1))
        return self.to_mu(h), self.to_logvar(h)


class BIBAE(nn.Module):
    """Conditional BIB-AE: ``forward(x, e) -> (recon, mu, logvar, z)`` with z drawn by reparametrisation."""

    def __init__(self, grid_shape: Sequence[int], cfg: BIBAEConfig, baseline: Baseline | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid_shape = check_grid_shape(grid_shape)
        self.latent_dim = cfg.latent_dim
        self.encoder = Encoder(grid_shape, cfg.latent_dim, cfg.encoder_channels, cfg.encoder_hidden, cfg.leaky_slope)
        self.decoder = Generator(grid_shape, cfg.latent_dim, cfg.decoder_channels, cfg.leaky_slope,
                                 output=cfg.output, hit_threshold=cfg.hit_threshold,
                                 baseline=baseline if cfg.energy_baseline else None, depth_shift=cfg.depth_shift)

    def encode(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, e)

    def decode(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, e)

    def forward(self, x: torch.Tensor, e: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x, e)
        z = mu + _randn(mu.shape, mu, generator) * torch.exp(0.5 * logvar)
        return self.decoder(z, e), mu, logvar, z


class LatentCritic(nn.Module):
    """WGAN critic on latent codes: encoded z ("fake") versus N(0, 1) samples ("real"); no normalisation."""

    def __init__(self, latent_dim: int, hidden: Sequence[int] = (64, 64), leaky_slope: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_prev = latent_dim
        for h in hidden:
            layers += [nn.Linear(n_prev, int(h)), nn.LeakyReLU(leaky_slope)]
            n_prev = int(h)
        layers.append(nn.Linear(n_prev, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)[:, 0]


class MainCritic(Critic):
    """WGAN critic on (input, reconstruction) pairs stacked as 2 channels: (x, x) is "real", (x, recon) "fake"."""

    def __init__(self, grid_shape: Sequence[int], cfg: BIBAEConfig) -> None:
        super().__init__(grid_shape, cfg.critic_channels, cfg.critic_hidden, in_channels=2,
                         layer_norm=cfg.critic_layer_norm, leaky_slope=cfg.leaky_slope)

    @staticmethod
    def pair(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """(B, n_z, n_y, n_x) twice -> (B, 2, n_z, n_y, n_x)."""
        return torch.stack([x, other], dim=1)


class PostProcessor(nn.Module):
    """Cell-wise correction of the BIB-AE output: ``relu(x * exp(a) + b)`` on the cells that hold energy
    (empty cells stay empty), with ``(a, b) = f(x, log(1 + x), log(1 + sum x), e)``.

    Occupancy is the BIB-AE's job: a post-processor free to fill empty cells turns a small offset b into
    30k faint cells; restricted to the hits it reshapes their spectrum (and can drop a hit below the
    readout threshold).

    ``f`` is a stack of 1x1x1 convolutions, so each cell's correction depends only on its own energy and on
    the two per-shower conditions: the minimal freedom needed to reshape the hit-energy spectrum without
    touching the shower's shape (arXiv:2005.05334).  The correction is a per-cell gain ``exp(a)``
    plus an offset ``b``: hit energies span decades, and a gain rescales MIP-like and core cells alike where
    a purely additive correction would need wildly different offsets.  The last layer starts small, so the
    post-processor starts near the identity (``a, b ~ 0``).
    """

    def __init__(self, grid_shape: Sequence[int], channels: Sequence[int] = (32, 32, 32),
                 leaky_slope: float = 0.2) -> None:
        super().__init__()
        self.grid_shape = check_grid_shape(grid_shape)
        layers: list[nn.Module] = []
        c_prev = 4
        for c in channels:
            layers += [nn.Conv3d(c_prev, int(c), kernel_size=1), nn.LeakyReLU(leaky_slope)]
            c_prev = int(c)
        last = nn.Conv3d(c_prev, 2, kernel_size=1)
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.zero_()
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = x[:, None]
        esum = log_energy_sum(h).reshape(-1)
        feats = torch.cat([h, torch.log1p(h.clamp_min(0)), energy_channel(esum, h), energy_channel(e, h)], dim=1)
        ab = self.net(feats)
        gain = torch.exp(ab[:, 0].clamp(-10.0, 10.0))
        return F.relu(x * gain + ab[:, 1]) * (x > 0).to(x.dtype)


# ------------------------------------------------------------------------------------------- tasks
class BIBAETask:
    """Trains the BIB-AE with its two WGAN-GP critics.

    Per trainer step, on the same batch: ``n_critic`` updates of each critic against the current
    (detached) encoder/decoder output, then one encoder/decoder update on
    ``recon_weight * recon + kl_weight * KL + mmd_weight * MMD(z, N(0,1)) - latent_critic_weight * LC(z)
    - main_critic_weight * MC(x, recon)``.  Logged/validated ``loss`` is the non-adversarial part
    (recon + KL + MMD terms), comparable across steps, unlike critic scores.
    """

    def __init__(self, bibae: BIBAE, latent_critic: LatentCritic, main_critic: MainCritic, cfg: BIBAEConfig, *,
                 seed: int = 0) -> None:
        self.bibae, self.latent_critic, self.main_critic, self.cfg = bibae, latent_critic, main_critic, cfg
        self.grid_shape = bibae.grid_shape
        self.seed = seed
        self.opt_ae = torch.optim.Adam(bibae.parameters(), lr=cfg.lr_autoencoder, betas=cfg.betas)
        self.opt_lc = torch.optim.Adam(latent_critic.parameters(), lr=cfg.lr_critic, betas=cfg.betas)
        self.opt_mc = torch.optim.Adam(main_critic.parameters(), lr=cfg.lr_critic, betas=cfg.betas)

    def wrap(self, wrapper: Any) -> None:
        """Data parallel without the DDP ``wrapper`` (the critics' gradient penalty needs a double backward,
        which DDP does not support): every optimiser step is preceded by ``all_reduce_grads``."""

    def modules(self) -> dict[str, nn.Module]:
        return {"bibae": self.bibae, "latent_critic": self.latent_critic, "main_critic": self.main_critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"autoencoder": self.opt_ae, "latent_critic": self.opt_lc, "main_critic": self.opt_mc}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def _ae_terms(self, x: torch.Tensor, e: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        if self.cfg.output == "hits":
            mu, logvar = self.bibae.encode(x, e)
            z = mu + _randn(mu.shape, mu, generator) * torch.exp(0.5 * logvar)
            params = self.bibae.decoder.params(z, e)
            recon_term = self.bibae.decoder.nll(params, x).mean()
            recon = self.bibae.decoder.sample_from(params, z, straight_through=True)
        else:
            recon, mu, logvar, z = self.bibae(x, e, generator)
            recon_term = recon_error(recon, x)
        prior = _randn(z.shape, z, generator)
        terms = {"recon": recon_term, "kl": kl_divergence(mu, logvar),
                 "mmd": mmd(z, prior, base=2.0 * z.shape[1])}
        terms["loss"] = (self.cfg.recon_weight * terms["recon"] + self.cfg.kl_weight * terms["kl"]
                         + self.cfg.mmd_weight * terms["mmd"])
        return terms, recon, z

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        x, e = check_batch(batch, self.grid_shape)
        cfg = self.cfg
        for m in self.modules().values():
            m.train()
        pair = MainCritic.pair
        use_main = cfg.main_critic_weight > 0  # the main critic's GP is most of a step's cost on CPU
        gp_m = w_main = torch.zeros(())
        for _ in range(cfg.n_critic):
            with torch.no_grad():
                if use_main:
                    recon, _, _, z = self.bibae(x, e)
                else:
                    mu, logvar = self.bibae.encode(x, e)
                    z = mu + dist_utils.batch_randn_like(mu) * torch.exp(0.5 * logvar)
            prior = dist_utils.batch_randn_like(z)
            gp_l = gradient_penalty(self.latent_critic, prior, z, None, cfg.lambda_gp)
            w_latent = self.latent_critic(prior).mean() - self.latent_critic(z).mean()
            self.opt_lc.zero_grad(set_to_none=True)
            (gp_l - w_latent).backward()
            dist_utils.all_reduce_grads(self.latent_critic.parameters())
            self.opt_lc.step()
            if not use_main:
                continue
            real_pair, fake_pair = pair(x, x), pair(x, recon)
            gp_m = gradient_penalty(self.main_critic, real_pair, fake_pair, e, cfg.lambda_gp)
            w_main = self.main_critic(real_pair, e).mean() - self.main_critic(fake_pair, e).mean()
            self.opt_mc.zero_grad(set_to_none=True)
            (gp_m - w_main).backward()
            dist_utils.all_reduce_grads(self.main_critic.parameters())
            self.opt_mc.step()
        with _CriticFrozen(self.latent_critic), _CriticFrozen(self.main_critic):
            terms, recon, z = self._ae_terms(x, e)
            adv_l = -self.latent_critic(z).mean()
            total = terms["loss"] + cfg.latent_critic_weight * adv_l
            if use_main:
                total = total - cfg.main_critic_weight * self.main_critic(pair(x, recon), e).mean()
            self.opt_ae.zero_grad(set_to_none=True)
            total.backward()
            dist_utils.all_reduce_grads(self.bibae.parameters())
            self.opt_ae.step()
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs.update(total=float(total.detach()), w_latent=float(w_latent.detach()), w_main=float(w_main.detach()),
                    gp_latent=float(gp_l.detach()), gp_main=float(gp_m.detach()))
        return logs

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        x, e = check_batch(batch, self.grid_shape)
        for m in self.modules().values():
            m.eval()
        g = _eval_generator(self.seed)
        terms, recon, z = self._ae_terms(x, e, g)
        prior = _randn(z.shape, z, g)
        out = {k: float(v) for k, v in terms.items()}
        out["w_latent"] = float(self.latent_critic(prior).mean() - self.latent_critic(z).mean())
        if self.cfg.main_critic_weight > 0:
            out["w_main"] = float(self.main_critic(MainCritic.pair(x, x), e).mean()
                                  - self.main_critic(MainCritic.pair(x, recon), e).mean())
        hits_real = (x > 0).flatten(1).sum(1).float().mean()
        out["nhits_ratio_recon"] = float((recon > 0).flatten(1).sum(1).float().mean() / hits_real.clamp_min(1.0))
        return out


class PostProcessTask:
    """Trains only the :class:`PostProcessor`; the BIB-AE is frozen in eval mode.

    The post-processor acts on BIB-AE reconstructions (z from the encoder), so a paired energy-sum term
    ``(log(1 + sum pp) - log(1 + sum x))^2`` and a small reconstruction term can be used next to the
    unpaired ``sorted_hit_mmd``.  The frozen BIB-AE is part of :meth:`modules` so the checkpoint holds
    everything generation needs (decoder + post-processor).
    """

    def __init__(self, bibae: BIBAE, postprocessor: PostProcessor, cfg: PostProcessConfig, *, seed: int = 0) -> None:
        self.bibae = _freeze(bibae)
        self.postprocessor, self.cfg = postprocessor, cfg
        self.grid_shape = postprocessor.grid_shape
        self.seed = seed
        self.opt = torch.optim.Adam(postprocessor.parameters(), lr=cfg.lr, betas=cfg.betas)

    def wrap(self, wrapper: Any) -> None:
        """Data parallel without the DDP ``wrapper`` (the critics' gradient penalty needs a double backward,
        which DDP does not support): every optimiser step is preceded by ``all_reduce_grads``."""

    def modules(self) -> dict[str, nn.Module]:
        return {"bibae": self.bibae, "postprocessor": self.postprocessor}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"postprocessor": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def _terms(self, x: torch.Tensor, e: torch.Tensor, generator: torch.Generator | None = None
               ) -> dict[str, torch.Tensor]:
        self.bibae.eval()
        cfg = self.cfg
        with torch.no_grad():
            if cfg.input == "prior":
                z = _randn((x.shape[0], self.bibae.latent_dim), x, generator)
                base = self.bibae.decode(z, e)
            else:
                base, _, _, _ = self.bibae(x, e, generator)
        out = self.postprocessor(base, e)
        ls_out, ls_x = log_energy_sum(out[:, None]), log_energy_sum(x[:, None])
        if cfg.input == "prior":  # unpaired: the conditional distribution of the energy sum
            esum = standardised_mmd(torch.cat([e[:, None], ls_x], 1), torch.cat([e[:, None], ls_out], 1))
        else:
            esum = (ls_out - ls_x).pow(2).mean()
        terms = {
            "sorted_hit_mmd": sorted_hit_mmd(x, out, cfg.sorted_k, log=cfg.sorted_hit_log),
            "esum": esum,
            "recon": recon_error(out, x),
        }
        terms["loss"] = (cfg.mmd_weight * terms["sorted_hit_mmd"] + cfg.esum_weight * terms["esum"]
                         + cfg.recon_weight * terms["recon"])
        return terms

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        x, e = check_batch(batch, self.grid_shape)
        self.postprocessor.train()
        terms = self._terms(x, e)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        dist_utils.all_reduce_grads(self.postprocessor.parameters())
        self.opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        x, e = check_batch(batch, self.grid_shape)
        self.postprocessor.eval()
        return {k: float(v) for k, v in self._terms(x, e, _eval_generator(self.seed)).items()}


class BIBAESampler(nn.Module):
    """Generation/export module: [z, e] (B, latent_dim + 1) -> decoder (-> post-processor) -> (B, n_cells)."""

    def __init__(self, decoder: Generator, postprocessor: PostProcessor | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.postprocessor = postprocessor
        self.latent_dim = decoder.latent_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        z, e = inputs[:, : self.latent_dim], inputs[:, self.latent_dim]
        out = self.decoder(z, e)
        if self.postprocessor is not None:
            out = self.postprocessor(out, e)
        return out.flatten(1)
