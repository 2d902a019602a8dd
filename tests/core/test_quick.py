"""MLFASTSIM_QUICK=1: size knobs capped in every config load_config builds, nothing else touched."""

from __future__ import annotations

import pytest
from pydantic import Field

from mlfastsim.core.config import StrictModel, load_config
from mlfastsim.core.quick import QUICK_CAPS, QUICK_ENV, cap
from mlfastsim.core.trainer import TrainerConfig


class _Job(StrictModel):
    n_per_point: int = Field(1000, ge=1)
    n_events: int = 40
    trainer: TrainerConfig = TrainerConfig()
    learning_rate: float = 1e-3


def test_quick_mode_caps_nested_size_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(QUICK_ENV, "1")
    cfg = load_config(_Job, overrides=["trainer.max_steps=6000", "trainer.eval_every=250"])
    assert cfg.n_per_point == QUICK_CAPS["n_per_point"] and cfg.trainer.max_steps == QUICK_CAPS["max_steps"]
    assert cfg.n_events == 40  # a cap only lowers
    assert cfg.trainer.eval_every == 250 and cfg.learning_rate == 1e-3  # other knobs untouched
    assert cap("adaptation_steps", 400) == QUICK_CAPS["adaptation_steps"]


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_without_quick_mode_nothing_changes(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(QUICK_ENV, value)
    cfg = load_config(_Job, overrides=["trainer.max_steps=6000"])
    assert cfg.n_per_point == 1000 and cfg.trainer.max_steps == 6000 and cap("n_per_point", 500) == 500
