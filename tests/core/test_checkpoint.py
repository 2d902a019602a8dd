from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.core.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_matching_weights,
    save_checkpoint,
)
from mlfastsim.core.errors import InputFileError
from mlfastsim.core.seeding import seed_everything, set_rng_state


def test_rng_state_roundtrip_makes_draws_repeat(tmp_path: Path) -> None:
    seed_everything(5)
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(checkpoint_path(tmp_path, 7), {"model": model.state_dict(), "step": 7})
    first = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    state = load_checkpoint(path)
    set_rng_state(state["rng"])
    second = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])
    assert state["step"] == 7 and latest_checkpoint(tmp_path) == path


def test_corrupt_and_missing_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="cannot be read"):
        load_checkpoint(bad)
    with pytest.raises(InputFileError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_transfer_loads_only_matching_tensors() -> None:
    src = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    dst = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 5))
    loaded, skipped = load_matching_weights(dst, src.state_dict())
    assert loaded == ["0.weight", "0.bias"] and skipped == ["1.weight", "1.bias"]
    assert torch.equal(dst[0].weight, src[0].weight)
