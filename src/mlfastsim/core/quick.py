"""``MLFASTSIM_QUICK=1``: every command at smoke-test size, for trying the README (and testing it) quickly.

The README's commands are sized for real use (thousands of showers, thousands of steps).  With the
variable set, :func:`~mlfastsim.core.config.load_config` caps the size knobs below in whatever config
it builds, so the same commands, typed exactly as written, run end to end in minutes on a laptop and
still hand each other real files (checkpoints, ONNX, HDF5).  The numbers are meaningless then; the
chain is what is being shown.  A cap only lowers a value, never raises it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import BaseModel

QUICK_ENV = "MLFASTSIM_QUICK"

#: field name -> the largest value it keeps in quick mode (wherever the field sits in a config)
QUICK_CAPS: dict[str, int] = {
    "n_per_point": 20,        # showers per (energy, angle) point, or in total for ranges
    "n_events": 2000,         # belle2 produce (the README's lartpc runs use 40 already)
    "max_steps": 10,          # trainer steps of every model
    "max_epochs": 1,
    "n_epochs": 1,            # lartpc train
    "meta_steps": 5,
    "adaptation_steps": 10,
    "n_trials": 2,            # tune
}

logger = logging.getLogger(__name__)


def quick_mode() -> bool:
    """True when ``MLFASTSIM_QUICK`` is set to anything but empty, 0, false or no."""
    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cap(name: str, value: int) -> int:
    """``value`` capped for quick mode (unchanged outside it, or for a knob without a cap)."""
    limit = QUICK_CAPS.get(name)
    return min(value, limit) if quick_mode() and limit is not None else value


def apply_quick(cfg: BaseModel) -> list[str]:
    """Cap the size knobs of ``cfg`` in place (nested sections too); return what changed, ``a.b: 1000 -> 10``."""
    changed: list[str] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name in type(model).model_fields:
            value: Any = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")
            elif name in QUICK_CAPS and isinstance(value, int) and not isinstance(value, bool):
                if value > QUICK_CAPS[name]:
                    setattr(model, name, QUICK_CAPS[name])
                    changed.append(f"{prefix}{name}: {value} -> {QUICK_CAPS[name]}")

    walk(cfg, "")
    if changed:
        logger.warning("%s=1: smoke-test sizes (%s)", QUICK_ENV, ", ".join(changed))
    return changed
