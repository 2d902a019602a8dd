"""Shipped LArTPC networks: ``checkpoint: pretrained:NAME`` in a config applies them with no training first.

Listed in ``lartpc_index.json`` (weights, card, sha256; see :mod:`mlfastsim.core.pretrained`);
``scripts/make_lartpc_pretrained.py`` rebuilds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfastsim.core.pretrained import PREFIX, ShippedModels, is_pretrained

__all__ = ["PREFIX", "SHIPPED", "is_pretrained", "load_index", "resolve"]

SHIPPED = ShippedModels("lartpc_index.json", rebuild="scripts/make_lartpc_pretrained.py")


def load_index(index: Path | None = None) -> dict[str, dict[str, Any]]:
    """Name -> entry; empty when nothing is shipped."""
    shipped = SHIPPED if index is None else ShippedModels(index.name, SHIPPED.rebuild, index.parent)
    return {e["name"]: e for e in shipped.entries(required=False)}


def resolve(value: str | Path, field: str, index: Path | None = None) -> Path:
    """``pretrained:NAME`` -> the verified weights file (a clear error for unknown names or altered files)."""
    shipped = SHIPPED if index is None else ShippedModels(index.name, SHIPPED.rebuild, index.parent)
    return shipped.resolve(value, field)
