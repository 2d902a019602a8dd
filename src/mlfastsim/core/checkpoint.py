"""Checkpoints that make resume exact: weights, optimiser, scheduler, step and every RNG state.

Saved atomically (temporary name, then rename) so a job killed mid-save never leaves a corrupt file,
and loaded with ``torch.load(weights_only=True)`` so a checkpoint from elsewhere cannot run code.
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
    p = require_file(path, what="checkpoint")
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
