"""Data jobs on Dask through the CLI: ``--scheduler`` of one shared 2-worker cluster gives byte-identical
outputs to the serial run, and the jobs are idempotent (a finished output is skipped, a killed run resumes).

One ``distributed.LocalCluster`` (2 single-threaded worker processes) serves the whole module: starting
one costs seconds, and ``--scheduler ADDRESS`` is exactly how a user points a job at an existing cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData, write_par04

LARTPC_SIM = """\
n_events: 6
seed: 4
tpc_ids: [1]
geometry: {n_ticks: 32, size_y_mm: 32.0, size_z_mm: 32.0, voxel_mm: 2.0}
muons: [1, 2]
protons: [0, 1]
showers: [0, 1]
shower_energy_mev: [40.0, 120.0]
proton_range_mm: [5.0, 20.0]
"""


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _same_bytes(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes(), f"{a} and {b} differ"


def _ok(res) -> None:
    assert res.code == 0, res.out + res.err


SIMULATE_EM = ["showers", "simulate", "--detector", "SiW", "--mesh", "ds2", "--energy-gev", "2,20",
               "--n-per-point", "6", "--chunk-size", "4", "--seed", "5"]


def test_showers_simulate_em_and_pions(cli, scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    """The file records the run's config (output name included), so both runs write ``out.h5`` in their
    own directory."""
    pions = ["showers", "simulate", "--particle", "pion", "--grid", "hcal48", "--energy-gev", "10",
             "--n-per-point", "3", "--chunk-size", "1", "--seed", "2"]
    for run, extra in (("serial", []), ("dask", ["--scheduler", scheduler])):
        (tmp_path / run).mkdir()
        monkeypatch.chdir(tmp_path / run)
        _ok(cli(*SIMULATE_EM, *extra, "-o", "em.h5"))
        _ok(cli(*pions, *extra, "-o", "pions.h5"))
    for name in ("em.h5", "pions.h5"):
        _same_bytes(tmp_path / "serial" / name, tmp_path / "dask" / name)


def test_showers_convert_par04_directory(cli, scheduler: str, tmp_path: Path) -> None:
    """Par04 files of three angles, read one file per task: the joined, (angle, energy)-sorted result is
    the serial one."""
    rng = np.random.default_rng(3)
    mesh = CylindricalMesh(n_r=3, n_phi=4, n_z=5, size_r=4.0, size_z=3.0)
    n = 30
    energies = rng.choice([1e3, 1e4, 5e4], n)
    angles = rng.choice([50.0, 70.0, 90.0], n).astype(np.float32)
    showers = rng.gamma(0.5, 1.0, (n, mesh.n_voxels)).astype(np.float32)
    write_par04(ShowerData(energies, showers, mesh, angles=angles), tmp_path / "par04")
    assert len(list((tmp_path / "par04").glob("*.h5"))) == 3
    _ok(cli("showers", "convert", str(tmp_path / "par04"), "--from", "par04", "--to", "native", "-o", "serial.h5"))
    _ok(cli("showers", "convert", str(tmp_path / "par04"), "--from", "par04", "--to", "native", "-o", "dask.h5",
            "--scheduler", scheduler))
    _same_bytes(Path("serial.h5"), Path("dask.h5"))
    again = cli("showers", "convert", str(tmp_path / "par04"), "--from", "par04", "--to", "native", "-o",
                "dask.h5", "--workers", "2")
    _ok(again)
    assert "up to date" in again.out  # finished with the same inputs and settings: skipped, no cluster started


def test_lartpc_make_batches(cli, scheduler: str) -> None:
    Path("sim.yaml").write_text(LARTPC_SIM)
    _ok(cli("lartpc", "simulate", "-c", "sim.yaml", "-o", "parsed"))
    common = ["lartpc", "make-batches", "-i", "parsed", "-t", "1", "-b", "2", "--downsample", "2,1,1", "--save-pix"]
    _ok(cli(*common, "-o", "xy_serial"))
    _ok(cli(*common, "-o", "xy_dask", "--scheduler", scheduler))
    names = sorted(p.name for p in Path("xy_serial").glob("*.h5"))
    assert len(names) == 6  # 3 xy + 3 pix files
    assert names == sorted(p.name for p in Path("xy_dask").glob("*.h5"))
    for name in names:
        _same_bytes(Path("xy_serial") / name, Path("xy_dask") / name)


def test_belle2_preprocess(cli, scheduler: str) -> None:
    _ok(cli("belle2", "produce", "-n", 40, "--chunk-size", 20, "--seed", 3, "-o", "events.h5"))
    common = ["belle2", "preprocess", "-i", "events.h5", "--max-particles", "40", "--max-tokens", "60",
              "--set", "chunk_events=7"]
    _ok(cli(*common, "-o", "pre_serial"))
    _ok(cli(*common, "-o", "pre_dask", "--scheduler", scheduler))
    names = sorted(p.name for p in Path("pre_serial").iterdir() if not p.name.startswith("."))
    assert "particle.npy" in names and "decay.npy" in names and "y.npy" in names
    assert names == sorted(p.name for p in Path("pre_dask").iterdir() if not p.name.startswith("."))
    for name in names:
        if name != "preprocess.json":  # records the input path only; identical here too
            _same_bytes(Path("pre_serial") / name, Path("pre_dask") / name)
    assert not any(p.name.endswith(".parts") for p in Path("pre_dask").iterdir())  # chunk cache cleaned up
