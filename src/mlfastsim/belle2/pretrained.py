"""The shipped Belle II filter: ``belle2 apply --checkpoint pretrained:NAME`` with no training first.

Weights, model card and SHA-256 live in ``mlfastsim/data/pretrained`` and are listed in
``belle2_index.json`` (separate from the shower and LArTPC indexes); the file is checked against the index
on every use.  ``scripts/make_belle2_pretrained.py`` rebuilds it from ``benchmarks/belle2_study.py``.
"""

from __future__ import annotations

from pathlib import Path

from mlfastsim.lartpc.pretrained import DATA_DIR, is_pretrained
from mlfastsim.lartpc.pretrained import resolve as _resolve

INDEX = DATA_DIR / "belle2_index.json"

__all__ = ["INDEX", "is_pretrained", "resolve"]


def resolve(value: str | Path, field: str = "--checkpoint") -> Path:
    """``pretrained:NAME`` -> the verified checkpoint file of a shipped filter."""
    return _resolve(value, field, INDEX, rebuild="scripts/make_belle2_pretrained.py")
