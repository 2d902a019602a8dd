"""The deployment templates in ``deploy/`` stay valid: shell syntax, YAML, and the flags they rely on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).parents[2] / "deploy"


@pytest.mark.parametrize("script", sorted((DEPLOY / "slurm").glob("*.sbatch")), ids=lambda p: p.name)
def test_slurm_scripts_parse(script: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH" in text
    assert "mlfastsim" in text


def test_slurm_scripts_use_the_engines() -> None:
    torchrun = (DEPLOY / "slurm" / "torchrun_multinode.sbatch").read_text()
    assert "--rdzv-backend c10d" in torchrun and "-m mlfastsim" in torchrun
    dask = (DEPLOY / "slurm" / "dask_cluster.sbatch").read_text()
    assert "dask scheduler" in dask and "dask worker" in dask and '--scheduler "$ADDRESS"' in dask
    optuna = (DEPLOY / "slurm" / "optuna_workers.sbatch").read_text()
    assert "#SBATCH --array" in optuna and "showers tune" in optuna and "--storage" in optuna
    assert "postgresql://" in optuna


@pytest.mark.parametrize("manifest", sorted((DEPLOY / "kubernetes").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_jobs_are_indexed_jobs(manifest: Path) -> None:
    doc = yaml.safe_load(manifest.read_text())
    assert doc["kind"] == "Job" and doc["apiVersion"] == "batch/v1"
    spec = doc["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 1
    container = spec["template"]["spec"]["containers"][0]
    command = " ".join(container["command"] + container["args"])
    assert "JOB_COMPLETION_INDEX" in command and "--seed" in command and "mlfastsim" in command
