"""Graph attention network over the mother-daughter graph of each event (torch-geometric ``GATConv``).

Nodes are the (unpadded) particles with their features and the shared PDG / mother-PDG embeddings;
edges join every particle to its mother in both directions (information flows up and down the decay
tree) plus self-loops.  The padded batch tensors are turned into one disjoint graph per batch here, so
the model plugs into the same memmaps and trainer as the CNN.  Only pure-torch paths of
torch-geometric are used (no torch-scatter / torch-sparse needed).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mlfastsim.belle2.models.base import NNBaseClass
from mlfastsim.core.config import StrictModel


class GATParams(StrictModel):
    """Hyperparameters (defaults: small CPU size)."""

    embedding_dim: int = Field(8, ge=1)
    hidden: int = Field(32, ge=1)
    heads: int = Field(2, ge=1)
    layers: int = Field(2, ge=1)
    head_units: int = Field(64, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


def batch_to_graph(pdg: torch.Tensor, mother_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded (B, P) tokens and mother positions -> (node mask, edge_index over valid nodes, batch vector)."""
    mask = pdg != 0
    b, p = pdg.shape
    flat_pos = torch.full((b * p,), -1, dtype=torch.long, device=pdg.device)
    flat_mask = mask.reshape(-1)
    flat_pos[flat_mask] = torch.arange(int(flat_mask.sum()), device=pdg.device)
    event = torch.arange(b, device=pdg.device).unsqueeze(1).expand(b, p)
    child_local = torch.arange(p, device=pdg.device).unsqueeze(0).expand(b, p)
    m = mother_index.long()
    has_mother = mask & (m >= 0) & (m < p)
    child = flat_pos[(event * p + child_local)[has_mother]]
    mother = flat_pos[(event * p + m.clamp(0, p - 1))[has_mother]]
    ok = (child >= 0) & (mother >= 0)  # a mother cut away by truncation leaves its daughters unlinked
    child, mother = child[ok], mother[ok]
    edge_index = torch.stack([torch.cat([mother, child]), torch.cat([child, mother])])
    batch = event.reshape(-1)[flat_mask]
    return mask, edge_index, batch


class GATModel(NNBaseClass):
    """GATConv layers over the decay tree, mean+max pooled per event, dense head."""

    name = "gnn"
    inputs = ("particle", "pdg", "mother_pdg", "mother_index")
    Params = GATParams

    def __init__(self, params: GATParams, **sizes: int) -> None:
        super().__init__(params, **sizes)
        from torch_geometric.nn import GATConv

        self.embedding = nn.Embedding(self.vocab_size, params.embedding_dim, padding_idx=0)
        dim = self.n_features + 2 * params.embedding_dim
        self.convs = nn.ModuleList()
        for _ in range(params.layers):
            self.convs.append(GATConv(dim, params.hidden, heads=params.heads, concat=True, add_self_loops=True))
            dim = params.hidden * params.heads
        self.head = nn.Sequential(nn.Linear(2 * dim, params.head_units), nn.ReLU(), nn.Dropout(params.dropout),
                                  nn.Linear(params.head_units, 1))
        self.dropout = params.dropout

    def forward(self, particle: torch.Tensor, pdg: torch.Tensor, mother_pdg: torch.Tensor,
                mother_index: torch.Tensor) -> torch.Tensor:
        from torch_geometric.nn import global_max_pool, global_mean_pool

        mask, edge_index, batch = batch_to_graph(pdg, mother_index)
        x = torch.cat([particle, self.embedding(pdg), self.embedding(mother_pdg)], dim=2)[mask]
        for conv in self.convs:
            x = torch.nn.functional.elu(conv(x, edge_index))
            x = torch.nn.functional.dropout(x, self.dropout, self.training)
        size = pdg.shape[0]
        pooled = torch.cat([global_mean_pool(x, batch, size=size), global_max_pool(x, batch, size=size)], dim=1)
        return self.head(pooled).squeeze(1)
