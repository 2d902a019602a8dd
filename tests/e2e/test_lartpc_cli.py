"""The LArTPC road through the CLI on a tiny volume, and every kind of bad input as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.e2e.test_bad_input import assert_clean_error

SIM = """\
n_events: 10
seed: 2
tpc_ids: [1, 5]
geometry: {n_ticks: 32, size_y_mm: 32.0, size_z_mm: 32.0, voxel_mm: 2.0}
muons: [1, 2]
protons: [0, 1]
showers: [0, 1]
shower_energy_mev: [40.0, 120.0]
proton_range_mm: [5.0, 20.0]
"""

GHOST = """\
output_dir: runs/ghost
seed: 1
n_epochs: 2
batch_size: 2
data: {data_path: [xy], train_i: [0, 4], inference_i: [4, 6], tpcs: [1], downsample: [2, 1, 1]}
model: {spatial_size: [16, 16, 16], nChannels: 4, nStrides: 2, n_2D: 1}
loss: {name: bce, pos_weight: 2.0}
tracking: {dir: runs/tracking, run_name: ghost}
"""

CHARGE = """\
output_dir: runs/charge
n_epochs: 1
batch_size: 2
data: {data_path: [xy], train_i: [0, 4], inference_i: [4, 6], tpcs: [1], downsample: [2, 1, 1]}
model: {type: charge, spatial_size: [16, 16, 16], nChannels: 4, nStrides: 2, n_2D: 1}
loss: {name: huber}
metric: charge_resolution
transfer: {checkpoint: runs/ghost}
tracking: {dir: runs/tracking, run_name: charge}
"""

INFER = """\
output_dir: runs/inf
checkpoint: runs/ghost
data: {data_path: [xy], inference_i: [0, 6], tpcs: [1], downsample: [2, 1, 1]}
"""


@pytest.fixture
def xy(cli, tmp_path: Path) -> Path:
    Path("sim.yaml").write_text(SIM)
    res = cli("lartpc", "simulate", "-c", "sim.yaml", "-o", "parsed")
    assert res.code == 0, res.err
    res = cli("lartpc", "make-batches", "-i", "parsed", "-o", "xy", "-t", "1", "-b", "4", "-n", "1",
              "--downsample", "2,1,1", "--save-pix")
    assert res.code == 0, res.err
    assert "skipped" in res.out
    return tmp_path / "xy"


def test_lartpc_road(cli, xy: Path) -> None:
    for name, text in (("ghost.yaml", GHOST), ("charge.yaml", CHARGE), ("inf.yaml", INFER)):
        Path(name).write_text(text)
    res = cli("lartpc", "train", "ghost.yaml")
    assert res.code == 0, res.err
    assert "rejection_at_95" in res.out
    rows = Path("runs/ghost/summary.csv").read_text().splitlines()
    assert len(rows) == 3 and "rejection_at_95" in rows[0]
    assert Path("runs/ghost/plots/summary.png").stat().st_size > 1000
    assert Path("runs/tracking/ghost/metrics.jsonl").exists()
    # resume from epoch 1 rewrites epoch 2 identically
    res = cli("lartpc", "train", "ghost.yaml", "--resume", "1")
    assert res.code == 0, res.err
    assert Path("runs/ghost/summary.csv").read_text().splitlines() == rows
    res = cli("lartpc", "train", "charge.yaml")
    assert res.code == 0, res.err
    assert "tensors transferred" in res.out and "charge_resolution" in res.out
    res = cli("lartpc", "train", "inf.yaml")
    assert res.code == 0, res.err
    with h5py.File("runs/inf/inference/inference.h5") as f:
        assert len(f["event_ids"]) == 6
    # a second make-batches skips everything, and join-tpcs merges TPCs 1 and 5
    res = cli("lartpc", "make-batches", "-i", "parsed", "-o", "xy", "-t", "1", "-b", "4", "--downsample", "2,1,1")
    assert res.code == 0 and "0 new xy file(s)" in res.out
    assert cli("lartpc", "make-batches", "-i", "parsed", "-o", "xy", "-t", "5", "-b", "4",
               "--downsample", "2,1,1").code == 0
    res = cli("lartpc", "join-tpcs", "xy", "--tpcs", "1,5")
    assert res.code == 0, res.err
    assert sorted(p.name for p in Path("xy/joined_1-5").iterdir())[0] == "xy_joined_00000.h5"


def test_data_without_truth_runs_through_inference(cli, xy: Path) -> None:
    Path("ghost.yaml").write_text(GHOST.replace("n_epochs: 2", "n_epochs: 1"))
    assert cli("lartpc", "train", "ghost.yaml").code == 0
    res = cli("lartpc", "make-batches", "-i", "parsed", "-o", "data", "-t", "1", "--downsample", "2,1,1",
              "--y-type", "none")
    assert res.code == 0, res.err
    Path("inf.yaml").write_text(INFER.replace("[xy]", "[data]"))
    res = cli("lartpc", "train", "inf.yaml")
    assert res.code == 0, res.err
    assert "predictions only" in res.out
    res = cli("lartpc", "train", "ghost.yaml", "--set", "data.data_path=[data]", "--set", "output_dir=runs/x")
    assert_clean_error(res, "no truth charge", "data/xy_tpc01_00000.h5")


def corrupt_parsed(edit) -> None:
    for p in sorted(Path("parsed").glob("*_tpc01.h5"))[:1]:
        with h5py.File(p, "a") as f:
            edit(f)


@pytest.mark.parametrize("edit, needles", [
    (lambda f: f.__delitem__("X/plane_2"), ("event_000000_tpc01.h5", "X/plane_2", "missing")),
    (lambda f: (f.__delitem__("X/plane_1"), f.create_dataset("X/plane_1", data=np.zeros((5, 32), np.float32))),
     ("event_000000_tpc01.h5", "X/plane_1", "wires")),
    (lambda f: f["Y/charge"].__setitem__(0, np.nan), ("Y/charge", "NaN")),
])
def test_bad_parsed_files_via_cli(cli, tmp_path: Path, edit, needles) -> None:
    Path("sim.yaml").write_text(SIM)
    assert cli("lartpc", "simulate", "-c", "sim.yaml", "-o", "parsed").code == 0
    corrupt_parsed(edit)
    res = cli("lartpc", "make-batches", "-i", "parsed", "-o", "xy", "-t", "1")
    assert_clean_error(res, *needles)
    assert not list(Path("xy").glob("xy_*.h5"))  # nothing half-written for the failing batch


def test_bad_make_batches_options(cli, tmp_path: Path) -> None:
    assert_clean_error(cli("lartpc", "make-batches", "-i", "nowhere", "-o", "xy", "-t", "1"), "nowhere",
                       "does not exist")
    Path("sim.yaml").write_text(SIM)
    assert cli("lartpc", "simulate", "-c", "sim.yaml", "-o", "parsed").code == 0
    assert_clean_error(cli("lartpc", "make-batches", "-i", "parsed", "-t", "3"), "no parsed files for TPC 3",
                       "01, 05")
    assert_clean_error(cli("lartpc", "make-batches", "-i", "parsed", "-t", "1", "--downsample", "2,2"),
                       "--downsample")
    assert_clean_error(cli("lartpc", "make-batches", "-i", "parsed", "-t", "1", "--x-type", "pixels"), "x_type")
    not_h5 = Path("parsed") / "event_000099_tpc01.h5"
    not_h5.write_text("not hdf5")
    assert_clean_error(cli("lartpc", "make-batches", "-i", "parsed", "-o", "xy2", "-t", "1", "-b", "100"),
                       str(not_h5), "not an HDF5")


def test_bad_training_configs(cli, xy: Path) -> None:
    Path("ghost.yaml").write_text(GHOST)
    cases = [
        (GHOST.replace("nStrides: 2", "nStrides: 2, nChanels: 4"), ("bad.yaml", "model.nChanels", "unknown key")),
        (GHOST.replace("n_epochs: 2", "n_epochs: two"), ("bad.yaml", "n_epochs")),
        (GHOST.replace("downsample: [2, 1, 1]", "downsample: [8, 4, 4]"),
         ("xy_tpc01_00000.h5", "downsampling [2, 1, 1]", "[8, 4, 4]")),
        (GHOST.replace("spatial_size: [16, 16, 16]", "spatial_size: [8, 16, 16]"),
         ("xy_tpc01_00000.h5", "model.spatial_size", "[16,")),
        (GHOST.replace("name: bce", "name: hinge"), ("loss.name", "hinge")),
        (GHOST.replace("tracking:", "metric: charge_resolution\ntracking:"), ("metric", "charge model")),
    ]
    for text, needles in cases:
        Path("bad.yaml").write_text(text)
        assert_clean_error(cli("lartpc", "train", "bad.yaml"), *needles)
    assert_clean_error(cli("lartpc", "train", "missing.yaml"), "missing.yaml", "does not exist")
    assert_clean_error(cli("lartpc", "train", "ghost.yaml", "--resume"), "nothing to resume")
    assert_clean_error(cli("lartpc", "train", "ghost.yaml", "3"), "--resume")
    Path("charge.yaml").write_text(CHARGE)
    assert_clean_error(cli("lartpc", "train", "charge.yaml"), "runs/ghost", "transfer.checkpoint")
    Path("inf.yaml").write_text(INFER.replace("runs/ghost", "runs/none.pt"))
    assert_clean_error(cli("lartpc", "train", "inf.yaml"), "runs/none.pt", "does not exist")


def test_shipped_nets_run_with_no_training(cli, xy: Path) -> None:
    """configs/lartpc/ghost_inf.yaml's `pretrained:` checkpoints apply to fresh xy files of their kind."""
    res = cli("lartpc", "make-batches", "-i", "parsed", "-o", "both", "-t", "1", "-b", "4", "--downsample", "4,2,2",
              "--x-type", "both")
    assert res.code == 0, res.err
    for name in ("lartpc_ghost", "lartpc_charge"):
        Path("inf.yaml").write_text(f"output_dir: runs/{name}\ncheckpoint: pretrained:{name}\n"
                                    "data: {data_path: [both], inference_i: [0, 6], downsample: [4, 2, 2]}\n")
        res = cli("lartpc", "train", "inf.yaml")
        assert res.code == 0, res.err
        summary = json.loads(Path(f"runs/{name}/inference_summary.json").read_text())
        assert 0.5 < summary["auc"] <= 1.0
    # the shipped net was trained on wire + shared features: wire-only files are one clear line
    Path("inf.yaml").write_text("output_dir: runs/bad\ncheckpoint: pretrained:lartpc_ghost\n"
                                "data: {data_path: [xy], inference_i: [0, 6], downsample: [2, 1, 1]}\n")
    assert_clean_error(cli("lartpc", "train", "inf.yaml"), "downsampling", "data.downsample")
    Path("inf.yaml").write_text("output_dir: runs/bad\ncheckpoint: pretrained:no_such_net\n"
                                "data: {data_path: [both], inference_i: [0, 6], downsample: [4, 2, 2]}\n")
    assert_clean_error(cli("lartpc", "train", "inf.yaml"), "no_such_net", "pretrained:lartpc_ghost")
