"""Tiny LArTPC geometries and events so the whole LArTPC test set runs in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfastsim.lartpc.geometry import TPCGeometry
from mlfastsim.lartpc.simulate import SimulateConfig, simulate_to_dir

TINY = TPCGeometry(n_ticks=32, size_y_mm=32.0, size_z_mm=32.0, voxel_mm=2.0)


@pytest.fixture
def tiny_geometry() -> TPCGeometry:
    return TINY


def tiny_sim_config(out: Path, n_events: int = 8, **kw) -> SimulateConfig:
    base = dict(n_events=n_events, seed=3, tpc_ids=[1, 5], geometry=TINY, muons=(1, 2), protons=(0, 1),
                showers=(0, 1), shower_energy_mev=(40.0, 120.0), proton_range_mm=(5.0, 20.0), chunk_size=3,
                output_dir=out)
    base.update(kw)
    return SimulateConfig(**base)


@pytest.fixture
def parsed_dir(tmp_path: Path) -> Path:
    out = tmp_path / "parsed"
    simulate_to_dir(tiny_sim_config(out), progress=False)
    return out


@pytest.fixture
def xy_dir(parsed_dir: Path, tmp_path: Path) -> Path:
    """xy files of TPC 1 (full resolution: a 32 x 16 x 16 grid) from eight tiny events."""
    from mlfastsim.lartpc.tiling import MakeBatchesConfig, process_xy

    out = tmp_path / "xy"
    process_xy(MakeBatchesConfig(input_dir=parsed_dir, output_dir=out, tpc=1, batch_size=3), progress=False)
    return out


def train_config(xy: Path, out: Path, **over):
    """A tiny deghosting config; ``over`` replaces top-level sections (merged one level deep)."""
    from mlfastsim.lartpc.config import LArTPCTrainConfig

    base = {"output_dir": str(out), "n_epochs": 2, "batch_size": 2, "seed": 5,
            "data": {"data_path": [str(xy)], "train_i": [0, 4], "inference_i": [4, 6], "threshold": 0.0},
            "model": {"spatial_size": [32, 16, 16], "nChannels": 4, "nStrides": 2, "n_2D": 1},
            "loss": {"name": "bce"}, "tracking": {"dir": str(out.parent / "tracking"), "run_name": out.name}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return LArTPCTrainConfig.model_validate(base)
