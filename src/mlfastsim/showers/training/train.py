"""``showers train`` and ``showers tune``: any registered model type on its family's data, one route.

The model type (``model.type``) picks its registry entry (:data:`mlfastsim.showers.models.MODELS`), which
reads and normalises the data, builds the training task for the core :class:`~mlfastsim.core.trainer.Trainer`
and says which first-stage models it builds on (the WGAN's energy regressor, the post-processor's BIB-AE).
Nothing here knows the families apart.

Also home of the validation-plot hook every shower trainer shares: generate showers for the validation
conditions and run the validation (no classifier) every ``plot_freq`` steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.checkpoint import load_matching_weights, resolve_checkpoint_ref
from mlfastsim.core.config import load_config
from mlfastsim.core.devices import select_device
from mlfastsim.core.errors import ConfigError
from mlfastsim.core.tracking import Tracker, training_run
from mlfastsim.core.trainer import Trainer, TrainResult, split_train_val
from mlfastsim.showers.config import TrainConfig
from mlfastsim.showers.io.native import ShowerData
from mlfastsim.showers.models import (
    ModelType,
    Normalisation,
    checkpoint_meta,
    get_model_type,
    load_model,
    require_command,
)
from mlfastsim.showers.training.freeze import freeze_all_but


def sample_normalised(spec: ModelType, modules: dict[str, nn.Module], cfg: Any, norm: Normalisation,
                      c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Network-unit showers for condition rows ``c`` from z ~ N(0, 1) drawn with ``generator``.

    Runs the model's sampler in eval mode and puts every module back in the mode it was in, so a hook
    called mid-training changes neither the training nor its random stream.
    """
    modes = {name: m.training for name, m in modules.items()}
    try:
        sampler = spec.sampler(modules, cfg, norm)
        sampler.eval()
        c2 = c.reshape(c.shape[0], -1)
        z = torch.randn(c2.shape[0], spec.latent_width(cfg, norm), generator=generator, device=c2.device,
                        dtype=c2.dtype)
        with torch.no_grad():
            return sampler(torch.cat([z, c2], dim=1))
    finally:
        for name, m in modules.items():
            m.train(modes[name])


def plot_hook(spec: ModelType, cfg: Any, norm: Normalisation, reference: ShowerData, c_val: torch.Tensor,
              outdir: Path, tracker: Tracker | None, *,
              seed: int = 0) -> Callable[[Trainer, int], None]:
    """A trainer hook: validation figures of generated vs held-out showers at this step.

    It draws from its own seeded generator, so calling it never changes the training's random stream.
    """
    from mlfastsim.showers.validation.validate import run_validation

    energies = reference.energies

    def hook(trainer: Trainer, step: int) -> None:
        g = torch.Generator(device=c_val.device).manual_seed(seed)
        gen = sample_normalised(spec, trainer.task.modules(), cfg, norm, c_val, g).cpu().numpy()
        showers = gen.reshape(len(energies), -1) * norm.row_scale(energies)[:, None]
        norm.finish_(showers)
        candidate = ShowerData(energies, showers.astype(np.float32), reference.mesh, reference.angles)
        plot_dir = outdir / "plots" / f"step_{step:08d}"
        metrics = run_validation(reference, candidate, plot_dir, classifier=False,
                                 labels=("held-out", f"model@{step}"), exclude_empty=True)
        if tracker is not None:
            seps = [m["separation_power"] for m in metrics["observables"].values()]
            tracker.log_metrics({"plots/mean_separation_power": float(np.mean(seps))}, step=step)
            for fig in metrics.get("figures", {}).values():
                tracker.log_artifact(plot_dir / Path(fig).name, subdir=f"plots/step_{step:08d}")

    return hook


def resolve_stages(cfg: TrainConfig, spec: ModelType) -> tuple[TrainConfig, dict[str, nn.Module] | None,
                                                                Normalisation | None]:
    """Load the first-stage models a configuration builds on.

    Their architecture is taken from their checkpoints (the model config's field named after the stage's
    model type is filled in), so a user names the checkpoint and nothing else; the data are then prepared
    exactly as for that stage (same geometry, scale and threshold: its normalisation is returned).
    """
    aux: dict[str, nn.Module] = {}
    expect: Normalisation | None = None
    model_cfg = cfg.model
    for stage in spec.stages(model_cfg):
        path = getattr(model_cfg, stage.field)
        if path is None:
            raise ConfigError(f"the {spec.name} config needs a {stage.model_type} checkpoint but none is given",
                              field=f"model.{stage.field}", fix=stage.hint)
        loaded = load_model(path, expect_type=stage.model_type)
        if hasattr(model_cfg, stage.model_type):
            model_cfg = model_cfg.model_copy(update={stage.model_type: loaded.config})
        aux.update(loaded.modules)
        expect = loaded.norm
    return cfg.model_copy(update={"model": model_cfg}), (aux or None), expect


def train_from_config(
    cfg: TrainConfig,
    *,
    resume: bool | str | Path = False,
    progress: bool = True,
    eval_callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the configured model on the configured files; checkpoints go to ``output_dir/checkpoints``."""
    spec = get_model_type(cfg.model.type)
    require_command(spec, "train")
    device = select_device(cfg.device)
    dist_utils.init_distributed(device)
    cfg, aux, expect = resolve_stages(cfg, spec)
    data = spec.load_data(cfg.data, expect=expect)
    seed = cfg.trainer.seed
    (x_tr, c_tr), (x_val, c_val) = split_train_val((data.x, data.c), cfg.data.val_fraction, seed)
    batches = max(1, x_tr.shape[0] // max(1, min(cfg.trainer.batch_size, x_tr.shape[0])))
    total = cfg.trainer.max_epochs * batches if cfg.trainer.max_epochs else (cfg.trainer.max_steps or 1)
    torch.manual_seed(seed)
    if aux is not None:
        aux = {k: m.to(device) for k, m in aux.items()}
    task = spec.build_task(cfg.model, data.norm, seed=seed, trainer=cfg.trainer, total_steps=total, aux=aux)
    for module in task.modules().values():
        module.to(device)
    if cfg.transfer_from is not None:
        source = load_model(resolve_checkpoint_ref(cfg.transfer_from, field="transfer_from"), expect_type=spec.name)
        for name, module in task.modules().items():
            if name in source.modules:
                load_matching_weights(module, source.modules[name].state_dict())
    if cfg.trainable is not None:
        # frozen weights get no gradient, so every torch optimiser leaves them (and its state for them) alone
        freeze_all_but(task.modules(), cfg.trainable)
    with training_run(cfg, cfg.output_dir, cfg.tracking, f"train-{spec.name}") as (outdir, tracker):
        trainer = Trainer(
            task, cfg.trainer, outdir,
            train_data=(x_tr.to(device), c_tr.to(device)), val_data=(x_val.to(device), c_val.to(device)),
            tracker=tracker, checkpoint_meta=checkpoint_meta(spec, cfg.model, data.norm),
            device=device, progress=progress, description=f"train {spec.name}",
        )
        if cfg.trainer.plot_freq and x_val.shape[0] > 1 and spec.supports("generate"):
            reference = validation_reference(data, x_val, cfg.data.val_fraction, seed)
            trainer.add_hook(cfg.trainer.plot_freq,
                             plot_hook(spec, cfg.model, data.norm, reference, c_val.to(device), outdir, tracker))
        if eval_callback is not None:
            trainer.add_eval_callback(eval_callback)
        return trainer.fit(resume=resume)


def validation_reference(data: Any, x_val: torch.Tensor, val_fraction: float, seed: int) -> ShowerData:
    """The held-out showers as the network was shown them (clipped, cropped, thresholded), in MeV.

    Energies and angles come from the loaded files through the same split the trainer uses.
    """
    samples = data.samples
    energies = np.concatenate([s.energies for s in samples]).astype(np.float32)
    angles = np.concatenate([s.angles if s.angles is not None else np.full(len(s), 90.0, np.float32)
                             for s in samples]).astype(np.float32)
    (_,), (val_idx,) = split_train_val((torch.arange(len(energies)),), val_fraction, seed)
    v = val_idx.numpy()
    if v.shape[0] != x_val.shape[0]:
        raise ConfigError(f"{x_val.shape[0]} validation showers but {v.shape[0]} held-out file rows", field="data",
                          fix="a model type's load_data must keep one row per shower, in file order")
    showers = x_val.reshape(x_val.shape[0], -1).cpu().numpy() * data.norm.row_scale(energies[v])[:, None]
    data.norm.finish_(showers)
    return ShowerData(energies[v], showers.astype(np.float32), data.norm.geometry, angles[v])


def tune_objective(tune_cfg: Any) -> Callable[[list[str], Callable[[int, float], None]], float]:
    """The objective of ``showers tune``: train ``base_config`` with a trial's overrides, report val metrics.

    Each trial trains in its own directory under ``output_dir/trials`` so trials never share checkpoints.
    """

    def objective(overrides: list[str], report: Callable[[int, float], None]) -> float:
        cfg = load_config(TrainConfig, tune_cfg.base_config, overrides=overrides)
        require_command(get_model_type(cfg.model.type), "tune")
        trial_dir = Path(tune_cfg.output_dir) / "trials" / uuid.uuid4().hex[:12]
        cfg = cfg.model_copy(update={"output_dir": trial_dir})
        cfg.tracking.dir = trial_dir / "tracking"
        metric = tune_cfg.metric
        last: dict[str, float] = {}

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            last.update(metrics)
            if metric in metrics:
                report(step, metrics[metric])

        result = train_from_config(cfg, progress=False, eval_callback=on_eval)
        if metric == "loss":
            return result.best_val_loss
        if metric not in last:
            raise ConfigError(f"metric {metric!r} was never reported by the validation", field="metric",
                              fix=f"use one of {', '.join(sorted(last)) or 'loss'}")
        return last[metric]

    return objective
