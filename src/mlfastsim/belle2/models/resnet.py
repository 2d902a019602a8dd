"""The CNN-ResNet filter of the Belle II selective background simulation, and its one-branch variants.

* decay-string branch: token embedding, then wide 1D convolutions over the token sequence (a decay
  string's meaning is local: ``X ( a b c )``), masked average and max pooling;
* particle branch: the continuous features concatenated with the *shared* PDG and mother-PDG
  embeddings (the same table embeds decay tokens, so a particle means the same in both branches), a
  1x1 projection and 1D residual blocks, masked pooling;
* a dense head on the concatenated branch outputs gives the logit.

``ParticleResNet`` and ``DecayResNet`` keep one branch each (ablations, cheaper filters).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mlfastsim.belle2.models.base import NNBaseClass
from mlfastsim.core.config import StrictModel


class ResNetParams(StrictModel):
    """Hyperparameters (defaults are the small CPU size; see configs/belle2/resnet.yaml for full size)."""

    embedding_dim: int = Field(8, ge=1)
    decay_channels: int = Field(32, ge=1)
    decay_kernel: int = Field(9, ge=1)  # "wide" convolutions over the token sequence
    decay_layers: int = Field(2, ge=1)
    particle_channels: int = Field(32, ge=1)
    residual_blocks: int = Field(2, ge=0)
    residual_kernel: int = Field(3, ge=1)
    head_units: int = Field(64, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


def masked_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, L) with mask (B, L) -> (B, 2C): masked mean and max over L (padding ignored)."""
    m = mask.unsqueeze(1).to(x.dtype)
    count = m.sum(dim=2).clamp_min(1.0)
    mean = (x * m).sum(dim=2) / count
    neg = torch.finfo(x.dtype).min
    mx = x.masked_fill(m == 0, neg).amax(dim=2)
    mx = torch.where(mask.any(dim=1, keepdim=True), mx, torch.zeros_like(mx))
    return torch.cat([mean, mx], dim=1)


class ResidualBlock1d(nn.Module):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=pad)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=pad)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(x + h)


class DecayBranch(nn.Module):
    def __init__(self, embedding: nn.Embedding, p: ResNetParams) -> None:
        super().__init__()
        self.embedding = embedding
        layers: list[nn.Module] = []
        c_in = embedding.embedding_dim
        for _ in range(p.decay_layers):
            layers += [nn.Conv1d(c_in, p.decay_channels, p.decay_kernel, padding=p.decay_kernel // 2), nn.ReLU()]
            c_in = p.decay_channels
        self.convs = nn.Sequential(*layers)
        self.out_dim = 2 * p.decay_channels

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens).transpose(1, 2)  # (B, E, T)
        return masked_pool(self.convs(x), tokens != 0)


class ParticleBranch(nn.Module):
    def __init__(self, embedding: nn.Embedding, n_features: int, p: ResNetParams) -> None:
        super().__init__()
        self.embedding = embedding
        self.project = nn.Conv1d(n_features + 2 * embedding.embedding_dim, p.particle_channels, 1)
        self.blocks = nn.Sequential(*[ResidualBlock1d(p.particle_channels, p.residual_kernel)
                                      for _ in range(p.residual_blocks)])
        self.out_dim = 2 * p.particle_channels

    def forward(self, feats: torch.Tensor, pdg: torch.Tensor, mother_pdg: torch.Tensor) -> torch.Tensor:
        x = torch.cat([feats, self.embedding(pdg), self.embedding(mother_pdg)], dim=2).transpose(1, 2)
        x = torch.relu(self.project(x))
        return masked_pool(self.blocks(x), pdg != 0)


def _head(in_dim: int, p: ResNetParams) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, p.head_units), nn.ReLU(), nn.Dropout(p.dropout),
                         nn.Linear(p.head_units, p.head_units // 2 or 1), nn.ReLU(),
                         nn.Linear(p.head_units // 2 or 1, 1))


class CNNResNet(NNBaseClass):
    """Decay-string CNN + particle ResNet, merged by a dense head."""

    name = "resnet"
    inputs = ("decay", "particle", "pdg", "mother_pdg")
    Params = ResNetParams

    def __init__(self, params: ResNetParams, **sizes: int) -> None:
        super().__init__(params, **sizes)
        self.embedding = nn.Embedding(self.vocab_size, params.embedding_dim, padding_idx=0)
        self.decay = DecayBranch(self.embedding, params)
        self.particle = ParticleBranch(self.embedding, self.n_features, params)
        self.head = _head(self.decay.out_dim + self.particle.out_dim, params)

    def forward(self, decay: torch.Tensor, particle: torch.Tensor, pdg: torch.Tensor,
                mother_pdg: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.decay(decay), self.particle(particle, pdg, mother_pdg)], dim=1)
        return self.head(z).squeeze(1)


class ParticleResNet(NNBaseClass):
    """The particle branch alone."""

    name = "particle"
    inputs = ("particle", "pdg", "mother_pdg")
    Params = ResNetParams

    def __init__(self, params: ResNetParams, **sizes: int) -> None:
        super().__init__(params, **sizes)
        self.embedding = nn.Embedding(self.vocab_size, params.embedding_dim, padding_idx=0)
        self.particle = ParticleBranch(self.embedding, self.n_features, params)
        self.head = _head(self.particle.out_dim, params)

    def forward(self, particle: torch.Tensor, pdg: torch.Tensor, mother_pdg: torch.Tensor) -> torch.Tensor:
        return self.head(self.particle(particle, pdg, mother_pdg)).squeeze(1)


class DecayResNet(NNBaseClass):
    """The decay-string branch alone."""

    name = "decay"
    inputs = ("decay",)
    Params = ResNetParams

    def __init__(self, params: ResNetParams, **sizes: int) -> None:
        super().__init__(params, **sizes)
        self.embedding = nn.Embedding(self.vocab_size, params.embedding_dim, padding_idx=0)
        self.decay = DecayBranch(self.embedding, params)
        self.head = _head(self.decay.out_dim, params)

    def forward(self, decay: torch.Tensor) -> torch.Tensor:
        return self.head(self.decay(decay)).squeeze(1)
