"""Config models of the ``belle2`` commands (one YAML per experiment; unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mlfastsim.core.config import StrictModel
from mlfastsim.core.devices import DeviceConfig
from mlfastsim.core.parallel import ParallelConfig
from mlfastsim.core.tracking import TrackingConfig
from mlfastsim.core.trainer import TrainerConfig

#: Every input type preprocessing can write, and the file name it gets (``OUTDIR/<name>.npy``).
INPUT_TYPES = ("decay", "particle", "pdg", "mother_pdg", "mother_index", "y", "event")


class ProduceConfig(StrictModel):
    """``belle2 produce``: how many Upsilon(4S) events, in which chunks, with which seed."""

    n_events: int = Field(1000, ge=1)
    chunk_size: int = Field(2000, ge=1)  # events per task: fixes the per-chunk seeds, hence the sample
    seed: int = 1
    dec_file: Path | None = None  # None: DECAY_BELLE2.DEC shipped with decaylanguage
    output: Path = Path("belle2_events.h5")
    parallel: ParallelConfig = ParallelConfig()


class PreprocessConfig(StrictModel):
    """``belle2 preprocess``: padding lengths and which input types to write."""

    input: Path | None = None
    output_dir: Path = Path("preprocessed")
    keys: list[str] = Field(default_factory=lambda: list(INPUT_TYPES))
    max_particles: int = Field(100, ge=2)
    max_tokens: int = Field(150, ge=4)
    chunk_events: int = Field(2000, ge=1)  # events read and written per task (bounds memory per worker)
    dec_file: Path | None = None  # the decay table the vocabulary comes from (as given to produce)
    parallel: ParallelConfig = ParallelConfig()  # chunks on Dask: --workers N or --scheduler ADDRESS


class MemmapConfig(StrictModel):
    """``belle2 memmap``: many ``.npy`` files -> one ``.memmap`` with ``.shape`` and ``.dtype`` sidecars."""

    inputs: str | None = None  # glob
    output: Path = Path("data.memmap")
    block_rows: int = Field(4096, ge=1)  # rows copied per step (bounds memory)


class ModelConfig(StrictModel):
    """Which network: a built-in name (``resnet``, ``gnn``, ``particle``, ``decay``) or a ``.py`` file."""

    name: str = "resnet"
    params: dict[str, Any] = Field(default_factory=dict)  # validated by the model's own Params model


class DataInputs(StrictModel):
    """The memmaps (or ``.npy`` files) of each input type; models take the subset they declare."""

    decay: Path | None = None
    particle: Path | None = None
    pdg: Path | None = None
    mother_pdg: Path | None = None
    mother_index: Path | None = None
    y: Path | None = None
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    prefetch: int = Field(2, ge=0)  # batches read ahead by a background thread


class TrainConfig(StrictModel):
    """``belle2 train``."""

    data: DataInputs = DataInputs()
    model: ModelConfig = ModelConfig()
    trainer: TrainerConfig = TrainerConfig()
    output_dir: Path = Path("belle2_model")
    # fine-tuning: start from this belle2 checkpoint's weights (same model and vocabulary), e.g. a filter
    # pre-trained on a high-efficiency skim, then train on the (few) labelled events of a rare skim
    init_checkpoint: Path | None = None
    tracking: TrackingConfig = TrackingConfig()
    device: DeviceConfig = DeviceConfig()


class ApplyConfig(StrictModel):
    """``belle2 apply``: score generator-level events and decide which to simulate."""

    input: Path | None = None  # a produce-format HDF file (generator-level particles)
    checkpoint: Path | None = None
    model_file: Path | None = None  # the user's .py file, for checkpoints of plug-in models
    output: Path = Path("belle2_kept.h5")
    mode: Literal["threshold", "sample"] = "threshold"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    min_probability: float = Field(0.01, gt=0.0, le=1.0)  # sampling floor: weights stay <= 1/min_probability
    sample_scale: float = Field(1.0, gt=0.0)  # p = min(1, max(sample_scale * score, min_probability))
    seed: int = 0
    batch_size: int = Field(256, ge=1)
    chunk_events: int = Field(2000, ge=1)


class EvaluateConfig(StrictModel):
    """``belle2 evaluate``: ROC/AUC, speed-up at fixed retention and the bias of the filtered samples."""

    events: Path | None = None  # the produce file: truth labels, stage times, skim variables
    scores: Path | None = None  # the apply output (scores of every event)
    output_dir: Path = Path("belle2_evaluation")
    retention: float = Field(0.95, gt=0.0, le=1.0)
    min_probability: float = Field(0.01, gt=0.0, le=1.0)
    # The real chain the filter is for: Geant4 simulation + basf2 reconstruction (with beam-background overlay)
    # of one Upsilon(4S) -> B Bbar event, CPU s/event.  The default is an order of magnitude, not a benchmark:
    # Belle II quotes generation as a negligible part of the chain (ms) against simulation + reconstruction
    # (order 1 s per BBbar event on a grid core; Kahn et al., "Selective background Monte Carlo simulation at
    # Belle II", EPJ Web Conf. 245 (2020) 02028; Yu et al., arXiv:2307.06434).  Set your own measured value.
    projected_sim_reco_s: float = Field(1.0, gt=0)
    seed: int = 0
    n_bins: int = Field(20, ge=2)
