"""The one training loop of mlfastsim.

Every model (VAE, meta-learning, GANs, sparse UResNets, Belle II networks) plugs in through a small
:class:`TrainTask`: the task owns its modules, optimisers and what one step does (so a GAN can update
its critic five times per generator step); the :class:`Trainer` owns everything else: batching, the
validation split, checkpoints, exact resume, early stopping, hooks, tracking and data parallelism.

Exact resume
------------
A run interrupted at any point and resumed from its last checkpoint ends with the same weights, bit for
bit, as an uninterrupted run.  That needs three things, all here:

* the batch order is a pure function of (seed, epoch): no sampler state to save;
* checkpoints hold every module, optimiser and scheduler state, the step, early-stopping state, the
  task's own extra state (e.g. its private generators) and every global RNG state;
* evaluation, hooks and checkpoints happen at fixed steps, in a fixed order, in both runs.

Data parallel
-------------
Under ``torchrun`` (see :mod:`mlfastsim.core.distributed`) every rank takes an equal slice of the same
global batch and the task's modules are wrapped in DistributedDataParallel, which averages gradients:
with a loss that is a mean over the batch this is the single-process update on the global batch.  Batch
norm layers normalise over the global batch and batch noise is drawn per global sample (both in
:mod:`mlfastsim.core.distributed`), so N processes follow one process's loss curve within float rounding.
Only rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.progress import progress_bar
from mlfastsim.core.seeding import seed_everything, set_rng_state
from mlfastsim.core.tracking import Tracker

Batch = tuple[torch.Tensor, ...]

logger = logging.getLogger(__name__)


class TrainerConfig(StrictModel):
    """The training loop's knobs; every workflow's YAML has this as its ``trainer:`` section."""

    max_steps: int | None = Field(2000, ge=1)
    max_epochs: int | None = Field(None, ge=1)  # if set, overrides max_steps
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "cosine", "exponential"] = "none"
    scheduler_gamma: float = Field(0.999, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int | None = Field(None, ge=1)  # None keeps every checkpoint
    plot_freq: int = Field(0, ge=0)  # 0 = no plot hooks
    early_stopping_patience: int = Field(0, ge=0)  # evaluations without improvement; 0 = off
    seed: int = 0
    # under torchrun: batch norm over the global batch (one all-reduce per layer and step; the result of one
    # process) or over each rank's slice (cheaper, the usual DDP default, statistics of a smaller batch)
    sync_batch_norm: bool = True


@runtime_checkable
class TrainTask(Protocol):
    """What the trainer needs from a model: its parts and what one step does."""

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def schedulers(self) -> dict[str, Any]: ...

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        """One optimisation step (backward and optimiser steps included); returns scalars to log."""
        ...

    def eval_step(self, batch: Batch) -> dict[str, float]:
        """Validation scalars averaged over ``batch`` (must contain ``loss``); no gradients."""
        ...


class SupervisedTask:
    """The common case: one model, one optimiser, a loss function of (model, batch).

    ``loss_fn`` must *call* the model (``model(x, ...)``) rather than another of its methods, so that
    DistributedDataParallel sees the forward pass and averages gradients.  It returns a dict of tensors
    with at least ``loss`` (a mean over the batch).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Batch], dict[str, torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
        grad_clip: float | None = None,
    ) -> None:
        self.model = model
        self.forward_model: nn.Module = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_clip = grad_clip

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler} if self.scheduler is not None else {}

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Use ``wrapper(model)`` (e.g. DDP) for forward passes; states are still saved unwrapped."""
        self.forward_model = wrapper(self.model)

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        assert batch is not None
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss_fn(self.forward_model, batch)
        out["loss"].backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return {k: float(v.detach()) for k, v in out.items()}

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        self.model.eval()
        out = self.loss_fn(self.model, batch)
        return {k: float(v) for k, v in out.items()}


def make_optimizer(params: Any, cfg: TrainerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int) -> Any | None:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if cfg.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.scheduler_gamma)
    return None


@dataclass
class TrainResult:
    step: int
    best_val_loss: float
    best_step: int
    stopped_early: bool
    last_checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


Hook = Callable[["Trainer", int], None]


class Trainer:
    """Runs a :class:`TrainTask` for a number of steps with checkpoints, validation and exact resume."""

    def __init__(
        self,
        task: TrainTask,
        cfg: TrainerConfig,
        outdir: str | Path,
        *,
        train_data: Batch | None = None,
        val_data: Batch | None = None,
        tracker: Tracker | None = None,
        checkpoint_meta: dict[str, Any] | None = None,
        device: torch.device | None = None,
        progress: bool = True,
        description: str = "training",
    ) -> None:
        self.task = task
        self.cfg = cfg
        self.outdir = Path(outdir)
        self.ckpt_dir = self.outdir / "checkpoints"
        self.device = device or torch.device("cpu")
        # Join the torchrun group before asking for rank/world size: a trainer built first would otherwise
        # believe it is rank 0 of 1 in every process, and every process would write checkpoints.
        dist_utils.init_distributed(self.device)
        self.train_data = train_data
        self.val_data = val_data
        self.tracker = tracker if dist_utils.is_main() else None
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.progress = progress and dist_utils.is_main()
        self.description = description
        self.hooks: list[tuple[int, Hook]] = []
        self.eval_callbacks: list[Callable[[int, dict[str, float]], None]] = []
        self.world = dist_utils.world_size()
        self.rank = dist_utils.rank()
        if train_data is not None:
            self.n_train = int(train_data[0].shape[0])
            if self.n_train == 0:
                raise ConfigError("no training samples", field="data", fix="give the trainer some data")
            self.batch_size = min(cfg.batch_size, self.n_train)
            if self.batch_size % self.world:
                raise ConfigError(
                    f"batch size {self.batch_size} is not divisible by the {self.world} processes",
                    field="trainer.batch_size",
                    fix="use a global batch size that is a multiple of --nproc_per_node",
                )
            self.batches_per_epoch = self.n_train // self.batch_size
        else:
            self.n_train, self.batch_size, self.batches_per_epoch = 0, 0, 1
        if cfg.max_epochs is not None:
            self.total_steps = cfg.max_epochs * self.batches_per_epoch
        elif cfg.max_steps is not None:
            self.total_steps = cfg.max_steps
        else:
            raise ConfigError("neither max_steps nor max_epochs is set", field="trainer.max_steps",
                              fix="set trainer.max_steps or trainer.max_epochs")
        # state that checkpoints carry
        self.step = 0
        self.best_val = math.inf
        self.best_step = -1
        self.bad_evals = 0
        self.history: list[dict[str, float]] = []
        # training scalars summed since the last evaluation: checkpointed, so the first evaluation after a
        # resume averages the same steps as in an uninterrupted run
        self.window: dict[str, float] = {}
        self.n_window = 0

    # ------------------------------------------------------------------ hooks
    def add_hook(self, every: int, hook: Hook) -> None:
        """Call ``hook(trainer, step)`` every ``every`` steps (rank 0 only), e.g. validation plots."""
        if every > 0:
            self.hooks.append((every, hook))

    def add_eval_callback(self, fn: Callable[[int, dict[str, float]], None]) -> None:
        """Call ``fn(step, val_metrics)`` after every evaluation (e.g. Optuna pruning: raise to stop)."""
        self.eval_callbacks.append(fn)

    # ------------------------------------------------------------------ data
    def batch_indices(self, step: int) -> torch.Tensor:
        """Indices of this rank's part of the global batch at ``step``: a pure function of (seed, step)."""
        epoch, pos = divmod(step, self.batches_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n_train, generator=g)
        idx = perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        return idx[self.rank :: self.world]

    def _batch(self, step: int) -> Batch | None:
        if self.train_data is None:
            return None
        idx = self.batch_indices(step)
        return tuple(t[idx.to(t.device)] for t in self.train_data)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics averaged over the whole validation set (fixed order)."""
        if self.val_data is None or int(self.val_data[0].shape[0]) == 0:
            return {}
        n = int(self.val_data[0].shape[0])
        bs = max(self.cfg.batch_size, 1)
        sums: dict[str, float] = {}
        for lo in range(0, n, bs):
            batch = tuple(t[lo : lo + bs] for t in self.val_data)
            w = int(batch[0].shape[0])
            for k, v in self.task.eval_step(batch).items():
                sums[k] = sums.get(k, 0.0) + v * w
        return {k: v / n for k, v in sums.items()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "history": self.history,
            "window": dict(self.window),
            "n_window": self.n_window,
            "trainer_config": self.cfg.model_dump(mode="json"),
            "modules": {k: m.state_dict() for k, m in self.task.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.task.optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in self.task.schedulers().items()},
        }
        extra = getattr(self.task, "extra_state", None)
        if callable(extra):
            state["task"] = extra()
        state.update(self.checkpoint_meta)
        return state

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 only); prune old ones if ``keep_checkpoints`` is set."""
        if not dist_utils.is_main():
            return None
        path = save_checkpoint(checkpoint_path(self.ckpt_dir, self.step), self.state_dict())
        if self.cfg.keep_checkpoints:
            for _, old in list_checkpoints(self.ckpt_dir)[: -self.cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)
        return path

    def load(self, path: str | Path, *, restore_rng: bool = True) -> None:
        """Restore a checkpoint written by :meth:`save` (weights_only load).

        Loaded onto the CPU: RNG states must be CPU tensors, and ``load_state_dict`` of modules and
        optimisers copies/casts every tensor to the device of the parameter it belongs to anyway.
        """
        state = load_checkpoint(path, map_location="cpu")
        try:
            for k, m in self.task.modules().items():
                m.load_state_dict(state["modules"][k])
            for k, o in self.task.optimizers().items():
                o.load_state_dict(state["optimizers"][k])
            for k, s in self.task.schedulers().items():
                s.load_state_dict(state["schedulers"][k])
            step = int(state["step"])
            best_val, best_step = float(state["best_val"]), int(state["best_step"])
            bad_evals = int(state["bad_evals"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            what = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:160]
            raise InputFileError(
                f"checkpoint does not fit this model ({what})",
                file=path,
                fix="resume with the same model and config that wrote the checkpoint",
            ) from exc
        load_extra = getattr(self.task, "load_extra_state", None)
        if callable(load_extra) and "task" in state:
            load_extra(state["task"])
        self.step, self.best_val, self.best_step, self.bad_evals = step, best_val, best_step, bad_evals
        self.history = list(state.get("history", []))
        self.window = dict(state.get("window", {}))
        self.n_window = int(state.get("n_window", 0))
        if restore_rng and "rng" in state:
            set_rng_state(state["rng"])

    def _set_aside_stale_checkpoints(self) -> None:
        """A fresh run in a directory holding another run's checkpoints moves them aside (rank 0).

        Left in place, a stale ``step_00001000.pt`` of an earlier, longer run would be what a later
        ``--resume`` of this run picks up as its latest checkpoint.  They are moved, not deleted: one of
        them may be the very checkpoint this run was initialised from (transfer learning, adaptation).
        """
        if not dist_utils.is_main():
            return
        stale = list_checkpoints(self.ckpt_dir)
        if not stale:
            return
        aside = self.outdir / f"checkpoints.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        logger.warning(
            "starting from scratch: moved %d checkpoint(s) of a previous run from %s to %s (resume to continue it)",
            len(stale), self.ckpt_dir, aside,
        )
        for _, p in stale:
            p.replace(aside / p.name)

    def resume_path(self, resume: bool | str | Path) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            return latest_checkpoint(self.ckpt_dir)
        return Path(resume)

    # ------------------------------------------------------------------ the loop
    def _wrap_for_ddp(self) -> None:
        """Prepare the task for data parallelism: global-batch batch norm, then the task's ``wrap``.

        ``wrap`` receives a function that wraps a module in DDP; a task that cannot use DDP (the GANs'
        double backward) or splits work another way (meta-learning splits tasks) takes it and ignores it,
        averaging gradients itself with :func:`~mlfastsim.core.distributed.all_reduce_grads`.
        """
        if not dist_utils.is_distributed():
            return
        if self.cfg.sync_batch_norm:
            for module in self.task.modules().values():
                dist_utils.convert_batch_norm(module)
        wrap = getattr(self.task, "wrap", None)
        if not callable(wrap):
            raise ConfigError("this model does not support data-parallel training", field="torchrun",
                              fix="run it in a single process")
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrap(lambda m: DDP(m, device_ids=device_ids))

    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train to ``total_steps`` (or early stop), from scratch or from a checkpoint."""
        t0 = time.perf_counter()
        start = self.resume_path(resume)
        if start is not None:
            self.load(start)
        elif not self.step:
            self._set_aside_stale_checkpoints()
            seed_everything(self.cfg.seed)
        self._wrap_for_ddp()
        # a resumed run that had already early-stopped stays stopped instead of training on
        patience = self.cfg.early_stopping_patience
        stopped_early = bool(patience and self.bad_evals >= patience)
        last_ckpt: Path | None = start
        # batches split over ranks: noise drawn per global-batch sample (dist_utils.batch_randn_like)
        sharded = (dist_utils.sharded_batch if self.train_data is not None and self.world > 1
                   else contextlib.nullcontext)
        with progress_bar(self.total_steps, self.description, enabled=self.progress) as bar:
            bar.advance(self.step)
            while self.step < self.total_steps and not stopped_early:
                with sharded():
                    logs = self.task.train_step(self._batch(self.step), self.step)
                self.step += 1
                for k, v in logs.items():
                    self.window[k] = self.window.get(k, 0.0) + v
                self.n_window += 1
                bar.advance()
                if self.step % self.cfg.eval_every == 0 or self.step == self.total_steps:
                    train_means = dist_utils.all_reduce_mean(
                        {f"train/{k}": v / self.n_window for k, v in self.window.items()}
                    )
                    self.window, self.n_window = {}, 0
                    val = dist_utils.all_reduce_mean({f"val/{k}": v for k, v in self.evaluate().items()})
                    record = {"step": float(self.step), **train_means, **val}
                    self.history.append(record)
                    if self.tracker is not None:
                        self.tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step=self.step)
                    bar.update(description=f"{self.description} loss={train_means.get('train/loss', float('nan')):.4g}")
                    monitored = val.get("val/loss", train_means.get("train/loss"))
                    if monitored is not None and monitored < self.best_val:
                        self.best_val, self.best_step, self.bad_evals = float(monitored), self.step, 0
                    else:
                        self.bad_evals += 1
                    for fn in self.eval_callbacks:
                        fn(self.step, {k.split("/", 1)[1]: v for k, v in val.items()} or
                           {k.split("/", 1)[1]: v for k, v in train_means.items()})
                    if patience and self.bad_evals >= patience:
                        stopped_early = True
                if dist_utils.is_main():
                    for every, hook in self.hooks:
                        if self.step % every == 0:
                            hook(self, self.step)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps or stopped_early:
                    last_ckpt = self.save() or last_ckpt
                    dist_utils.barrier()
                if stopped_early:
                    break
        return TrainResult(
            step=self.step,
            best_val_loss=self.best_val,
            best_step=self.best_step,
            stopped_early=stopped_early,
            last_checkpoint=last_ckpt,
            history=self.history,
            seconds=time.perf_counter() - t0,
        )


def split_train_val(tensors: Sequence[torch.Tensor], val_fraction: float, seed: int) -> tuple[Batch, Batch]:
    """A seeded random split into training and validation tensors."""
    n = int(tensors[0].shape[0])
    n_val = round(n * val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return tuple(t[train_idx] for t in tensors), tuple(t[val_idx] for t in tensors)
