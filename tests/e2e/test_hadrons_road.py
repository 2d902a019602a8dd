"""The hadron road through the CLI on a tiny grid: simulate pions -> regressor -> WGAN, BIB-AE -> post-processor
-> generate (checkpoint and ONNX) -> validate; plus the bad input the hadron issue lists."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mlfastsim.cli.main import main
from mlfastsim.showers.io.formats import read_native

from .test_bad_input import assert_clean_error

TINY_GRID = """kind: cartesian
name: tiny
n_x: 9
n_y: 9
n_z: 12
cell_x_mm: 30.0
cell_y_mm: 30.0
cell_z_mm: 106.0
"""
SMALL = ["--set", "trainer.batch_size=32", "--set", "trainer.eval_every=4", "--set", "trainer.checkpoint_every=4",
         "--set", "trainer.max_steps=8", "--set", "device.num_threads=1", "--set", "data.crop=[7,7]",
         # a few steps leave every generated cell below the 0.5 MIP readout threshold; keep them all here
         "--set", "data.threshold_mev=0"]


def _run(*args: object) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def road(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulate once and train every hadron model for a few steps (shared by the tests of this module)."""
    d = tmp_path_factory.mktemp("hadrons")
    (d / "tiny.yaml").write_text(TINY_GRID)
    assert _run("showers", "simulate", "--particle", "pion", "--grid", d / "tiny.yaml", "--energy-gev", "20,50",
                "--n-per-point", "80", "--seed", "3", "-o", d / "pions.h5") == 0
    configs = Path(__file__).resolve().parents[2] / "configs" / "hadrons"
    common = ["--data", d / "pions.h5", *SMALL]
    assert _run("showers", "train-regressor", "--config", configs / "regressor.yaml", "-o", d / "reg", *common) == 0
    assert _run("showers", "train", "--config", configs / "wgan.yaml", "-o", d / "wgan", *common,
                "--set", f"model.regressor_checkpoint={d / 'reg/checkpoints/step_00000008.pt'}") == 0
    assert _run("showers", "train", "--config", configs / "bibae.yaml", "-o", d / "bibae", *common) == 0
    assert _run("showers", "train-postprocess", "--config", configs / "postprocess.yaml", "-o", d / "pp", *common,
                "--set", f"model.bibae_checkpoint={d / 'bibae/checkpoints/step_00000008.pt'}") == 0
    return d


def test_simulated_pions_are_on_the_grid_with_provenance(road: Path) -> None:
    data = read_native(road / "pions.h5")
    assert data.mesh.kind == "cartesian" and data.mesh.shape == (12, 9, 9) and len(data) == 160
    assert data.meta["particle"] == "pion" and "calorimeter" in data.meta
    assert np.isin(np.round(data.energies), [20000, 50000]).all()


@pytest.mark.parametrize("model", ["wgan", "pp"])
def test_generate_validate_export_round_trip(road: Path, tmp_path: Path, model: str) -> None:
    ckpt = road / model / "checkpoints" / "step_00000008.pt"
    gen = tmp_path / "gen.h5"
    assert _run("showers", "generate", "--checkpoint", ckpt, "--energy-gev", "20,50", "--n-per-point", "30",
                "--seed", "5", "-o", gen) == 0
    data = read_native(gen)
    assert data.mesh.shape == (12, 7, 7) and len(data) == 60 and np.isfinite(data.showers).all()
    assert (data.showers >= 0).all()
    onnx = tmp_path / "m.onnx"
    assert _run("showers", "export", "--checkpoint", ckpt, "--onnx-file-name", onnx) == 0
    side = json.loads(onnx.with_suffix(".json").read_text())
    assert side["format"] == "mlfastsim-onnx-generator" and side["mesh"]["n_x"] == 7
    assert side["model_type"] in ("wgan", "postprocess")
    gen_onnx = tmp_path / "gen_onnx.h5"
    assert _run("showers", "generate", "--onnx", onnx, "--energy-gev", "20,50", "--n-per-point", "30",
                "--seed", "5", "-o", gen_onnx) == 0
    np.testing.assert_allclose(read_native(gen_onnx).showers, data.showers, atol=1e-3 * max(data.showers.max(), 1))
    # validation against the full-grid reference: the reference is cropped to the candidate's 7 x 7
    out = tmp_path / "val"
    assert _run("showers", "validate", "--reference", road / "pions.h5", "--candidate", gen, "-o", out,
                "--no-classifier", "--exclude-empty") in (0,)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("n_hits", "e_total", "cog_x", "first_moment_z", "cell_energy", "lateral_profile"):
        assert key in metrics["observables"]
    assert (out / "response.png").is_file() and (out / "report.html").is_file()
    # a readout threshold applied to both samples: no cell below it counts, and the spectrum starts there
    out_thr = tmp_path / "val_thr"
    assert _run("showers", "validate", "--reference", road / "pions.h5", "--candidate", gen, "-o", out_thr,
                "--no-classifier", "--exclude-empty", "--threshold-mev", "0.001") == 0
    thr = json.loads((out_thr / "metrics.json").read_text())
    assert thr["threshold_mev"] == 0.001 and "n_hits" in thr["observables"]


def test_crop_larger_than_the_grid(cli, road: Path) -> None:
    res = cli("showers", "train-regressor", "--data", road / "pions.h5", *SMALL, "--set", "data.crop=[11,11]",
              "-o", "r")
    assert_clean_error(res, "data.crop", "11")


def test_wgan_without_its_regressor(cli, road: Path) -> None:
    res = cli("showers", "train", "--model-type", "wgan", "--data", road / "pions.h5", *SMALL, "-o", "w")
    assert_clean_error(res, "model.regressor_checkpoint", "train-regressor")


def test_second_stage_on_another_grid_than_the_first(cli, road: Path) -> None:
    res = cli("showers", "train-postprocess", "--data", road / "pions.h5", *SMALL, "--set", "data.crop=[5,5]",
              "--set", f"model.bibae_checkpoint={road / 'bibae/checkpoints/step_00000008.pt'}", "-o", "p")
    assert_clean_error(res, "grid", "7 x 7", "5 x 5")


def test_em_data_for_a_hadron_model(cli, small_file: Path) -> None:
    res = cli("showers", "train-regressor", "--data", small_file, *SMALL, "-o", "r")
    assert_clean_error(res, "Cartesian grid", "--particle pion")


def test_regressor_is_not_generative(cli, road: Path) -> None:
    res = cli("showers", "generate", "--checkpoint", road / "reg/checkpoints/step_00000008.pt", "--energy-gev", "20",
              "--n-per-point", "3", "-o", "g.h5")
    assert_clean_error(res, "regressor")


def test_energies_outside_the_trained_range_warn(cli, road: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        res = cli("showers", "generate", "--checkpoint", road / "wgan/checkpoints/step_00000008.pt", "--energy-gev",
                  "90", "--n-per-point", "3", "-o", "g.h5")
    assert res.code == 0, res.err
    assert "outside the trained range" in caplog.text + res.err
