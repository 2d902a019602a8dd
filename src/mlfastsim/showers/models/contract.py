"""The one contract every shower model type implements, and the checkpoint a model lives in.

Every command (``train``, ``tune``, ``meta-train``, ``adapt``, ``generate``, ``export``) talks to a model
type only through :class:`ModelType` and a :class:`Normalisation`, looked up by name in
:data:`mlfastsim.showers.models.MODELS`.  Nothing in a command path asks which family a model belongs to:
what differs between the Par04 VAE on a cylindrical mesh and a WGAN on a Cartesian grid is *how the
network sees a shower* (the normalisation: conditions in, network units out and back to MeV) and *how it
trains* (its task on the core :class:`~mlfastsim.core.trainer.Trainer`), and both are answered here.

A checkpoint carries ``model_type``, ``model_config`` and the normalisation's own keys
(:meth:`Normalisation.meta`) next to the weights, so every command rebuilds the model from the checkpoint
alone.  An exported ONNX file carries the same keys in its JSON sidecar.

Adding a model type: see "Adding a model type" in ``docs/design.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from mlfastsim.core.errors import ConfigError
from mlfastsim.core.trainer import TrainerConfig, TrainTask
from mlfastsim.showers.conditioning.base import TrainingData
from mlfastsim.showers.geometry import Mesh
from mlfastsim.showers.io.native import ShowerData

__all__ = ["COMMANDS", "LoadedModel", "ModelType", "Normalisation", "Stage", "TrainingData", "checkpoint_meta"]

#: Every command a model type may support; ``ModelType.commands`` says which ones it does.
COMMANDS = ("train", "tune", "meta-train", "adapt", "generate", "export")


@runtime_checkable
class Normalisation(Protocol):
    """How a model type's networks see showers, and how their output goes back to MeV.

    Conditions are what the network is told about a shower (incident energy, angle, geometry slot, in the
    family's units); network units are what it reads and writes.  Generation is
    ``showers_mev = network_output * row_scale(E)[:, None]`` then :meth:`finish_` (a readout threshold),
    which lets the generators fuse the scaling into the pass that writes the output.
    """

    @property
    def geometry(self) -> Mesh: ...

    @property
    def cond_width(self) -> int: ...

    def conditions(self, energies_mev: np.ndarray, angles_deg: np.ndarray | None,
                   geometry_index: int | np.ndarray) -> np.ndarray:
        """(N, cond_width) float32 condition rows."""
        ...

    def encode(self, data: ShowerData) -> np.ndarray:
        """Showers in MeV -> network units (float32, first axis N)."""
        ...

    def row_scale(self, energies_mev: np.ndarray) -> np.ndarray:
        """(N,) float32 factor from network units to MeV, per shower."""
        ...

    def finish_(self, showers_mev: np.ndarray) -> None:
        """In place, after scaling: what the detector's readout does (e.g. zero cells below threshold)."""
        ...

    def meta(self) -> dict[str, Any]:
        """The keys this normalisation stores in a checkpoint and in an ONNX sidecar."""
        ...

    def random_conditions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Conditions drawn like real ones (ONNX parity is tested where the model is used)."""
        ...

    def check_request(self, energies_mev: np.ndarray, angles_deg: np.ndarray | None,
                      geometry_index: int) -> None:
        """Refuse what the model cannot take (a missing one-hot slot); warn where it extrapolates."""
        ...

    def input_layout(self, latent_dim: int) -> list[dict[str, Any]]:
        """The sidecar's description of one input row ``[z, conditions]``."""
        ...

    def output_meta(self) -> dict[str, Any]:
        """Provenance a generated file carries (particle, calorimeter facts, conditioning)."""
        ...


@dataclass(frozen=True)
class Stage:
    """A first-stage model another one builds on (the WGAN's regressor, the post-processor's BIB-AE)."""

    field: str  # the model-config field holding its checkpoint path
    model_type: str  # the model type that checkpoint must hold
    hint: str  # how to make one, for the error when it is missing


class ModelType(ABC):
    """One registry entry: everything a command needs to know about one model type.

    Subclasses set the class attributes and implement the abstract methods; the defaults serve model types
    that generate from ``[z, conditions]`` with ``latent_dim(cfg)`` noise dimensions.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    config: ClassVar[type[BaseModel]]  # the ``model:`` section, discriminated by its ``type`` field
    data_config: ClassVar[type[BaseModel]]  # the ``data:`` section this family reads
    commands: ClassVar[frozenset[str]] = frozenset({"train", "tune", "generate", "export"})
    #: voxel orders its ONNX graph can be exported in; the first is the default
    voxel_orders: ClassVar[tuple[str, ...]] = ("native",)
    #: rows per generator call at most (3D convolutions at batch 10k need gigabytes); None: no cap
    max_batch_size: ClassVar[int | None] = None
    #: inputs of the ONNX parity check at most (a 3D-conv graph is slow to run in float64 reference mode)
    max_parity_samples: ClassVar[int] = 1024
    #: the model-config field holding the sampler's ODE/solver step count (flow models); None: no solver
    solver_steps_field: ClassVar[str | None] = None
    #: the supervised loss of single-module families (``modules()["model"]``): what meta-learning steps on
    loss: ClassVar[Callable[[nn.Module, tuple[torch.Tensor, ...]], dict[str, torch.Tensor]] | None] = None

    # ------------------------------------------------------------------------------------ smallest run
    @abstractmethod
    def tiny_config(self) -> BaseModel:
        """The smallest sensible model config: the shared per-model test suite trains it for a few steps."""

    def tiny_data(self, files: list[Path]) -> BaseModel:
        """A data config reading ``files`` (showers of :attr:`geometry_kind`) for the smallest run."""
        return self.data_config(files=files)

    #: which geometry its data lives on: "mesh" (cylindrical, EM) or "grid" (Cartesian, hadrons)
    geometry_kind: ClassVar[str] = "mesh"

    # ------------------------------------------------------------------------------------------ data
    @abstractmethod
    def load_data(self, data_cfg: Any, *, expect: Normalisation | None = None) -> TrainingData:
        """Read, normalise and condition the configured files (``expect`` pins a first stage's normalisation)."""

    @abstractmethod
    def normalisation_from(self, meta: dict[str, Any], *, source: str | Path | None = None) -> Normalisation:
        """The normalisation stored by :meth:`Normalisation.meta` in a checkpoint or sidecar."""

    # ----------------------------------------------------------------------------------------- build
    @abstractmethod
    def build_modules(self, cfg: Any, norm: Normalisation, *, seed: int = 0) -> dict[str, nn.Module]:
        """Fresh modules under the names its training task's ``modules()`` uses (checkpoints load into them)."""

    @abstractmethod
    def build_task(self, cfg: Any, norm: Normalisation, *, seed: int, trainer: TrainerConfig, total_steps: int,
                   aux: dict[str, nn.Module] | None = None) -> TrainTask:
        """The training task on the core trainer; ``aux`` holds the frozen first-stage modules."""

    def stages(self, cfg: Any) -> list[Stage]:
        """First-stage models this configuration needs (none by default)."""
        return []

    # -------------------------------------------------------------------------------------- generate
    def latent_dim(self, cfg: Any) -> int:
        """Width of the noise part of the sampler's input."""
        raise ConfigError(f"a {self.name!r} model cannot generate showers", field="model.type",
                          fix="generate or export with a generative model type")

    def latent_width(self, cfg: Any, norm: Normalisation) -> int:
        """Width of the noise part for this normalisation's geometry: a flow's noise is as wide as a shower.

        Defaults to :meth:`latent_dim`; commands ask this one.
        """
        return self.latent_dim(cfg)

    def with_steps(self, cfg: Any, steps: int | None) -> Any:
        """``cfg`` with the sampler's solver step count replaced (``generate --steps``, ``export --steps``).

        ``None`` keeps the configured count; a model type without a solver refuses any other value.
        """
        if steps is None:
            return cfg
        if self.solver_steps_field is None:
            raise ConfigError(f"a {self.name!r} model has no solver steps to set", field="steps",
                              fix="drop --steps (only flow models such as cfm take it)")
        if int(steps) < 1:
            raise ConfigError(f"solver steps must be at least 1, got {steps}", field="steps",
                              fix="pass --steps 1 or more")
        return cfg.model_copy(update={self.solver_steps_field: int(steps)})

    def sampler(self, modules: dict[str, nn.Module], cfg: Any, norm: Normalisation, *,
                voxel_order: str = "native") -> nn.Module:
        """The generator as one module of one float32 input (B, latent + cond_width) -> (B, n_voxels).

        This is the ONNX graph: its output is in network units (MeV after ``row_scale`` and ``finish_``).
        """
        raise ConfigError(f"a {self.name!r} model cannot generate showers", field="model.type",
                          fix="generate or export with a generative model type")

    def sidecar_fields(self, cfg: Any, norm: Normalisation, latent_dim: int, voxel_order: str,
                       onnx_file: str) -> dict[str, Any]:
        """Extra sidecar keys a C++ caller of this family needs (e.g. Geant4 Par04 macro lines)."""
        return {}

    def output_description(self, norm: Normalisation) -> str:
        """What one output value means, for the sidecar."""
        return "network units: multiply by row_scale and apply the readout threshold (see normalisation)"

    # ----------------------------------------------------------------------------------------- helpers
    def supports(self, command: str) -> bool:
        return command in self.commands


def conditioning_of(norm: Normalisation, model_type: str) -> Any:
    """The EM conditioning block of a normalisation with a geometry one-hot; a clear error for the others."""
    cond = getattr(norm, "conditioning", None)
    if cond is None:
        raise ConfigError(f"a {model_type!r} model has no geometry conditioning", field="model.type",
                          fix="use a model conditioned on the geometry one-hot (e.g. vae)")
    return cond


def checkpoint_meta(spec: ModelType, cfg: BaseModel, norm: Normalisation) -> dict[str, Any]:
    """What a checkpoint must carry to rebuild its model without the config that trained it."""
    return {"model_type": spec.name, "model_config": cfg.model_dump(mode="json"), **norm.meta()}


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint: its registry entry, config, modules and normalisation."""

    spec: ModelType
    config: Any
    modules: dict[str, nn.Module]
    norm: Normalisation
    state: dict[str, Any]
    path: Path | None = None

    @property
    def model_type(self) -> str:
        return self.spec.name

    @property
    def model_config(self) -> Any:
        return self.config

    @property
    def model(self) -> nn.Module:
        """The single module of a single-module family (the VAE)."""
        if "model" not in self.modules:
            raise ConfigError(f"a {self.model_type!r} model has several modules ({', '.join(self.modules)})",
                              field="model.type", fix="use the modules dict")
        return self.modules["model"]

    @property
    def mesh(self) -> Mesh:
        return self.norm.geometry

    @property
    def conditioning(self) -> Any:
        """The EM conditioning block (families with a geometry one-hot)."""
        return conditioning_of(self.norm, self.model_type)

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_width(self.config, self.norm)

    def sampler(self, voxel_order: str = "native", steps: int | None = None) -> nn.Module:
        """The generator module; ``steps`` overrides a flow model's solver step count (None: its config's)."""
        return self.spec.sampler(self.modules, self.spec.with_steps(self.config, steps), self.norm,
                                 voxel_order=voxel_order)

    def with_steps(self, steps: int | None) -> LoadedModel:
        """This model with its sampler's solver step count set (the config it exports and records)."""
        if steps is None:
            return self
        return LoadedModel(self.spec, self.spec.with_steps(self.config, steps), self.modules, self.norm, self.state,
                           self.path)

    def to(self, device: torch.device | str) -> LoadedModel:
        for module in self.modules.values():
            module.to(device)
        return self
