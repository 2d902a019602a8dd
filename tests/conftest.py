"""Shared test fixtures: small, seeded, fast."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def binning_ds2() -> Path:
    """The CaloChallenge dataset-2 binning XML shipped with the package."""
    return Path(str(resources.files("mlfastsim") / "data" / "binning" / "binning_dataset_2.xml"))


@pytest.fixture
def binning_ds3() -> Path:
    return Path(str(resources.files("mlfastsim") / "data" / "binning" / "binning_dataset_3.xml"))
