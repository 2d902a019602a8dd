"""Shipped LArTPC networks: ``checkpoint: pretrained:NAME`` in a config applies them with no training first.

The weights live in ``mlfastsim/data/pretrained`` next to a model card (data, training, metrics, how to
rebuild) and are listed in ``lartpc_index.json`` (its own index, separate from the shower models').
Every use checks the file's SHA-256 against the index, so a truncated or swapped file is an error rather
than a silently different model.  ``scripts/make_lartpc_pretrained.py`` rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from mlfastsim.core.errors import ConfigError, InputFileError

PREFIX = "pretrained:"
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "pretrained"
INDEX = DATA_DIR / "lartpc_index.json"


def load_index(index: Path = INDEX) -> dict[str, dict[str, Any]]:
    """Name -> entry (file, card, sha256, description ...); empty when nothing is shipped."""
    if not index.exists():
        return {}
    try:
        return {m["name"]: m for m in json.loads(index.read_text())["models"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"unreadable index ({type(exc).__name__})", file=index, field="models",
                             fix="restore the file from the package") from exc


@cache
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_pretrained(value: str | Path | None) -> bool:
    return value is not None and str(value).startswith(PREFIX)


def resolve(value: str | Path, field: str, index: Path = INDEX,
            rebuild: str = "scripts/make_lartpc_pretrained.py") -> Path:
    """``pretrained:NAME`` -> the verified weights file (a clear error for unknown names or altered files).

    Generic over the index file, so the Belle II filters (their own index) resolve the same way.
    """
    name = str(value)[len(PREFIX):]
    models = load_index(index)
    if name not in models:
        raise ConfigError(f"no shipped model {name!r}", field=field,
                          fix=f"use one of {', '.join(PREFIX + n for n in models) or '(none shipped)'}, "
                              "or a checkpoint file or run directory")
    entry = models[name]
    path = index.parent / entry["file"]
    if not path.is_file():
        raise InputFileError("shipped weights are missing", file=path, field=field,
                             fix=f"reinstall mlfastsim or run {rebuild}")
    if _sha256(path) != entry["sha256"]:
        raise InputFileError(f"sha256 {_sha256(path)[:12]}... differs from the index's {entry['sha256'][:12]}...",
                             file=path, field="sha256",
                             fix=f"reinstall mlfastsim or rebuild with {rebuild}")
    return path
