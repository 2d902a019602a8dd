"""Training, loading and sampling of the hadron-shower models (WGAN, BIB-AE, post-processor, regressor).

The four models share one config shape (:class:`HadronTrainConfig`) and one loop (the core trainer), and
differ only in what :data:`~mlfastsim.showers.models.hadrons.HADRON_MODELS` builds.  Two are second
stages that need a first one: the WGAN's energy constrainer (``model.regressor_checkpoint``, trained with
``showers train-regressor``) and the post-processor's frozen BIB-AE (``model.bibae_checkpoint``).  A
checkpoint carries ``model_type``, ``model_config`` and the data normalisation (grid, energy scale,
threshold, trained energy range), so ``generate`` and ``export`` rebuild a model from it alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.checkpoint import load_checkpoint, load_matching_weights
from mlfastsim.core.config import StrictModel
from mlfastsim.core.devices import DeviceConfig, select_device
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.tracking import TrackingConfig, training_run
from mlfastsim.core.trainer import Trainer, TrainerConfig, TrainResult, split_train_val
from mlfastsim.showers.conditioning.grid import HadronDataConfig, HadronNormalisation, load_hadron_data
from mlfastsim.showers.models.bibae import BIBAEConfig, PostProcessConfig
from mlfastsim.showers.models.hadrons import HADRON_MODELS, latent_dim
from mlfastsim.showers.models.wgan import RegressorConfig, WGANConfig

HadronModelConfig = Annotated[WGANConfig | BIBAEConfig | PostProcessConfig | RegressorConfig,
                              Field(discriminator="type")]

# the first-stage checkpoint each second stage needs, by the config field that names it
_AUX = {"wgan": ("regressor_checkpoint", "regressor"), "postprocess": ("bibae_checkpoint", "bibae")}


class HadronTrainConfig(StrictModel):
    """``showers train --config configs/hadrons/{wgan,bibae,postprocess,regressor}.yaml``."""

    data: HadronDataConfig = HadronDataConfig()
    model: HadronModelConfig = Field(default_factory=BIBAEConfig)
    trainer: TrainerConfig = TrainerConfig()
    device: DeviceConfig = DeviceConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: Path = Path("runs/hadrons")
    transfer_from: Path | None = None  # load matching weights from another checkpoint of the same model type


def is_hadron_model(model_type: str | None) -> bool:
    return model_type in HADRON_MODELS


@dataclass
class LoadedHadronModel:
    model_type: str
    config: Any
    modules: dict[str, nn.Module]
    norm: HadronNormalisation
    state: dict[str, Any]
    path: Path

    def sampler(self) -> nn.Module:
        """The module generation and ONNX export run: [z, e] (B, latent + 1) -> (B, n_voxels)."""
        spec = HADRON_MODELS[self.model_type]
        module = spec.sampler(self.modules, self.config, self.norm.grid_shape)
        return module.eval()

    @property
    def latent_dim(self) -> int:
        return int(latent_dim(self.config))


def load_hadron_model(path: str | Path, *, expect_type: str | tuple[str, ...] | None = None,
                      map_location: str | torch.device = "cpu") -> LoadedHadronModel:
    """Rebuild a hadron model from a checkpoint alone; refuse other model types with a clear error."""
    p = Path(path)
    state = load_checkpoint(p, map_location=map_location)
    model_type = state.get("model_type")
    if model_type is None or "modules" not in state or "normalisation" not in state:
        raise InputFileError("not a mlfastsim hadron-model checkpoint (no model_type/normalisation)", file=p,
                             field="model_type", fix="pass a checkpoint written by showers train on a hadron config")
    if not is_hadron_model(model_type):
        raise InputFileError(f"checkpoint holds a {model_type!r} model, not a hadron model", file=p,
                             field="model_type", fix=f"pass a checkpoint of one of {', '.join(HADRON_MODELS)}")
    wanted = (expect_type,) if isinstance(expect_type, str) else expect_type
    if wanted is not None and model_type not in wanted:
        raise InputFileError(f"checkpoint holds a {model_type!r} model, {' or '.join(wanted)} is needed here",
                             file=p, field="model_type", fix=f"pass a checkpoint trained as {wanted[0]}")
    spec = HADRON_MODELS[model_type]
    try:
        cfg = spec.config.model_validate(state["model_config"])
    except Exception as exc:  # pydantic ValidationError: a config this version cannot read
        raise InputFileError(f"model_config cannot be read ({str(exc).splitlines()[0]})", file=p,
                             field="model_config", fix="use a checkpoint written by this mlfastsim version") from exc
    norm = HadronNormalisation.from_dict(state["normalisation"], source=p)
    modules = spec.build_modules(cfg, norm.grid_shape, seed=0)
    saved = state["modules"]
    for name, module in modules.items():
        if name not in saved:
            raise InputFileError(f"checkpoint has no weights for {name!r}", file=p, field="modules",
                                 fix="pass an unmodified checkpoint")
        try:
            module.load_state_dict(saved[name])
        except RuntimeError as exc:
            raise InputFileError(f"checkpoint weights do not fit the {model_type} model ({str(exc).splitlines()[0]})",
                                 file=p, field="modules", fix="pass an unmodified checkpoint") from exc
        module.eval()
    return LoadedHadronModel(model_type, cfg, modules, norm, state, p)


def _aux_modules(cfg: HadronTrainConfig) -> tuple[HadronTrainConfig, dict[str, nn.Module] | None,
                                                   HadronNormalisation | None]:
    """Load the first-stage network a second stage needs.

    Its architecture is taken from its checkpoint (``model.regressor`` / ``model.bibae`` are filled in),
    so a user names the checkpoint and nothing else; the data are then prepared exactly as for that
    stage (same grid, scale and threshold).
    """
    model_type = cfg.model.type
    if model_type not in _AUX or (model_type == "wgan" and cfg.model.regressor_weight == 0):
        return cfg, None, None
    field, wanted = _AUX[model_type]
    path = getattr(cfg.model, field)
    if path is None:
        hint = ("train one with `showers train-regressor` and set model.regressor_checkpoint, "
                "or set model.regressor_weight: 0") if wanted == "regressor" else (
            "train the BIB-AE first (showers train --config configs/hadrons/bibae.yaml) and set "
            "model.bibae_checkpoint to its checkpoint")
        raise ConfigError(f"the {model_type} config needs a {wanted} checkpoint but none is given",
                          field=f"model.{field}", fix=hint)
    loaded = load_hadron_model(path, expect_type=wanted)
    model = cfg.model.model_copy(update={wanted: loaded.config})
    return cfg.model_copy(update={"model": model}), loaded.modules, loaded.norm


def hadron_meta(cfg: HadronTrainConfig, norm: HadronNormalisation) -> dict[str, Any]:
    return {"model_type": cfg.model.type, "model_config": cfg.model.model_dump(mode="json"),
            "normalisation": norm.to_dict(), "mesh": norm.grid.to_dict()}


def train_hadrons(cfg: HadronTrainConfig, *, resume: bool | str | Path = False, progress: bool = True) -> TrainResult:
    """Train the configured hadron model; checkpoints in ``output_dir/checkpoints``."""
    device = select_device(cfg.device)
    dist_utils.init_distributed(device)
    cfg, aux, aux_norm = _aux_modules(cfg)
    data = load_hadron_data(cfg.data, expect=aux_norm)
    (x_tr, e_tr), (x_val, e_val) = split_train_val((data.x, data.e), cfg.data.val_fraction, cfg.trainer.seed)
    torch.manual_seed(cfg.trainer.seed)
    spec = HADRON_MODELS[cfg.model.type]
    if aux is not None:
        aux = {k: m.to(device) for k, m in aux.items()}
    task = spec.build_task(cfg.model, data.norm.grid_shape, seed=cfg.trainer.seed, aux_modules=aux)
    for module in task.modules().values():
        module.to(device)
    if cfg.transfer_from is not None:
        source = load_hadron_model(cfg.transfer_from, expect_type=cfg.model.type)
        for name, module in task.modules().items():
            if name in source.modules:
                load_matching_weights(module, source.modules[name].state_dict())
    with training_run(cfg, cfg.output_dir, cfg.tracking, f"hadrons-{cfg.model.type}") as (outdir, tracker):
        trainer = Trainer(
            task, cfg.trainer, outdir,
            train_data=(x_tr.to(device), e_tr.to(device)), val_data=(x_val.to(device), e_val.to(device)),
            tracker=tracker, checkpoint_meta=hadron_meta(cfg, data.norm), device=device, progress=progress,
            description=f"train {cfg.model.type}",
        )
        return trainer.fit(resume=resume)
