"""Config models of the shower commands (one YAML file per experiment, validated here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mlfastsim.core.config import ConfigValueError, PlainName, StrictModel
from mlfastsim.core.devices import DeviceConfig
from mlfastsim.core.parallel import ParallelConfig
from mlfastsim.core.tracking import TrackingConfig
from mlfastsim.core.trainer import TrainerConfig
from mlfastsim.showers.conditioning.em import ConditioningConfig, DataConfig
from mlfastsim.showers.models import MODELS
from mlfastsim.showers.models.vae import VAEConfig

__all__ = ["AdaptConfig", "ConditioningConfig", "ConvertConfig", "DataConfig", "ExportConfig", "GenerateConfig",
           "MetaConfig", "SimulateConfig", "TrainConfig", "VAEConfig", "ValidateConfig"]


class SimulateConfig(StrictModel):
    """``showers simulate``: which detector, mesh, particle and kinematics to simulate."""

    detector: str = "SiW"
    mesh: str = "ds2"
    particle: Literal["electron", "photon", "pion"] = "electron"
    # hadron showers (particle: pion): a Cartesian grid preset or YAML and a hadron calorimeter preset;
    # detector and mesh are the electromagnetic ones and are ignored for pions
    grid: str = "hcal48"
    calorimeter: str = "steel_scint"
    energies_gev: list[float] | None = None
    energy_range_gev: tuple[float, float] | None = None
    angles_deg: list[float] | None = None
    angle_range_deg: tuple[float, float] | None = None
    n_per_point: int = Field(1000, ge=1)
    seed: int = 1
    chunk_size: int = Field(1000, ge=1)
    output: Path = Path("showers.h5")
    parallel: ParallelConfig = ParallelConfig()

    @model_validator(mode="after")
    def _one_of_each(self) -> SimulateConfig:
        if self.energies_gev is not None and self.energy_range_gev is not None:
            raise ValueError("give energies_gev (--energy-gev) or energy_range_gev (--energy-range-gev), not both")
        if self.angles_deg is not None and self.angle_range_deg is not None:
            raise ValueError("give angles_deg (--angle-deg) or angle_range_deg (--angle-range-deg), not both")
        return self


class ConvertConfig(StrictModel):
    """``showers convert``: from one layout to another."""

    source_format: str = "calochallenge"
    target_format: str = "native"
    inputs: list[Path] = Field(default_factory=list)
    output: Path = Path("converted.h5")
    mesh: str | None = None
    binning: Path | None = None
    parallel: ParallelConfig = ParallelConfig()  # one Dask task per input file


class ValidateConfig(StrictModel):
    """``showers validate``: compare a candidate sample with a reference sample."""

    reference: Path | None = None
    candidate: Path | None = None
    output: Path = Path("validation")
    binning: Path | None = None
    mesh: str | None = None
    # "fast" (our quick network), "calochallenge" (the official network and inputs, for numbers to quote)
    # or "off"; true / false are read as "fast" / "off"
    classifier: Literal["fast", "calochallenge", "off"] = "fast"
    exclude_empty: bool = False
    # zero cells below this energy (MeV) in both samples first, as a readout would; also the lower edge of
    # the cell spectrum.  None: the geometry's own, CaloChallenge's 0.5 keV / 0.033 = 0.0151515 MeV on
    # cylindrical (ds2/ds3/Par04) meshes, the calorimeter's 0.5 MIP from the file's metadata on hadron
    # grids; 0 turns it off.
    threshold_mev: float | None = Field(None, ge=0.0)
    # "adaptive" (reference-quantile bins sized to the samples) or "calochallenge" (also every histogram on
    # the official fixed bins, reported beside the adaptive values)
    binning_mode: Literal["adaptive", "calochallenge"] = "adaptive"
    # subsample both samples to the same (energy, angle) points before comparing
    match_conditions: bool = False
    seed: int = 0
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("classifier", mode="before")
    @classmethod
    def _classifier_from_bool(cls, value: object) -> object:
        """Old configs say ``classifier: true/false``."""
        if isinstance(value, bool):
            return "fast" if value else "off"
        return value


# ------------------------------------------------------------------------------------ MetaHEP road
def _data_for_model(data: Any, info: ValidationInfo) -> Any:
    """Validate the ``data:`` section as the data config of the model type the ``model:`` section names.

    The families read different data (a cylindrical mesh with geometry slots, a Cartesian grid with a crop),
    and the model type decides which; the union in the annotation lets ``--set data.KEY=...`` accept the
    keys of every family.  A wrong key is reported as ``data.KEY`` for that model type.
    """
    model = info.data.get("model")
    spec = MODELS.get(str(getattr(model, "type", "vae")))
    if spec is None or isinstance(data, spec.data_config):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump()
    try:
        return spec.data_config.model_validate(data if data is not None else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigValueError(f"unknown key data.{key} for a {spec.name!r} model",
                                   fix=f"use the keys of {spec.data_config.__name__} (see configs/)") from None
        raise ConfigValueError(f"data.{key}: {err['msg']} (got {err.get('input')!r})",
                               fix="give a value of the right type") from None


def _default_model_type(model: Any) -> Any:
    """A ``model:`` section without ``type`` is the VAE's, as before there were several model types."""
    if isinstance(model, dict) and "type" not in model:
        return {**model, "type": "vae"}
    return model


def _union(configs: list[type[BaseModel]]) -> Any:
    """A ``type``-discriminated union of model configs (one member needs no union)."""
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[tuple(configs)], Field(discriminator="type")]  # noqa: UP007  (built at run time)


#: the ``model:`` section of ``showers train``/``tune``: any registered model type
ModelConfig = _union([spec.config for spec in MODELS.values()])
#: the ``data:`` section: any family's data config (picked by the model type, see :func:`_data_for_model`)
AnyDataConfig = Union[tuple(dict.fromkeys(spec.data_config for spec in MODELS.values()))]  # noqa: UP007
#: the ``model:`` section of ``showers meta-train``: model types that support it
MetaModelConfig = _union([spec.config for spec in MODELS.values() if spec.supports("meta-train")])


class TrainConfig(StrictModel):
    """``showers train``: any registered model type on its family's data (one or several geometries)."""

    model: ModelConfig = Field(default_factory=VAEConfig)  # type: ignore[valid-type]  (first: data depends on it)
    data: AnyDataConfig = Field(default_factory=DataConfig)  # type: ignore[valid-type]
    trainer: TrainerConfig = TrainerConfig()
    device: DeviceConfig = DeviceConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: Path = Path("runs/train")
    transfer_from: Path | None = None  # load matching weights from another checkpoint of the same model type
    # train only the parameters whose names start with these prefixes (the rest keep their initial or transferred
    # values), e.g. a new cfm energy network on a transferred shape network: [energy].  None trains everything.
    trainable: list[str] | None = Field(None, min_length=1)

    _model_type = field_validator("model", mode="before")(_default_model_type)
    _pick_data = field_validator("data", mode="before")(_data_for_model)


class MetaConfig(StrictModel):
    """``showers meta-train``: Reptile (or first-order MAML) over geometry tasks, one task per file.

    ``meta_lr`` is Reptile's interpolation factor (meta <- meta + meta_lr * (adapted - meta)); it also
    moves the batch-norm running statistics in both algorithms.  First-order MAML instead feeds the mean
    gradient at the adapted weights to an outer Adam optimiser with learning rate ``outer_lr``.
    """

    data: DataConfig = DataConfig()
    model: MetaModelConfig = Field(default_factory=VAEConfig)  # type: ignore[valid-type]
    algorithm: Literal["reptile", "fomaml"] = "reptile"
    meta_steps: int = Field(1000, ge=1)
    inner_steps: int = Field(5, ge=1)
    inner_lr: float = Field(1e-3, gt=0)
    inner_optimizer: Literal["adam", "sgd"] = "adam"  # a fresh optimiser per task and meta-step
    meta_lr: float = Field(0.5, gt=0, le=1)
    outer_lr: float = Field(1e-3, gt=0)  # fomaml only
    tasks_per_step: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    seed: int = 0
    device: DeviceConfig = DeviceConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: Path = Path("runs/meta")

    _model_type = field_validator("model", mode="before")(_default_model_type)


class AdaptConfig(StrictModel):
    """``showers adapt``: fine-tune a pre-trained model on a few showers of a new geometry."""

    data: DataConfig = DataConfig()
    checkpoint: Path | None = None  # None = the pre-trained model shipped with mlfastsim
    adaptation_steps: int = Field(400, ge=1)
    checkpoint_step: int = Field(50, ge=1)
    plot_freq: int = Field(100, ge=0)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    # parameter-name prefixes to fine-tune (e.g. [energy] or [shape.blocks.2, shape.out] for a cfm, [decoder] for
    # the VAE); every other weight stays as pre-trained (batch-norm statistics still follow the data).  None: all.
    trainable: list[str] | None = Field(None, min_length=1)
    seed: int = 0
    study_name: PlainName = "adaptation"  # folders under output_dir: never '../x'
    run_name: PlainName | None = None
    output_dir: Path = Path("runs")
    device: DeviceConfig = DeviceConfig()
    tracking: TrackingConfig = TrackingConfig()


class ExportConfig(StrictModel):
    """``showers export``: the decoder of a trained/adapted model as ONNX plus a JSON sidecar."""

    checkpoint: Path | None = None  # a checkpoint file directly, or find it by study/run/step:
    study_name: PlainName | None = None
    run_name: PlainName | None = None  # default: the most recent run of the study
    # a step, or "latest" / "best" (lowest validation loss recorded); default: the last checkpoint of the run
    adaptation_step: int | Literal["latest", "best"] | None = None
    output_dir: Path = Path("runs")
    onnx_file_name: Path = Path("model.onnx")
    opset: int = Field(18, ge=13)
    parity_tolerance: float = Field(1e-4, gt=0)
    parity_samples: int = Field(256, ge=1)
    steps: int | None = Field(None, ge=1)  # flow models: solver steps unrolled in the graph (None: the model's)


class GenerateConfig(StrictModel):
    """``showers generate``: sample showers from a checkpoint or an ONNX file into the native format."""

    checkpoint: Path | None = None
    onnx: Path | None = None
    energies_gev: list[float] | None = None
    energy_range_gev: tuple[float, float] | None = None
    angles_deg: list[float] | None = None
    angle_range_deg: tuple[float, float] | None = None
    n_per_point: int = Field(1000, ge=1)
    geometry_index: int = Field(0, ge=0)
    batch_size: int = Field(10000, ge=1)
    seed: int = 0
    steps: int | None = Field(None, ge=1)  # flow models: solver steps (None: the model's; an ONNX file's is fixed)
    output: Path = Path("generated.h5")
    device: DeviceConfig = DeviceConfig()

    @model_validator(mode="after")
    def _one_source(self) -> GenerateConfig:
        if (self.checkpoint is None) == (self.onnx is None):
            raise ValueError("give exactly one of checkpoint (--checkpoint) or onnx (--onnx)")
        return self
