"""The hadron GAN tasks under ``torchrun``: data parallel through ``all_reduce_grads`` (no DDP wrapper).

The WGAN-GP, BIB-AE and post-processor tasks cannot use DistributedDataParallel (the gradient penalty
needs a double backward), so they average gradients themselves; every rank sees a different half of
each global batch, and their weights stay identical only if that averaging happens.  Writes
``result_rank<R>.json`` (weights hash and history per task) into ``--outdir``.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/core/_gan_ddp_script.py --outdir D
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.trainer import Trainer, TrainerConfig
from tests.showers.models.test_hadron_models import _task, toy_showers, weights_hash

TASKS = ("wgan", "bibae", "postprocess")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outdir", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, val = toy_showers(32, seed=1), toy_showers(8, seed=2)
    out = {}
    for name in TASKS:
        cfg = TrainerConfig(max_steps=3, batch_size=8, eval_every=3, checkpoint_every=3, seed=11)
        trainer = Trainer(_task(name), cfg, args.outdir / name, train_data=train, val_data=val, progress=False)
        result = trainer.fit()
        out[name] = {"hash": weights_hash(trainer.task.modules()), "history": result.history}
    out["world"] = dist_utils.world_size()
    (args.outdir / f"result_rank{dist_utils.rank()}.json").write_text(json.dumps(out))
    dist_utils.cleanup()


if __name__ == "__main__":
    main()
