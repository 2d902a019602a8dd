"""Bad input on the MetaHEP road, typed as a user would: one clear line (file, field, fix), exit 2.

The cases are those the MetaHEP issue lists: checkpoints of another model type or mesh, corrupt or
truncated checkpoints, an ONNX file whose input width disagrees with its sidecar, an unknown
``--model-type``, adaptation data on another mesh, ``--gpu-ids`` naming a missing GPU,
``--max-gpu-memory-allocation`` on a CPU-only machine (warn and go on) and an unreachable tuning storage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.showers.geometry import MESH_PRESETS
from mlfastsim.showers.io.formats import ShowerData, write_native

from .test_bad_input import assert_clean_error


@pytest.fixture
def trained(cli, small_file: Path, tmp_path: Path) -> Path:
    """A 4-step VAE on the ds2 mesh: enough to have a real checkpoint."""
    res = cli("showers", "train", "--data", small_file, "-o", tmp_path / "run", "--set", "trainer.max_steps=4",
              "--set", "trainer.checkpoint_every=4", "--set", "trainer.batch_size=16")
    assert res.code == 0, res.err
    return tmp_path / "run" / "checkpoints" / "step_00000004.pt"


def _generate(cli, *source: str | Path):
    return cli("showers", "generate", *source, "--energy-gev", "10", "--angle-deg", "90", "--n-per-point", "3",
               "-o", "gen.h5")


def test_unknown_model_type(cli, small_file: Path) -> None:
    res = cli("showers", "train", "--data", small_file, "--model-type", "gan", "--set", "trainer.max_steps=1")
    assert_clean_error(res, "--model-type", "gan", "vae")
    assert not Path("runs").exists() or not any(Path("runs").rglob("*.pt"))


def test_checkpoint_of_another_model_type(cli, trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained, weights_only=True)
    torch.save({**state, "model_type": "diffusion"}, tmp_path / "other.pt")
    assert_clean_error(_generate(cli, "--checkpoint", tmp_path / "other.pt"), "other.pt", "model_type", "diffusion")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    assert_clean_error(_generate(cli, "--checkpoint", tmp_path / "foreign.pt"), "foreign.pt", "model_type")
    assert not Path("gen.h5").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint(cli, trained: Path, tmp_path: Path, damage: str) -> None:
    bad = tmp_path / f"{damage}.pt"
    blob = trained.read_bytes()
    content = {"truncated": blob[: len(blob) // 3], "garbage": b"hello, not a checkpoint\n", "empty": b""}
    bad.write_bytes(content[damage])
    assert_clean_error(_generate(cli, "--checkpoint", bad), f"{damage}.pt", "checkpoint")
    res = cli("showers", "adapt", "--data", tmp_path / "small.h5", "--checkpoint", bad, "--adaptation-steps", "2",
              "--study-name", "s")
    assert_clean_error(res, f"{damage}.pt")


def test_adaptation_data_on_another_mesh(cli, trained: Path, tmp_path: Path) -> None:
    mesh = MESH_PRESETS["par04"]
    rng = np.random.default_rng(1)
    grid = rng.gamma(0.5, 1.0, (12, mesh.n_voxels)).astype(np.float32) * 10
    other = write_native(ShowerData(np.full(12, 1e4), grid, mesh, angles=np.full(12, 90.0)), tmp_path / "par04.h5")
    res = cli("showers", "adapt", "--data", other, "--checkpoint", trained, "--adaptation-steps", "2",
              "--study-name", "s")
    assert_clean_error(res, "mesh", "ds2", "par04")
    assert not list(Path(".").rglob("runs/s/**/*.pt"))


def test_onnx_width_differs_from_sidecar(cli, trained: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    assert cli("showers", "export", "--checkpoint", trained, "--onnx-file-name", onnx).code == 0
    side = json.loads(onnx.with_suffix(".json").read_text())
    side["latent_dim"] += 2
    side["input"]["width"] += 2
    onnx.with_suffix(".json").write_text(json.dumps(side))
    assert_clean_error(_generate(cli, "--onnx", onnx), "m.onnx", "input", "width")


def test_missing_gpu_is_refused(cli, small_file: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the test is about naming one that does not exist")
    res = cli("showers", "adapt", "--data", small_file, "--gpu-ids", "0,1", "--adaptation-steps", "1",
              "--study-name", "s")
    assert_clean_error(res, "--gpu-ids", "no CUDA device")


def test_gpu_memory_cap_on_cpu_warns_and_runs(cli, small_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    res = cli("showers", "adapt", "--data", small_file, "--max-gpu-memory-allocation", "1000",
              "--adaptation-steps", "2", "--checkpoint-step", "2", "--study-name", "s")
    assert res.code == 0, res.err
    assert "--max-gpu-memory-allocation is ignored" in res.out + res.err + caplog.text
    assert list(Path("runs/s").rglob("step_00000002.pt"))


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/sub/x.db", "postgresql://nobody@127.0.0.1:1/x"])
def test_unreachable_tuning_storage(cli, small_file: Path, tmp_path: Path, url: str) -> None:
    (tmp_path / "base.yaml").write_text(f"data: {{files: [{small_file}]}}\ntrainer: {{max_steps: 2}}\n")
    (tmp_path / "tune.yaml").write_text(
        "base_config: base.yaml\nn_trials: 1\nmetric: loss\n"
        "search_space:\n  trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    res = cli("showers", "tune", "--config", tmp_path / "tune.yaml", "--storage", url)
    assert_clean_error(res, "--storage", url.split(":")[0], "fix")
