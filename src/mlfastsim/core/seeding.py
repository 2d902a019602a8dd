"""One place for randomness: seeding every generator a run touches, and capturing/restoring their state.

Exact resume needs *all* of them (Python, NumPy, torch CPU and CUDA), so checkpoints store the lot.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global generator and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may draw from the global one
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Snapshot of every global generator, storable with ``torch.save`` and loadable with weights_only."""
    state: dict[str, Any] = {
        "python": _encode_python_state(random.getstate()),
        "numpy": _encode_numpy_state(np.random.get_state()),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot made by :func:`rng_state`."""
    random.setstate(_decode_python_state(state["python"]))
    np.random.set_state(_decode_numpy_state(state["numpy"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# weights_only loading accepts tensors, lists, dicts and primitives, so generator states are re-encoded.
def _encode_python_state(st: tuple) -> dict[str, Any]:
    version, internal, gauss = st
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _decode_python_state(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])


def _encode_numpy_state(st: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = st
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _decode_numpy_state(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])
