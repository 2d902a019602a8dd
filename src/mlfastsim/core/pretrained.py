"""Models shipped inside the package (``mlfastsim/data/pretrained``): one loader for every workflow.

Each workflow lists its models in its own index file (``index.json`` for showers, ``lartpc_index.json``,
``belle2_index.json``) so the rebuild scripts never write each other's entries; every entry has a name,
file, card, model_type, description and sha256.  A file is handed out only after its SHA-256 matches the
index, so a truncated download or an edited file is a clear error instead of a silently different model.
``pretrained:NAME`` in a config or on the command line names a shipped model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mlfastsim.core.errors import ConfigError, InputFileError

PREFIX = "pretrained:"


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


def is_pretrained(value: str | Path | None) -> bool:
    """Whether a checkpoint reference names a shipped model (``pretrained:NAME``)."""
    return value is not None and str(value).startswith(PREFIX)


@dataclass(frozen=True)
class ShippedModels:
    """One workflow's shipped models: its index file and the script that rebuilds them."""

    index_name: str
    rebuild: str
    directory: Path | None = None  # default: the installed package's data/pretrained

    @property
    def base(self) -> Path:
        return self.directory if self.directory is not None else pretrained_dir()

    @property
    def index(self) -> Path:
        return self.base / self.index_name

    def entries(self, *, required: bool = True) -> list[dict[str, Any]]:
        """The index's entries (dicts with name, file, card, model_type, description, sha256 ...)."""
        path = self.index
        if not path.is_file():
            if not required:
                return []
            raise InputFileError("no index of pre-trained models in this installation", file=path,
                                 fix=f"reinstall mlfastsim, or rebuild the models with {self.rebuild}")
        try:
            return list(json.loads(path.read_text(encoding="utf-8"))["models"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise InputFileError(f"index of pre-trained models is corrupt ({type(exc).__name__})", file=path,
                                 field="models", fix=f"reinstall mlfastsim, or rebuild with {self.rebuild}") from exc

    def path(self, name: str, *, field: str = "checkpoint", verify: bool = True) -> Path:
        """The verified file of shipped model ``name``."""
        entries = {e["name"]: e for e in self.entries()}
        if name not in entries:
            raise ConfigError(f"no shipped model named {name!r}", field=field,
                              fix=f"use one of {', '.join(PREFIX + n for n in sorted(entries)) or '(none shipped)'} "
                                  "or pass a checkpoint file")
        entry = entries[name]
        path = self.base / entry["file"]
        if not path.is_file():
            raise InputFileError(f"shipped model {name!r} is missing from this installation", file=path, field=field,
                                 fix=f"reinstall mlfastsim, or rebuild it with {self.rebuild}")
        if verify:
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise InputFileError(
                    f"shipped model {name!r} is corrupt (sha256 {actual[:12]}..., expected {entry['sha256'][:12]}...)",
                    file=path, field="sha256", fix=f"reinstall mlfastsim, or rebuild it with {self.rebuild}")
        return path

    def resolve(self, value: str | Path, field: str = "checkpoint") -> Path:
        """``pretrained:NAME`` -> the verified file; anything else is returned as a path unchanged."""
        if not is_pretrained(value):
            return Path(value)
        return self.path(str(value)[len(PREFIX):], field=field)
