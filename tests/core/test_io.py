from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from mlfastsim.core.errors import InputFileError, OutputError
from mlfastsim.core.io import atomic_path, atomic_write_json, open_h5


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_existing(tmp_path: Path) -> None:
    dest = tmp_path / "m.json"
    dest.write_text("old")
    atomic_write_json(dest, {"x": np.float32(1.5), "a": np.arange(3)})
    assert json.loads(dest.read_text()) == {"x": 1.5, "a": [0, 1, 2]}


def test_open_h5_distinguishes_missing_not_hdf5_truncated(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        open_h5(tmp_path / "nope.h5")
    txt = tmp_path / "text.h5"
    txt.write_text("hello")
    with pytest.raises(InputFileError, match="not an HDF5"):
        open_h5(txt)
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f.create_dataset("x", data=np.arange(100000.0))
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputFileError, match="truncated"):
        open_h5(trunc)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputError), atomic_path(ro / "x"):
        pass


def test_output_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create"), atomic_path(blocker / "sub" / "out.h5"):
        pass


def test_atomic_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; outputs must be as readable as any file the user creates (0666 & ~umask)."""
    import os

    from mlfastsim.core.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        from mlfastsim.core import io as io_mod

        io_mod._umask.cache_clear()
        out = atomic_write_text(tmp_path / "a.txt", "x")
        assert os.stat(out).st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
        io_mod._umask.cache_clear()
