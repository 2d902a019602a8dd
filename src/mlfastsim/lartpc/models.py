"""SparseCellNet: a sparse 3D UResNet for LArTPC voxels, with a deghosting head and a charge head.

The backbone is a U-Net of ``nStrides`` levels with ``nChannels * (level + 1)`` channels, two pre-activation
residual blocks per level, strided convolutions down, transposed convolutions back onto the saved sites
and concatenated skip connections.  The first ``n_2D`` levels use (1, 3, 3) kernels and (1, 2, 2) strides:
they look across the wire-plane directions within a tick only, which is where ghosts arise (crossings of
wires that fired at the same tick); deeper levels are fully 3D with stride ``downsample_t`` along drift.

Both heads share the backbone's parameter names (``backbone.*``), so the charge net can start from a
trained deghosting net (transfer learning), optionally with the backbone frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mlfastsim.core.errors import ConfigError
from mlfastsim.lartpc.config import ModelConfig
from mlfastsim.lartpc.sparse import (
    SparseBNReLU,
    SparseLinear,
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    sparse_cat,
)


class ResidualBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus the input (through a 1x1x1 projection when channels change)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.act1 = SparseBNReLU(cin)
        self.conv1 = SubmanifoldConv3d(cin, cout, kernel)
        self.act2 = SparseBNReLU(cout)
        self.conv2 = SubmanifoldConv3d(cout, cout, kernel)
        self.project = SparseLinear(cin, cout, bias=False) if cin != cout else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        y = self.conv2(self.act2(self.conv1(self.act1(x))))
        skip = x.feats if self.project is None else self.project(x).feats
        return y.with_feats(y.feats + skip)


class SparseCellNet(nn.Module):
    """The UResNet backbone: ``n_features`` per voxel in, ``nChannels`` per voxel out (same sites)."""

    def __init__(self, n_features: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.nStrides
        ch = [cfg.nChannels * (lvl + 1) for lvl in range(n)]
        kernels = [(1, 3, 3) if lvl < cfg.n_2D else (3, 3, 3) for lvl in range(n)]
        strides = [(1, 2, 2) if lvl < cfg.n_2D else (cfg.downsample_t, 2, 2) for lvl in range(n - 1)]
        self.stem = SubmanifoldConv3d(n_features, ch[0], kernels[0])
        self.encoder = nn.ModuleList(
            nn.Sequential(ResidualBlock(ch[lvl], ch[lvl], kernels[lvl]), ResidualBlock(ch[lvl], ch[lvl], kernels[lvl]))
            for lvl in range(n)
        )
        self.down = nn.ModuleList(
            nn.Sequential(SparseBNReLU(ch[lvl]), StridedConv3d(ch[lvl], ch[lvl + 1], strides[lvl]))
            for lvl in range(n - 1)
        )
        self.up_act = nn.ModuleList(SparseBNReLU(ch[lvl + 1]) for lvl in range(n - 1))
        self.up = nn.ModuleList(TransposedConv3d(ch[lvl + 1], ch[lvl], strides[lvl]) for lvl in range(n - 1))
        self.decoder = nn.ModuleList(
            nn.Sequential(ResidualBlock(2 * ch[lvl], ch[lvl], kernels[lvl]),
                          ResidualBlock(ch[lvl], ch[lvl], kernels[lvl]))
            for lvl in range(n - 1)
        )
        self.out_act = SparseBNReLU(ch[0])
        self.n_out = ch[0]

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = self.stem(x)
        skips = []
        for lvl, blocks in enumerate(self.encoder):
            x = blocks(x)
            if lvl < len(self.down):
                skips.append(x)
                x = self.down[lvl](x)
        for lvl in reversed(range(len(self.up))):
            x = self.up[lvl](self.up_act[lvl](x), skips[lvl])
            x = self.decoder[lvl](sparse_cat(x, skips[lvl]))
        return self.out_act(x)


class BinarySparseCellNet(nn.Module):
    """Deghosting: one logit per voxel (sigmoid = probability of a real voxel)."""

    def __init__(self, n_features: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = SparseCellNet(n_features, cfg)
        self.head = nn.Linear(self.backbone.n_out, 1)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        """Logits ``(N,)``."""
        return self.head(self.backbone(x).feats).squeeze(1)

    @staticmethod
    def score(output: torch.Tensor) -> torch.Tensor:
        """Real-voxel probability from the forward output."""
        return torch.sigmoid(output)


class ChargeSparseCellNet(nn.Module):
    """Charge regression with its own deghosting: per voxel a real-voxel logit and ``log(charge / scale)``.

    Why two outputs: ghosts carry no charge, and a single regression target of 0 for them (most voxels)
    pulls the prediction of the real voxels down (a -40..-80 % bias).  The charge output is trained on
    real voxels only (see :func:`mlfastsim.lartpc.train.targets`), in log space because voxel charges span
    three decades; the logit says which voxels the charge applies to, so one net gives both.
    """

    def __init__(self, n_features: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = SparseCellNet(n_features, cfg)
        c = self.backbone.n_out
        layers: list[nn.Module] = []
        for _ in range(cfg.nHiddenLayers):
            layers += [nn.Linear(c, c), nn.ReLU()]
        layers.append(nn.Linear(c, 2))
        self.head = nn.Sequential(*layers)
        # log of a charge-scale calibration, set after each epoch on training events so that the median
        # of predicted / true charge of real voxels is 1 (see mlfastsim.lartpc.train.calibrate); a buffer,
        # so checkpoints, resume and inference carry it
        self.register_buffer("log_calibration", torch.zeros(()))
        self.freeze_backbone = cfg.freeze_backbone
        if self.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ChargeSparseCellNet:
        """A frozen backbone stays in eval mode: its batch-norm statistics are frozen too."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: SparseTensor) -> torch.Tensor:
        """``(N, 2)``: column 0 the real-voxel logit, column 1 the predicted ``log(charge / scale)``."""
        out = self.head(self.backbone(x).feats)
        return torch.cat([out[:, :1], out[:, 1:] + self.log_calibration], dim=1)

    @staticmethod
    def score(output: torch.Tensor) -> torch.Tensor:
        """Real-voxel probability (the deghosting score of the charge net)."""
        return torch.sigmoid(output[:, 0])

    @staticmethod
    def charge(output: torch.Tensor, scale: float) -> torch.Tensor:
        """Predicted charge in the input units (MeV), for every voxel; meaningful where the voxel is real."""
        return torch.exp(output[:, 1]) * scale


MODELS: dict[str, Callable[[int, ModelConfig], nn.Module]] = {
    "binary": BinarySparseCellNet,
    "charge": ChargeSparseCellNet,
}


def build_model(cfg: ModelConfig, n_features: int) -> nn.Module:
    """Look the model up by ``model.type`` (a registry, so new heads plug in by name)."""
    try:
        factory = MODELS[cfg.type]
    except KeyError:
        raise ConfigError(f"unknown model type {cfg.type!r}", field="model.type",
                          fix=f"use one of {', '.join(MODELS)}") from None
    return factory(n_features, cfg)


def model_meta(cfg: ModelConfig, n_features: int, data: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must carry to rebuild the model and check the data it is applied to."""
    return {"model_type": f"lartpc.{cfg.type}", "model_config": cfg.model_dump(mode="json"),
            "n_features": n_features, "data_meta": data}
