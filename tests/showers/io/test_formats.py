"""Format registry, CaloChallenge and Par04 layouts: exact round trips and the axis bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.showers.geometry import MESH_PRESETS, CylindricalMesh
from mlfastsim.showers.io.formats import (
    READERS,
    WRITERS,
    ShowerData,
    convert,
    format_number,
    get_writer,
    read_calochallenge,
    read_native,
    read_par04,
    sort_by_angle_energy,
    write,
    write_calochallenge,
    write_native,
    write_par04,
)

SMALL = CylindricalMesh(n_r=3, n_phi=4, n_z=5, size_r=2.0, size_z=3.0, name="small")


def make_data(
    n: int = 40, mesh: CylindricalMesh = SMALL, *, seed: int = 0, angles: bool = True
) -> ShowerData:
    """Showers with awkward float32 values: repeated discrete and continuous energies, several angles."""
    rng = np.random.default_rng(seed)
    discrete = rng.choice(np.array([1024.0, 64000.0, 500.0], dtype=np.float32), n // 2)
    continuous = np.exp(rng.uniform(np.log(1e3), np.log(1e6), n - n // 2)).astype(np.float32)
    energies = rng.permutation(np.concatenate([discrete, continuous]))
    sparse = rng.random((n, mesh.n_voxels)) < 0.4
    showers = (rng.exponential(3.0, (n, mesh.n_voxels)) * sparse).astype(np.float32)
    theta = rng.choice(np.array([50.0, 72.3, 90.0], dtype=np.float32), n) if angles else None
    meta = {"detector": {"name": "SiW"}}
    return ShowerData(energies=energies, showers=showers, mesh=mesh, angles=theta, meta=meta)


def assert_same(a: ShowerData, b: ShowerData) -> None:
    assert np.array_equal(a.energies, b.energies)
    assert a.energies.dtype == b.energies.dtype == np.float32
    assert np.array_equal(a.showers, b.showers)
    if a.angles is None:
        assert b.angles is None
    else:
        assert b.angles is not None
        assert np.array_equal(a.angles, b.angles)


# ----------------------------------------------------------------------------------------- registry
def test_registry_keys() -> None:
    assert set(READERS) == {"native", "calochallenge", "par04", "hits"}
    assert set(WRITERS) == {"native", "calochallenge", "par04"}


def test_unknown_formats_name_the_flag_and_list_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        convert("root", [tmp_path / "x.h5"])
    assert err.value.field == "--from"
    assert "par04" in (err.value.fix or "")
    with pytest.raises(ConfigError) as err:
        get_writer("csv")
    assert err.value.field == "--to"
    assert "calochallenge" in (err.value.fix or "")


def test_unknown_option_is_a_config_error_and_none_options_are_dropped(tmp_path: Path) -> None:
    path = write_native(make_data(5), tmp_path / "a.h5")
    with pytest.raises(ConfigError) as err:
        convert("native", [path], binning="x.xml")
    assert err.value.field == "--binning"
    data = convert("native", [path], binning=None, angle=None)
    assert len(data) == 5


def test_native_many_inputs_concatenate_in_order(tmp_path: Path) -> None:
    a, b = make_data(7, seed=1), make_data(5, seed=2)
    pa, pb = write_native(a, tmp_path / "a.h5"), write_native(b, tmp_path / "b.h5")
    data = convert("native", [pb, pa])
    assert np.array_equal(data.showers, np.concatenate([b.showers, a.showers]))
    assert data.meta["inputs"] == [str(pb), str(pa)]


def test_concatenating_different_meshes_is_refused(tmp_path: Path) -> None:
    other = CylindricalMesh(n_r=3, n_phi=4, n_z=5, size_r=2.0, size_z=3.5)
    pa = write_native(make_data(3), tmp_path / "a.h5")
    pb = write_native(make_data(3, other), tmp_path / "b.h5")
    with pytest.raises(DataError) as err:
        convert("native", [pa, pb])
    assert err.value.field == "geometry"
    assert err.value.file == str(pb)


def test_nan_angles_are_refused() -> None:
    data = make_data(4)
    assert data.angles is not None
    data.angles[2] = np.nan
    with pytest.raises(DataError) as err:
        data.validate()
    assert err.value.field == "incident_angles"


# ------------------------------------------------------------------------------------ CaloChallenge
def test_calochallenge_round_trip_is_exact_and_pure(tmp_path: Path) -> None:
    data = make_data(30, MESH_PRESETS["ds2"])
    out = write("calochallenge", data, tmp_path / "cc.h5")
    with h5py.File(out) as f:
        assert set(f.keys()) == {"incident_energies", "showers"}
        assert dict(f.attrs) == {}
        assert f["incident_energies"].shape == (30, 1)
        assert f["showers"].compression == "gzip"
        # float64 as the official datasets: the official evaluate.py classifier is a float64 network
        assert f["incident_energies"].dtype == np.float64
        assert f["showers"].dtype == np.float64
        assert f["showers"].shape == (30, 6480)
    back = convert("calochallenge", [out])  # no geometry block: the 6480 voxels say ds2
    assert back.mesh.shape == MESH_PRESETS["ds2"].shape
    assert back.angles is None  # a pure CaloChallenge file has no angles
    assert np.array_equal(back.energies, data.energies)
    assert np.array_equal(back.showers, data.showers)
    # and on to native and back, still exact
    native = read_native(write_native(back, tmp_path / "n.h5"))
    assert_same(back, native)


def test_calochallenge_with_binning_xml(tmp_path: Path) -> None:
    edges = "0,1,3,7"
    layers = "".join(f'<Layer id="{i}" r_edges="{edges}" n_bin_alpha="4"/>' for i in range(5))
    xml = tmp_path / "binning.xml"
    xml.write_text(f'<Bins><Bin pid="11" name="electron">{layers}</Bin></Bins>')
    mesh = CylindricalMesh(n_r=3, n_phi=4, n_z=5, size_r=1.0, size_z=3.4, r_edges_mm=(0.0, 1.0, 3.0, 7.0))
    data = make_data(6, mesh)
    path = write_calochallenge(data, tmp_path / "cc.h5")
    back = read_calochallenge([path], binning=xml, particle="electron")
    assert back.mesh.shape == (5, 4, 3)
    assert np.allclose(back.mesh.r_edges, [0, 1, 3, 7])
    assert np.array_equal(back.showers, data.showers)
    with pytest.raises(ConfigError):
        convert("calochallenge", [path], mesh=mesh, binning=xml)


def test_missing_input_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as err:
        convert("calochallenge", [tmp_path / "absent.h5"])
    assert err.value.file == str(tmp_path / "absent.h5")


# -------------------------------------------------------------------------------------------- Par04
def test_format_number() -> None:
    assert format_number(64.0) == "64"
    assert format_number(0.5) == "0.5"
    assert format_number(np.float32(72.3)) == "72.3"
    assert float(format_number(1234.567 / 1000.0)) == 1234.567 / 1000.0


def test_par04_round_trip_is_exact_after_the_documented_sort(tmp_path: Path) -> None:
    data = make_data(60, seed=3)
    files = write("par04", data, tmp_path / "par04")
    assert isinstance(files, list)
    assert sorted(p.name for p in files) == ["SiW_angle_50.h5", "SiW_angle_72.3.h5", "SiW_angle_90.h5"]
    back = convert("par04", [tmp_path / "par04"])  # a directory expands to its files
    assert_same(sort_by_angle_energy(data), back)
    assert back.meta["detector"] == {"name": "SiW"}
    # native -> par04 -> native -> par04 is stable
    again = read_native(write_native(back, tmp_path / "n.h5"))
    assert_same(back, again)


def test_par04_file_layout_matches_g4fastsim(tmp_path: Path) -> None:
    data = make_data(6, seed=4)
    data.energies[:] = [64000.0, 500.0, 64000.0, 64000.0, 1234.5, 500.0]
    data.angles[:] = 90.0  # type: ignore[index]
    write_par04(data, tmp_path)
    with h5py.File(tmp_path / "SiW_angle_90.h5") as f:
        # 64000 MeV -> dataset "64" (GeV), as g4fastsim's preprocess() reads h5[f"{energy}"]
        assert sorted(f.keys()) == ["0.5", "1.2345", "64"]
        assert f["64"].shape == (3, SMALL.n_r, SMALL.n_phi, SMALL.n_z)
        assert f.attrs["angle_deg"] == np.float32(90.0)
        assert json.loads(f.attrs["geometry"])["n_r"] == SMALL.n_r


def test_par04_transpose_puts_a_hot_voxel_in_the_right_cell(tmp_path: Path) -> None:
    # (N, R, PHI, Z) with every axis of a different length, one hot cell at r=2, phi=1, z=3
    raw = np.zeros((2, SMALL.n_r, SMALL.n_phi, SMALL.n_z), dtype=np.float64)
    raw[1, 2, 1, 3] = 7.5
    raw[0, 0, 3, 4] = 1.25
    path = tmp_path / "Plain_angle_50.h5"
    with h5py.File(path, "w") as f:  # a bare Par04 file: no attributes at all
        f.create_dataset("8", data=raw)
    data = read_par04([path], mesh=SMALL)
    assert data.angles is not None and data.angles[0] == 50.0
    assert np.array_equal(data.energies, [8000.0, 8000.0])
    grid = data.grid
    assert grid[1, 3, 1, 2] == 7.5 and grid[0, 4, 3, 0] == 1.25
    assert np.count_nonzero(grid) == 2
    assert data.showers[1, (3 * SMALL.n_phi + 1) * SMALL.n_r + 2] == 7.5  # flat order z, phi, r
    # and the writer inverts it
    out = write_par04(data, tmp_path / "out", name="Again")
    with h5py.File(out[0]) as f:
        assert np.array_equal(f["8"][()], raw.astype(np.float32))


def test_par04_mesh_from_preset_shape_and_angle_sources(tmp_path: Path) -> None:
    mesh = MESH_PRESETS["par04"]
    raw = np.zeros((1, mesh.n_r, mesh.n_phi, mesh.n_z), dtype=np.float32)
    raw[0, 0, 0, 0] = 1.0
    named = tmp_path / "SciPb_angle_70.h5"
    anonymous = tmp_path / "showers.h5"
    for p in (named, anonymous):
        with h5py.File(p, "w") as f:
            f.create_dataset("2", data=raw)
    assert read_par04([named]).mesh.name == "par04"
    deg = tmp_path / "Other_72.5deg.h5"
    named.rename(deg)
    assert read_par04([deg]).angles.tolist() == [72.5]  # type: ignore[union-attr]
    with pytest.raises(InputFileError) as err:
        read_par04([anonymous])
    assert err.value.field == "angle" and err.value.file == str(anonymous)
    assert read_par04([anonymous], angle=60).angles.tolist() == [60.0]  # type: ignore[union-attr]


def test_par04_bad_files(tmp_path: Path) -> None:
    raw = np.zeros((1, SMALL.n_r, SMALL.n_phi, SMALL.n_z), dtype=np.float32)
    bad_name = tmp_path / "a_angle_50.h5"
    with h5py.File(bad_name, "w") as f:
        f.create_dataset("energy", data=raw)
    with pytest.raises(InputFileError) as err:
        read_par04([bad_name], mesh=SMALL)
    assert err.value.field == "energy"
    wrong_shape = tmp_path / "b_angle_50.h5"
    with h5py.File(wrong_shape, "w") as f:
        f.create_dataset("1", data=np.zeros((1, 4, 4, 5), dtype=np.float32))
    with pytest.raises(DataError) as err2:
        read_par04([wrong_shape], mesh=SMALL)
    assert err2.value.field == "1" and err2.value.file == str(wrong_shape)
    nan = tmp_path / "c_angle_50.h5"
    with h5py.File(nan, "w") as f:
        f.create_dataset("1", data=np.full_like(raw, np.nan))
    with pytest.raises(DataError):
        read_par04([nan], mesh=SMALL)


def test_par04_output_forms(tmp_path: Path) -> None:
    data = make_data(10, seed=5)
    with pytest.raises(ConfigError):
        write_par04(data, tmp_path / "one.h5")  # three angles do not fit in one file
    files = write_par04(data, tmp_path / "pat" / "X_{angle}deg.h5")
    assert {p.name for p in files} == {"X_50deg.h5", "X_72.3deg.h5", "X_90deg.h5"}
    single = data.subset(data.angles == np.float32(90.0))  # type: ignore[operator]
    assert write_par04(single, tmp_path / "one.h5") == [tmp_path / "one.h5"]
    (tmp_path / "dir.h5").mkdir()
    assert len(write_par04(data, tmp_path / "dir.h5")) == 3  # an existing directory stays a directory
    no_angles = make_data(4, angles=False)
    back = read_par04(write_par04(no_angles, tmp_path / "noang"))
    assert back.angles is not None and np.all(back.angles == 90.0)


def test_hits_reader_needs_a_mesh(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        convert("hits", [tmp_path / "h.h5"])
    assert err.value.field == "--mesh"
