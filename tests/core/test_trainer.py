"""The training loop: exact resume (in process and after SIGKILL), early stopping, checkpoints, hooks.

The model has dropout and batch norm and the run an exponential LR schedule, so a resume that forgot an
RNG state, a buffer or the scheduler would end on different weights; hashes must match bit for bit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mlfastsim.core.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, load_matching_weights
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.trainer import Batch, Trainer, TrainerConfig, TrainTask, split_train_val
from tests.core._train_script import make_trainer, weights_hash

SCRIPT = Path(__file__).with_name("_train_script.py")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(trainer: Trainer) -> nn.Module:
    return trainer.task.modules()["model"]


def test_sigkill_then_resume_is_exact(tmp_path: Path) -> None:
    # checkpoint_every=15 and eval_every=20: the evaluation at step 40 averages training losses from both
    # sides of the kill, so the history must match too, not only the weights.
    kw = {"max_steps": 60, "checkpoint_every": 15, "eval_every": 20}
    ref = make_trainer(tmp_path / "a", **kw)
    ref_result = ref.fit()

    run_dir = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--outdir", str(run_dir), "--max-steps", "60",
           "--checkpoint-every", "15", "--eval-every", "20", "--hang-after", "30"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    target = checkpoint_path(run_dir / "checkpoints", 30)
    try:
        deadline = time.monotonic() + 60
        while not target.exists():
            if proc.poll() is not None:
                pytest.fail(f"training script exited early: {proc.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no step-30 checkpoint within 60 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [15, 30]

    resumed = make_trainer(run_dir, **kw)
    result = resumed.fit(resume=True)
    assert result.step == 60
    assert weights_hash(_model(resumed)) == weights_hash(_model(ref))
    assert result.history == ref_result.history


def test_in_process_resume_is_exact_and_rng_matters(tmp_path: Path) -> None:
    ref = make_trainer(tmp_path / "a", max_steps=60)
    ref_result = ref.fit()

    first = make_trainer(tmp_path / "b", max_steps=30)
    assert first.fit().step == 30
    second = make_trainer(tmp_path / "b", max_steps=60)
    result = second.fit(resume=True)
    assert weights_hash(_model(second)) == weights_hash(_model(ref))
    assert result.history == ref_result.history
    assert result.last_checkpoint == checkpoint_path(tmp_path / "b" / "checkpoints", 60)

    # The test is sensitive: without the RNG states the dropout masks change and so do the weights.
    no_rng = make_trainer(tmp_path / "c", max_steps=60)
    no_rng.load(checkpoint_path(tmp_path / "b" / "checkpoints", 30), restore_rng=False)
    no_rng.fit()
    assert weights_hash(_model(no_rng)) != weights_hash(_model(ref))


def test_resume_true_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    a = make_trainer(tmp_path / "a", max_steps=20)
    a.fit()
    b = make_trainer(tmp_path / "b", max_steps=20)
    b.fit(resume=True)
    assert weights_hash(_model(a)) == weights_hash(_model(b))


def test_fresh_run_sets_stale_checkpoints_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_trainer(tmp_path, max_steps=40).fit()
    with caplog.at_level(logging.WARNING, logger="mlfastsim.core.trainer"):
        make_trainer(tmp_path, max_steps=20).fit()
    assert "moved 4 checkpoint(s)" in caplog.text
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [10, 20]
    (aside,) = tmp_path.glob("checkpoints.previous-*")
    assert [s for s, _ in list_checkpoints(aside)] == [10, 20, 30, 40]
    # resume now continues the 20-step run, not the stale 40-step one
    again = make_trainer(tmp_path, max_steps=30)
    assert again.fit(resume=True).history[-1]["step"] == 30.0


class ScriptedTask:
    """A task whose validation losses follow a script, to test the early-stopping bookkeeping exactly."""

    def __init__(self, val_losses: list[float]) -> None:
        self.model = nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.val_losses = val_losses
        self.n_evals = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def schedulers(self) -> dict[str, object]:
        return {}

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        return {"loss": 1.0}

    def eval_step(self, batch: Batch) -> dict[str, float]:
        loss = self.val_losses[min(self.n_evals, len(self.val_losses) - 1)]
        self.n_evals += 1
        return {"loss": loss}


def test_early_stopping_stops_and_stays_stopped(tmp_path: Path) -> None:
    data = (torch.zeros(8, 2),)  # the validation set is one batch: one scripted loss per evaluation
    cfg = TrainerConfig(max_steps=100, batch_size=8, eval_every=5, checkpoint_every=50, early_stopping_patience=2)
    task = ScriptedTask([1.0, 0.5, 0.6, 0.7, 0.1, 0.1])
    assert isinstance(task, TrainTask)
    trainer = Trainer(task, cfg, tmp_path, train_data=data, val_data=data, progress=False)
    result = trainer.fit()
    # best at the 2nd evaluation (step 10), two evaluations without improvement -> stop at step 20
    assert result.stopped_early and result.step == 20
    assert result.best_step == 10 and result.best_val_loss == 0.5
    assert result.last_checkpoint == checkpoint_path(tmp_path / "checkpoints", 20)

    again = Trainer(ScriptedTask([0.0]), cfg, tmp_path, train_data=data, val_data=data, progress=False)
    resumed = again.fit(resume=True)
    assert resumed.stopped_early and resumed.step == 20


def test_keep_checkpoints_prunes_old_ones(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=50, checkpoint_every=10, keep_checkpoints=2).fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [40, 50]


def test_transfer_loads_matching_weights_from_a_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=20)
    path = trainer.fit().last_checkpoint
    assert path is not None
    source = load_checkpoint(path)["modules"]["model"]
    # same body, a wider head: the body transfers, the head keeps its fresh initialisation
    target = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    head_before = target[6].weight.detach().clone()
    loaded, skipped = load_matching_weights(target, source)
    assert set(skipped) == {"6.weight", "6.bias"}
    assert "0.weight" in loaded and "1.running_mean" in loaded
    assert torch.equal(target[0].weight, _model(trainer)[0].weight)
    assert torch.equal(target[1].running_var, _model(trainer)[1].running_var)
    assert torch.equal(target[6].weight, head_before)


def test_corrupt_checkpoint_is_an_input_file_error(tmp_path: Path) -> None:
    path = make_trainer(tmp_path, max_steps=10).fit().last_checkpoint
    assert path is not None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated file, as a full disk would leave it
    with pytest.raises(InputFileError, match="cannot be read") as info:
        make_trainer(tmp_path, max_steps=20).fit(resume=True)
    assert info.value.file == str(path)
    garbage = checkpoint_path(tmp_path / "checkpoints", 99)
    garbage.write_bytes(b"\x00 not a checkpoint")
    with pytest.raises(InputFileError, match="cannot be read"):
        make_trainer(tmp_path, max_steps=20).fit(resume=True)


def test_checkpoint_of_another_model_does_not_fit(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=10, batch_norm=True).fit()
    with pytest.raises(InputFileError, match="does not fit") as info:
        make_trainer(tmp_path, max_steps=20, batch_norm=False).fit(resume=True)
    assert info.value.fix and "same model" in info.value.fix
    # a bare state dict saved by hand is not a trainer checkpoint either
    bare = tmp_path / "bare.pt"
    torch.save(_model(make_trainer(tmp_path / "x")).state_dict(), bare)
    with pytest.raises(InputFileError, match=r"does not fit.*modules"):
        make_trainer(tmp_path / "y", max_steps=20).fit(resume=bare)


def test_eval_callback_gets_val_metrics_and_hooks_fire_every_n(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=30, eval_every=10)
    seen: list[tuple[int, dict[str, float]]] = []
    hook_steps: list[int] = []
    trainer.add_eval_callback(lambda step, metrics: seen.append((step, dict(metrics))))
    trainer.add_hook(7, lambda t, step: hook_steps.append(step))
    trainer.add_hook(0, lambda t, step: pytest.fail("a hook with every=0 is off"))
    result = trainer.fit()
    assert [s for s, _ in seen] == [10, 20, 30]
    assert all(set(m) == {"loss", "mae"} for _, m in seen)
    assert [m["loss"] for _, m in seen] == [h["val/loss"] for h in result.history]
    assert hook_steps == [7, 14, 21, 28]
    # the val loss is the one evaluate() computes on the held-out set
    assert seen[-1][1]["loss"] == pytest.approx(trainer.evaluate()["loss"], rel=1e-12)


def test_eval_callback_without_val_data_gets_train_metrics(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=20)
    trainer.val_data = None
    seen: list[dict[str, float]] = []
    trainer.add_eval_callback(lambda step, m: seen.append(m))
    result = trainer.fit()
    assert seen and set(seen[0]) == {"loss", "mae"}
    assert seen[-1]["loss"] == result.history[-1]["train/loss"]
    assert result.best_val_loss == min(h["train/loss"] for h in result.history)


def test_max_epochs_sets_the_number_of_steps(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=None, max_epochs=3, batch_size=50)
    assert trainer.batches_per_epoch == 192 // 50
    assert trainer.fit().step == 3 * (192 // 50)


def test_no_training_samples_is_a_config_error(tmp_path: Path) -> None:
    task = ScriptedTask([1.0])
    with pytest.raises(ConfigError, match="no training samples"):
        Trainer(task, TrainerConfig(), tmp_path, train_data=(torch.zeros(0, 2),), progress=False)


def test_split_train_val_is_seeded_and_disjoint() -> None:
    x = torch.arange(100).float().unsqueeze(1)
    (tr,), (va,) = split_train_val((x,), 0.2, seed=3)
    assert tr.shape[0] == 80 and va.shape[0] == 20
    assert set(tr[:, 0].tolist()).isdisjoint(va[:, 0].tolist())
    (tr2,), _ = split_train_val((x,), 0.2, seed=3)
    assert torch.equal(tr, tr2)
