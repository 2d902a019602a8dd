"""Pre-trained shower models shipped inside the package (``mlfastsim/data/pretrained/index.json``).

Every entry names its file, card, model type, mesh, particle and geometry slots and carries a sha256 that
:func:`pretrained_path` checks before handing the file out (:mod:`mlfastsim.core.pretrained`).
``scripts/make_pretrained.py`` (VAE), ``make_cfm_pretrained.py`` and ``make_hadron_pretrained.py`` rebuild them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfastsim.core.pretrained import ShippedModels, pretrained_dir, sha256_file

__all__ = ["DEFAULT_MODEL", "INDEX_NAME", "list_pretrained", "pretrained_dir", "pretrained_path", "sha256_file"]

DEFAULT_MODEL = "vae_ds2_meta"
INDEX_NAME = "index.json"
REBUILD = "scripts/make_pretrained.py"


def _shipped(directory: str | Path | None) -> ShippedModels:
    return ShippedModels(INDEX_NAME, REBUILD, Path(directory) if directory is not None else None)


def list_pretrained(*, directory: str | Path | None = None) -> list[dict[str, Any]]:
    """The entries of ``index.json``: dicts with name, file, mesh, model_type, description, sha256..."""
    return _shipped(directory).entries()


def pretrained_path(name: str = DEFAULT_MODEL, *, directory: str | Path | None = None, verify: bool = True) -> Path:
    """Path of the shipped model ``name`` (also ``pretrained:NAME``), its sha256 checked against the index."""
    if name.startswith("pretrained:"):
        name = name[len("pretrained:"):]
    return _shipped(directory).path(name, verify=verify)
