"""Pre-trained shower models shipped inside the package (``mlfastsim/data/pretrained``).

``index.json`` lists every model (name, file, mesh, model type, description, sha256, size, model card).
:func:`pretrained_path` verifies the file's sha256 before handing it out, so a truncated download or a
file edited by hand fails with a clear message instead of as a mysterious weights mismatch later.
``scripts/make_pretrained.py`` rebuilds the files and the index.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from mlfastsim.core.errors import ConfigError, InputFileError

DEFAULT_MODEL = "vae_ds2_meta"
INDEX_NAME = "index.json"


def pretrained_dir() -> Path:
    """The directory of the shipped models inside the installed package."""
    return Path(str(resources.files("mlfastsim") / "data" / "pretrained"))


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def list_pretrained(*, directory: str | Path | None = None) -> list[dict[str, Any]]:
    """The entries of ``index.json``: dicts with name, file, mesh, model_type, description, sha256..."""
    index = Path(directory) if directory is not None else pretrained_dir()
    path = index / INDEX_NAME
    if not path.is_file():
        raise InputFileError("no index of pre-trained models in this installation", file=path,
                             fix="reinstall mlfastsim, or rebuild the models with scripts/make_pretrained.py")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        models = list(data["models"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputFileError(f"index of pre-trained models is corrupt ({exc})", file=path,
                             fix="reinstall mlfastsim, or rebuild the models with scripts/make_pretrained.py") from exc
    return models


def pretrained_path(name: str = DEFAULT_MODEL, *, directory: str | Path | None = None, verify: bool = True) -> Path:
    """Path of the shipped model ``name``, its sha256 checked against the index (``verify``)."""
    base = Path(directory) if directory is not None else pretrained_dir()
    entries = {e["name"]: e for e in list_pretrained(directory=base)}
    if name not in entries:
        raise ConfigError(f"no pre-trained model named {name!r}", field="checkpoint",
                          fix=f"use one of {', '.join(sorted(entries)) or '(none shipped)'} or pass --checkpoint FILE")
    entry = entries[name]
    path = base / entry["file"]
    if not path.is_file():
        raise InputFileError(f"pre-trained model {name!r} is missing from this installation", file=path,
                             fix="reinstall mlfastsim, or rebuild it with scripts/make_pretrained.py")
    if verify:
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise InputFileError(
                f"pre-trained model {name!r} is corrupt (sha256 {actual[:12]}..., expected {entry['sha256'][:12]}...)",
                file=path, fix="reinstall mlfastsim, or rebuild it with scripts/make_pretrained.py",
            )
    return path
