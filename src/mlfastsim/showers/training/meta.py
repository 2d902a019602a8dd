"""MetaHEP: meta-learning over detector geometries, and few-shot adaptation to a new one.

The story: a physicist with a new detector simulates a few hundred showers, adapts a pre-trained model
in seconds and validates it.  The pre-trained model comes from **meta-learning** (MetaHEP, after
Nichol et al.'s Reptile): every native shower file is one *task* (one geometry), and the meta-model is
trained to be a starting point from which a few optimiser steps fit any geometry.

Meta-step (:class:`MetaTask.train_step`)
    Draw ``tasks_per_step`` tasks (without replacement while there are enough) from the task's own
    ``torch.Generator``; for each, copy the meta-weights into a scratch model and take ``inner_steps``
    steps of a *fresh* Adam/SGD optimiser at ``inner_lr`` on batches of that task (indices drawn from the
    same generator).  Then

    * **Reptile**: ``meta <- meta + meta_lr * mean_tasks(adapted - meta)``;
    * **first-order MAML**: the gradient of a fresh batch's loss at each task's adapted weights (the
      "query" gradient) is averaged over tasks and applied by an outer Adam optimiser (``outer_lr``).

Batch norm
    Running mean/variance are estimates, not learned weights, so neither algorithm has a gradient for
    them: both move them exactly like Reptile moves weights (``meta_lr`` interpolation towards the mean of
    the adapted statistics).  Each inner loop runs in train mode from the meta statistics; the counters
    (``num_batches_tracked``) take the adapted value.  Adaptation re-estimates the statistics of the new
    geometry within a few dozen steps (momentum 0.1).

Geometry slots
    The condition vector ends in a one-hot of ``conditioning.n_geometry_slots`` (3) slots.  Each task
    uses the slot ``data.geometry_index[i]`` of its file (default: file order 0, 1, 2...).  A new
    geometry being adapted takes **slot 0** ([1, 0, 0], as in MetaHEP).  With three pre-training
    geometries and three slots no slot can stay unused, so the shipped model gives slot 0 to SiW (the
    Par04 detector), slot 1 to SciPb and slot 2 to PbWO4: adaptation starts from the meta-model as
    conditioned for SiW and re-purposes slot 0 for the new geometry (the slot's meaning is whatever the
    last fine-tuning made it).

Exact resume
    The meta-task's generator state is part of the checkpoint (``extra_state``), evaluation draws its
    noise from a forked, fixed-seed RNG, and inner optimisers are rebuilt every meta-step, so a resumed
    meta-training ends bit-identical to an uninterrupted one (the generic :class:`~mlfastsim.core.trainer.
    Trainer` restores weights, outer optimiser and global RNG).

Adaptation (:func:`adapt`) is plain fine-tuning with the generic trainer: every ``checkpoint_step``
steps a checkpoint is kept and the validation loss recorded in ``summary.json``, so the user can pick
the best step to export.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.checkpoint import list_checkpoints, resolve_checkpoint_ref
from mlfastsim.core.config import dump_config
from mlfastsim.core.devices import select_device
from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.core.io import atomic_write_json, atomic_write_text, ensure_writable_dir
from mlfastsim.core.tracking import tracker_from_config
from mlfastsim.core.trainer import (
    Batch,
    SupervisedTask,
    Trainer,
    TrainerConfig,
    TrainResult,
    make_optimizer,
    split_train_val,
)
from mlfastsim.showers.conditioning.em import EMNormalisation, load_training_data, make_conditions
from mlfastsim.showers.config import AdaptConfig, DataConfig, MetaConfig, TrainConfig
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.native import ShowerData
from mlfastsim.showers.models import LoadedModel, checkpoint_meta, get_model_type, load_model, require_command
from mlfastsim.showers.pretrained import pretrained_path
from mlfastsim.showers.training.freeze import trainable_parameters
from mlfastsim.showers.training.train import plot_hook, sample_normalised, train_from_config, validation_reference

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]

# Seed of the noise used by every evaluation: fixed, so validation curves are not noisier than the model.
EVAL_NOISE_SEED = 20_230_600

# The Par04 shower-shape observables a physicist looks at first (see :mod:`mlfastsim.showers.validation.observables`);
# "mean separation power" everywhere in this module averages these.  ``e_total`` is left out: with identical
# incident energies it repeats ``e_ratio``.
MAIN_OBSERVABLES = (
    "e_ratio",
    "first_moment_z",
    "second_moment_z",
    "first_moment_r",
    "second_moment_r",
    "longitudinal_profile",
    "lateral_profile",
)
# Occupancy observables, reported next to the main ones but not averaged with them: a VAE's sigmoid output
# has no zero suppression, so its cells sit on a smooth floor and whether they count as hit depends on the
# readout threshold far more than on the geometry the model was adapted to.
OCCUPANCY_OBSERVABLES = ("n_hits", "cell_energy")


# ------------------------------------------------------------------------------------------ tasks
@dataclass
class GeometryTask:
    """One meta-learning task: the showers of one geometry file, split into train and validation."""

    name: str
    file: Path
    slot: int
    train: Batch
    val: Batch

    @property
    def n_train(self) -> int:
        return int(self.train[0].shape[0])


def _task_name(data: ShowerData, path: Path) -> str:
    detector = data.meta.get("detector")
    if isinstance(detector, dict) and detector.get("name"):
        return str(detector["name"])
    return path.stem


def load_tasks(
    data_cfg: DataConfig, *, seed: int = 0, device: torch.device | None = None
) -> tuple[list[GeometryTask], CylindricalMesh]:
    """One task per file of ``data_cfg`` (slot from ``geometry_index`` or file order), all on one mesh."""
    if not data_cfg.files:
        raise ConfigError("no data files given", field="data.files",
                          fix="list one native shower file per pre-training geometry")
    slots = list(data_cfg.geometry_index) if data_cfg.geometry_index is not None else list(range(len(data_cfg.files)))
    if len(slots) != len(data_cfg.files):
        raise ConfigError(f"{len(slots)} geometry indices for {len(data_cfg.files)} files",
                          field="data.geometry_index", fix="give one one-hot slot per file")
    device = device or torch.device("cpu")
    tasks: list[GeometryTask] = []
    mesh: CylindricalMesh | None = None
    for i, (path, slot) in enumerate(zip(data_cfg.files, slots, strict=True)):
        one = data_cfg.model_copy(update={"files": [path], "geometry_index": [slot]})
        data = load_training_data(one, mesh=mesh)
        mesh = data.mesh
        train, val = split_train_val((data.x, data.c), data_cfg.val_fraction, seed + i)
        if int(train[0].shape[0]) < 2:
            raise DataError(f"only {int(train[0].shape[0])} training shower(s) after the validation split",
                            file=path, field="showers", fix="give every task at least a few dozen showers")
        tasks.append(GeometryTask(
            name=_task_name(data.samples[0], Path(path)), file=Path(path), slot=int(slot),
            train=tuple(t.to(device) for t in train), val=tuple(t.to(device) for t in val),
        ))
    assert mesh is not None
    return tasks, mesh


# ------------------------------------------------------------------------------------- meta task
def _forked_rng(device: torch.device) -> Any:
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class MetaTask:
    """Reptile / first-order MAML as a :class:`~mlfastsim.core.trainer.TrainTask` (``train_step(None, step)``)."""

    def __init__(self, model: nn.Module, tasks: Sequence[GeometryTask], cfg: MetaConfig, loss_fn: LossFn,
                 device: torch.device | None = None) -> None:
        if not tasks:
            raise ConfigError("meta-learning needs at least one task", field="data.files", fix="list shower files")
        self.model = model
        self.tasks = list(tasks)
        self.cfg = cfg
        self.loss_fn = loss_fn
        self.device = device or torch.device("cpu")
        # the scratch copy the inner loops train; rebuilt from the meta-weights for every task
        self.fast = copy.deepcopy(model)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.outer: torch.optim.Optimizer | None = (
            torch.optim.Adam(model.parameters(), lr=cfg.outer_lr) if cfg.algorithm == "fomaml" else None
        )

    # --- what the trainer saves and restores
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"outer": self.outer} if self.outer is not None else {}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # --- sampling (all from the task's own generator)
    def sample_tasks(self) -> list[int]:
        n, k = len(self.tasks), self.cfg.tasks_per_step
        if k <= n:
            return torch.randperm(n, generator=self.generator)[:k].tolist()
        return torch.randint(n, (k,), generator=self.generator).tolist()

    def sample_batch(self, task: GeometryTask) -> Batch:
        idx = torch.randperm(task.n_train, generator=self.generator)[: self.cfg.batch_size]
        idx = idx.to(task.train[0].device)
        return tuple(t[idx] for t in task.train)

    def _inner_optimizer(self) -> torch.optim.Optimizer:
        if self.cfg.inner_optimizer == "sgd":
            return torch.optim.SGD(self.fast.parameters(), lr=self.cfg.inner_lr)
        return torch.optim.Adam(self.fast.parameters(), lr=self.cfg.inner_lr)

    def wrap(self, wrapper: Any) -> None:
        """Data parallel by task, not by batch: under torchrun each rank adapts its share of the step's tasks
        and :meth:`train_step` sums the results over ranks, so the DDP ``wrapper`` is not used."""

    # --- one meta-step
    def _plan(self) -> list[tuple[int, list[Batch], Batch | None, int]]:
        """Every random choice of a meta-step, drawn up front from the task generator in one fixed order.

        Per sampled task: its index, the inner batches, the FOMAML query batch and a seed for the model's
        own noise (VAE reparameterisation).  Every rank draws the whole plan, so the generator stays in step
        on all ranks and a task's work does not depend on which rank does it or on how many ranks there are.
        """
        plan = []
        for t in self.sample_tasks():
            task = self.tasks[t]
            inner = [self.sample_batch(task) for _ in range(self.cfg.inner_steps)]
            query = self.sample_batch(task) if self.outer is not None else None
            noise_seed = int(torch.randint(2**62, (1,), generator=self.generator))
            plan.append((t, inner, query, noise_seed))
        return plan

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        """Adapt a copy to each sampled task, then move the meta-weights (Reptile) or step them (FOMAML).

        Under torchrun rank r adapts tasks r, r + world, ... of the plan; the sums of adapted weights, query
        gradients and losses are all-reduced, so every rank applies the same update as one process would.
        """
        meta_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        adapted_sum = {k: torch.zeros_like(v) for k, v in meta_state.items() if v.is_floating_point()}
        counters: dict[str, torch.Tensor] = {}
        params = [p for p in self.model.parameters()]
        query_grads = [torch.zeros_like(p) for p in params] if self.outer is not None else []
        # [sum of first losses, sum of last losses, sum of query losses]
        loss_sums = torch.zeros(3, dtype=torch.float64)
        plan = self._plan()
        rank, world = dist_utils.rank(), dist_utils.world_size()
        for _task, inner, query, noise_seed in plan[rank::world]:
            self.fast.load_state_dict(meta_state)
            self.fast.train()
            opt = self._inner_optimizer()
            with _forked_rng(self.device):
                torch.manual_seed(noise_seed)
                for i, inner_batch in enumerate(inner):
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self.fast, inner_batch)["loss"]
                    loss.backward()
                    opt.step()
                    if i == 0:
                        loss_sums[0] += float(loss.detach())
                    last = float(loss.detach())
                loss_sums[1] += last
                if query is not None:
                    self.fast.zero_grad(set_to_none=True)
                    q = self.loss_fn(self.fast, query)["loss"]
                    q.backward()
                    loss_sums[2] += float(q.detach())
                    for acc, p in zip(query_grads, self.fast.parameters(), strict=True):
                        if p.grad is not None:
                            acc += p.grad
            adapted = self.fast.state_dict()
            for k, acc in adapted_sum.items():
                acc += adapted[k]
            counters.update({k: v.clone() for k, v in adapted.items() if not v.is_floating_point()})
        if dist_utils.is_distributed():
            self._all_reduce_step(adapted_sum, query_grads, loss_sums, counters, meta_state)
        n = float(len(plan))
        lr = self.cfg.meta_lr
        with torch.no_grad():
            param_names = {name for name, _ in self.model.named_parameters()}
            new_state = {}
            for k, v in meta_state.items():
                if not v.is_floating_point():
                    new_state[k] = counters.get(k, v)
                elif self.outer is not None and k in param_names:
                    new_state[k] = v  # stepped by the outer optimiser below
                else:
                    new_state[k] = v + lr * (adapted_sum[k] / n - v)
            self.model.load_state_dict(new_state)
        if self.outer is not None:
            self.outer.zero_grad(set_to_none=True)
            for p, g in zip(params, query_grads, strict=True):
                p.grad = g / n
            self.outer.step()
        sums = loss_sums.tolist()
        logs = {"loss": sums[0] / n, "adapted_loss": sums[1] / n}
        if self.outer is not None:
            logs["query_loss"] = sums[2] / n
        return logs

    @staticmethod
    def _all_reduce_step(adapted_sum: dict[str, torch.Tensor], query_grads: list[torch.Tensor],
                         loss_sums: torch.Tensor, counters: dict[str, torch.Tensor],
                         meta_state: dict[str, torch.Tensor]) -> None:
        """Sum the per-rank partial results in place; integer counters come from rank 0 (it always has a task)."""
        import torch.distributed as dist

        for acc in (*adapted_sum.values(), *query_grads, loss_sums):
            dist.all_reduce(acc)
        for k, v in meta_state.items():
            if not v.is_floating_point():
                c = counters.get(k, v).clone()
                dist.broadcast(c, src=0)
                counters[k] = c

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        """Loss of the meta-model itself; the noise comes from a forked fixed-seed RNG (training stream untouched)."""
        self.model.eval()
        with _forked_rng(self.device):
            torch.manual_seed(EVAL_NOISE_SEED)
            out = self.loss_fn(self.model, batch)
        return {k: float(v) for k, v in out.items()}


def reptile_update(meta: nn.Module, adapted: Sequence[nn.Module], meta_lr: float) -> None:
    """In place: ``meta <- meta + meta_lr * (mean(adapted) - meta)`` for weights and float buffers.

    The update :class:`MetaTask` applies, exposed on its own so it can be checked on a tiny model.
    """
    states = [m.state_dict() for m in adapted]
    with torch.no_grad():
        new = {}
        for k, v in meta.state_dict().items():
            if v.is_floating_point():
                mean = torch.stack([s[k] for s in states]).mean(dim=0)
                new[k] = v + meta_lr * (mean - v)
            else:
                new[k] = states[-1][k]
        meta.load_state_dict(new)


@torch.no_grad()
def init_output_bias(model: nn.Module, x: torch.Tensor, *, floor: float = 1e-7) -> bool:
    """Start the voxel layer at the data's mean: bias = logit(mean normalised energy per voxel).

    Why: most voxels hold ~1e-6 of the incident energy, and a sigmoid output starting at 0.5 needs its bias
    near -14 to say so; Adam moves a bias by about its learning rate per step, so from a zero bias the model
    spends thousands of steps painting a smooth floor of energy into every voxel (every cell "hit", moments
    dragged outwards).  Starting at the marginal mean removes that phase.  Applies to models with a
    ``to_voxels`` linear output layer (the VAE); returns whether it did.
    """
    layer = getattr(model, "to_voxels", None)
    if not isinstance(layer, nn.Linear) or layer.bias is None or layer.out_features != x.shape[1]:
        return False
    mean = x.double().mean(dim=0).clamp(floor, 1.0 - floor)
    layer.bias.copy_(torch.log(mean / (1.0 - mean)).to(layer.bias))
    return True


@torch.no_grad()
def task_losses(model: nn.Module, tasks: Sequence[GeometryTask], loss_fn: LossFn, *,
                batch_size: int = 512, device: torch.device | None = None) -> dict[str, float]:
    """Validation loss of ``model`` on each task (eval mode, fixed noise): ``{task name: loss}``."""
    device = device or next(model.parameters()).device
    model.eval()
    out: dict[str, float] = {}
    for task in tasks:
        n = int(task.val[0].shape[0])
        if n == 0:
            continue
        total = 0.0
        with _forked_rng(device):
            torch.manual_seed(EVAL_NOISE_SEED)
            for lo in range(0, n, batch_size):
                batch = tuple(t[lo : lo + batch_size].to(device) for t in task.val)
                total += float(loss_fn(model, batch)["loss"]) * int(batch[0].shape[0])
        out[task.name] = total / n
    return out


# ---------------------------------------------------------------------------------- meta_train
def meta_train(cfg: MetaConfig, *, resume: bool | str | Path = False, progress: bool = True) -> TrainResult:
    """Meta-train the configured model over one task per file; checkpoints in ``output_dir/checkpoints``.

    Checkpoints carry the model metadata (:func:`~mlfastsim.showers.models.checkpoint_meta`), so
    :func:`~mlfastsim.showers.models.load_model`, ``adapt``, ``generate`` and ``export`` read them like
    any other shower checkpoint.  Under torchrun the tasks of each meta-step are split over the ranks
    (:meth:`MetaTask.train_step`); only rank 0 writes.
    """
    device = select_device(cfg.device)
    dist_utils.init_distributed(device)
    spec = get_model_type(cfg.model.type)
    require_command(spec, "meta-train")
    assert spec.loss is not None  # meta-learning steps on one module's supervised loss
    tasks, mesh = load_tasks(cfg.data, seed=cfg.seed, device=device)
    norm = EMNormalisation(mesh, cfg.data.conditioning)
    torch.manual_seed(cfg.seed)
    model = spec.build_modules(cfg.model, norm, seed=cfg.seed)["model"].to(device)
    init_output_bias(model, torch.cat([t.train[0] for t in tasks]))
    task = MetaTask(model, tasks, cfg, spec.loss, device)
    trainer_cfg = TrainerConfig(
        max_steps=cfg.meta_steps, batch_size=cfg.batch_size, learning_rate=cfg.inner_lr,
        eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
    )
    val = [t.val for t in tasks if int(t.val[0].shape[0])]
    val_data = tuple(torch.cat(parts) for parts in zip(*val, strict=True)) if val else None
    outdir = ensure_writable_dir(cfg.output_dir) if dist_utils.is_main() else Path(cfg.output_dir)
    tracker = tracker_from_config(cfg.tracking, default_name="meta-train") if dist_utils.is_main() else None
    meta = checkpoint_meta(spec, cfg.model, norm)
    meta["meta_training"] = {
        "algorithm": cfg.algorithm,
        "tasks": [{"name": t.name, "file": str(t.file), "slot": t.slot, "n_train": t.n_train} for t in tasks],
    }
    try:
        if tracker is not None:
            tracker.log_params(cfg.model_dump(mode="json"))
            atomic_write_text(outdir / "config.yaml", dump_config(cfg))
        trainer = Trainer(task, trainer_cfg, outdir, val_data=val_data, tracker=tracker, checkpoint_meta=meta,
                          device=device, progress=progress, description=f"meta-train ({cfg.algorithm})")
        return trainer.fit(resume=resume)
    finally:
        if tracker is not None:
            tracker.close()


# -------------------------------------------------------------------------------------- adapt
@dataclass
class AdaptResult:
    """What :func:`adapt` produced: where, which checkpoints, and how the validation loss went."""

    run_dir: Path
    run_name: str
    pretrained: Path
    checkpoints: list[tuple[int, Path]]
    best_step: int
    best_val_loss: float
    unadapted_val_loss: float | None
    last_checkpoint: Path | None
    summary_path: Path
    seconds: float
    train: TrainResult
    steps: list[dict[str, Any]] = field(default_factory=list)


def _new_run_name(study_dir: Path) -> str:
    """``run-YYYYmmdd-HHMMSS``, with ``-2``, ``-3``... if a run of the same second exists."""
    base = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    name, k = base, 1
    while (study_dir / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def _check_enough_showers(model: nn.Module, files: Sequence[str | Path], n: int, n_train: int,
                          cfg: AdaptConfig) -> None:
    """One line, naming the data, when the training split cannot fill one batch the model can train on:
    batch norm needs two showers or more per batch (one gives a BatchNorm traceback), anything needs one."""
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    need = 2 if batch_norm else 1
    if batch_norm and cfg.batch_size < 2:
        raise ConfigError(f"batch_size {cfg.batch_size} is too small for the model's batch norm", field="batch_size",
                          fix="use --set batch_size=2 or more (the default is fine)")
    if n_train < need:
        why = " (the model's batch norm needs 2 per batch)" if batch_norm else ""
        raise DataError(
            f"{n} shower(s) leave {n_train} for training after the {cfg.data.val_fraction:g} validation split, "
            f"adaptation needs at least {need}{why}", file=", ".join(map(str, files)), field="showers",
            fix="adapt on a few dozen showers or more of the new geometry (--data FILE.h5)")


def adapt(cfg: AdaptConfig, *, progress: bool = True, resume: bool = False) -> AdaptResult:
    """Fine-tune a pre-trained model on a few showers of a new geometry (default one-hot slot 0).

    Writes ``output_dir/study_name/run_name/``: ``checkpoints/step_XXXXXXXX.pt`` every
    ``checkpoint_step`` steps (all kept), ``plots/step_XXXXXXXX/`` every ``plot_freq`` steps,
    ``config.yaml`` (resolved, with the run name and checkpoint used) and ``summary.json`` (validation
    loss per checkpoint step, the un-adapted model's loss and the best step).  ``resume`` continues the
    named run (``run_name`` required) from its latest checkpoint.
    """
    t0 = time.perf_counter()
    device = select_device(cfg.device)
    if resume and not cfg.run_name:
        raise ConfigError("resuming an adaptation needs the run to continue", field="run_name",
                          fix="pass --run-name of the run to resume")
    ckpt = (resolve_checkpoint_ref(cfg.checkpoint, field="checkpoint") if cfg.checkpoint is not None
            else pretrained_path())
    files = list(cfg.data.files)
    if not files:
        raise ConfigError("no adaptation data given", field="data.files",
                          fix="pass a native shower file of the new geometry (--data FILE.h5)")
    slots = cfg.data.geometry_index if cfg.data.geometry_index is not None else [0] * len(files)
    data_cfg = cfg.data.model_copy(update={"geometry_index": list(slots)})
    data = load_training_data(data_cfg)
    loaded = load_model(ckpt, expect_mesh=data.mesh, command="adapt", map_location="cpu")
    cond = loaded.conditioning
    if cond != cfg.data.conditioning:
        if "conditioning" in cfg.data.model_fields_set:
            raise ConfigError(
                f"data.conditioning {cfg.data.conditioning.model_dump()} differs from the checkpoint's "
                f"{cond.model_dump()}", field="data.conditioning",
                fix="drop data.conditioning: adaptation uses the pre-trained model's conditioning")
        data.c = torch.from_numpy(np.concatenate([
            make_conditions(s.energies, s.angles, gi, cond) for s, gi in zip(data.samples, slots, strict=True)
        ]))
    (x_tr, c_tr), (x_val, c_val) = split_train_val((data.x, data.c), cfg.data.val_fraction, cfg.seed)
    _check_enough_showers(loaded.model, files, int(data.x.shape[0]), int(x_tr.shape[0]), cfg)
    spec = loaded.spec
    assert spec.loss is not None  # "adapt" is only declared by single-module families with a supervised loss
    model = loaded.model.to(device)
    trainer_cfg = TrainerConfig(
        max_steps=cfg.adaptation_steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        eval_every=cfg.checkpoint_step, checkpoint_every=cfg.checkpoint_step, keep_checkpoints=None,
        plot_freq=cfg.plot_freq, seed=cfg.seed,
    )
    task = SupervisedTask(model, spec.loss, make_optimizer(trainable_parameters(model, cfg.trainable), trainer_cfg))

    study_dir = Path(cfg.output_dir) / cfg.study_name
    run_name = cfg.run_name or _new_run_name(study_dir)
    run_dir = ensure_writable_dir(study_dir / run_name, what="adaptation run")
    resolved = cfg.model_copy(update={"run_name": run_name, "checkpoint": ckpt,
                                      "data": data_cfg.model_copy(update={"conditioning": cond})})
    tracking = cfg.tracking.model_copy(update={"run_name": cfg.tracking.run_name or f"{cfg.study_name}-{run_name}"})
    tracker = tracker_from_config(tracking, default_name="adapt") if dist_utils.is_main() else None
    meta = checkpoint_meta(spec, loaded.config, loaded.norm)
    meta["adaptation"] = {"pretrained": str(ckpt), "study_name": cfg.study_name, "run_name": run_name,
                          "files": [str(f) for f in files], "geometry_index": [int(s) for s in slots],
                          "trainable": cfg.trainable}
    try:
        if tracker is not None:
            tracker.log_params(resolved.model_dump(mode="json"))
            atomic_write_text(run_dir / "config.yaml", dump_config(resolved))
        trainer = Trainer(
            task, trainer_cfg, run_dir,
            train_data=(x_tr.to(device), c_tr.to(device)), val_data=(x_val.to(device), c_val.to(device)),
            tracker=tracker, checkpoint_meta=meta, device=device, progress=progress, description="adapt",
        )
        unadapted = trainer.evaluate().get("loss")
        if cfg.plot_freq and x_val.shape[0] > 1:
            reference = validation_reference(data, x_val, cfg.data.val_fraction, cfg.seed)
            trainer.add_hook(cfg.plot_freq, plot_hook(spec, loaded.config, loaded.norm, reference, c_val.to(device),
                                                      run_dir, tracker, seed=cfg.seed))
        result = trainer.fit(resume=resume)
    finally:
        if tracker is not None:
            tracker.close()

    checkpoints = list_checkpoints(run_dir / "checkpoints")
    on_disk = {s for s, _ in checkpoints}
    steps = []
    for record in result.history:
        s = int(record["step"])
        steps.append({
            "step": s,
            "val_loss": record.get("val/loss"),
            "train_loss": record.get("train/loss"),
            "checkpoint": f"checkpoints/step_{s:08d}.pt" if s in on_disk else None,
        })
    summary = {
        "study_name": cfg.study_name,
        "run_name": run_name,
        "pretrained": str(ckpt),
        "data": [str(f) for f in files],
        "geometry_index": [int(s) for s in slots],
        "n_train": int(x_tr.shape[0]),
        "n_val": int(x_val.shape[0]),
        "adaptation_steps": cfg.adaptation_steps,
        "unadapted_val_loss": unadapted,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    summary_path = run_dir / "summary.json"
    if dist_utils.is_main():
        atomic_write_json(summary_path, summary)
    return AdaptResult(
        run_dir=run_dir, run_name=run_name, pretrained=ckpt, checkpoints=checkpoints,
        best_step=result.best_step, best_val_loss=result.best_val_loss, unadapted_val_loss=unadapted,
        last_checkpoint=result.last_checkpoint, summary_path=summary_path,
        seconds=summary["seconds"], train=result, steps=steps,
    )


def train_from_scratch(cfg: TrainConfig, **kwargs: Any) -> TrainResult:
    """The baseline without meta-learning: plain ``showers train`` (``training.train_from_config``)."""
    return train_from_config(cfg, **kwargs)


# ------------------------------------------------------------------------------ quality checks
def sample_like(loaded: LoadedModel, reference: ShowerData, *, geometry_index: int, seed: int = 0,
                batch_size: int = 4096, threshold_mev: float | None = None) -> ShowerData:
    """Generate one shower per reference shower, at its energy and angle, in MeV, from a loaded model.

    ``threshold_mev`` zeroes generated cells below a readout threshold (a VAE's sigmoid never gives an
    exact zero, so without it every cell counts as hit).  z is drawn with a torch generator seeded by
    ``seed``, batch after batch.
    """
    norm = loaded.norm
    device = next(p for m in loaded.modules.values() for p in m.parameters()).device
    cond = torch.from_numpy(norm.conditions(reference.energies, reference.angles, geometry_index))
    g = torch.Generator(device=device).manual_seed(seed)
    parts = []
    for lo in range(0, len(reference), batch_size):
        parts.append(sample_normalised(loaded.spec, loaded.modules, loaded.config, norm,
                                       cond[lo : lo + batch_size].to(device), g).cpu().numpy())
    showers = np.concatenate(parts).reshape(len(reference), -1) * norm.row_scale(reference.energies)[:, None]
    norm.finish_(showers)
    showers = showers.astype(np.float32)
    if threshold_mev is not None:
        showers[showers < threshold_mev] = 0.0
    return ShowerData(reference.energies, showers, reference.mesh, reference.angles,
                      meta={"source": f"model (slot {geometry_index})"})


def separation_powers(reference: ShowerData, candidate: ShowerData, *,
                      threshold_mev: float | None = None) -> dict[str, float]:
    """Separation power (0 = identical, 1 = disjoint) of the main and the occupancy observables.

    ``threshold_mev`` applies one readout threshold to both samples first (default: the CaloChallenge
    threshold), so ``n_hits`` and the cell spectrum compare like with like; showers left empty are dropped.
    """
    from mlfastsim.showers.validation.observables import CELL_ENERGY_MIN_MEV, compute_observables, empty_showers
    from mlfastsim.showers.validation.validate import compare_all

    thr = CELL_ENERGY_MIN_MEV if threshold_mev is None else threshold_mev
    samples = []
    for data in (reference, candidate):
        showers = np.where(data.showers >= thr, data.showers, 0.0).astype(np.float32)
        cut = ShowerData(data.energies, showers, data.mesh, data.angles, dict(data.meta))
        samples.append(cut.subset(~empty_showers(cut)))
    ref, cand = samples
    obs = [compute_observables(s) for s in samples]
    compared, _ = compare_all(obs[0], obs[1], ref, cand)
    return {k: float(compared[k]["separation_power"]) for k in (*MAIN_OBSERVABLES, *OCCUPANCY_OBSERVABLES)}


def mean_main_separation_power(sp: dict[str, float]) -> float:
    """The headline number: mean separation power over :data:`MAIN_OBSERVABLES`."""
    return float(np.mean([sp[k] for k in MAIN_OBSERVABLES]))
