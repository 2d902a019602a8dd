"""Checkpoints that make resume exact: weights, optimiser, scheduler, step and every RNG state.

Saved atomically (temporary name, then rename) so a job killed mid-save never leaves a corrupt file,
and loaded with ``torch.load(weights_only=True)`` so a checkpoint from elsewhere cannot run code.

Wherever a checkpoint is named, ``RUN/latest`` and ``RUN/best`` may stand for a file
(:func:`resolve_checkpoint_ref`, called by :func:`load_checkpoint`): chained commands and configs then
keep working when a run is shortened or lengthened, instead of naming a step that may never be written.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from mlfastsim.core.errors import InputFileError, clip_words
from mlfastsim.core.io import atomic_path, require_file
from mlfastsim.core.seeding import rng_state

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")
#: names that stand for a checkpoint of a run directory: ``RUN/latest``, ``RUN/best``
CHECKPOINT_REFS = ("latest", "best")


def save_checkpoint(path: str | Path, state: dict[str, Any], *, with_rng: bool = True) -> Path:
    """Write ``state`` (tensors, dicts, lists, numbers, strings) atomically, adding the RNG states."""
    payload = dict(state)
    if with_rng:
        payload["rng"] = rng_state()
    with atomic_path(path, what="checkpoint") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False
                    ) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only) with a clear error for missing or corrupt files.

    ``mmap`` maps the tensors instead of reading them: a cheap look at the metadata (model type) of a
    checkpoint that is about to be loaded for real.
    """
    p = require_file(resolve_checkpoint_ref(path), what="checkpoint")
    fix = "pass a checkpoint written by mlfastsim, or re-create it"
    try:
        state = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            pickle.UnpicklingError) as exc:
        # A file that is not a torch archive at all fails inside the legacy unpickler with odd errors
        # (KeyError on the first byte, for one): they all mean the same thing to a user.
        detail = clip_words((str(exc).splitlines() or [type(exc).__name__])[0], 120)
        raise InputFileError(f"checkpoint cannot be read ({detail or type(exc).__name__})", file=p, fix=fix) from exc
    if not isinstance(state, dict):
        raise InputFileError(f"checkpoint holds a {type(state).__name__}, not a dict of states", file=p, fix=fix)
    return state


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """The canonical file name of the checkpoint at ``step`` (sortable, one per step)."""
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """All ``step_*.pt`` checkpoints in ``directory``, sorted by step."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def is_checkpoint_ref(path: str | Path) -> bool:
    """True for ``RUN/latest`` or ``RUN/best`` that is not itself a file (a reference to resolve)."""
    p = Path(path)
    return p.name in CHECKPOINT_REFS and not p.exists()


def monitored_losses(checkpoint: str | Path) -> dict[int, float]:
    """Step -> the loss the trainer monitors (``val/loss``, else ``train/loss``) from a checkpoint's history.

    Every trainer checkpoint carries the history of all evaluations up to its step, so the latest one
    knows the losses at every earlier checkpoint too.  Memory-mapped: only the history is read.
    """
    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True, mmap=True)
    losses: dict[int, float] = {}
    for record in state.get("history", []) if isinstance(state, dict) else []:
        loss = record.get("val/loss", record.get("train/loss"))
        if "step" in record and loss is not None:
            losses[int(record["step"])] = float(loss)
    return losses


def resolve_checkpoint_ref(path: str | Path, *, field: str | None = None) -> Path:
    """``RUN/latest`` or ``RUN/best`` -> a checkpoint file; any other path is returned unchanged.

    ``RUN`` is a run directory (its ``checkpoints/``) or a checkpoints directory.  ``latest`` is the
    highest step; ``best`` is ``RUN/best.pt`` where the trainer keeps its best weights (belle2), else the
    kept checkpoint with the lowest monitored loss (validation loss, or training loss without a validation
    split) that the trainer recorded at its step.
    """
    p = Path(path)
    if not is_checkpoint_ref(p):
        return p
    run = p.parent
    if p.name == "best":
        for kept in (run / "best.pt", run.parent / "best.pt" if run.name == "checkpoints" else None):
            if kept is not None and kept.is_file():
                return kept
    ckpt_dir = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    found = list_checkpoints(ckpt_dir)
    if not found:
        raise InputFileError(f"no checkpoints to take {p.name!r} from (no step_*.pt files)", file=ckpt_dir,
                             field=field, fix="run the training first, or name a checkpoint file")
    if p.name == "latest":
        return found[-1][1]
    try:
        losses = monitored_losses(found[-1][1])
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise InputFileError(f"checkpoint cannot be read to find the best step ({type(exc).__name__})",
                             file=found[-1][1], field=field, fix="name a checkpoint file, or use latest") from exc
    scored = [(losses[step], step, f) for step, f in found if step in losses]
    if not scored:
        raise InputFileError("no kept checkpoint has a recorded loss at its step, so none is 'best'", file=ckpt_dir,
                             field=field, fix="use latest, or make trainer.checkpoint_every a multiple of eval_every")
    return min(scored)[2]


def load_matching_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Transfer learning: copy every tensor whose name and shape match; return (loaded, skipped) names."""
    own = model.state_dict()
    loaded, skipped = [], []
    for name, tensor in state_dict.items():
        if name in own and own[name].shape == tensor.shape:
            own[name] = tensor
            loaded.append(name)
        else:
            skipped.append(name)
    model.load_state_dict(own)
    return loaded, skipped
