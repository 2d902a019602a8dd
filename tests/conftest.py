"""Shared test fixtures: small, seeded, fast."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (as the subprocess runs use), restored afterwards.

    Floating-point reductions are then ordered the same in-process and in subprocesses, and two test
    workers never spin on each other's OpenMP pools.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def binning_ds2() -> Path:
    """The CaloChallenge dataset-2 binning XML shipped with the package."""
    return Path(str(resources.files("mlfastsim") / "data" / "binning" / "binning_dataset_2.xml"))


@pytest.fixture
def binning_ds3() -> Path:
    return Path(str(resources.files("mlfastsim") / "data" / "binning" / "binning_dataset_3.xml"))
