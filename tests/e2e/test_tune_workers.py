"""Tuning with many workers: two ``mlfastsim showers tune`` processes, started together and pointed at one
Optuna storage (a sqlite file or a journal file), share one study, as an Optuna worker array job would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData, write_native


@pytest.fixture
def tune_yaml(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    mesh = CylindricalMesh(n_r=3, n_phi=4, n_z=5, size_r=5.0, size_z=5.0)
    n = 48
    energies = rng.uniform(1e3, 5e4, n)
    grid = rng.gamma(0.5, 1.0, (n, *mesh.shape))
    grid *= (0.95 * energies / grid.sum(axis=(1, 2, 3)))[:, None, None, None]
    write_native(ShowerData(energies, mesh.to_flat(grid), mesh, angles=np.full(n, 90.0)), tmp_path / "tiny.h5")
    base = {"data": {"files": [str(tmp_path / "tiny.h5")], "val_fraction": 0.25},
            "model": {"type": "vae", "encoder_sizes": [16, 8], "latent_dim": 3},
            "trainer": {"max_steps": 6, "batch_size": 12, "eval_every": 3, "checkpoint_every": 6, "seed": 0},
            "device": {"num_threads": 1}, "tracking": {"dir": str(tmp_path / "tracking")},
            "output_dir": str(tmp_path / "train")}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    tune = {"base_config": str(tmp_path / "base.yaml"), "n_trials": 2, "study_name": "shared",
            "search_space": {"trainer.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                             "model.kl_weight": {"type": "float", "low": 0.1, "high": 2.0, "log": True}},
            "pruner": "none", "sampler_startup_trials": 4}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tune))
    return tmp_path / "tune.yaml"


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_tune_processes_share_one_study(tune_yaml: Path, tmp_path: Path, kind: str) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal://{tmp_path / 'study.log'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "mlfastsim", "showers", "tune", "--config", str(tune_yaml),
                               "--storage", storage, "--set", f"seed={seed}",
                               "--set", f"output_dir={tmp_path / f'w{seed}'}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for seed in (1, 2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    if kind == "sqlite":
        study = optuna.load_study(study_name="shared", storage=storage)
    else:
        from optuna.storages.journal import JournalFileBackend

        journal = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
        study = optuna.load_study(study_name="shared", storage=journal)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # 2 + 2 trials, one numbering: one study
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["trainer.learning_rate"] for t in trials}) == 4  # distinct seeds, distinct suggestions
    # the process that finished last summarised all four trials
    seen = [len(json.loads((tmp_path / f"w{s}" / "study.json").read_text())["trials"]) for s in (1, 2)]
    assert max(seen) == 4
