from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlfastsim.cli.main import main
from mlfastsim.showers.geometry import MESH_PRESETS
from mlfastsim.showers.io.formats import ShowerData, write_native


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the CLI in-process as a user would type it; return exit code, stdout and stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    """A valid native ds2 file with a handful of smooth random showers."""
    rng = np.random.default_rng(0)
    mesh = MESH_PRESETS["ds2"]
    n = 40
    energies = rng.uniform(1e3, 1e5, n)
    grid = rng.gamma(0.5, 1.0, (n, *mesh.shape))
    grid *= (0.95 * energies / grid.sum(axis=(1, 2, 3)))[:, None, None, None]
    path = tmp_path / "small.h5"
    write_native(ShowerData(energies, mesh.to_flat(grid), mesh, angles=np.full(n, 90.0)), path)
    return path


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative default outputs (runs/, validation/) land in the test's own directory."""
    monkeypatch.chdir(tmp_path)
