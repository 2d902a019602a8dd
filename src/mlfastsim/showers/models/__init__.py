"""Every shower model type, in one registry: :data:`MODELS`, looked up by name (``model.type``, ``--model-type``).

Each entry implements :class:`~mlfastsim.showers.models.contract.ModelType`; every command goes through
it, so adding a model type is one new file here and one line in :data:`MODELS` (see "Adding a model
type" in ``docs/design.md``).  A checkpoint carries ``model_type``, ``model_config`` and its
normalisation next to the weights, and :func:`load_model` rebuilds the model from that alone, refusing a
checkpoint of another model type or geometry with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.pretrained import is_pretrained
from mlfastsim.showers.geometry import Mesh
from mlfastsim.showers.io.native import same_mesh
from mlfastsim.showers.models.cfm import CFMModel
from mlfastsim.showers.models.cfm_grid import GridCFMModel
from mlfastsim.showers.models.contract import (
    LoadedModel,
    ModelType,
    Normalisation,
    Stage,
    TrainingData,
    checkpoint_meta,
)
from mlfastsim.showers.models.hadrons import BIBAEModel, PostProcessModel, RegressorModel, WGANModel
from mlfastsim.showers.models.vae import VAEModel
from mlfastsim.showers.pretrained import pretrained_path

__all__ = [
    "MODELS", "LoadedModel", "ModelType", "Normalisation", "Stage", "TrainingData", "checkpoint_meta",
    "get_model_type", "load_model", "model_types_for", "require_command",
]

#: Every model type a user trains or generates with, by name.
MODELS: dict[str, ModelType] = {
    spec.name: spec for spec in (VAEModel(), CFMModel(), WGANModel(), BIBAEModel(), PostProcessModel(),
                                    RegressorModel(), GridCFMModel())
}


def get_model_type(name: str) -> ModelType:
    """The registry entry, or a one-line ConfigError naming the valid types."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model type {name!r}", field="model.type",
                          fix=f"use one of {', '.join(MODELS)}") from None


def model_types_for(command: str) -> list[str]:
    """The model types that support ``showers COMMAND``."""
    return [name for name, spec in MODELS.items() if spec.supports(command)]


def require_command(spec: ModelType, command: str, *, file: str | Path | None = None) -> None:
    """A clear error when a model type is asked for a command it does not support."""
    if not spec.supports(command):
        raise ConfigError(f"a {spec.name!r} model does not support `showers {command}`", file=file,
                          field="model.type", fix=f"use one of: {', '.join(model_types_for(command)) or 'none'}")


def _describe(types: str | tuple[str, ...]) -> str:
    return repr(types) if isinstance(types, str) else " or ".join(map(repr, types))


def _check_model_size(spec: ModelType, cfg: Any, norm: Normalisation, path: Path) -> None:
    """Refuse a model whose weights cannot fit in memory before a byte of them is allocated.

    The sizes a checkpoint declares (its mesh, its layer widths) are those of an untrusted file: a
    damaged or forged ``n_r: 1000000`` would otherwise allocate hundreds of GB.  The modules are built
    on torch's meta device (shapes only, no memory) and their parameters and buffers counted.
    """
    from mlfastsim.core.io import check_allocation

    try:
        with torch.device("meta"):
            modules = spec.build_modules(cfg, norm, seed=0)
    except Exception:  # a model that cannot be built without data: the real build reports its own error
        return
    nbytes = sum(t.numel() * t.element_size() for m in modules.values() for t in (*m.parameters(), *m.buffers()))
    check_allocation(nbytes, what=f"the {spec.name} model for mesh {norm.geometry.describe()}", file=path,
                     field="mesh", fix="pass an unmodified checkpoint (its mesh or layer sizes are not realistic)")


def load_model(path: str | Path, *, expect_type: str | tuple[str, ...] | None = None,
               expect_mesh: Mesh | None = None, command: str | None = None,
               map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model from a checkpoint alone, in eval mode.

    ``expect_type`` / ``expect_mesh`` / ``command`` refuse a checkpoint of another model type, geometry, or
    one whose type cannot do ``command``, naming the file.  ``pretrained:NAME`` names a shipped model.
    """
    p = pretrained_path(str(path)) if is_pretrained(path) else Path(path)  # pretrained:NAME, a shipped model
    state = load_checkpoint(p, map_location=map_location)
    if "model_type" not in state or "modules" not in state:
        raise InputFileError("not a mlfastsim shower-model checkpoint (no model_type)", file=p,
                             fix="pass a checkpoint written by showers train/meta-train/adapt")
    model_type = str(state["model_type"])
    if expect_type is not None and model_type not in ((expect_type,) if isinstance(expect_type, str)
                                                      else expect_type):
        raise InputFileError(f"checkpoint holds a {model_type!r} model, expected {_describe(expect_type)}", file=p,
                             field="model_type", fix="pass a checkpoint of the right model type")
    if model_type not in MODELS:
        raise InputFileError(f"checkpoint holds a model type this mlfastsim does not know ({model_type!r})", file=p,
                             field="model_type", fix=f"pass a checkpoint of one of: {', '.join(MODELS)}")
    spec = MODELS[model_type]
    if command is not None and not spec.supports(command):
        raise InputFileError(
            f"checkpoint holds a {model_type!r} model, which cannot be used for `showers {command}`", file=p,
            field="model_type", fix=f"pass a checkpoint of one of: {', '.join(model_types_for(command))}")
    try:
        cfg = spec.config.model_validate(state.get("model_config", {}))
    except ValidationError as exc:
        raise InputFileError(f"checkpoint carries an invalid model config ({exc.errors()[0]['msg']})", file=p,
                             field="model_config", fix="re-create the checkpoint with this mlfastsim version") from exc
    norm = spec.normalisation_from(state, source=p)
    if expect_mesh is not None and not same_mesh(expect_mesh, norm.geometry):
        raise InputFileError(
            f"checkpoint was trained on mesh {norm.geometry.describe()}, the data uses {expect_mesh.describe()}",
            file=p, field="mesh", fix="adapt a model trained on the same mesh, or re-score the data",
        )
    _check_model_size(spec, cfg, norm, p)
    modules = spec.build_modules(cfg, norm, seed=0)
    saved: dict[str, Any] = state["modules"]
    for name, module in modules.items():
        if name not in saved:
            raise InputFileError(f"checkpoint has no weights for {name!r}", file=p, field="modules",
                                 fix="pass an unmodified checkpoint")
        try:
            module.load_state_dict(saved[name])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InputFileError(f"checkpoint weights do not fit the {model_type} model ({first})", file=p,
                                 field="modules", fix="pass an unmodified checkpoint") from exc
        module.to(map_location).eval()
    return LoadedModel(spec, cfg, modules, norm, state, p)
