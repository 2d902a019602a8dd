"""The hadron-shower model types on a Cartesian grid (arXiv:2112.09709): wgan, bibae, postprocess, regressor.

Each is a :class:`~mlfastsim.showers.models.contract.ModelType` registered in
:data:`mlfastsim.showers.models.MODELS`; they share the grid normalisation
(:class:`~mlfastsim.showers.conditioning.grid.HadronNormalisation`) and differ in what they build.  The
helpers below give, per type,

* ``config``: its pydantic config class (the ``model:`` section, discriminated by ``type``);
* ``build_modules(cfg, grid_shape, *, seed, baseline)``: fresh modules with the *same names* the training
  task's :meth:`modules` returns, so a checkpoint's ``modules`` entry loads into them with
  ``load_state_dict`` (this is how generate/export rebuild a model from a checkpoint alone); ``baseline``
  is the normalisation's energy baseline (:meth:`HadronNormalisation.baseline_fields`), used by the
  generators whose config sets ``energy_baseline`` and rebuilt from the checkpoint's normalisation, never
  saved with the weights;
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
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from torch import nn

from mlfastsim.core.errors import ConfigError
from mlfastsim.core.trainer import TrainerConfig, TrainTask
from mlfastsim.showers.conditioning.base import TrainingData
from mlfastsim.showers.conditioning.grid import HadronDataConfig, HadronNormalisation, load_hadron_data
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
from mlfastsim.showers.models.contract import ModelType, Normalisation, Stage
from mlfastsim.showers.models.wgan import (
    Baseline,
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


def _expect(cfg: BaseModel, cls: type[BaseModel]) -> None:
    if not isinstance(cfg, cls):
        raise ConfigError(f"expected a {cls.__name__}, got {type(cfg).__name__}", field="model.type",
                          fix="pass the config of the model type being built")


def _aux(aux_modules: AuxModules, name: str) -> nn.Module | None:
    return (aux_modules or {}).get(name)


def _needed(cfg: WGANConfig | BIBAEConfig, baseline: Baseline | None) -> Baseline | None:
    """The energy baseline when the config asks for it; a clear error when it asks and none was fitted."""
    if not cfg.energy_baseline:
        return None
    if baseline is None:
        raise ConfigError("model.energy_baseline is on but the data's normalisation has no energy baseline "
                          "(a checkpoint or first stage written before it)", field="model.energy_baseline",
                          fix="retrain the first stage (regressor or BIB-AE) with this version, or set "
                              "model.energy_baseline: false")
    return baseline


# ------------------------------------------------------------------------------------------- regressor
def _regressor_modules(cfg: RegressorConfig, grid_shape: GridShape, *, seed: int = 0,
                       baseline: Baseline | None = None) -> dict[str, nn.Module]:
    _expect(cfg, RegressorConfig)
    return {"regressor": seeded_build(seed, EnergyRegressor, check_grid_shape(grid_shape), cfg)}


def _regressor_task(cfg: RegressorConfig, grid_shape: GridShape, *, seed: int = 0,
                    aux_modules: AuxModules = None, baseline: Baseline | None = None) -> TrainTask:
    reg = _regressor_modules(cfg, grid_shape, seed=seed)["regressor"]
    return RegressorTask(reg, cfg)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- wgan
def _wgan_modules(cfg: WGANConfig, grid_shape: GridShape, *, seed: int = 0, baseline: Baseline | None = None
                  ) -> dict[str, nn.Module]:
    _expect(cfg, WGANConfig)
    grid = check_grid_shape(grid_shape)

    def build() -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {
            "generator": Generator(grid, cfg.latent_dim, cfg.generator_channels, cfg.leaky_slope,
                                   baseline=_needed(cfg, baseline), depth_shift=cfg.depth_shift),
            "critic": Critic(grid, cfg.critic_channels, cfg.critic_hidden, layer_norm=cfg.critic_layer_norm,
                             leaky_slope=cfg.leaky_slope),
        }
        if cfg.regressor_weight > 0:
            mods["regressor"] = EnergyRegressor(grid, cfg.regressor)
        return mods

    return seeded_build(seed, build)


def _wgan_task(cfg: WGANConfig, grid_shape: GridShape, *, seed: int = 0, aux_modules: AuxModules = None,
               baseline: Baseline | None = None) -> TrainTask:
    mods = _wgan_modules(cfg, grid_shape, seed=seed, baseline=baseline)
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
def _bibae_modules(cfg: BIBAEConfig, grid_shape: GridShape, *, seed: int = 0, baseline: Baseline | None = None
                   ) -> dict[str, nn.Module]:
    _expect(cfg, BIBAEConfig)
    grid = check_grid_shape(grid_shape)
    return seeded_build(seed, lambda: {
        "bibae": BIBAE(grid, cfg, _needed(cfg, baseline)),
        "latent_critic": LatentCritic(cfg.latent_dim, cfg.latent_critic_hidden, cfg.leaky_slope),
        "main_critic": MainCritic(grid, cfg),
    })


def _bibae_task(cfg: BIBAEConfig, grid_shape: GridShape, *, seed: int = 0, aux_modules: AuxModules = None,
                baseline: Baseline | None = None) -> TrainTask:
    m = _bibae_modules(cfg, grid_shape, seed=seed, baseline=baseline)
    return BIBAETask(m["bibae"], m["latent_critic"], m["main_critic"], cfg, seed=seed)  # type: ignore[arg-type]


def _bibae_sampler(modules: dict[str, nn.Module], cfg: BIBAEConfig, grid_shape: GridShape) -> nn.Module:
    return BIBAESampler(modules["bibae"].decoder).eval()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- postprocess
def _pp_modules(cfg: PostProcessConfig, grid_shape: GridShape, *, seed: int = 0, baseline: Baseline | None = None
                ) -> dict[str, nn.Module]:
    _expect(cfg, PostProcessConfig)
    grid = check_grid_shape(grid_shape)
    return seeded_build(seed, lambda: {"bibae": BIBAE(grid, cfg.bibae, _needed(cfg.bibae, baseline)),
                                       "postprocessor": PostProcessor(grid, cfg.channels, cfg.leaky_slope)})


def _pp_task(cfg: PostProcessConfig, grid_shape: GridShape, *, seed: int = 0, aux_modules: AuxModules = None,
             baseline: Baseline | None = None) -> TrainTask:
    m = _pp_modules(cfg, grid_shape, seed=seed, baseline=baseline)
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


def _baseline_of(norm: Normalisation) -> Baseline | None:
    return norm.baseline_fields() if isinstance(norm, HadronNormalisation) else None


# ------------------------------------------------------------------------------------- registry entries
_REGRESSOR_HINT = ("train one with `showers train-regressor` and set model.regressor_checkpoint, "
                   "or set model.regressor_weight: 0")
_BIBAE_HINT = ("train the BIB-AE first (showers train --config configs/hadrons/bibae.yaml) and set "
               "model.bibae_checkpoint to its checkpoint")


class _GridModel(ModelType):
    """What the hadron model types share: the grid data, its normalisation, a [z, E] sampler input."""

    data_config: ClassVar[type[HadronDataConfig]] = HadronDataConfig
    geometry_kind: ClassVar[str] = "grid"
    max_batch_size: ClassVar[int | None] = 1000
    max_parity_samples: ClassVar[int] = 64
    _modules: ClassVar[Callable[..., dict[str, nn.Module]]]
    _task: ClassVar[Callable[..., TrainTask]]
    _sampler: ClassVar[Callable[..., nn.Module] | None] = None

    def tiny_data(self, files: list[Path]) -> HadronDataConfig:
        # a few training steps leave every generated cell below the 0.5 MIP threshold: keep them all
        return HadronDataConfig(files=files, crop=(7, 7), threshold_mev=0.0)

    # the builders on a bare grid shape (what the normalisation-level methods below call; tests use them)
    def modules_on(self, cfg: Any, grid_shape: GridShape, *, seed: int = 0, baseline: Baseline | None = None
                   ) -> dict[str, nn.Module]:
        return type(self)._modules(cfg, grid_shape, seed=seed, baseline=baseline)

    def task_on(self, cfg: Any, grid_shape: GridShape, *, seed: int = 0, aux_modules: AuxModules = None,
                baseline: Baseline | None = None) -> TrainTask:
        return type(self)._task(cfg, grid_shape, seed=seed, aux_modules=aux_modules, baseline=baseline)

    def sampler_on(self, modules: dict[str, nn.Module], cfg: Any, grid_shape: GridShape) -> nn.Module:
        build = type(self)._sampler
        if build is None:
            return super().sampler(modules, cfg, None)  # type: ignore[arg-type]  (raises: not generative)
        return build(modules, cfg, grid_shape)

    def load_data(self, data_cfg: HadronDataConfig, *, expect: Normalisation | None = None) -> TrainingData:
        return load_hadron_data(data_cfg, expect=expect if isinstance(expect, HadronNormalisation) else None)

    def normalisation_from(self, meta: dict[str, Any], *, source: str | Path | None = None) -> HadronNormalisation:
        return HadronNormalisation.from_meta(meta, source=source)

    def build_modules(self, cfg: Any, norm: Normalisation, *, seed: int = 0) -> dict[str, nn.Module]:
        return self.modules_on(cfg, norm.geometry.shape, seed=seed, baseline=_baseline_of(norm))

    def build_task(self, cfg: Any, norm: Normalisation, *, seed: int, trainer: TrainerConfig, total_steps: int,
                   aux: dict[str, nn.Module] | None = None) -> TrainTask:
        """The GAN-style tasks own their optimisers (learning rates in the model config)."""
        return self.task_on(cfg, norm.geometry.shape, seed=seed, aux_modules=aux, baseline=_baseline_of(norm))

    def latent_dim(self, cfg: Any) -> int:
        if type(self)._sampler is None:
            return super().latent_dim(cfg)
        return latent_dim(cfg)

    def sampler(self, modules: dict[str, nn.Module], cfg: Any, norm: Normalisation, *,
                voxel_order: str = "native") -> nn.Module:
        return self.sampler_on(modules, cfg, norm.geometry.shape)

    def output_description(self, norm: Normalisation) -> str:
        assert isinstance(norm, HadronNormalisation)
        return (f"cell energy / {norm.energy_scale_mev:g} MeV, voxel order z,y,x (x fastest); zero cells below "
                f"{norm.threshold_mev:g} MeV after scaling")


class RegressorModel(_GridModel):
    name: ClassVar[str] = "regressor"
    description: ClassVar[str] = "energy regressor (the WGAN's constrainer)"
    config: ClassVar[type[RegressorConfig]] = RegressorConfig
    commands: ClassVar[frozenset[str]] = frozenset({"train", "tune"})
    _modules = staticmethod(_regressor_modules)
    _task = staticmethod(_regressor_task)

    def tiny_config(self) -> RegressorConfig:
        return RegressorConfig(channels=[4, 8], hidden=16)


class WGANModel(_GridModel):
    name: ClassVar[str] = "wgan"
    description: ClassVar[str] = "conditional 3D WGAN-GP with an energy constrainer"
    config: ClassVar[type[WGANConfig]] = WGANConfig
    _modules = staticmethod(_wgan_modules)
    _task = staticmethod(_wgan_task)
    _sampler = staticmethod(_wgan_sampler)

    def tiny_config(self) -> WGANConfig:
        return WGANConfig(latent_dim=6, generator_channels=[8, 4], critic_channels=[4, 8], critic_hidden=16,
                          n_critic=2, energy_baseline=True, depth_shift=True, regressor=RegressorModel().tiny_config())

    def stages(self, cfg: WGANConfig) -> list[Stage]:
        return [Stage("regressor_checkpoint", "regressor", _REGRESSOR_HINT)] if cfg.regressor_weight > 0 else []


class BIBAEModel(_GridModel):
    name: ClassVar[str] = "bibae"
    description: ClassVar[str] = "BIB-AE: VAE with latent and main WGAN-GP critics"
    config: ClassVar[type[BIBAEConfig]] = BIBAEConfig
    _modules = staticmethod(_bibae_modules)
    _task = staticmethod(_bibae_task)
    _sampler = staticmethod(_bibae_sampler)

    def tiny_config(self) -> BIBAEConfig:
        return BIBAEConfig(latent_dim=5, encoder_channels=[4, 8], encoder_hidden=32, decoder_channels=[8, 4],
                           critic_channels=[4, 8], critic_hidden=16, latent_critic_hidden=[16], energy_baseline=True,
                           depth_shift=True)


class PostProcessModel(_GridModel):
    name: ClassVar[str] = "postprocess"
    description: ClassVar[str] = "BIB-AE + post-processor trained on the sorted-hit MMD"
    config: ClassVar[type[PostProcessConfig]] = PostProcessConfig
    _modules = staticmethod(_pp_modules)
    _task = staticmethod(_pp_task)
    _sampler = staticmethod(_pp_sampler)

    def tiny_config(self) -> PostProcessConfig:
        return PostProcessConfig(bibae=BIBAEModel().tiny_config(), channels=[16, 16], sorted_k=40, lr=3e-3)

    def stages(self, cfg: PostProcessConfig) -> list[Stage]:
        return [Stage("bibae_checkpoint", "bibae", _BIBAE_HINT)]


def latent_dim(cfg: BaseModel) -> int:
    """Width of the noise part of the sampler input (the sampler takes latent_dim + 1 columns)."""
    if isinstance(cfg, WGANConfig | BIBAEConfig):
        return cfg.latent_dim
    if isinstance(cfg, PostProcessConfig):
        return cfg.bibae.latent_dim
    raise ConfigError(f"{type(cfg).__name__} has no latent space", field="model.type",
                      fix="use a wgan, bibae or postprocess config")
