"""Data parallel: torchrun with 2 CPU processes (gloo) trains like 1 process on the same global batch.

The strict comparison uses a model without batch norm or dropout: batch norm normalises over each
rank's half batch (no SyncBatchNorm), and dropout masks depend on the batch slicing, so with either the
two runs are close but not equal by construction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlfastsim.core import distributed as dist_utils
from mlfastsim.core.checkpoint import list_checkpoints
from mlfastsim.core.errors import ConfigError
from tests.core._train_script import make_trainer

SCRIPT = Path(__file__).with_name("_train_script.py")
ARGS = ["--max-steps", "20", "--eval-every", "5", "--checkpoint-every", "10", "--batch-size", "32",
        "--no-batch-norm", "--dropout", "0"]


def _torchrun(outdir: Path, nproc: int, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(SCRIPT), "--outdir", str(outdir), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    _torchrun(tmp_path / "ddp", 2, ARGS)
    ranks = [json.loads((tmp_path / "ddp" / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = make_trainer(tmp_path / "single", max_steps=20, eval_every=5, checkpoint_every=10,
                              batch_size=32, batch_norm=False, dropout=0.0).fit()
    finally:
        torch.set_num_threads(before)

    for ddp_record, ref in zip(ranks[0]["history"], single.history, strict=True):
        assert ddp_record.keys() == ref.keys()
        for key in ("train/loss", "val/loss", "val/mae"):
            assert ddp_record[key] == pytest.approx(ref[key], rel=1e-5), key
    # every rank logs the same (all-reduced) numbers
    assert ranks[0]["history"] == ranks[1]["history"]

    # only rank 0 wrote checkpoints and metrics
    assert ranks[0]["last_checkpoint"] is not None and ranks[1]["last_checkpoint"] is None
    assert [s for s, _ in list_checkpoints(tmp_path / "ddp" / "checkpoints")] == [10, 20]
    lines = (tmp_path / "ddp" / "tracking" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 10, 15, 20]


def test_helpers_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert not dist_utils.launched_by_torchrun()
    assert dist_utils.init_distributed(torch.device("cpu")) is False
    assert (dist_utils.rank(), dist_utils.world_size(), dist_utils.is_main()) == (0, 1, True)
    assert dist_utils.all_reduce_mean({"loss": 2.5}) == {"loss": 2.5}
    dist_utils.barrier()
    dist_utils.cleanup()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: no process group needed
    assert not dist_utils.launched_by_torchrun()


def test_global_batch_must_split_evenly_over_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist_utils, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match="not divisible by the 3 processes") as info:
        make_trainer(tmp_path, batch_size=32)
    assert info.value.field == "trainer.batch_size"
