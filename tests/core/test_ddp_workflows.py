"""``torchrun --nproc_per_node 2 -m mlfastsim ...`` (gloo, CPU) trains like one process on the same global batch.

Real workflows through the real CLI: a tiny shower VAE (batch norm and reparameterisation noise included:
batch norm runs over the global batch and the noise is drawn per global sample, see
:mod:`mlfastsim.core.distributed`) and a tiny SparseCellNet (LArTPC deghosting; the loss is weighted by
each rank's share of the voxels).  The reference run is in-process with one thread; the two runs agree
within float rounding (sums in another order), far tighter than what a missing gradient average, a
per-rank batch norm or duplicated noise gives (percent-level differences after a few steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mlfastsim.core.checkpoint import list_checkpoints, load_checkpoint
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData, write_native

TIMEOUT_S = 90


def _torchrun(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mlfastsim",
           *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _single_thread(fn: Any) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _metrics(tracking_dir: Path) -> list[dict]:
    files = sorted(tracking_dir.rglob("metrics.jsonl"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def _assert_same_curves(ddp: list[dict], single: list[dict], rel: float, *, rel_eval: float | None = None,
                        eval_keys: tuple[str, ...] | None = None) -> None:
    """Logged numbers agree record by record: training scalars within ``rel``; the others (all, or only
    ``eval_keys``) within ``rel_eval`` (default ``rel``)."""
    assert [r["step"] for r in ddp] == [r["step"] for r in single]
    for a, b in zip(ddp, single, strict=True):
        assert a.keys() == b.keys()
        for k in a.keys() - {"time", "step"}:
            if not k.startswith("train/") and eval_keys is not None and k not in eval_keys:
                continue
            tol = rel if k.startswith("train/") or rel_eval is None else rel_eval
            assert a[k] == pytest.approx(b[k], rel=tol, abs=1e-6, nan_ok=True), (a["step"], k, a[k], b[k])


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float,
                         skip: frozenset[str] = frozenset()) -> None:
    assert a.keys() == b.keys()
    for k in a.keys() - skip:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def _gauge_keys(model_state: dict[str, torch.Tensor]) -> frozenset[str]:
    """Weights of the linear layers right before a batch norm, and the running means.

    Batch norm removes the mean, so in exact arithmetic those biases (and the weights of inputs that are
    constant, like the one-hot geometry slot) get a zero gradient; their float-noise gradient, scaled up
    to a full step by Adam, moves them differently in any two runs that sum in a different order, in one
    process too.  They do not change what the network computes in training mode.
    """
    skip = set()
    for k in model_state:
        if k.endswith("running_mean"):
            prefix, idx, _ = k.rsplit(".", 2)
            skip |= {k, f"{prefix}.{int(idx) - 1}.weight", f"{prefix}.{int(idx) - 1}.bias"}
    return frozenset(skip)


# ------------------------------------------------------------------------------------------ showers VAE
@pytest.fixture(scope="module")
def shower_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 smooth random showers on a small mesh (training data for a tiny VAE)."""
    rng = np.random.default_rng(1)
    mesh = CylindricalMesh(n_r=4, n_phi=4, n_z=6, size_r=5.0, size_z=5.0)
    n = 64
    energies = rng.uniform(1e3, 5e4, n)
    grid = rng.gamma(0.5, 1.0, (n, *mesh.shape))
    grid *= (0.95 * energies / grid.sum(axis=(1, 2, 3)))[:, None, None, None]
    path = tmp_path_factory.mktemp("showers") / "tiny.h5"
    write_native(ShowerData(energies, mesh.to_flat(grid), mesh, angles=np.full(n, 90.0)), path)
    return path


def _vae_config(path: Path, data: Path, out: Path, batch_norm: bool) -> Path:
    doc = {
        "data": {"files": [str(data)], "val_fraction": 0.25},
        "model": {"type": "vae", "encoder_sizes": [32, 16], "latent_dim": 4, "kl_weight": 0.1,
                  "batch_norm": batch_norm},
        "trainer": {"max_steps": 12, "batch_size": 16, "learning_rate": 0.003, "eval_every": 4,
                    "checkpoint_every": 6, "seed": 3},
        "device": {"num_threads": 1},
        "tracking": {"backend": "local", "dir": str(out / "tracking"), "run_name": "vae"},
        "output_dir": str(out / "run"),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch-norm", "no-batch-norm"])
def test_showers_train_vae_two_processes_match_one(shower_file: Path, tmp_path: Path, batch_norm: bool) -> None:
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import TrainConfig
    from mlfastsim.showers.training.train import train_from_config

    ddp_cfg = _vae_config(tmp_path / "ddp.yaml", shower_file, tmp_path / "ddp", batch_norm)
    _torchrun(["showers", "train", "--config", str(ddp_cfg)], tmp_path)
    one_cfg = _vae_config(tmp_path / "one.yaml", shower_file, tmp_path / "one", batch_norm)
    _single_thread(lambda: train_from_config(load_config(TrainConfig, one_cfg), progress=False))

    # rank 0 alone wrote checkpoints and metrics
    ddp_ckpts = list_checkpoints(tmp_path / "ddp" / "run" / "checkpoints")
    assert [s for s, _ in ddp_ckpts] == [6, 12]
    # eval mode reads the running means, which inherit the gauge noise (see _gauge_keys): with batch norm
    # the validation loss is compared loosely, and its small KL part (percent-level noise) not on its own
    _assert_same_curves(_metrics(tmp_path / "ddp" / "tracking"), _metrics(tmp_path / "one" / "tracking"),
                        rel=1e-5, rel_eval=2e-3 if batch_norm else 1e-5,
                        eval_keys=("val/loss", "val/bce") if batch_norm else None)
    one_ckpt = list_checkpoints(tmp_path / "one" / "run" / "checkpoints")[-1][1]
    ddp_w = load_checkpoint(ddp_ckpts[-1][1])["modules"]["model"]
    one_w = load_checkpoint(one_ckpt)["modules"]["model"]
    _assert_same_weights(ddp_w, one_w, rtol=1e-4, atol=1e-5, skip=_gauge_keys(one_w))
    if batch_norm:
        assert sum(k.endswith("running_var") for k in one_w) == 4  # global-batch variances compared too


def test_showers_train_cfm_two_processes_match_one(shower_file: Path, tmp_path: Path) -> None:
    """The flow-matching family: its flow times and both noises are drawn per global sample, so two ranks
    train exactly what one process trains on the same global batch (no batch norm: weights compared whole)."""
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import TrainConfig
    from mlfastsim.showers.training.train import train_from_config

    def config(name: str) -> Path:
        path = _vae_config(tmp_path / f"{name}.yaml", shower_file, tmp_path / name, False)
        doc = yaml.safe_load(path.read_text())
        doc["model"] = {"type": "cfm", "width": 16, "depth": 1, "heads": 2, "energy_width": 16, "energy_depth": 1,
                        "time_frequencies": 2, "steps": 2, "energy_param": "total_first"}
        path.write_text(yaml.safe_dump(doc))
        return path

    _torchrun(["showers", "train", "--config", str(config("ddp"))], tmp_path)
    _single_thread(lambda: train_from_config(load_config(TrainConfig, config("one")), progress=False))
    _assert_same_curves(_metrics(tmp_path / "ddp" / "tracking"), _metrics(tmp_path / "one" / "tracking"), rel=1e-4)
    ddp_ckpt = list_checkpoints(tmp_path / "ddp" / "run" / "checkpoints")[-1][1]
    one_ckpt = list_checkpoints(tmp_path / "one" / "run" / "checkpoints")[-1][1]
    _assert_same_weights(load_checkpoint(ddp_ckpt)["modules"]["model"],
                         load_checkpoint(one_ckpt)["modules"]["model"], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ LArTPC
@pytest.fixture(scope="module")
def xy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlfastsim.lartpc.simulate import simulate_to_dir
    from mlfastsim.lartpc.tiling import MakeBatchesConfig, process_xy
    from tests.lartpc.conftest import tiny_sim_config

    root = tmp_path_factory.mktemp("lartpc")
    simulate_to_dir(tiny_sim_config(root / "parsed"), progress=False)
    process_xy(MakeBatchesConfig(input_dir=root / "parsed", output_dir=root / "xy", tpc=1, batch_size=3),
               progress=False)
    return root / "xy"


def _lartpc_config(path: Path, xy: Path, out: Path) -> Path:
    from tests.lartpc.conftest import train_config

    cfg = train_config(xy, out / "run", n_epochs=2, batch_size=4,
                       data={"train_i": [0, 4], "inference_i": [4, 6]},
                       tracking={"dir": str(out / "tracking"), "run_name": "lartpc"})
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_lartpc_train_sparsecellnet_two_processes_match_one(xy_dir: Path, tmp_path: Path) -> None:
    from mlfastsim.core.config import load_config
    from mlfastsim.lartpc.config import LArTPCTrainConfig
    from mlfastsim.lartpc.train import run

    ddp_cfg = _lartpc_config(tmp_path / "ddp.yaml", xy_dir, tmp_path / "ddp")
    _torchrun(["lartpc", "train", str(ddp_cfg)], tmp_path)
    one_cfg = _lartpc_config(tmp_path / "one.yaml", xy_dir, tmp_path / "one")
    _single_thread(lambda: run(load_config(LArTPCTrainConfig, one_cfg), progress=False))

    _assert_same_curves(_metrics(tmp_path / "ddp" / "tracking"), _metrics(tmp_path / "one" / "tracking"),
                        rel=1e-4)
    ddp_ckpt = list_checkpoints(tmp_path / "ddp" / "run" / "checkpoints")[-1][1]
    one_ckpt = list_checkpoints(tmp_path / "one" / "run" / "checkpoints")[-1][1]
    _assert_same_weights(load_checkpoint(ddp_ckpt)["modules"]["model"],
                         load_checkpoint(one_ckpt)["modules"]["model"], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ meta-learning
def _meta_config(path: Path, files: list[Path], out: Path) -> Path:
    doc = {
        "data": {"files": [str(f) for f in files], "val_fraction": 0.25},
        "model": {"type": "vae", "encoder_sizes": [32, 16], "latent_dim": 4, "kl_weight": 0.1},
        "algorithm": "fomaml", "meta_steps": 4, "inner_steps": 2, "inner_lr": 0.003, "tasks_per_step": 3,
        "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "seed": 4,
        "device": {"num_threads": 1},
        "tracking": {"backend": "local", "dir": str(out / "tracking"), "run_name": "meta"},
        "output_dir": str(out / "run"),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_showers_meta_train_splits_tasks_over_two_processes(shower_file: Path, tmp_path: Path) -> None:
    """3 tasks per meta-step over 2 ranks (2 + 1): the same meta-update as one process adapting all 3."""
    import shutil

    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import MetaConfig
    from mlfastsim.showers.training.meta import meta_train

    files = [shutil.copy(shower_file, tmp_path / f"geometry{i}.h5") for i in range(3)]
    ddp_cfg = _meta_config(tmp_path / "ddp.yaml", files, tmp_path / "ddp")
    _torchrun(["showers", "meta-train", "--config", str(ddp_cfg)], tmp_path)
    one_cfg = _meta_config(tmp_path / "one.yaml", files, tmp_path / "one")
    _single_thread(lambda: meta_train(load_config(MetaConfig, one_cfg), progress=False))

    _assert_same_curves(_metrics(tmp_path / "ddp" / "tracking"), _metrics(tmp_path / "one" / "tracking"),
                        rel=1e-5, rel_eval=2e-3, eval_keys=("val/loss", "val/bce"))
    ddp_ckpt = list_checkpoints(tmp_path / "ddp" / "run" / "checkpoints")[-1][1]
    one_ckpt = list_checkpoints(tmp_path / "one" / "run" / "checkpoints")[-1][1]
    one_w = load_checkpoint(one_ckpt)["modules"]["model"]
    _assert_same_weights(load_checkpoint(ddp_ckpt)["modules"]["model"], one_w, rtol=1e-4, atol=1e-5,
                         skip=_gauge_keys(one_w))


# ------------------------------------------------------------------------------------------ GAN tasks
def test_gan_tasks_average_gradients_over_ranks(tmp_path: Path) -> None:
    """WGAN, BIB-AE and post-processor train data-parallel without DDP: both ranks end with the same weights."""
    script = Path(__file__).with_name("_gan_ddp_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--outdir", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for name in ("wgan", "bibae", "postprocess"):
        assert r0[name]["hash"] == r1[name]["hash"], name  # each rank saw other data: averaged gradients
        assert r0[name]["history"] == r1[name]["history"], name
        assert all(np.isfinite(v) for rec in r0[name]["history"] for v in rec.values()), name
        assert (tmp_path / name / "checkpoints" / "step_00000003.pt").exists()  # rank 0 wrote it
