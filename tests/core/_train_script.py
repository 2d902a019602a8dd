"""A tiny, fully seeded training run used by the trainer tests, in process and as a subprocess.

As a subprocess it is what a user's job looks like to the tests: ``SIGKILL`` it after a checkpoint and
resume (exact-resume test), or launch it under ``torchrun`` (data-parallel test).  It writes
``result_rank<R>.json`` (history, weights hash, last checkpoint) into ``--outdir`` on every rank, so the
tests can check that only rank 0 wrote checkpoints and metrics.

    python tests/core/_train_script.py --outdir /tmp/run --max-steps 60
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/core/_train_script.py --outdir ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.tracking import LocalTracker
from mlfastsim.core.trainer import Batch, SupervisedTask, Trainer, TrainerConfig, make_optimizer, make_scheduler

N_FEATURES = 8


def make_data(n: int = 256, seed: int = 123) -> tuple[Batch, Batch]:
    """A noisy non-linear regression problem, identical in every process (its own generator)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = torch.sin(x[:, :1] * 2.0) + 0.5 * x[:, 1:2] * x[:, 2:3] + 0.1 * torch.randn(n, 1, generator=g)
    n_val = n // 4
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def make_model(*, batch_norm: bool = True, dropout: float = 0.2, seed: int = 7) -> nn.Module:
    """An MLP whose batch-norm buffers and dropout masks make exact resume non-trivial."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(N_FEATURES, 32)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(32))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1)]
    return nn.Sequential(*layers)


def mse_loss(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Mean over the batch, so DDP's gradient average equals the single-process gradient."""
    x, y = batch
    pred = model(x)
    loss = torch.mean((pred - y) ** 2)
    return {"loss": loss, "mae": torch.mean(torch.abs(pred - y)).detach()}


def make_trainer(
    outdir: Path,
    *,
    max_steps: int = 60,
    batch_size: int = 32,
    eval_every: int = 10,
    checkpoint_every: int = 10,
    batch_norm: bool = True,
    dropout: float = 0.2,
    scheduler: str = "exponential",
    tracker: Any | None = None,
    **cfg_extra: Any,
) -> Trainer:
    """The model, task and trainer of every test run (fresh objects, same seeds)."""
    cfg = TrainerConfig(
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=3e-3,
        scheduler=scheduler,
        scheduler_gamma=0.98,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        seed=11,
        **cfg_extra,
    )
    model = make_model(batch_norm=batch_norm, dropout=dropout)
    optimizer = make_optimizer(model.parameters(), cfg)
    task = SupervisedTask(model, mse_loss, optimizer, make_scheduler(optimizer, cfg, max_steps), cfg.grad_clip)
    train, val = make_data()
    return Trainer(task, cfg, outdir, train_data=train, val_data=val, tracker=tracker, progress=False)


def weights_hash(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict (parameters and buffers), in key order."""
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-batch-norm", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-after", type=int, default=0,
                        help="block (sleep) after this step's checkpoint, so the parent can SIGKILL us mid-run")
    args = parser.parse_args()

    torch.set_num_threads(1)
    tracker = LocalTracker(args.outdir / "tracking")
    trainer = make_trainer(
        args.outdir,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        batch_norm=not args.no_batch_norm,
        dropout=args.dropout,
        tracker=tracker,
    )
    if args.hang_after:
        # A hook runs before the step's checkpoint, so hanging at hang_after + 1 leaves that checkpoint on disk.
        trainer.add_hook(1, lambda _t, step: time.sleep(3600) if step == args.hang_after + 1 else None)
    result = trainer.fit(resume=args.resume)
    model = trainer.task.modules()["model"]
    out = {
        "rank": dist_utils.rank(),
        "world": dist_utils.world_size(),
        "step": result.step,
        "history": result.history,
        "hash": weights_hash(model),
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
    }
    (args.outdir / f"result_rank{dist_utils.rank()}.json").write_text(json.dumps(out))
    dist_utils.cleanup()


if __name__ == "__main__":
    main()
