"""Generative shower models, looked up by name (``--model-type``) from a registry, never an if-chain.

A checkpoint carries ``model_type``, ``model_config``, ``mesh`` and ``conditioning`` next to the weights,
so ``adapt``, ``generate`` and ``export`` rebuild the model from the checkpoint alone and refuse a
checkpoint of another model type or mesh with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.showers.conditioning.em import n_conditions
from mlfastsim.showers.config import ConditioningConfig, VAEConfig
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.models.vae import ShowerVAE, vae_loss


@dataclass(frozen=True)
class ModelSpec:
    """How to build, train and configure one model type."""

    config: type[BaseModel]
    build: Callable[[int, int, Any], nn.Module]
    loss: Callable[[nn.Module, tuple[torch.Tensor, ...]], dict[str, torch.Tensor]]


MODELS: dict[str, ModelSpec] = {
    "vae": ModelSpec(config=VAEConfig, build=ShowerVAE, loss=vae_loss),
}


def get_model_spec(model_type: str) -> ModelSpec:
    try:
        return MODELS[model_type]
    except KeyError:
        raise ConfigError(
            f"unknown model type {model_type!r}", field="--model-type", fix=f"use one of {', '.join(MODELS)}"
        ) from None


def build_model(model_cfg: BaseModel, mesh: CylindricalMesh, cond: ConditioningConfig) -> nn.Module:
    spec = get_model_spec(getattr(model_cfg, "type", "vae"))
    return spec.build(mesh.n_voxels, n_conditions(cond), model_cfg)


def model_meta(model_cfg: BaseModel, mesh: CylindricalMesh, cond: ConditioningConfig) -> dict[str, Any]:
    """What a checkpoint must carry to rebuild its model without the config that trained it."""
    return {
        "model_type": getattr(model_cfg, "type", "vae"),
        "model_config": model_cfg.model_dump(mode="json"),
        "mesh": mesh.to_dict(),
        "conditioning": cond.model_dump(mode="json"),
    }


@dataclass
class LoadedModel:
    model: nn.Module
    model_type: str
    model_config: BaseModel
    mesh: CylindricalMesh
    conditioning: ConditioningConfig
    state: dict[str, Any]


def load_model(path: str | Path, *, expect_type: str | None = None, expect_mesh: CylindricalMesh | None = None,
               map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model from a checkpoint, refusing other model types or meshes with a clear error."""
    state = load_checkpoint(path, map_location=map_location)
    if "model_type" not in state or "modules" not in state:
        raise InputFileError("not a mlfastsim shower-model checkpoint (no model_type)", file=path,
                             fix="pass a checkpoint written by showers train/meta-train/adapt")
    model_type = str(state["model_type"])
    if expect_type is not None and model_type != expect_type:
        raise InputFileError(f"checkpoint holds a {model_type!r} model, expected {expect_type!r}", file=path,
                             field="model_type", fix="pass a checkpoint of the right model type")
    spec = get_model_spec(model_type)
    try:
        model_cfg = spec.config.model_validate(state["model_config"])
        cond = ConditioningConfig.model_validate(state["conditioning"])
    except ValidationError as exc:
        raise InputFileError(f"checkpoint carries an invalid model config ({exc.errors()[0]['msg']})", file=path,
                             fix="re-create the checkpoint with this mlfastsim version") from exc
    mesh = CylindricalMesh.from_dict(state["mesh"], source=str(path))
    if expect_mesh is not None and (
        expect_mesh.shape != mesh.shape or not np.allclose(expect_mesh.r_edges, mesh.r_edges)
    ):
        raise InputFileError(
            f"checkpoint was trained on mesh {mesh.describe()}, the data uses {expect_mesh.describe()}",
            file=path, field="mesh", fix="adapt a model trained on the same mesh, or re-score the data",
        )
    model = spec.build(mesh.n_voxels, n_conditions(cond), model_cfg)
    try:
        model.load_state_dict(state["modules"]["model"])
    except (KeyError, RuntimeError) as exc:
        raise InputFileError(f"checkpoint weights do not fit the model ({str(exc).splitlines()[0][:120]})",
                             file=path, fix="pass an unmodified checkpoint") from exc
    return LoadedModel(model, model_type, model_cfg, mesh, cond, state)
