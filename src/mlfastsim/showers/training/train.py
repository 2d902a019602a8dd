"""``showers train``: plain conditional training of a shower model on one or several geometries.

Also home of what every shower trainer shares: the validation-plot hook (generate showers for the
validation conditions and run the validation, no classifier, every ``plot_freq`` steps).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.devices import select_device
from mlfastsim.core.tracking import Tracker, training_run
from mlfastsim.core.trainer import (
    SupervisedTask,
    Trainer,
    TrainResult,
    make_optimizer,
    make_scheduler,
    split_train_val,
)
from mlfastsim.showers.conditioning.em import denormalise_showers, load_training_data
from mlfastsim.showers.config import TrainConfig
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.models import build_model, get_model_spec, model_meta


def plot_hook(
    x_val: torch.Tensor,
    c_val: torch.Tensor,
    energies_mev: np.ndarray,
    angles_deg: np.ndarray,
    mesh: CylindricalMesh,
    outdir: Path,
    tracker: Tracker | None,
    *,
    seed: int = 0,
) -> Callable[[Trainer, int], None]:
    """A trainer hook: validation figures of generated vs held-out showers at this step.

    It draws from its own seeded generator, so calling it never changes the training's random stream.
    """
    from mlfastsim.showers.validation.validate import run_validation

    reference = ShowerData(energies_mev, denormalise_showers(x_val.cpu().numpy(), energies_mev), mesh, angles_deg)

    def hook(trainer: Trainer, step: int) -> None:
        model = trainer.task.modules()["model"]
        g = torch.Generator(device=c_val.device).manual_seed(seed)
        gen = model.sample(c_val, generator=g).cpu().numpy()
        candidate = ShowerData(energies_mev, denormalise_showers(gen, energies_mev), mesh, angles_deg)
        plot_dir = outdir / "plots" / f"step_{step:08d}"
        metrics = run_validation(reference, candidate, plot_dir, classifier=False,
                                 labels=("held-out", f"model@{step}"), exclude_empty=True)
        if tracker is not None:
            seps = [m["separation_power"] for m in metrics["observables"].values()]
            tracker.log_metrics({"plots/mean_separation_power": float(np.mean(seps))}, step=step)
            for fig in metrics.get("figures", {}).values():
                tracker.log_artifact(plot_dir / Path(fig).name, subdir=f"plots/step_{step:08d}")

    return hook


def train_from_config(
    cfg: TrainConfig,
    *,
    resume: bool | str | Path = False,
    progress: bool = True,
    eval_callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the configured model on the configured files; checkpoints go to ``output_dir/checkpoints``."""
    device = select_device(cfg.device)
    dist_utils.init_distributed(device)
    get_model_spec(cfg.model.type)
    data = load_training_data(cfg.data)
    (x_tr, c_tr), (x_val, c_val) = split_train_val((data.x, data.c), cfg.data.val_fraction, cfg.trainer.seed)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, data.mesh, cfg.data.conditioning).to(device)
    if cfg.transfer_from is not None:
        from mlfastsim.core.checkpoint import load_checkpoint, load_matching_weights

        source = load_checkpoint(cfg.transfer_from)
        if "model" not in source.get("modules", {}):
            from mlfastsim.core.errors import InputFileError

            raise InputFileError("not a mlfastsim model checkpoint (no modules.model)", file=cfg.transfer_from,
                                 field="transfer_from", fix="pass a checkpoint written by showers train/adapt")
        load_matching_weights(model, source["modules"]["model"])
    optimizer = make_optimizer(model.parameters(), cfg.trainer)
    trainer_probe = max(1, (x_tr.shape[0]) // max(1, min(cfg.trainer.batch_size, x_tr.shape[0])))
    total = cfg.trainer.max_epochs * trainer_probe if cfg.trainer.max_epochs else (cfg.trainer.max_steps or 1)
    task = SupervisedTask(model, get_model_spec(cfg.model.type).loss, optimizer,
                          make_scheduler(optimizer, cfg.trainer, total), grad_clip=cfg.trainer.grad_clip)
    with training_run(cfg, cfg.output_dir, cfg.tracking, "train") as (outdir, tracker):
        trainer = Trainer(
            task, cfg.trainer, outdir,
            train_data=(x_tr.to(device), c_tr.to(device)), val_data=(x_val.to(device), c_val.to(device)),
            tracker=tracker, checkpoint_meta=model_meta(cfg.model, data.mesh, cfg.data.conditioning),
            device=device, progress=progress, description="train",
        )
        if cfg.trainer.plot_freq and x_val.shape[0] > 1:
            e_val = (c_val[:, 0].numpy() * cfg.data.conditioning.max_energy_gev * 1000.0).astype(np.float32)
            a_val = (c_val[:, 1].numpy() * cfg.data.conditioning.max_angle_deg).astype(np.float32)
            trainer.add_hook(cfg.trainer.plot_freq,
                             plot_hook(x_val.to(device), c_val.to(device), e_val, a_val, data.mesh, outdir, tracker))
        if eval_callback is not None:
            trainer.add_eval_callback(eval_callback)
        return trainer.fit(resume=resume)


def tune_objective(tune_cfg: object) -> Callable[[list[str], Callable[[int, float], None]], float]:
    """The objective of ``showers tune``: train ``base_config`` with a trial's overrides, report val metrics.

    Each trial trains in its own directory under ``output_dir/trials`` so trials never share checkpoints.
    """
    import uuid

    from mlfastsim.core.config import load_config

    def objective(overrides: list[str], report: Callable[[int, float], None]) -> float:
        cfg = load_config(TrainConfig, tune_cfg.base_config, overrides=overrides)
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
            from mlfastsim.core.errors import ConfigError

            raise ConfigError(f"metric {metric!r} was never reported by the validation", field="metric",
                              fix=f"use one of {', '.join(sorted(last)) or 'loss'}")
        return last[metric]

    return objective
