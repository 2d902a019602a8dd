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
    resolve_checkpoint_ref,
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


def _run_with_history(run: Path, losses: dict[int, float]) -> None:
    """A run directory as the trainer leaves it: step files, each holding the history up to its step."""
    history: list[dict[str, float]] = []
    for step, loss in losses.items():
        history.append({"step": float(step), "val/loss": loss})
        save_checkpoint(checkpoint_path(run / "checkpoints", step), {"step": step, "history": list(history)},
                        with_rng=False)


def test_latest_and_best_references(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run_with_history(run, {100: 3.0, 200: 1.5, 300: 2.0})
    assert resolve_checkpoint_ref(run / "latest") == checkpoint_path(run / "checkpoints", 300)
    assert resolve_checkpoint_ref(run / "best") == checkpoint_path(run / "checkpoints", 200)
    # the checkpoints directory itself works too, and load_checkpoint takes the reference
    assert resolve_checkpoint_ref(run / "checkpoints" / "best") == checkpoint_path(run / "checkpoints", 200)
    assert load_checkpoint(run / "latest")["step"] == 300
    # a pruned best step: the best of what is kept
    checkpoint_path(run / "checkpoints", 200).unlink()
    assert resolve_checkpoint_ref(run / "best") == checkpoint_path(run / "checkpoints", 300)
    # a trainer that keeps its best weights as best.pt (belle2): that file
    save_checkpoint(run / "best.pt", {"step": 200}, with_rng=False)
    assert resolve_checkpoint_ref(run / "best") == run / "best.pt"
    # a real file named like a reference is just that file; other paths pass through
    assert resolve_checkpoint_ref(tmp_path / "x.pt") == tmp_path / "x.pt"


def test_reference_without_checkpoints_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no checkpoints to take 'latest'") as info:
        load_checkpoint(tmp_path / "empty" / "latest")
    assert "run the training first" in info.value.one_line()
    run = tmp_path / "nolosses"
    save_checkpoint(checkpoint_path(run / "checkpoints", 5), {"step": 5, "history": []}, with_rng=False)
    with pytest.raises(InputFileError, match="none is 'best'"):
        resolve_checkpoint_ref(run / "best")
