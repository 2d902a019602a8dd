"""Shipped nets: `pretrained:NAME` resolves to a sha256-checked file; altered or unknown ones are clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.lartpc import pretrained


def _index(tmp_path: Path, payload: bytes) -> Path:
    (tmp_path / "net.pt").write_bytes(payload)
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"models": [{"name": "net", "file": "net.pt",
                                             "sha256": hashlib.sha256(payload).hexdigest()}]}))
    return index


def test_resolve_checks_name_and_sha256(tmp_path: Path) -> None:
    index = _index(tmp_path, b"weights")
    assert pretrained.resolve("pretrained:net", "checkpoint", index) == tmp_path / "net.pt"
    with pytest.raises(ConfigError, match="pretrained:net"):
        pretrained.resolve("pretrained:other", "checkpoint", index)
    other = tmp_path / "altered"
    other.mkdir()
    index = _index(other, b"weights")
    (other / "net.pt").write_bytes(b"weighs")
    with pytest.raises(InputFileError, match="sha256"):
        pretrained.resolve("pretrained:net", "checkpoint", index)


def test_shipped_index_matches_its_files() -> None:
    models = pretrained.load_index()
    if not models:
        pytest.skip("no LArTPC nets shipped")
    for name, entry in models.items():
        path = pretrained.resolve(f"{pretrained.PREFIX}{name}", "checkpoint")
        assert path.stat().st_size == entry["size_bytes"]
        assert (path.parent / entry["card"]).read_text().count(entry["sha256"]) == 1
