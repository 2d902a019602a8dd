"""Registry of the hadron-shower models (arXiv:2112.09709): how to build, train and sample each one.

Every entry of :data:`HADRON_MODELS` gives

* ``config``: its pydantic config class (the ``model:`` section, discriminated by ``type``);
* ``build_modules(cfg, grid_shape, *, seed)``: fresh modules with the *same names* the training task's
  :meth:`modules` returns, so a checkpoint's ``modules`` entry loads into them with ``load_state_dict``
  (this is how generate/export rebuild a model from a checkpoint alone);
* ``build_task(cfg, grid_shape, *, seed, aux_modules)``: the :class:`~mlfastsim.core.trainer.TrainTask`;
  ``aux_modules`` carries the frozen networks a stage builds on: ``{"regressor": ...}`` for ``wgan``
  (required when ``regressor_weight > 0``) and ``{"bibae": ...}`` for ``postprocess`` (required for a
  fresh run; when absent a BIB-AE of ``cfg.bibae``'s architecture is built, whose weights must then come
  from a post-processing checkpoint, i.e. resume);
* ``sampler(modules, cfg, grid_shape)``: an ``nn.Module`` mapping one float tensor (B, latent_dim + 1) =
  [z ~ N(0, 1), e] to (B, n_z * n_y * n_x) scaled cell energies, exportable with ``torch.onnx.export(...,
  dynamo=True)``.  ``regressor`` has no sampler (it is not generative) and raises a ConfigError.

Training order: ``regressor`` -> ``wgan``; ``bibae`` -> ``postprocess``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from torch import nn

from mlfastsim.core.errors import ConfigError
from mlfastsim.core.trainer import TrainTask
from mlfastsim.showers.models.bibae import (
    BIBAE,
    BIBAEConfig,
    BIBAESampler,
    BIBAETask,
    LatentCritic,
    MainCritic,
    PostProcessConfig,
    PostProcessor,
    PostProcessTask,
)
from mlfastsim.showers.models.wgan import (
    Critic,
    EnergyRegressor,
    Generator,
    GridShape,
    RegressorConfig,
    RegressorTask,
    WGANConfig,
    WGANSampler,
    WGANTask,
    check_grid_shape,
    seeded_build,
)

AuxModules = dict[str, nn.Module] | None


@dataclass(frozen=True)
class HadronModelSpec:
    """How to configure, build, train and sample one hadron-shower model type."""

    config: type[BaseModel]
    build_modules: Callable[..., dict[str, nn.Module]]
    build_task: Callable[..., TrainTask]
    sampler: Callable[[dict[str, nn.Module], Any, GridShape], nn.Module]
    description: str


def _expect(cfg: BaseModel, cls: type[BaseModel]) -> None:
    if not isinstance(cfg, cls):
        raise ConfigError(f"expected a {cls.__name__}, got {type(cfg).__name__}", field="model.type",
                          fix="pass the config of the model type being built")


def _aux(aux_modules: AuxModules, name: str) -> nn.Module | None:
    return (aux_modules or {}).get(name)


# ------------------------------------------------------------------------------------------- regressor
def _regressor_modules(cfg: RegressorConfig, grid_shape: GridShape, *, seed: int = 0) -> dict[str, nn.Module]:
    _expect(cfg, RegressorConfig)
    return {"regressor": seeded_build(seed, EnergyRegressor, check_grid_shape(grid_shape), cfg)}


def _regressor_task(cfg: RegressorConfig, grid_shape: GridShape, *, seed: int = 0,
                    aux_modules: AuxModules = None) -> TrainTask:
    reg = _regressor_modules(cfg, grid_shape, seed=seed)["regressor"]
    return RegressorTask(reg, cfg)  # type: ignore[arg-type]


def _no_sampler(modules: dict[str, nn.Module], cfg: Any, grid_shape: GridShape) -> nn.Module:
    raise ConfigError("the energy regressor is not a generative model", field="model.type",
                      fix="generate or export with a wgan, bibae or postprocess checkpoint")


# ------------------------------------------------------------------------------------------- wgan
def _wgan_modules(cfg: WGANConfig, grid_shape: GridShape, *, seed: int = 0) -> dict[str, nn.Module]:
    _expect(cfg, WGANConfig)
    grid = check_grid_shape(grid_shape)

    def build() -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {
            "generator": Generator(grid, cfg.latent_dim, cfg.generator_channels, cfg.leaky_slope),
            "critic": Critic(grid, cfg.critic_channels, cfg.critic_hidden, layer_norm=cfg.critic_layer_norm,
                             leaky_slope=cfg.leaky_slope),
        }
        if cfg.regressor_weight > 0:
            mods["regressor"] = EnergyRegressor(grid, cfg.regressor)
        return mods

    return seeded_build(seed, build)


def _wgan_task(cfg: WGANConfig, grid_shape: GridShape, *, seed: int = 0, aux_modules: AuxModules = None) -> TrainTask:
    mods = _wgan_modules(cfg, grid_shape, seed=seed)
    regressor = None
    if cfg.regressor_weight > 0:
        regressor = _aux(aux_modules, "regressor")
        if regressor is None:
            raise ConfigError("the WGAN's energy constraint needs a trained regressor, none was given",
                              field="model.regressor_checkpoint",
                              fix="train one with `showers train-regressor` and set model.regressor_checkpoint, "
                                  "or set model.regressor_weight: 0")
        got = getattr(regressor, "cfg", None)
        if isinstance(got, RegressorConfig) and got.model_dump() != cfg.regressor.model_dump():
            raise ConfigError("the regressor checkpoint's architecture differs from model.regressor",
                              field="model.regressor", fix="copy the regressor checkpoint's model_config into "
                                                           "model.regressor")
        if getattr(regressor, "grid_shape", tuple(grid_shape)) != check_grid_shape(grid_shape):
            raise ConfigError(f"the regressor was trained on grid {regressor.grid_shape}, the WGAN uses "
                              f"{tuple(grid_shape)}", field="model.regressor_checkpoint",
                              fix="train the regressor on the same cropped grid")
    return WGANTask(mods["generator"], mods["critic"], cfg, regressor=regressor, seed=seed)  # type: ignore[arg-type]


def _wgan_sampler(modules: dict[str, nn.Module], cfg: WGANConfig, grid_shape: GridShape) -> nn.Module:
    return WGANSampler(modules["generator"]).eval()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- bibae
def _bibae_modules(cfg: BIBAEConfig, grid_shape: GridShape, *, seed: int = 0) -> dict[str, nn.Module]:
    _expect(cfg, BIBAEConfig)
    grid = check_grid_shape(grid_shape)
    return seeded_build(seed, lambda: {
        "bibae": BIBAE(grid, cfg),
        "latent_critic": LatentCritic(cfg.latent_dim, cfg.latent_critic_hidden, cfg.leaky_slope),
        "main_critic": MainCritic(grid, cfg),
    })


def _bibae_task(cfg: BIBAEConfig, grid_shape: GridShape, *, seed: int = 0, aux_modules: AuxModules = None
                ) -> TrainTask:
    m = _bibae_modules(cfg, grid_shape, seed=seed)
    return BIBAETask(m["bibae"], m["latent_critic"], m["main_critic"], cfg, seed=seed)  # type: ignore[arg-type]


def _bibae_sampler(modules: dict[str, nn.Module], cfg: BIBAEConfig, grid_shape: GridShape) -> nn.Module:
    return BIBAESampler(modules["bibae"].decoder).eval()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- postprocess
def _pp_modules(cfg: PostProcessConfig, grid_shape: GridShape, *, seed: int = 0) -> dict[str, nn.Module]:
    _expect(cfg, PostProcessConfig)
    grid = check_grid_shape(grid_shape)
    return seeded_build(seed, lambda: {"bibae": BIBAE(grid, cfg.bibae),
                                       "postprocessor": PostProcessor(grid, cfg.channels, cfg.leaky_slope)})


def _pp_task(cfg: PostProcessConfig, grid_shape: GridShape, *, seed: int = 0, aux_modules: AuxModules = None
             ) -> TrainTask:
    m = _pp_modules(cfg, grid_shape, seed=seed)
    bibae = _aux(aux_modules, "bibae")
    if bibae is not None:
        got = getattr(bibae, "cfg", None)
        if isinstance(got, BIBAEConfig) and got.model_dump() != cfg.bibae.model_dump():
            raise ConfigError("the BIB-AE checkpoint's config differs from model.bibae", field="model.bibae",
                              fix="copy the BIB-AE checkpoint's model_config into model.bibae")
        if getattr(bibae, "grid_shape", None) != check_grid_shape(grid_shape):
            raise ConfigError(f"the BIB-AE was trained on grid {getattr(bibae, 'grid_shape', '?')}, the data has "
                              f"{tuple(grid_shape)}", field="model.bibae_checkpoint",
                              fix="post-process on the same cropped grid the BIB-AE was trained on")
        m["bibae"] = bibae
    return PostProcessTask(m["bibae"], m["postprocessor"], cfg, seed=seed)  # type: ignore[arg-type]


def _pp_sampler(modules: dict[str, nn.Module], cfg: PostProcessConfig, grid_shape: GridShape) -> nn.Module:
    return BIBAESampler(modules["bibae"].decoder, modules["postprocessor"]).eval()  # type: ignore[arg-type]


HADRON_MODELS: dict[str, HadronModelSpec] = {
    "wgan": HadronModelSpec(WGANConfig, _wgan_modules, _wgan_task, _wgan_sampler,
                            "conditional 3D WGAN-GP with an energy constrainer"),
    "bibae": HadronModelSpec(BIBAEConfig, _bibae_modules, _bibae_task, _bibae_sampler,
                             "BIB-AE: VAE with latent and main WGAN-GP critics"),
    "postprocess": HadronModelSpec(PostProcessConfig, _pp_modules, _pp_task, _pp_sampler,
                                   "BIB-AE + post-processor trained on the sorted-hit MMD"),
    "regressor": HadronModelSpec(RegressorConfig, _regressor_modules, _regressor_task, _no_sampler,
                                 "energy regressor (the WGAN's constrainer)"),
}


def get_hadron_spec(model_type: str) -> HadronModelSpec:
    """The registry entry, or a one-line ConfigError naming the valid types."""
    try:
        return HADRON_MODELS[model_type]
    except KeyError:
        raise ConfigError(f"unknown hadron model type {model_type!r}", field="model.type",
                          fix=f"use one of {', '.join(HADRON_MODELS)}") from None


def latent_dim(cfg: BaseModel) -> int:
    """Width of the noise part of the sampler input (the sampler takes latent_dim + 1 columns)."""
    if isinstance(cfg, WGANConfig | BIBAEConfig):
        return cfg.latent_dim
    if isinstance(cfg, PostProcessConfig):
        return cfg.bibae.latent_dim
    raise ConfigError(f"{type(cfg).__name__} has no latent space", field="model.type",
                      fix="use a wgan, bibae or postprocess config")
