"""Training through the shared Trainer on memmaps: exact resume, input checks, summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.belle2.config import TrainConfig
from mlfastsim.belle2.train import train_from_config
from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(pre: Path, out: Path, model: str = "particle", **trainer: object) -> TrainConfig:
    data = {k: pre / f"{k}.npy" for k in ("decay", "particle", "pdg", "mother_pdg", "mother_index", "y")}
    return TrainConfig.model_validate({
        "data": data, "model": {"name": model, "params": {"particle_channels": 8, "residual_blocks": 1}},
        "trainer": {"max_steps": 8, "batch_size": 16, "eval_every": 4, "checkpoint_every": 4, **trainer},
        "output_dir": out, "tracking": {"dir": out / "runs"}})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["modules"]["model"]


def test_resume_is_bit_exact(preprocessed: Path, tmp_path: Path) -> None:
    _, full = train_from_config(_cfg(preprocessed, tmp_path / "a"), progress=False)
    assert full["steps"] == 8
    assert 0.0 <= full["val_auc"] <= 1.0
    train_from_config(_cfg(preprocessed, tmp_path / "b", max_steps=4), progress=False)
    _, resumed = train_from_config(_cfg(preprocessed, tmp_path / "b"), resume=True, progress=False)
    assert resumed["steps"] == 8
    wa = _weights(tmp_path / "a" / "checkpoints" / "step_00000008.pt")
    wb = _weights(tmp_path / "b" / "checkpoints" / "step_00000008.pt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_00000008.pt")
    assert meta["belle2_model"] == {"kind": "builtin", "name": "particle"}
    assert meta["inputs"] == ["particle", "pdg", "mother_pdg"]


def test_input_checks(preprocessed: Path, tmp_path: Path) -> None:
    cfg = _cfg(preprocessed, tmp_path / "c", model="resnet")
    cfg.data.decay = None
    with pytest.raises(ConfigError, match="--decay-input"):
        train_from_config(cfg, progress=False)
    short = tmp_path / "short_y.npy"
    np.save(short, np.load(preprocessed / "y.npy")[:-3])
    cfg = _cfg(preprocessed, tmp_path / "d")
    cfg.data.y = short
    with pytest.raises(DataError, match="237 events but --particle-input has 240"):
        train_from_config(cfg, progress=False)
    nan = tmp_path / "particle.npy"
    arr = np.load(preprocessed / "particle.npy")
    arr[17, 2, 1] = np.nan
    np.save(nan, arr)
    cfg = _cfg(preprocessed, tmp_path / "e")
    cfg.data.particle = nan
    with pytest.raises(DataError, match="NaN/inf in event 17"):
        train_from_config(cfg, progress=False)
    cfg = _cfg(preprocessed, tmp_path / "f")
    cfg.model.params = {"particle_channel": 8}
    with pytest.raises(ConfigError, match="particle_channel"):
        train_from_config(cfg, progress=False)


def test_early_stopping_keeps_the_best_checkpoint(preprocessed: Path, tmp_path: Path) -> None:
    """A run that overfits stops after ``patience`` evaluations and reports the weights of its best one."""
    cfg = _cfg(preprocessed, tmp_path / "es", max_steps=200, eval_every=2, checkpoint_every=100,
               early_stopping_patience=2, learning_rate=0.05)
    result, summary = train_from_config(cfg, progress=False)
    assert summary["stopped_early"] and result.step < 200
    best = load_checkpoint(tmp_path / "es" / "best.pt")
    assert best["step"] == result.best_step == summary["best_step"]
    assert best["belle2_model"] == {"kind": "builtin", "name": "particle"}
    assert summary["best_checkpoint"] == str(tmp_path / "es" / "best.pt")


def test_fine_tuning_starts_from_the_pretrained_weights(preprocessed: Path, tmp_path: Path) -> None:
    _, pre = train_from_config(_cfg(preprocessed, tmp_path / "pre", max_steps=4), progress=False)
    start = _weights(Path(pre["last_checkpoint"]))
    cfg = _cfg(preprocessed, tmp_path / "ft", max_steps=1, learning_rate=1e-9)
    cfg.init_checkpoint = Path(pre["last_checkpoint"])
    _, ft = train_from_config(cfg, progress=False)
    tuned = _weights(Path(ft["last_checkpoint"]))
    # one step at a negligible learning rate: the weights are the pre-trained ones, not a fresh init
    # (batch-norm running statistics move with any step, whatever the learning rate)
    params = [k for k in start if "running" not in k and "num_batches" not in k]
    assert params and all(torch.allclose(start[k], tuned[k], atol=1e-6) for k in params)
    other = _cfg(preprocessed, tmp_path / "bad", model="decay")
    other.init_checkpoint = Path(pre["last_checkpoint"])
    with pytest.raises(ConfigError, match=r"filter"):
        train_from_config(other, progress=False)
