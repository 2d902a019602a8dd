"""Shared tiny Belle II samples (session scoped: produced once, read by many tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfastsim.belle2.config import PreprocessConfig, ProduceConfig
from mlfastsim.belle2.preprocess import preprocess_file
from mlfastsim.belle2.produce import produce


@pytest.fixture(scope="session")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 labelled events in two chunks."""
    out = tmp_path_factory.mktemp("belle2") / "events.h5"
    produce(ProduceConfig(n_events=240, chunk_size=120, seed=5, output=out), progress=False)
    return out


@pytest.fixture(scope="session")
def preprocessed(events_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    preprocess_file(PreprocessConfig(input=events_file, output_dir=out, chunk_events=100), progress=False)
    return out
