"""Small things a newcomer trips on (issue 16 item 11): outputs independent of the -o string, clear
messages for Ctrl-C and out-of-range angles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def test_simulated_file_does_not_depend_on_the_output_path(cli: Callable[..., Any], tmp_path: Path) -> None:
    args = ("showers", "simulate", "--detector", "SiW", "--energy-gev", "10", "--angle-deg", "90",
            "--n-per-point", "3", "--seed", "4")
    assert cli(*args, "-o", tmp_path / "a.h5").code == 0
    (tmp_path / "runs").mkdir()
    assert cli(*args, "-o", tmp_path / "runs" / "other_name.h5").code == 0
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "runs" / "other_name.h5").read_bytes()


def test_angle_error_names_the_value_once(cli: Callable[..., Any], tmp_path: Path) -> None:
    res = cli("showers", "simulate", "--energy-gev", "10", "--angle-deg", "120", "--n-per-point", "1",
              "-o", tmp_path / "x.h5")
    assert res.code == 2 and "got 120" in res.err and "120.0..120.0" not in res.err
