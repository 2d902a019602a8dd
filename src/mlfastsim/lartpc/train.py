"""``lartpc train``: deghosting / charge networks from one YAML, on the package's one training loop.

The :class:`~mlfastsim.core.trainer.Trainer` batches *event indices* (a pure function of seed and step), and
:class:`LArTPCTask` turns them into a sparse batch, so checkpoints, exact resume, tracking and DDP come from
the core unchanged.  One epoch = ``n_train // batch_size`` steps; at every epoch end a hook runs the model
over the inference events: loss and metrics go to ``summary.csv`` (the rows are checkpointed, so a resumed
run writes the same file), to the tracker and to ``plots/summary.png``; predictions are stored every
``store_inference.everyNepoch`` epochs.  A config without ``data.train_i`` only applies ``checkpoint``.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.checkpoint import (
    checkpoint_path,
    is_checkpoint_ref,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_matching_weights,
    resolve_checkpoint_ref,
)
from mlfastsim.core.config import dump_config
from mlfastsim.core.devices import select_device
from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.core.io import atomic_path, atomic_write_json, atomic_write_text, ensure_writable_dir
from mlfastsim.core.progress import progress_bar
from mlfastsim.core.tracking import Tracker, tracker_from_config
from mlfastsim.core.trainer import Trainer, TrainerConfig
from mlfastsim.lartpc.config import LArTPCTrainConfig, LossConfig, ModelConfig, OptimizerConfig
from mlfastsim.lartpc.data import EventSet, load_events
from mlfastsim.lartpc.metrics import (
    charge_per_plane,
    check_metric,
    plot_summary,
    sensitivity_purity_curve,
    summarise,
)
from mlfastsim.lartpc.models import build_model, model_meta

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------- registries
def _bce(cfg: LossConfig) -> LossFn:
    pw = None if cfg.pos_weight is None else torch.tensor(cfg.pos_weight)

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            out, target, pos_weight=None if pw is None else pw.to(out.device))

    return loss


def _focal(cfg: LossConfig) -> LossFn:
    """Focal loss (Lin et al. 2017): down-weights the many easy ghosts."""
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
        p_t = torch.exp(-bce)
        w = 1.0 if cfg.pos_weight is None else torch.where(target > 0, cfg.pos_weight, 1.0)
        return (w * (1 - p_t) ** cfg.gamma * bce).mean()

    return loss


def _charge(regression: Callable[..., torch.Tensor]) -> Callable[[LossConfig], LossFn]:
    """Charge-net loss: ``regression`` of log-charge on real voxels + ``ghost_weight`` x BCE of the logit.

    The target ``t`` is ``(N, 2)``: the real-voxel label and ``log(charge / scale)`` (see :func:`targets`).
    Ghost voxels never enter the regression: a target of zero for them is what biased the old net low.
    """
    def factory(cfg: LossConfig) -> LossFn:
        pw = None if cfg.pos_weight is None else torch.tensor(cfg.pos_weight)

        def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            real = t[:, 0] > 0.5
            reg = regression(out[real, 1], t[real, 1]) if bool(real.any()) else out[:, 1].sum() * 0.0
            if cfg.ghost_weight == 0:
                return reg
            bce = nn.functional.binary_cross_entropy_with_logits(
                out[:, 0], t[:, 0], pos_weight=None if pw is None else pw.to(out.device))
            return reg + cfg.ghost_weight * bce

        return loss

    return factory


LOSSES: dict[str, tuple[str, Callable[[LossConfig], LossFn]]] = {
    "bce": ("binary", _bce),
    "focal": ("binary", _focal),
    "mse": ("charge", _charge(nn.functional.mse_loss)),
    "l1": ("charge", _charge(nn.functional.l1_loss)),
    "huber": ("charge", _charge(nn.functional.smooth_l1_loss)),
}

OPTIMIZERS: dict[str, Callable[[Any, OptimizerConfig], torch.optim.Optimizer]] = {
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}


def make_loss(cfg: LossConfig, model_type: str) -> LossFn:
    if cfg.name not in LOSSES:
        raise ConfigError(f"unknown loss {cfg.name!r}", field="loss.name", fix=f"use one of {', '.join(LOSSES)}")
    kind, factory = LOSSES[cfg.name]
    if kind != model_type:
        fits = [k for k, (t, _) in LOSSES.items() if t == model_type]
        raise ConfigError(f"loss {cfg.name!r} is for {kind} models, this is a {model_type} model", field="loss.name",
                          fix=f"use one of {', '.join(fits)}")
    return factory(cfg)


def make_optimizer(params: Any, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.name!r}", field="optimizer.name",
                          fix=f"use one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.name](params, cfg)


#: real-voxel charges below this fraction of ``input_scale`` are clamped before the log (finite targets)
LOG_FLOOR = 1e-3


def targets(charge: torch.Tensor, model_type: str, threshold: float, scale: float) -> torch.Tensor:
    """Binary: 1 for real voxels (truth charge above threshold).

    Charge: ``(N, 2)`` = (real label, ``log(max(charge, LOG_FLOOR * scale) / scale)``); the log column is
    only used on real voxels.  Log space because voxel charges span three decades and a relative error is
    what matters; a median-unbiased log prediction is a median-unbiased charge.
    """
    real = (charge > threshold).float()
    if model_type == "binary":
        return real
    return torch.stack([real, torch.log(torch.clamp(charge / scale, min=LOG_FLOOR))], dim=1)


# ------------------------------------------------------------------------------------------- task
class LArTPCTask:
    """One model, one optimiser; a step = forward the sparse batch of the trainer's event indices."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, train: EventSet,
                 cfg: LArTPCTrainConfig) -> None:
        self.model, self.loss_fn, self.optimizer, self.train = model, loss_fn, optimizer, train
        self.forward_model: nn.Module = model
        self.cfg = cfg
        self.summaries: list[dict[str, float]] = []
        self.scheduler: Any | None = None

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Train through ``wrapper(model)`` (DDP under torchrun); states and inference use the plain model.

        Each rank's loss is the mean over its own events' voxels; :meth:`train_step` rescales it by the
        rank's share of the global voxel count, so DDP's gradient average is the mean over every voxel of
        the global batch, as in one process (batch norm is global too, see the core trainer).
        """
        self.forward_model = wrapper(self.model)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {} if self.scheduler is None else {"scheduler": self.scheduler}

    def _loss(self, idx: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, int]:
        """Mean loss over the voxels of events ``idx``, and how many voxels that is."""
        x, charge = self.train.batch(idx, self.cfg.model.spatial_size)
        assert charge is not None
        out = model(x)
        t = targets(charge, self.cfg.model.type, self.cfg.data.threshold, self.cfg.data.input_scale)
        return self.loss_fn(out, t), int(x.n)

    def train_step(self, batch: tuple[torch.Tensor, ...] | None, step: int) -> dict[str, float]:
        assert batch is not None
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, n_voxels = self._loss(batch[0], self.forward_model)
        if dist_utils.is_distributed():
            # weight = this rank's share of the global batch's voxels, times world (DDP divides by world)
            loss = loss * (n_voxels * dist_utils.world_size() / dist_utils.all_reduce_sum(float(n_voxels)))
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def eval_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        self.model.eval()
        return {"loss": float(self._loss(batch[0], self.model)[0])}

    def extra_state(self) -> dict[str, Any]:
        return {"summaries": [dict(r) for r in self.summaries]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.summaries = [dict(r) for r in state.get("summaries", [])]


# ------------------------------------------------------------------------------------------- inference
@dataclass
class Predictions:
    score: np.ndarray  # real-voxel probability per voxel
    pred_charge: np.ndarray | None  # charge nets: predicted charge in the input units
    loss: float | None


@torch.no_grad()
def predict(model: nn.Module, events: EventSet, cfg: LArTPCTrainConfig, model_type: str,
            loss_fn: LossFn | None = None, *, progress: bool = False) -> Predictions:
    """Run the model over every event in order (fixed chunks, so results do not depend on the caller)."""
    model.eval()
    scores, charges = [], []
    loss_sum, n_vox = 0.0, 0
    n = events.n_events
    bs = cfg.batch_size
    with progress_bar(n, "inference", enabled=progress) as bar:
        for lo in range(0, n, bs):
            idx = torch.arange(lo, min(lo + bs, n))
            x, q = events.batch(idx, cfg.model.spatial_size)
            out = model(x)
            if loss_fn is not None and q is not None:
                t = targets(q, model_type, cfg.data.threshold, cfg.data.input_scale)
                loss_sum += float(loss_fn(out, t)) * x.n
                n_vox += x.n
            scores.append(type(model).score(out).cpu())
            if model_type == "charge":
                charges.append(type(model).charge(out, cfg.data.input_scale).cpu())
            bar.advance(len(idx))
    return Predictions(torch.cat(scores).numpy() if scores else np.zeros(0, np.float32),
                       torch.cat(charges).numpy() if charges else None,
                       loss_sum / n_vox if n_vox else None)


def store_predictions(path: Path, events: EventSet, pred: Predictions, every: int) -> Path:
    """Every ``every``-th event's voxels, scores and (when known) truth, in one HDF5 file."""
    off = events.offsets.cpu().numpy()
    keep = np.arange(0, events.n_events, every)
    rows = np.concatenate([np.arange(off[i], off[i + 1]) for i in keep]) if len(keep) else np.zeros(0, np.int64)
    counts = off[keep + 1] - off[keep]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("event_ids", data=events.event_ids[keep])
        f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        f.create_dataset("coords", data=events.coords.cpu().numpy()[rows].astype(np.int32))
        f.create_dataset("score", data=pred.score[rows].astype(np.float32))
        if pred.pred_charge is not None:
            f.create_dataset("pred_charge", data=pred.pred_charge[rows].astype(np.float32))
        if events.charge is not None:
            f.create_dataset("true_charge", data=events.charge.cpu().numpy()[rows])
    return path


def _summary(pred: Predictions, events: EventSet, cfg: LArTPCTrainConfig) -> dict[str, float]:
    if events.charge is None:
        return {}
    truth = events.charge.cpu().numpy()
    # working point: real-voxel probability 0.5 (binary nets and the charge net's own logit)
    out = summarise(pred.score, truth, cfg.data.threshold, pred.pred_charge, cut=0.5)
    if pred.pred_charge is not None and events.geometry is not None:
        real = truth > cfg.data.threshold
        out.update(charge_per_plane(events.coords.cpu().numpy()[real], events.event_index()[real],
                                    pred.pred_charge[real], truth[real], events.geometry, events.downsample))
    if pred.loss is not None:
        out["val_loss"] = pred.loss
    return out


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _plot(outdir: Path, rows: list[dict[str, float]], pred: Predictions, events: EventSet,
          cfg: LArTPCTrainConfig) -> Path | None:
    if events.charge is None:
        return None
    truth = events.charge.cpu().numpy()
    real = truth > cfg.data.threshold
    curve = sensitivity_purity_curve(pred.score, real)
    charge = None if pred.pred_charge is None else (pred.pred_charge[real], truth[real])
    return plot_summary(rows, curve, outdir / "plots" / "summary.png", charge)


# ------------------------------------------------------------------------------------------- checkpoints
def resolve_checkpoint(path: Path, field: str) -> Path:
    """A checkpoint file, a run directory (its latest checkpoint), ``RUN/latest`` or ``RUN/best`` (lowest
    monitored loss), or ``pretrained:NAME`` (shipped)."""
    from mlfastsim.lartpc import pretrained

    if pretrained.is_pretrained(path):
        return pretrained.resolve(path, field)
    p = Path(path)
    if is_checkpoint_ref(p):
        return resolve_checkpoint_ref(p, field=field)
    if p.is_dir():
        found = latest_checkpoint(p / "checkpoints") or latest_checkpoint(p)
        if found is None:
            raise InputFileError("no checkpoints in this run directory", file=p, field=field,
                                 fix="train first, or name a checkpoint file")
        return found
    if not p.exists():
        raise InputFileError("checkpoint does not exist", file=p, field=field, fix="check the path")
    return p


def _model_state(path: Path, field: str) -> dict[str, Any]:
    state = load_checkpoint(path)
    if "model" not in state.get("modules", {}) or not str(state.get("model_type", "")).startswith("lartpc."):
        raise InputFileError("not a lartpc model checkpoint", file=path, field=field,
                             fix="pass a checkpoint written by `mlfastsim lartpc train`")
    return state


def transfer_weights(model: nn.Module, cfg: LArTPCTrainConfig, data_meta: dict[str, Any]) -> list[str]:
    """Copy the source run's backbone (or all matching tensors); a partial backbone is an error."""
    assert cfg.transfer is not None
    path = resolve_checkpoint(cfg.transfer.checkpoint, "transfer.checkpoint")
    state = _model_state(path, "transfer.checkpoint")
    src_meta = state.get("data_meta", {})
    for key, fix in (("feature_names", "transfer between runs on xy files of the same --x-type"),
                     ("downsample", "transfer between runs on xy files of the same --downsample"),
                     ("input_scale", "use the source run's data.input_scale")):
        if src_meta.get(key) != data_meta[key]:
            raise ConfigError(f"the source was trained with {key} {src_meta.get(key)}, this run has {data_meta[key]}",
                              file=path, field="transfer.checkpoint", fix=fix)
    weights = state["modules"]["model"]
    if cfg.transfer.modules == "backbone":
        weights = {k: v for k, v in weights.items() if k.startswith("backbone.")}
    loaded, skipped = load_matching_weights(model, weights)
    if not loaded or (cfg.transfer.modules == "backbone" and skipped):
        src = state.get("model_config", {})
        raise ConfigError(f"{len(skipped)} of {len(weights)} backbone tensors do not fit this model "
                          f"(source nChannels={src.get('nChannels')}, nStrides={src.get('nStrides')}, "
                          f"n_2D={src.get('n_2D')})", file=path, field="transfer.checkpoint",
                          fix="use the source run's model.nChannels, nStrides, n_2D and downsample_t")
    return loaded


# ------------------------------------------------------------------------------------------- entry points
@dataclass
class LArTPCResult:
    mode: str
    epochs: int
    summaries: list[dict[str, float]]
    last_checkpoint: Path | None
    output_dir: Path
    seconds: float = 0.0
    transferred: int = 0


def _data_meta(events: EventSet, cfg: LArTPCTrainConfig) -> dict[str, Any]:
    return {"feature_names": events.feature_names, "downsample": list(cfg.data.downsample),
            "input_scale": cfg.data.input_scale, "threshold": cfg.data.threshold}


def run(cfg: LArTPCTrainConfig, *, resume: bool | int = False, progress: bool = True) -> LArTPCResult:
    """Train (``data.train_i`` given) or apply ``checkpoint`` (inference only)."""
    if cfg.inference_only:
        return run_inference(cfg, progress=progress)
    return train(cfg, resume=resume, progress=progress)


def train(cfg: LArTPCTrainConfig, *, resume: bool | int = False, progress: bool = True) -> LArTPCResult:
    """Train with per-epoch inference; ``resume``: True = last checkpoint, an int = that epoch's."""
    check_metric(cfg.metric, cfg.model.type)
    loss_fn = make_loss(cfg.loss, cfg.model.type)
    device = select_device(cfg.device)
    dist_utils.init_distributed(device)
    events = load_events(cfg.data, cfg.model.spatial_size, need_truth=True)
    assert cfg.data.train_i is not None
    train_set = events.select(*cfg.data.train_i, "train_i").to(device)
    inf_set = events.select(*cfg.data.inference_i, "inference_i").to(device) if cfg.data.inference_i else None
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, events.n_features).to(device)
    meta = _data_meta(events, cfg)
    transferred = len(transfer_weights(model, cfg, meta)) if cfg.transfer is not None else 0
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optimizer)
    n_train = train_set.n_events
    bpe = max(n_train // min(cfg.batch_size, n_train), 1)
    tcfg = TrainerConfig(max_steps=None, max_epochs=cfg.n_epochs, batch_size=cfg.batch_size,
                         learning_rate=cfg.optimizer.lr, eval_every=bpe, checkpoint_every=bpe, seed=cfg.seed)
    task = LArTPCTask(model, loss_fn, optimizer, train_set, cfg)
    if cfg.optimizer.scheduler == "cosine":
        task.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=bpe * cfg.n_epochs)
    outdir = ensure_writable_dir(cfg.output_dir)
    tracker = tracker_from_config(cfg.tracking, default_name=f"lartpc-{cfg.model.type}") if dist_utils.is_main() \
        else None
    try:
        if tracker is not None:
            tracker.log_params(cfg.model_dump(mode="json"))
            atomic_write_text(outdir / "config.yaml", dump_config(cfg))
        trainer = Trainer(task, tcfg, outdir, train_data=(torch.arange(n_train, device=device),), val_data=None,
                          tracker=tracker, checkpoint_meta=model_meta(cfg.model, events.n_features, meta),
                          device=device, progress=progress, description=f"lartpc train ({cfg.model.type})")
        if inf_set is not None:
            trainer.add_hook(bpe, epoch_hook(task, inf_set, loss_fn, outdir, tracker, bpe))
        elif cfg.model.type == "charge":
            trainer.add_hook(bpe, lambda _t, _s: calibrate(task.model, train_set, cfg) and None)
        start: bool | Path = False
        if resume is True:
            start = True
        elif resume is not False:
            start = checkpoint_path(outdir / "checkpoints", int(resume) * bpe)
            if not start.exists():
                have = [s // bpe for s, _ in list_checkpoints(outdir / "checkpoints") if s % bpe == 0]
                raise InputFileError(f"no checkpoint for epoch {resume}", file=start, field="--resume",
                                     fix=f"epochs with checkpoints: {have or 'none'}")
        if resume is True and latest_checkpoint(outdir / "checkpoints") is None:
            raise InputFileError("nothing to resume: no checkpoints yet", file=outdir / "checkpoints",
                                 field="--resume", fix="start without --resume")
        result = trainer.fit(resume=start)
    finally:
        if tracker is not None:
            tracker.close()
    return LArTPCResult("train", result.step // bpe, task.summaries, result.last_checkpoint, outdir,
                        result.seconds, transferred)


#: training events the charge calibration is measured on (the first ones: a fixed, deterministic set)
CALIBRATION_EVENTS = 200


@torch.no_grad()
def calibrate(model: nn.Module, events: EventSet, cfg: LArTPCTrainConfig) -> float:
    """Shift a charge net's log-charge so the median predicted / true charge of real *training* voxels is 1.

    Why: the regression in log space is median-unbiased only as far as training has converged; a constant
    left over (a few per cent) is a calibration, measured like one on training events (never the held-out
    ones the metrics use) and carried in the checkpoint.  Returns the new multiplicative calibration.
    """
    sub = events.select(0, min(CALIBRATION_EVENTS, events.n_events), "train_i")
    pred = predict(model, sub, cfg, "charge")
    assert sub.charge is not None and pred.pred_charge is not None
    q = sub.charge.cpu().numpy()
    real = q > cfg.data.threshold
    if real.any():
        shift = float(np.median(np.log(q[real]) - np.log(np.maximum(pred.pred_charge[real], 1e-30))))
        model.log_calibration += shift  # type: ignore[operator]
    return float(torch.exp(model.log_calibration))  # type: ignore[arg-type]


def epoch_hook(task: LArTPCTask, events: EventSet, loss_fn: LossFn, outdir: Path, tracker: Tracker | None,
               bpe: int) -> Callable[[Trainer, int], None]:
    """Per epoch: inference on held-out events -> summary row, CSV, tracker, plot, stored predictions."""
    cfg = task.cfg

    def hook(trainer: Trainer, step: int) -> None:
        epoch = step // bpe
        row: dict[str, float] = {"epoch": float(epoch), "step": float(step)}
        if cfg.model.type == "charge":
            row["charge_calibration"] = calibrate(task.model, task.train, cfg)
        pred = predict(task.model, events, cfg, cfg.model.type, loss_fn)
        if trainer.history:
            row["train_loss"] = trainer.history[-1].get("train/loss", float("nan"))
        row.update(_summary(pred, events, cfg))
        task.summaries = [r for r in task.summaries if r["epoch"] < epoch] + [row]
        write_csv(outdir / "summary.csv", task.summaries)
        if tracker is not None:
            tracker.log_metrics({f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step")}, step=step)
        every = cfg.store_inference.everyNepoch
        if every and epoch % every == 0:
            store_dir = cfg.store_inference.outdir or outdir / "inference"
            store_predictions(Path(store_dir) / f"epoch_{epoch:03d}.h5", events, pred, cfg.store_inference.everyNsample)
        fig = _plot(outdir, task.summaries, pred, events, cfg)
        if tracker is not None and fig is not None:
            tracker.log_artifact(fig, subdir="plots")

    return hook


def run_inference(cfg: LArTPCTrainConfig, *, progress: bool = True) -> LArTPCResult:
    """Apply ``checkpoint`` to ``data.inference_i``: predictions, and metrics and plots when truth is present."""
    t0 = time.perf_counter()
    path = resolve_checkpoint(cfg.checkpoint, "checkpoint")  # type: ignore[arg-type]
    state = _model_state(path, "checkpoint")
    mcfg = ModelConfig.model_validate(state["model_config"])
    src = state.get("data_meta", {})
    if list(src.get("downsample", [])) != list(cfg.data.downsample):
        raise DataError(f"the model was trained on downsampling {src.get('downsample')} but data.downsample is "
                        f"{list(cfg.data.downsample)}", file=path, field="data.downsample",
                        fix="apply the model to xy files made with its downsampling")
    # the model's own architecture and data scaling; the config chooses data, batch size and outputs
    cfg = cfg.model_copy(update={"model": mcfg, "data": cfg.data.model_copy(update={
        "input_scale": src.get("input_scale", cfg.data.input_scale)})})
    device = select_device(cfg.device)
    events = load_events(cfg.data, mcfg.spatial_size, need_truth=False)
    if events.feature_names != src.get("feature_names"):
        raise DataError(f"the model was trained on features {src.get('feature_names')}, the files have "
                        f"{events.feature_names}", file=path, field="checkpoint",
                        fix="use xy files made with the model's --x-type")
    assert cfg.data.inference_i is not None
    inf_set = events.select(*cfg.data.inference_i, "inference_i").to(device)
    model = build_model(mcfg, events.n_features).to(device)
    model.load_state_dict(state["modules"]["model"])
    loss_fn = make_loss(cfg.loss, mcfg.type) if cfg.loss.name in LOSSES and LOSSES[cfg.loss.name][0] == mcfg.type \
        else None
    pred = predict(model, inf_set, cfg, mcfg.type, loss_fn, progress=progress)
    outdir = ensure_writable_dir(cfg.output_dir)
    atomic_write_text(outdir / "config.yaml", dump_config(cfg))
    store_dir = Path(cfg.store_inference.outdir or outdir / "inference")
    store_predictions(store_dir / "inference.h5", inf_set, pred, cfg.store_inference.everyNsample)
    trained = state.get("task", {}).get("summaries") or [{}]
    row: dict[str, float] = {"epoch": float(trained[-1].get("epoch", 0.0)), "step": float(state.get("step", 0)),
                             **_summary(pred, inf_set, cfg)}
    atomic_write_json(outdir / "inference_summary.json", {"checkpoint": str(path), **row})
    rows = [row]
    if inf_set.charge is not None:
        write_csv(outdir / "summary.csv", rows)
        _plot(outdir, rows, pred, inf_set, cfg)
    return LArTPCResult("inference", 0, rows, path, outdir, time.perf_counter() - t0)
