"""The main road as a user runs it: simulate -> convert -> validate, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlfastsim.showers.io.formats import read_native


def test_python_dash_m_and_version() -> None:
    out = subprocess.run([sys.executable, "-m", "mlfastsim", "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.startswith("mlfastsim ")


def test_simulate_convert_validate(cli, tmp_path: Path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    res = cli("showers", "simulate", "--detector", "SiW", "--mesh", "ds2", "--energy-gev", "10,100",
              "--angle-deg", "90", "--n-per-point", "150", "--seed", "1", "-o", a)
    assert res.code == 0, res.err
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("detector: SiW\nmesh: ds2\nenergies_gev: [10, 100]\nangles_deg: [90]\nn_per_point: 150\n")
    res = cli("showers", "simulate", "--config", cfg, "--set", "seed=2", "-o", b)
    assert res.code == 0, res.err
    data_a, data_b = read_native(a), read_native(b)
    assert len(data_a) == len(data_b) == 300
    assert not np.array_equal(data_a.showers, data_b.showers)  # different seeds
    assert data_a.meta["detector"]["name"] == "SiW"

    cc = tmp_path / "cc.h5"
    res = cli("showers", "convert", "--from", "native", "--to", "calochallenge", a, "-o", cc)
    assert res.code == 0, res.err
    back = tmp_path / "back.h5"
    res = cli("showers", "convert", "--from", "calochallenge", "--to", "native", cc, "-o", back)
    assert res.code == 0, res.err
    np.testing.assert_array_equal(read_native(back).showers, data_a.showers)

    out = tmp_path / "val"
    res = cli("showers", "validate", "--reference", a, "--candidate", b, "-o", out, "--no-classifier")
    assert res.code == 0, res.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_reference"] == 300
    assert (out / "report.html").stat().st_size > 10_000
    assert list(out.glob("*.png"))
    assert (tmp_path / "runs").exists()


def test_dask_workers_give_the_same_file(cli, tmp_path: Path) -> None:
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    args = ["showers", "simulate", "--energy-range-gev", "1:100", "--angle-range-deg", "50:90", "--n-per-point",
            "300", "--chunk-size", "100", "--seed", "3"]
    assert cli(*args, "-o", one).code == 0
    assert cli(*args, "--workers", "2", "-o", two).code == 0
    np.testing.assert_array_equal(read_native(one).showers, read_native(two).showers)
