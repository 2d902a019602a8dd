from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlfastsim.core.errors import DataError, GeometryError
from mlfastsim.showers.geometry import (
    DETECTOR_PRESETS,
    ES_MEV,
    MATERIALS,
    MESH_PRESETS,
    CylindricalMesh,
    load_detector,
    load_mesh,
    read_binning_xml,
)


def test_mesh_presets_match_the_published_meshes() -> None:
    par04, ds2 = MESH_PRESETS["par04"], MESH_PRESETS["ds2"]
    assert (par04.n_r, par04.n_phi, par04.n_z, par04.size_r, par04.size_z) == (18, 50, 45, 2.325, 3.4)
    assert (ds2.n_r, ds2.n_phi, ds2.n_z, ds2.size_r) == (9, 16, 45, 4.65)
    assert ds2.n_voxels == 6480 and par04.n_voxels == 40500
    assert ds2.radius == pytest.approx(41.85)


def test_binning_xml_gives_the_preset_meshes(binning_ds2: Path, binning_ds3: Path) -> None:
    m2 = read_binning_xml(binning_ds2)
    assert m2.shape == MESH_PRESETS["ds2"].shape
    np.testing.assert_allclose(m2.r_edges, MESH_PRESETS["ds2"].r_edges)
    m3 = load_mesh(binning_ds3)
    assert m3.shape == MESH_PRESETS["par04"].shape
    # the shipped files by preset or file name, from any directory (the README's --binning ds2)
    for spec in ("ds2", "binning_dataset_2.xml"):
        assert read_binning_xml(spec).shape == MESH_PRESETS["ds2"].shape
    assert read_binning_xml("ds3").shape == MESH_PRESETS["par04"].shape


def test_non_uniform_binning_and_roundtrip_through_dict(tmp_path: Path) -> None:
    xml = tmp_path / "b.xml"
    layers = "".join(f'<Layer id="{i}" r_edges="0,2,5,10" n_bin_alpha="4"/>' for i in range(3))
    xml.write_text(f'<Bins><Bin pid="22" name="photon">{layers}</Bin></Bins>')
    mesh = read_binning_xml(xml)
    assert mesh.shape == (3, 4, 3)
    np.testing.assert_allclose(mesh.r_edges, [0, 2, 5, 10])
    again = CylindricalMesh.from_dict(mesh.to_dict())
    np.testing.assert_allclose(again.r_edges, mesh.r_edges)
    assert again.shape == mesh.shape


@pytest.mark.parametrize(
    "content, match",
    [
        ("<Bins><Bin pid='11'><Layer id='0' r_edges='0,1' n_bin_alpha='2'></Bin>", "malformed"),
        ("<Other/>", "expected <Bins>"),
        ("<Bins></Bins>", "no <Bin>"),
        ("<Bins><Bin pid='11'><Layer id='0' n_bin_alpha='2'/></Bin></Bins>", "r_edges"),
        ("<Bins><Bin pid='11'><Layer id='0' r_edges='0,1' n_bin_alpha='2'/>"
         "<Layer id='1' r_edges='0,2' n_bin_alpha='2'/></Bin></Bins>", "regular"),
    ],
)
def test_malformed_binning_xml(tmp_path: Path, content: str, match: str) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text(content)
    with pytest.raises(GeometryError, match=match) as exc:
        read_binning_xml(xml)
    assert exc.value.file == str(xml)


def test_to_grid_to_flat_is_the_calochallenge_order() -> None:
    mesh = MESH_PRESETS["ds2"]
    flat = np.zeros((1, mesh.n_voxels))
    z, a, r = 7, 3, 2
    flat[0, (z * mesh.n_phi + a) * mesh.n_r + r] = 1.0
    grid = mesh.to_grid(flat)
    assert grid.shape == (1, 45, 16, 9) and grid[0, z, a, r] == 1.0
    np.testing.assert_array_equal(mesh.to_flat(grid), flat)
    with pytest.raises(DataError, match="voxels"):
        mesh.to_grid(np.zeros((2, 100)))


def test_materials_are_consistent_with_rossi_formula() -> None:
    # R_M = E_s X0 / E_c must hold for the PDG numbers to better than 1 %.
    for name in ("W", "Pb", "PbWO4", "Si", "Scintillator", "Fe"):
        m = MATERIALS[name]
        assert m.rm == pytest.approx(ES_MEV * m.x0 / m.ec, rel=0.01), name


def test_detector_presets_effective_properties() -> None:
    siw = DETECTOR_PRESETS["SiW"]
    # Mostly tungsten: X0 between W and the mixture bound, R_M a bit above W's.
    assert 3.504 < siw.x0 < 4.5 and 9.327 < siw.rm < 12.0
    assert siw.depth_mm == pytest.approx(90 * 1.7)
    assert 0.02 < siw.sampling_fraction < 0.05
    assert DETECTOR_PRESETS["PbWO4"].sampling_fraction == 1.0 and DETECTOR_PRESETS["PbWO4"].homogeneous
    scipb = DETECTOR_PRESETS["SciPb"]
    assert scipb.sampling_fraction > siw.sampling_fraction
    assert {"SiW", "SciPb", "PbWO4", "FCCeeSiW"} <= set(DETECTOR_PRESETS)
    assert DETECTOR_PRESETS["FCCeeSiW"].n_layers == 40


def test_user_detector_from_yaml(tmp_path: Path) -> None:
    f = tmp_path / "det.yaml"
    f.write_text("name: MyFe\nabsorber: Fe\nabsorber_mm: 20\nactive: Scintillator\nactive_mm: 3\nn_layers: 40\n")
    det = load_detector(f)
    assert det.name == "MyFe" and det.n_layers == 40 and det.active.name == "Scintillator"
    f.write_text("name: X\nabsorber: Unobtainium\nabsorber_mm: 2\n")
    with pytest.raises(GeometryError, match="unknown material"):
        load_detector(f)
    f.write_text("name: X\nabsorber: W\nabsorber_mm: 2\ncolour: red\n")
    with pytest.raises(GeometryError, match="unknown detector key"):
        load_detector(f)


def test_unknown_presets() -> None:
    with pytest.raises(GeometryError, match="unknown detector"):
        load_detector("CsI-foo")
    with pytest.raises(GeometryError, match="unknown mesh"):
        load_mesh("ds9")
    assert load_detector("siw").name == "SiW"
