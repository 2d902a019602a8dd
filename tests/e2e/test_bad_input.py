"""Every kind of bad input gives one clear line naming the file and the problem, exit code 2,
no traceback, and no partial output."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mlfastsim.showers.geometry import MESH_PRESETS


def assert_clean_error(res, *needles: str) -> None:
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.err and "Traceback" not in res.out
    lines = [x for x in res.err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def validate_args(ref: Path, cand: Path, out: Path, *extra: str) -> list[str]:
    return ["showers", "validate", "--reference", str(ref), "--candidate", str(cand), "-o", str(out),
            "--no-classifier", *extra]


def write_raw(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


def test_missing_file(cli, small_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    res = cli(*validate_args(small_file, missing, tmp_path / "v"))
    assert_clean_error(res, str(missing), "does not exist")


def test_convert_missing_input_is_one_line(cli, tmp_path: Path) -> None:
    res = cli("showers", "convert", "--from", "par04", tmp_path / "SiW_90deg.h5", "--mesh", "par04",
              "-o", tmp_path / "out.h5")
    assert res.code == 2 and "input file does not exist" in res.err and "SiW_90deg.h5" in res.err
    assert len(res.err.strip().splitlines()) == 1


def test_not_hdf5(cli, small_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.h5"
    bad.write_text("these are my notes")
    assert_clean_error(cli(*validate_args(small_file, bad, tmp_path / "v")), str(bad), "not an HDF5")


def test_truncated_hdf5(cli, small_file: Path, tmp_path: Path) -> None:
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(small_file.read_bytes()[:4096])
    assert_clean_error(cli(*validate_args(small_file, trunc, tmp_path / "v")), str(trunc), "truncated")


def test_missing_showers_key(cli, small_file: Path, tmp_path: Path) -> None:
    f = write_raw(tmp_path / "nokey.h5", incident_energies=np.ones((5, 1)))
    assert_clean_error(cli(*validate_args(small_file, f, tmp_path / "v")), str(f), "showers")


def test_wrong_voxel_count_for_geometry(cli, small_file: Path, tmp_path: Path, binning_ds3: Path) -> None:
    res = cli(*validate_args(small_file, small_file, tmp_path / "v", "--binning", str(binning_ds3)))
    assert_clean_error(res, str(small_file), "6480 voxels", "40500")


def test_n_mismatch(cli, small_file: Path, tmp_path: Path) -> None:
    f = write_raw(tmp_path / "mismatch.h5", incident_energies=np.ones((4, 1)) * 1e3,
                  showers=np.ones((5, MESH_PRESETS["ds2"].n_voxels)))
    assert_clean_error(cli(*validate_args(small_file, f, tmp_path / "v")), str(f), "incident_energies")


@pytest.mark.parametrize("value, needle", [(np.nan, "NaN"), (np.inf, "NaN/inf"), (-1.0, "negative")])
def test_nan_inf_negative(cli, small_file: Path, tmp_path: Path, value: float, needle: str) -> None:
    showers = np.ones((5, MESH_PRESETS["ds2"].n_voxels))
    showers[3, 17] = value
    f = write_raw(tmp_path / "broken.h5", incident_energies=np.ones((5, 1)) * 1e3, showers=showers)
    assert_clean_error(cli(*validate_args(small_file, f, tmp_path / "v")), str(f), "showers", needle, "row 3")


def test_zero_energy_showers(cli, small_file: Path, tmp_path: Path) -> None:
    showers = np.ones((5, MESH_PRESETS["ds2"].n_voxels))
    showers[2] = 0.0
    f = write_raw(tmp_path / "zero.h5", incident_energies=np.ones((5, 1)) * 1e3, showers=showers)
    res = cli(*validate_args(small_file, f, tmp_path / "v"))
    assert_clean_error(res, "zero")
    assert not (tmp_path / "v" / "metrics.json").exists()


def test_unknown_detector_and_mesh(cli, tmp_path: Path) -> None:
    res = cli("showers", "simulate", "--detector", "CsI", "--energy-gev", "10", "-o", str(tmp_path / "a.h5"))
    assert_clean_error(res, "unknown detector", "SiW")
    res = cli("showers", "simulate", "--mesh", "ds7", "--energy-gev", "10", "-o", str(tmp_path / "a.h5"))
    assert_clean_error(res, "unknown mesh", "ds2")
    assert not (tmp_path / "a.h5").exists()


def test_malformed_binning_xml(cli, small_file: Path, tmp_path: Path) -> None:
    xml = tmp_path / "binning.xml"
    xml.write_text("<Bins><Bin pid='11'><Layer id='0'")
    res = cli(*validate_args(small_file, small_file, tmp_path / "v", "--binning", str(xml)))
    assert_clean_error(res, str(xml), "malformed")


def test_bad_set_key_and_type(cli, tmp_path: Path) -> None:
    res = cli("showers", "simulate", "--set", "n_per_pont=10", "-o", str(tmp_path / "a.h5"))
    assert_clean_error(res, "n_per_pont", "n_per_point")
    res = cli("showers", "simulate", "--set", "n_per_point=lots", "-o", str(tmp_path / "a.h5"))
    assert_clean_error(res, "n_per_point", "lots")
    assert not (tmp_path / "a.h5").exists()


def test_output_not_writable(cli, small_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = cli("showers", "simulate", "--energy-gev", "10", "--n-per-point", "5", "-o", str(blocker / "out.h5"))
    assert_clean_error(res, str(blocker), "cannot create")


def test_debug_shows_traceback(cli, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown detector"):
        cli("--debug", "showers", "simulate", "--detector", "CsI", "-o", str(tmp_path / "a.h5"))
