"""Config-driven runs: exact resume, transfer into the charge net, inference only, and bad configs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mlfastsim.core.checkpoint import latest_checkpoint, load_checkpoint
from mlfastsim.core.config import load_config
from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.lartpc.config import LArTPCTrainConfig
from mlfastsim.lartpc.metrics import rejection_at_efficiency, summarise
from mlfastsim.lartpc.train import run
from tests.lartpc.conftest import train_config


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["modules"]["model"]


def test_resume_is_bit_exact(xy_dir: Path, tmp_path: Path) -> None:
    full = run(train_config(xy_dir, tmp_path / "full"), progress=False)
    assert len(full.summaries) == 2 and (tmp_path / "full" / "plots" / "summary.png").exists()
    assert (tmp_path / "full" / "inference" / "epoch_002.h5").exists()
    run(train_config(xy_dir, tmp_path / "part", n_epochs=1), progress=False)
    resumed = run(train_config(xy_dir, tmp_path / "part"), resume=True, progress=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summaries == full.summaries
    assert (tmp_path / "full" / "summary.csv").read_text() == (tmp_path / "part" / "summary.csv").read_text()
    # resuming from a named epoch retrains the rest identically
    again = run(train_config(xy_dir, tmp_path / "full"), resume=1, progress=False)
    c = weights(tmp_path / "full")
    assert all(torch.equal(a[k], c[k]) for k in a) and again.summaries == full.summaries


def test_transfer_into_charge_net_and_frozen_backbone(xy_dir: Path, tmp_path: Path) -> None:
    run(train_config(xy_dir, tmp_path / "ghost", n_epochs=1), progress=False)
    ghost = weights(tmp_path / "ghost")
    cfg = train_config(xy_dir, tmp_path / "charge", n_epochs=1, metric="charge_resolution",
                       model={"type": "charge", "freeze_backbone": True, "nHiddenLayers": 1},
                       loss={"name": "huber"}, transfer={"checkpoint": str(tmp_path / "ghost")})
    res = run(cfg, progress=False)
    assert res.transferred == sum(1 for k in ghost if k.startswith("backbone."))
    charge = weights(tmp_path / "charge")
    for k, v in ghost.items():
        if k.startswith("backbone."):
            assert torch.equal(charge[k], v), k
    last = res.summaries[-1]
    assert np.isfinite(last["charge_resolution"])
    assert {"charge_bias_q0.3-1", "charge_sum_bias", "charge_bias_plane2"} <= set(last)
    bad = cfg.model_copy(update={"model": cfg.model.model_copy(update={"nChannels": 6}),
                                 "output_dir": tmp_path / "bad"})
    with pytest.raises(ConfigError, match="do not fit"):
        run(bad, progress=False)


def test_inference_only_reproduces_the_training_summary(xy_dir: Path, tmp_path: Path) -> None:
    trained = run(train_config(xy_dir, tmp_path / "ghost", n_epochs=1), progress=False)
    cfg = LArTPCTrainConfig.model_validate({
        "output_dir": str(tmp_path / "inf"), "batch_size": 3, "checkpoint": str(tmp_path / "ghost"),
        "data": {"data_path": [str(xy_dir)], "inference_i": [4, 6]}, "loss": {"name": "bce"}})
    res = run(cfg, progress=False)
    assert res.mode == "inference"
    for key in ("efficiency", "rejection", "rejection_at_95", "auc"):
        assert res.summaries[0][key] == pytest.approx(trained.summaries[-1][key], rel=1e-5)
    with h5py.File(tmp_path / "inf" / "inference" / "inference.h5") as f:
        assert f["score"].shape == f["true_charge"].shape and f["offsets"][-1] == len(f["score"])
    assert not (tmp_path / "inf" / "checkpoints").exists()


def test_data_checks(xy_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="downsampling"):
        run(train_config(xy_dir, tmp_path / "r", data={"downsample": [2, 2, 2]}), progress=False)
    with pytest.raises(ConfigError, match="spatial_size") as info:
        run(train_config(xy_dir, tmp_path / "r", model={"spatial_size": [16, 16, 16]}), progress=False)
    assert "xy_tpc01" in str(info.value)
    with pytest.raises(ConfigError, match="events"):
        run(train_config(xy_dir, tmp_path / "r", data={"train_i": [0, 99]}), progress=False)
    with pytest.raises(ConfigError, match="binary"):
        run(train_config(xy_dir, tmp_path / "r", loss={"name": "mse"}), progress=False)


def test_config_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {data_path: [x], train_i: [0, 4]}\nmodel: {nChanels: 4}\n")
    with pytest.raises(ConfigError, match=r"model\.nChanels") as info:
        load_config(LArTPCTrainConfig, p)
    assert str(p) in str(info.value)
    p.write_text("data: {data_path: [x], train_i: [0, 4]}\nn_epochs: many\n")
    with pytest.raises(ConfigError, match="n_epochs"):
        load_config(LArTPCTrainConfig, p)
    p.write_text("data: {data_path: [x]}\n")
    with pytest.raises(ConfigError, match="checkpoint"):
        load_config(LArTPCTrainConfig, p)


def test_metrics_against_hand_counts() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    charge = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    s = summarise(score, charge, 0.0)
    assert s["efficiency"] == 0.75 and s["rejection"] == 0.75 and s["purity"] == 0.75
    # keeping 95 % of 4 real voxels means keeping all 4: the cut is the lowest real score (0.2)
    assert rejection_at_efficiency(score, charge > 0) == 0.25
    assert s["auc"] == pytest.approx(12 / 16)
    assert s["baseline_rejection"] == 0.0 and s["baseline_purity"] == 0.5


def test_charge_loss_ignores_ghost_charge_and_targets_log_charge() -> None:
    """Ghost voxels (truth 0) must not pull the charge of real voxels: only their logit enters the loss."""
    from mlfastsim.lartpc.config import LossConfig
    from mlfastsim.lartpc.train import make_loss, targets

    charge = torch.tensor([0.0, 0.0, 0.5, 2.0])
    t = targets(charge, "charge", 0.0, 0.1)
    assert t[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    torch.testing.assert_close(t[2:, 1], torch.log(torch.tensor([5.0, 20.0])))
    loss = make_loss(LossConfig(name="mse", ghost_weight=0.0), "charge")
    exact = torch.stack([torch.zeros(4), t[:, 1]], dim=1)
    assert float(loss(exact, t)) == 0.0
    # any charge predicted for ghosts costs nothing; a wrong real-voxel charge does
    ghosts_wrong = exact.clone()
    ghosts_wrong[:2, 1] = 7.0
    assert float(loss(ghosts_wrong, t)) == 0.0
    real_wrong = exact.clone()
    real_wrong[2, 1] += 1.0
    assert float(loss(real_wrong, t)) == pytest.approx(0.5)
    # with the deghosting term the logit matters too
    with_bce = make_loss(LossConfig(name="mse", ghost_weight=1.0), "charge")
    assert float(with_bce(exact, t)) == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.zeros(4), t[:, 0])))


def test_charge_metrics_per_bin_and_per_plane() -> None:
    from mlfastsim.lartpc.geometry import TPCGeometry
    from mlfastsim.lartpc.metrics import charge_by_bin, charge_per_plane

    true = np.array([0.05, 0.2, 0.5, 2.0, 5.0, 0.5])
    pred = true * np.array([2.0, 1.0, 1.1, 0.9, 1.0, 1.1])
    out = charge_by_bin(pred, true)
    assert out["charge_bias_q0-0.1"] == pytest.approx(1.0)
    assert out["charge_bias_q0.3-1"] == pytest.approx(0.1) and out["charge_resolution_q0.3-1"] == pytest.approx(0.0)
    assert out["charge_bias_q1-3"] == pytest.approx(-0.1)
    assert out["charge_fraction_q0.3-1"] == pytest.approx(2 / 6)
    assert out["charge_sum_bias"] == pytest.approx(pred.sum() / true.sum() - 1)
    # two voxels on the same tick: wherever they share a wire, their sums are compared, per plane
    g = TPCGeometry(n_ticks=8, size_y_mm=16.0, size_z_mm=16.0, voxel_mm=2.0)
    coords = np.array([[0, 1, 1], [0, 1, 2], [3, 5, 5]])
    q = np.array([1.0, 1.0, 2.0])
    per_plane = charge_per_plane(coords, np.zeros(3, np.int64), q * 1.2, q, g, (1, 1, 1))
    for p in range(3):
        assert per_plane[f"charge_bias_plane{p}"] == pytest.approx(0.2)
        assert per_plane[f"charge_resolution_plane{p}"] == pytest.approx(0.0)


def test_charge_calibration_sets_the_median_ratio_of_training_voxels_to_one(xy_dir: Path, tmp_path: Path) -> None:
    from mlfastsim.lartpc.data import load_events
    from mlfastsim.lartpc.models import build_model
    from mlfastsim.lartpc.train import calibrate, predict

    cfg = train_config(xy_dir, tmp_path / "c", model={"type": "charge"}, loss={"name": "huber"},
                       metric="charge_resolution")
    events = load_events(cfg.data, cfg.model.spatial_size, need_truth=True).select(0, 4, "train_i")
    torch.manual_seed(0)
    model = build_model(cfg.model, events.n_features)
    first = calibrate(model, events, cfg)
    assert first != 1.0
    pred = predict(model, events, cfg, "charge")
    q = events.charge.numpy()
    real = q > 0
    assert abs(np.median(pred.pred_charge[real] / q[real]) - 1.0) < 1e-2
    assert calibrate(model, events, cfg) == pytest.approx(first, rel=1e-4)  # idempotent
    res = run(cfg, progress=False)
    assert res.summaries[-1]["charge_calibration"] > 0
