"""``showers example-data``: inputs in every layout convert reads, consistent with each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlfastsim.showers.examples import EXAMPLE_FILES, write_example_data
from mlfastsim.showers.geometry import MESH_PRESETS
from mlfastsim.showers.io.formats import read_calochallenge, read_hits_files, read_par04


def test_example_files_read_back_in_their_layouts(tmp_path: Path) -> None:
    files = write_example_data(tmp_path / "ex", n_showers=6, seed=3)
    assert sorted(p.name for p in files) == sorted(EXAMPLE_FILES)
    ds2 = read_calochallenge([tmp_path / "ex" / "dataset_2_1.hdf5"], mesh=MESH_PRESETS["ds2"])
    assert len(ds2) == 6 and np.all(ds2.showers.sum(axis=1) > 0)
    par04 = read_par04([tmp_path / "ex" / "SiW_90deg.h5", tmp_path / "ex" / "SiW_70deg.h5"])
    assert len(par04) == 12 and sorted(set(np.asarray(par04.angles).ravel().tolist())) == [70.0, 90.0]
    # one hit per cell centre at normal incidence: voxelised onto the same mesh, the showers come back
    hits = read_hits_files([tmp_path / "ex" / "hits.h5"], mesh=MESH_PRESETS["par04"])
    normal = read_par04([tmp_path / "ex" / "SiW_90deg.h5"])
    order = np.argsort(np.asarray(normal.energies).ravel(), kind="stable")
    back = np.argsort(np.asarray(hits.energies).ravel(), kind="stable")
    np.testing.assert_allclose(np.asarray(hits.showers)[back], np.asarray(normal.showers)[order], rtol=1e-5)
