"""``belle2 train``: fit a filter network on memmapped inputs with the shared :class:`Trainer`.

The inputs stay on disk: training and validation batches are gathered from the memmaps (prefetched by a
background thread), so the dataset can be far larger than memory.  The checkpoint carries what
``apply`` needs to rebuild the model from the file alone: the model record (built-in name, or user file
path and its SHA-256), the validated hyperparameters, the data sizes, the inputs and the vocabulary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlfastsim.belle2.config import TrainConfig
from mlfastsim.belle2.memmaps import PrefetchingReader, open_memmap
from mlfastsim.belle2.models.base import NNBaseClass, build_model, load_model_class
from mlfastsim.belle2.preprocess import N_FEATURES, Vocabulary, load_vocabulary
from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.config import dump_config
from mlfastsim.core.devices import select_device
from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.core.io import atomic_write_json, atomic_write_text, ensure_writable_dir
from mlfastsim.core.tracking import tracker_from_config
from mlfastsim.core.trainer import SupervisedTask, Trainer, TrainResult, make_optimizer, make_scheduler

OPTION = {"decay": "--decay-input", "particle": "--particle-input", "pdg": "--pdg-input",
          "mother_pdg": "--mother-pdg-input", "mother_index": "--mother-index-input", "y": "--y-output"}
TORCH_DTYPES = {"decay": torch.long, "particle": torch.float32, "pdg": torch.long, "mother_pdg": torch.long,
                "mother_index": torch.long, "y": torch.float32}
NDIM = {"decay": 2, "particle": 3, "pdg": 2, "mother_pdg": 2, "mother_index": 2, "y": 1}
SCAN_ROWS = 8192


def find_vocabulary(paths: list[Path]) -> Vocabulary:
    """The vocabulary written next to the inputs (``X.memmap.vocab.json`` or ``dir/vocab.json``)."""
    for p in paths:
        for cand in (p.with_name(p.name + ".vocab.json"), p.parent / "vocab.json"):
            if cand.is_file():
                return load_vocabulary(cand)
    return Vocabulary.from_decay_table()


def open_inputs(paths: dict[str, Path | None], needed: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Open and cross-check the memmaps a model needs: present, right rank, same event count, no NaN."""
    arrays: dict[str, np.ndarray] = {}
    for key in needed:
        path = paths.get(key)
        if path is None:
            raise ConfigError(f"the model needs the '{key}' input", field=OPTION[key],
                              fix=f"pass {OPTION[key]} FILE (a memmap or .npy from belle2 memmap/preprocess)")
        arr = open_memmap(path)
        if arr.ndim != NDIM[key]:
            raise DataError(f"'{key}' input has shape {arr.shape}, expected {NDIM[key]} dimensions", file=path,
                            field="shape", fix=f"pass the {key} memmap to {OPTION[key]}")
        if key == "particle" and arr.shape[2] != N_FEATURES:
            raise DataError(f"particle input has {arr.shape[2]} features, expected {N_FEATURES}", file=path,
                            field="shape", fix="re-run belle2 preprocess with this version")
        arrays[key] = arr
    counts = {k: int(a.shape[0]) for k, a in arrays.items()}
    if len(set(counts.values())) > 1:
        ref = needed[0]
        bad = next(k for k in needed if counts[k] != counts[ref])
        raise DataError(f"{counts[bad]} events but {OPTION[ref]} has {counts[ref]}", file=paths[bad],
                        field=OPTION[bad], fix="build every input from the same preprocessed files, in the same order")
    if counts[needed[0]] == 0:
        raise DataError("no events", file=paths[needed[0]], field=OPTION[needed[0]], fix="give some data")
    return arrays


def check_values(arrays: dict[str, np.ndarray], paths: dict[str, Path | None], vocab_size: int) -> None:
    """Streamed scan (bounded memory) for NaN/inf features, out-of-vocabulary tokens and non-binary labels."""
    for key, arr in arrays.items():
        for lo in range(0, arr.shape[0], SCAN_ROWS):
            block = np.asarray(arr[lo : lo + SCAN_ROWS])
            if key in ("particle", "y") and not np.all(np.isfinite(block)):
                row = lo + int(np.argwhere(~np.isfinite(block))[0][0])
                raise DataError(f"NaN/inf in event {row}", file=paths[key], field=key,
                                fix="re-create the input with belle2 preprocess")
            if key == "y" and not np.all((block == 0) | (block == 1)):
                row = lo + int(np.flatnonzero((block != 0) & (block != 1))[0])
                raise DataError(f"labels must be 0 or 1 (event {row})", file=paths[key], field="y",
                                fix="pass the y memmap (skim labels)")
            if key in ("decay", "pdg", "mother_pdg") and block.size and (block.min() < 0 or block.max() >= vocab_size):
                raise DataError(f"token outside the vocabulary (0..{vocab_size - 1})", file=paths[key], field=key,
                                fix="preprocess all inputs with the same vocabulary")


def bce_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Binary cross-entropy on the skim label; the last tensor of the batch is ``y``."""
    device = next(model.parameters()).device
    *xs, y = (t.to(device) for t in batch)
    logits = model(*xs)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
    acc = ((logits > 0).float() == y).float().mean()
    return {"loss": loss, "accuracy": acc}


def model_sizes(arrays: dict[str, np.ndarray], vocab: Vocabulary, paths: dict[str, Path | None]) -> dict[str, int]:
    """Sizes the model is built with, taken from the data (inputs the model does not read get defaults)."""
    max_particles = next((int(arrays[k].shape[1]) for k in ("particle", "pdg", "mother_pdg", "mother_index")
                          if k in arrays), 100)
    max_tokens = int(arrays["decay"].shape[1]) if "decay" in arrays else 150
    return {"vocab_size": vocab.size, "n_features": N_FEATURES, "max_particles": max_particles,
            "max_tokens": max_tokens}


def train_from_config(cfg: TrainConfig, *, resume: bool | str | Path = False, progress: bool = True
                      ) -> tuple[TrainResult, dict[str, Any]]:
    """Train the configured model; checkpoints in ``output_dir/checkpoints``, summary in ``summary.json``."""
    cls, record = load_model_class(cfg.model.name)
    inputs = tuple(cls.inputs)
    paths: dict[str, Path | None] = {k: getattr(cfg.data, k) for k in OPTION}
    arrays = open_inputs(paths, (*inputs, "y"))
    vocab = find_vocabulary([p for p in paths.values() if p is not None])
    check_values(arrays, paths, vocab.size)
    sizes = model_sizes(arrays, vocab, paths)
    device = select_device(cfg.device)
    dist_utils.init_distributed(device)
    torch.manual_seed(cfg.trainer.seed)
    model: NNBaseClass = build_model(cls, cfg.model.params, sizes, source=str(cfg.model.name)).to(device)
    if cfg.init_checkpoint is not None:
        init_from(model, cfg.init_checkpoint, record, vocab)

    n = int(arrays["y"].shape[0])
    perm = np.random.default_rng(cfg.trainer.seed).permutation(n)
    n_val = round(n * cfg.data.val_fraction)
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if train_rows.size == 0:
        raise ConfigError(f"no training events left after the validation split ({n} events)",
                          field="data.val_fraction", fix="lower val_fraction or give more events")
    order = (*inputs, "y")
    dtypes = [TORCH_DTYPES[k] for k in order]
    train_reader = PrefetchingReader([arrays[k] for k in order], train_rows, dtypes, prefetch=cfg.data.prefetch)
    val_reader = PrefetchingReader([arrays[k] for k in order], val_rows, dtypes, prefetch=0)

    optimizer = make_optimizer(model.parameters(), cfg.trainer)
    bs = min(cfg.trainer.batch_size, train_rows.size)
    total = cfg.trainer.max_epochs * max(1, train_rows.size // bs) if cfg.trainer.max_epochs else cfg.trainer.max_steps
    task = SupervisedTask(model, bce_loss, optimizer, make_scheduler(optimizer, cfg.trainer, total or 1),
                          grad_clip=cfg.trainer.grad_clip)
    outdir = ensure_writable_dir(cfg.output_dir) if dist_utils.is_main() else Path(cfg.output_dir)
    meta = {
        "belle2_model": record,
        "model_params": model.params.model_dump(mode="json"),
        "sizes": sizes,
        "inputs": list(inputs),
        "vocab": vocab.to_json(),
    }
    main = dist_utils.is_main()  # under torchrun only rank 0 tracks and writes
    tracker = tracker_from_config(cfg.tracking, default_name=f"belle2-{cls.name or cls.__name__}") if main else None
    try:
        if tracker is not None:
            tracker.log_params(cfg.model_dump(mode="json"))
            atomic_write_text(outdir / "config.yaml", dump_config(cfg))
        trainer = Trainer(task, cfg.trainer, outdir, train_data=train_reader.columns(),  # type: ignore[arg-type]
                          val_data=val_reader.columns() if val_rows.size else None,  # type: ignore[arg-type]
                          tracker=tracker, checkpoint_meta=meta, device=device, progress=progress,
                          description=f"train {cls.name or cls.__name__}")
        train_reader.bind(trainer)
        best_path = outdir / "best.pt"
        if main and val_rows.size:
            trainer.add_eval_callback(_keep_best(trainer, best_path))
        t0 = time.perf_counter()
        start_step = 0
        result = None
        try:
            resume_from = trainer.resume_path(resume)
            if resume_from is not None:
                start_step = int(load_checkpoint(resume_from).get("step", 0))
            result = trainer.fit(resume=resume)
        finally:
            train_reader.close()
        seconds = time.perf_counter() - t0
        steps = result.step - start_step
        summary: dict[str, Any] = {
            "model": record, "inputs": list(inputs), "n_train": int(train_rows.size), "n_val": int(val_rows.size),
            "steps": result.step, "best_val_loss": result.best_val_loss,
            "samples_per_s": steps * trainer.batch_size / seconds if seconds > 0 else float("nan"),
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
        }
        best = best_path if (val_rows.size and best_path.exists()) else None
        if best is not None:
            # the filter to apply is the one with the lowest validation loss, not the last (overfitted) step
            model.load_state_dict(load_checkpoint(best)["modules"]["model"])
            summary["best_checkpoint"] = str(best)
            summary["best_step"] = int(load_checkpoint(best).get("step", 0))
        summary["stopped_early"] = bool(result.stopped_early)
        if val_rows.size:
            scores, labels = predict_reader(model, val_reader, cfg.trainer.batch_size, device)
            summary["val_auc"] = safe_auc(labels, scores)
            if tracker is not None:
                tracker.log_metrics({"val/auc": summary["val_auc"]}, step=result.step)
        if main:
            atomic_write_json(outdir / "summary.json", summary)
        return result, summary
    finally:
        if tracker is not None:
            tracker.close()


def init_from(model: nn.Module, path: Path, record: dict[str, str], vocab: Vocabulary) -> None:
    """Load a pre-trained filter's weights for fine-tuning: same model, same vocabulary, every tensor fits."""
    state = load_checkpoint(path)
    if "belle2_model" not in state or "model" not in state.get("modules", {}):
        raise DataError("not a belle2 filter checkpoint", file=path, field="init_checkpoint",
                        fix="pass a checkpoint written by 'mlfastsim belle2 train' (e.g. OUT/best.pt)")
    if state["belle2_model"] != record:
        raise ConfigError(f"the checkpoint is a {state['belle2_model']} filter, this run trains {record}", file=path,
                          field="init_checkpoint", fix="fine-tune with the pre-trained run's model (-m)")
    if state.get("vocab") != vocab.to_json():
        raise DataError("the checkpoint's token vocabulary differs from these inputs'", file=path,
                        field="init_checkpoint", fix="preprocess the fine-tuning data with the same decay table")
    try:
        model.load_state_dict(state["modules"]["model"])
    except RuntimeError as exc:
        raise ConfigError(f"weights do not fit ({str(exc).splitlines()[0][:120]})", file=path,
                          field="init_checkpoint", fix="use the pre-trained run's model.params") from exc


def _keep_best(trainer: Trainer, path: Path) -> Any:
    """Eval callback: write ``best.pt`` whenever the validation loss improves (rank 0).

    Early stopping ends a run ``patience`` evaluations *after* the best one, so the last checkpoint is
    already past the minimum; ``best.pt`` is the one to apply (and what the summary's AUC is measured on).
    """
    from mlfastsim.core.checkpoint import save_checkpoint

    def callback(step: int, val: dict[str, float]) -> None:
        if trainer.best_step == step:
            save_checkpoint(path, trainer.state_dict())

    return callback


@torch.no_grad()
def predict_reader(model: nn.Module, reader: PrefetchingReader, batch_size: int, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and labels of every row of ``reader`` (last array = y)."""
    model.eval()
    scores, labels = [], []
    for lo in range(0, len(reader), batch_size):
        *xs, y = reader.read(np.arange(lo, min(lo + batch_size, len(reader))))
        scores.append(torch.sigmoid(model(*(x.to(device) for x in xs))).cpu().numpy())
        labels.append(y.numpy())
    return np.concatenate(scores), np.concatenate(labels)


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present (tiny validation sets)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def summary_text(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)
