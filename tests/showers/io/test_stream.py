"""The streaming conversion writes what converting in memory writes, in every direction."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mlfastsim.core.errors import DataError
from mlfastsim.core.resume import TaskCache, cache_dir_for, is_done
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io import formats
from mlfastsim.showers.io.native import ShowerData, write_native
from mlfastsim.showers.io.stream import block_rows, plan_conversion, run_conversion

MESH = CylindricalMesh(n_r=3, n_phi=4, n_z=5, size_r=4.0, size_z=3.0)


def _data(seed: int, n: int, *, angles: bool = True) -> ShowerData:
    rng = np.random.default_rng(seed)
    showers = rng.gamma(0.5, 1.0, (n, MESH.n_voxels)).astype(np.float32)
    showers[showers < 0.3] = 0.0
    return ShowerData(energies=rng.choice([1e3, 1e4, 5e4], n), showers=showers, mesh=MESH,
                      angles=rng.choice([50.0, 70.0, 90.0], n) if angles else None,
                      meta={"detector": {"name": "Toy"}, "seed": seed})


def _inputs(tmp: Path, fmt: str) -> list[Path]:
    if fmt == "native":
        write_native(_data(1, 40), tmp / "a.h5")
        write_native(_data(2, 25), tmp / "b.h5")
        return [tmp / "a.h5", tmp / "b.h5"]
    if fmt == "calochallenge":
        formats.write_calochallenge(_data(3, 30, angles=False), tmp / "cc.h5")
        return [tmp / "cc.h5"]
    if fmt == "par04":
        formats.write_par04(_data(4, 50), tmp / "p1")
        formats.write_par04(_data(5, 20), tmp / "p2", name="Other")
        return sorted((tmp / "p2").glob("*.h5")) + sorted((tmp / "p1").glob("*.h5"))  # not in angle order
    from mlfastsim.showers.examples import showers_to_hits

    return [showers_to_hits(_data(6, 12), tmp / "h1.h5"), showers_to_hits(_data(7, 9), tmp / "h2.h5")]


def _content(paths: list[Path]) -> dict[str, object]:
    out: dict[str, object] = {}
    for i, p in enumerate(paths):
        with h5py.File(p) as f:
            for key, ds in f.items():
                out[f"{i}/{key}"] = (ds.dtype.str, ds.chunks, ds.compression, ds[()].tobytes())
            for key, value in f.attrs.items():
                if key != "mlfastsim_job":
                    out[f"{i}@{key}"] = json.loads(value) if key == "meta" else np.asarray(value).tobytes()
    return out


@pytest.mark.parametrize("source", ["native", "calochallenge", "par04", "hits"])
@pytest.mark.parametrize("target", ["native", "calochallenge", "par04"])
def test_stream_equals_in_memory(tmp_path: Path, source: str, target: str, monkeypatch) -> None:
    import mlfastsim.showers.io.stream as stream

    monkeypatch.setattr(stream, "BLOCK_BYTES", 7 * 4 * MESH.n_voxels)  # odd blocks: 256 rows minimum...
    monkeypatch.setattr(stream, "block_rows", lambda n_voxels: 7)  # ...so force 7 rows a block
    inputs = _inputs(tmp_path, source)
    options = {"mesh": MESH} if source in ("hits", "calochallenge") else {}
    if source == "hits":
        options["chunk_hits"] = 50  # blocks split by hits too
    data = formats.convert(source, inputs, **options)
    suffix = "" if target == "par04" else ".h5"
    ref = tmp_path / f"ref{suffix}"
    formats.write(target, data, ref)
    out = tmp_path / f"out{suffix}"
    plan = plan_conversion(source, inputs, **options)
    cache = TaskCache(cache_dir_for(out), "fp")
    written = run_conversion(plan, target, out, job="fp", cache=cache)
    cache.clear()
    assert len(written) == len(data)
    refs = sorted(ref.glob("*.h5")) if target == "par04" else [ref]
    if target == "par04":
        assert sorted(p.name for p in written.paths) == sorted(p.name for p in refs)
    assert _content(sorted(written.paths)) == _content(refs)
    assert is_done(out, "fp") and not is_done(out, "other")


def test_block_rows_follow_the_mesh() -> None:
    assert block_rows(6480) % 256 == 0 and block_rows(40500) == 256


def test_a_nan_deep_in_the_input_publishes_nothing(tmp_path: Path) -> None:
    data = _data(8, 40)
    data.showers[33, 2] = np.nan
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:  # write_native would refuse it
        f.create_dataset("incident_energies", data=data.energies.reshape(-1, 1))
        f.create_dataset("showers", data=data.showers)
        f.attrs["geometry"] = json.dumps(MESH.to_dict())
    plan = plan_conversion("native", [path])
    for target in ("native", "par04"):
        out = tmp_path / ("o.h5" if target == "native" else "o")
        cache = TaskCache(cache_dir_for(out), "fp")
        with pytest.raises(DataError, match="row 33"):
            run_conversion(plan, target, out, job="fp", cache=cache)
        cache.clear()
        assert not out.exists() or not any(out.iterdir())
        assert not list(tmp_path.rglob("*.tmp"))
