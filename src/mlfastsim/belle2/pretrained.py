"""The shipped Belle II filter: ``belle2 apply --checkpoint pretrained:NAME`` with no training first.

Listed in ``belle2_index.json`` (weights, card, sha256; see :mod:`mlfastsim.core.pretrained`);
``scripts/make_belle2_pretrained.py`` rebuilds it from ``benchmarks/belle2_study.py``.
"""

from __future__ import annotations

from pathlib import Path

from mlfastsim.core.pretrained import ShippedModels, is_pretrained

SHIPPED = ShippedModels("belle2_index.json", rebuild="scripts/make_belle2_pretrained.py")
INDEX = SHIPPED.index

__all__ = ["INDEX", "SHIPPED", "is_pretrained", "resolve"]


def resolve(value: str | Path, field: str = "--checkpoint") -> Path:
    """``pretrained:NAME`` -> the verified checkpoint file of a shipped filter."""
    return SHIPPED.resolve(value, field)
