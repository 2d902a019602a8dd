"""Config model of ``lartpc train``: one YAML per experiment (ghost3d.yaml, charge.yaml, ghost_inf.yaml).

The section names follow the original deghosting configs (``store_inference``, ``data.train_i``,
``model.nChannels`` ...) so existing experiment files read naturally; everything else (device, tracking)
is shared with the other workflows.  A config without ``data.train_i`` runs inference only and then needs
``checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlfastsim.core.config import StrictModel
from mlfastsim.core.devices import DeviceConfig
from mlfastsim.core.tracking import TrackingConfig


class StoreInferenceConfig(StrictModel):
    """Which predictions to write: every Nth epoch, every Nth event, into ``outdir`` (default OUT/inference)."""

    everyNepoch: int = Field(1, ge=0)  # 0 = never during training (inference-only runs always store)
    everyNsample: int = Field(1, ge=1)
    outdir: Path | None = None


class DataConfig(StrictModel):
    """Which xy files and events; how truth charge becomes a label; what the files must look like."""

    data_path: list[Path] = Field(default_factory=list)
    train_i: tuple[int, int] | None = None  # [start, stop) event indices over all matching files
    inference_i: tuple[int, int] | None = None
    tpcs: list[int] | None = None  # keep files whose TPCs are all in this list (None = all)
    threshold: float = Field(0.0, ge=0)  # truth charge above this = real voxel (label 1), else ghost
    downsample: tuple[int, int, int] = (1, 1, 1)  # must equal the files' (make-batches --downsample)
    input_scale: float = Field(0.1, gt=0)  # features -> log1p(feature / input_scale)

    @field_validator("train_i", "inference_i")
    @classmethod
    def _range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"an index range is [start, stop) with 0 <= start < stop, got {list(v)}")
        return v


class ModelConfig(StrictModel):
    """SparseCellNet backbone and head.

    ``n_2D`` levels (from the finest) use (1, 3, 3) kernels and (1, 2, 2) strides: they ignore the drift
    axis, along which tiling makes no correlation within a tick.  Deeper levels are 3D with stride
    ``downsample_t`` along the drift axis and 2 along y and z.
    """

    type: Literal["binary", "charge"] = "binary"
    spatial_size: tuple[int, int, int] = (32, 32, 32)
    nChannels: int = Field(8, ge=1)
    nStrides: int = Field(3, ge=1)
    n_2D: int = Field(1, ge=0)
    downsample_t: int = Field(2, ge=1)
    nHiddenLayers: int = Field(1, ge=0)  # charge head
    freeze_backbone: bool = False  # charge net: train the head only

    @model_validator(mode="after")
    def _levels(self) -> ModelConfig:
        if self.n_2D > self.nStrides:
            raise ValueError(f"n_2D ({self.n_2D}) cannot exceed nStrides ({self.nStrides})")
        return self


class LossConfig(StrictModel):
    """Loss by name (registry in :mod:`mlfastsim.lartpc.train`).

    Charge losses (``mse``, ``l1``, ``huber``) compare ``log(charge / input_scale)`` on *real* voxels only
    (a ghost has no charge to predict), plus ``ghost_weight`` times the BCE of the net's real-voxel logit.
    """

    name: str = "bce"
    pos_weight: float | None = Field(None, gt=0)  # bce/focal/charge logit: weight of real voxels (None = 1)
    gamma: float = Field(2.0, ge=0)  # focal
    ghost_weight: float = Field(1.0, ge=0)  # charge nets: weight of the deghosting BCE (0 = charge only)


class OptimizerConfig(StrictModel):
    name: str = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)  # sgd only
    # cosine: the learning rate falls to 0 over the run (stepped per batch), which settles the last epochs
    # instead of leaving them to bounce at the full rate; none: constant
    scheduler: Literal["none", "cosine"] = "none"


class TransferConfig(StrictModel):
    """Start from another run's weights (e.g. the charge net from the ghost net's backbone)."""

    checkpoint: Path  # a checkpoint file, or a run directory (its latest checkpoint)
    modules: Literal["backbone", "all"] = "backbone"


class LArTPCTrainConfig(StrictModel):
    """``lartpc train``: training (with per-epoch inference) or, without ``data.train_i``, inference only."""

    output_dir: Path = Path("runs/lartpc")
    seed: int = 0
    n_epochs: int = Field(2, ge=1)
    batch_size: int = Field(4, ge=1)  # events per optimisation step
    store_inference: StoreInferenceConfig = StoreInferenceConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    metric: str = "rejection_at_95"  # headline metric printed and written per epoch (see metrics.METRICS)
    transfer: TransferConfig | None = None
    checkpoint: Path | None = None  # inference only: the model to apply (file or run directory)
    device: DeviceConfig = DeviceConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _modes(self) -> LArTPCTrainConfig:
        if not self.data.data_path:
            raise ValueError("data.data_path is empty: give xy files or directories")
        if self.data.train_i is None:
            if self.checkpoint is None:
                raise ValueError("no data.train_i (inference only) needs 'checkpoint': the model to apply")
            if self.data.inference_i is None:
                raise ValueError("inference only needs data.inference_i: the events to apply the model to")
        elif self.checkpoint is not None:
            raise ValueError("'checkpoint' is for inference-only runs; to start training from weights use transfer")
        return self

    @property
    def inference_only(self) -> bool:
        return self.data.train_i is None
