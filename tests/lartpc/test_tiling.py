"""Tiling physics (real points always tiled, ghosts from shared ticks, charge sharing) and xy batches."""

from __future__ import annotations

from pathlib import Path

import h5py
import numba
import numpy as np
import pytest

from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.lartpc.geometry import TPCGeometry
from mlfastsim.lartpc.simulate import project, readout, simulate_event, voxelise, write_parsed
from mlfastsim.lartpc.tiling import (
    MakeBatchesConfig,
    TileIndex,
    downsample,
    join_tpcs,
    process_xy,
    read_parsed,
    read_xy,
    tile,
    truth_on_tiles,
)
from tests.lartpc.conftest import TINY, tiny_sim_config


def tile_points(coords: np.ndarray, charge: np.ndarray, g: TPCGeometry = TINY):
    waves = project(coords, charge.astype(np.float32), g)
    t = tile([w.astype(np.float32) for w in waves], TileIndex(g))
    q, lost, _ = truth_on_tiles(t, coords, charge.astype(np.float32), g)
    return t, q, lost, waves


def brute_force(waves: list[np.ndarray], g: TPCGeometry) -> set[tuple[int, int, int]]:
    """Every (tick, y, z) where all three wires under the voxel carry charge: the definition, in numpy."""
    fired = np.ones((g.n_y, g.n_z, g.n_ticks), bool)
    for p in range(3):
        fired &= waves[p][g.voxel_wires[p]] > 0
    iy, iz, t = np.nonzero(fired)
    return set(zip(t.tolist(), iy.tolist(), iz.tolist(), strict=True))


def as_set(c: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(x) for x in c.tolist()}


def test_single_point_gives_exactly_one_real_voxel() -> None:
    pt = np.array([[5, 7, 9]], np.int32)
    t, q, lost, waves = tile_points(pt, np.array([1.0]))
    assert lost == 0
    assert (q > 0).sum() == 1 and tuple(t.coords[q > 0][0]) == (5, 7, 9)
    # the other tiled voxels sit under the very same three wires (the strips' overlap), nowhere else
    wires = TINY.voxel_wires[:, 7, 9]
    assert np.all(t.wire_id == wires)
    assert as_set(t.coords) == brute_force(waves, TINY)
    assert np.all(t.coords[:, 0] == 5)


def test_two_points_on_one_tick_make_the_expected_ghosts() -> None:
    a, b = (4, 2, 3), (4, 12, 13)
    t, q, _, _ = tile_points(np.array([a, b], np.int32), np.array([1.0, 2.0]))
    wa, wb = TINY.voxel_wires[:, a[1], a[2]], TINY.voxel_wires[:, b[1], b[2]]
    vw = TINY.voxel_wires
    expected = np.ones((TINY.n_y, TINY.n_z), bool)
    for p in range(3):
        expected &= (vw[p] == wa[p]) | (vw[p] == wb[p])
    iy, iz = np.nonzero(expected)
    assert as_set(t.coords) == {(4, y, z) for y, z in zip(iy.tolist(), iz.tolist(), strict=True)}
    # some crossings mix the wires of both points: those are the ghosts, with no true charge
    mixed = np.any(t.wire_id != wa, axis=1) & np.any(t.wire_id != wb, axis=1)
    assert mixed.any() and np.all(q[mixed] == 0)
    assert (q > 0).sum() == 2
    # the same two points on different ticks: no crossing mixes them
    t2, _, _, _ = tile_points(np.array([a, (9, b[1], b[2])], np.int32), np.array([1.0, 2.0]))
    assert not (np.any(t2.wire_id != wa, axis=1) & np.any(t2.wire_id != wb, axis=1)).any()


def test_every_true_voxel_is_tiled_and_kernel_matches_definition() -> None:
    cfg = tiny_sim_config(Path("unused"))
    for event_id in range(4):
        coords, charge = voxelise(simulate_event(cfg, event_id), TINY, 0)
        waves = readout(project(coords, charge, TINY), noise=0.0, threshold=0.0, rng=np.random.default_rng(0))
        t = tile(waves, TileIndex(TINY))
        q, lost, _ = truth_on_tiles(t, coords, charge, TINY)
        assert lost == 0
        assert as_set(t.coords) == brute_force(waves, TINY)
        np.testing.assert_allclose(np.sort(q[q > 0]), np.sort(charge[charge > 0]), rtol=1e-6)


def test_charge_is_conserved_per_wire_and_tick() -> None:
    cfg = tiny_sim_config(Path("unused"))
    coords, charge = voxelise(simulate_event(cfg, 1), TINY, 0)
    assert len(coords) > 10
    waves = readout(project(coords, charge, TINY), noise=0.0, threshold=0.0, rng=np.random.default_rng(0))
    t = tile(waves, TileIndex(TINY))
    for p in range(3):
        key = t.wire_id[:, p].astype(np.int64) * TINY.n_ticks + t.coords[:, 0]
        uniq, inv = np.unique(key, return_inverse=True)
        shared_sum = np.bincount(inv, weights=t.shared_charge[:, p])
        wire_charge = waves[p].ravel()[uniq]
        np.testing.assert_allclose(shared_sum, wire_charge, rtol=1e-5)
        np.testing.assert_allclose(t.wire_charge[:, p], waves[p].ravel()[key], rtol=0)


def test_threads_do_not_change_the_result() -> None:
    cfg = tiny_sim_config(Path("unused"))
    coords, charge = voxelise(simulate_event(cfg, 2), TINY, 0)
    waves = project(coords, charge, TINY)
    waves = [w.astype(np.float32) for w in waves]
    numba.set_num_threads(1)
    one = tile(waves, TileIndex(TINY))
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    two = tile(waves, TileIndex(TINY))
    numba.set_num_threads(1)
    np.testing.assert_array_equal(one.coords, two.coords)
    np.testing.assert_array_equal(one.shared_charge, two.shared_charge)


def test_downsample_conserves_charge() -> None:
    rng = np.random.default_rng(0)
    c = np.unique(rng.integers(0, 16, (200, 3)), axis=0).astype(np.int32)
    f = rng.uniform(0, 1, (len(c), 2)).astype(np.float32)
    q = rng.uniform(0, 1, len(c)).astype(np.float32)
    c2, f2, q2 = downsample(c, f, q, (4, 2, 2), ["sum", "max"])
    np.testing.assert_allclose(f2[:, 0].sum(), f[:, 0].sum(), rtol=1e-5)
    np.testing.assert_allclose(q2.sum(), q.sum(), rtol=1e-5)
    assert f2[:, 1].max() == f[:, 1].max()
    assert as_set(c2) == as_set(c // np.array([4, 2, 2]))


def test_make_batches_skips_finished_batches_and_resumes(parsed_dir: Path, tmp_path: Path) -> None:
    cfg = MakeBatchesConfig(input_dir=parsed_dir, output_dir=tmp_path / "xy", tpc=1, batch_size=4,
                            downsample=(2, 2, 2), save_pix=True)
    first = process_xy(cfg, progress=False)
    assert first.batches_written == 2 and first.events + first.empty_events == 8
    assert 0.0 < first.ghost_fraction < 1.0
    again = process_xy(cfg, progress=False)
    assert again.batches_written == 0 and again.batches_skipped == 2
    # an interrupted run left batch 1 unwritten: only that batch is redone, identically
    out1 = tmp_path / "xy" / "xy_tpc01_00001.h5"
    before = read_xy(out1)
    out1.unlink()
    resumed = process_xy(cfg, progress=False)
    assert resumed.batches_written == 1 and resumed.batches_skipped == 1
    after = read_xy(out1)
    np.testing.assert_array_equal(before.coords, after.coords)
    np.testing.assert_array_equal(before.feats, after.feats)
    assert after.attrs["downsample"] == [2, 2, 2]
    assert (tmp_path / "xy" / "pix_tpc01_00000.h5").exists()
    with pytest.raises(ConfigError, match="other settings"):
        process_xy(cfg.model_copy(update={"downsample": (1, 1, 1)}), progress=False)


def test_empty_events_are_skipped_with_a_count(tmp_path: Path) -> None:
    d = tmp_path / "parsed"
    d.mkdir()
    zero = [np.zeros((TINY.n_wires(p), TINY.n_ticks), np.float32) for p in range(3)]
    coords = np.array([[3, 4, 5]], np.int32)
    full = [w.astype(np.float32) for w in project(coords, np.array([1.0], np.float32), TINY)]
    write_parsed(d / "event_000000_tpc01.h5", zero, np.zeros((0, 3), np.int32), np.zeros(0, np.float32), TINY,
                 event_id=0, tpc_id=1, tpc_index=0, threshold=0.0)
    write_parsed(d / "event_000001_tpc01.h5", full, coords, np.array([1.0], np.float32), TINY,
                 event_id=1, tpc_id=1, tpc_index=0, threshold=0.0)
    s = process_xy(MakeBatchesConfig(input_dir=d, output_dir=tmp_path / "xy", tpc=1), progress=False)
    assert s.empty_events == 1 and s.events == 1
    assert read_xy(tmp_path / "xy" / "xy_tpc01_00000.h5").event_ids.tolist() == [1]


def test_join_tpcs_shifts_each_tpc_by_its_origin(parsed_dir: Path, tmp_path: Path) -> None:
    xy = tmp_path / "xy"
    for tpc in (1, 5):
        process_xy(MakeBatchesConfig(input_dir=parsed_dir, output_dir=xy, tpc=tpc, batch_size=3), progress=False)
    outs = join_tpcs(xy, [1, 5], progress=False)
    joined = {e.event_id: e for p in outs for e in read_xy(p).events()}
    singles = {t: {e.event_id: e for p in sorted(xy.glob(f"xy_tpc{t:02d}_*.h5")) for e in read_xy(p).events()}
               for t in (1, 5)}
    assert read_xy(outs[0]).attrs["grid_shape"] == [TINY.n_ticks, TINY.n_y, 2 * TINY.n_z]
    for eid, ev in joined.items():
        parts = [singles[1].get(eid), singles[5].get(eid)]
        n = sum(len(p.coords) for p in parts if p is not None)
        assert len(ev.coords) == n
        if parts[1] is not None:
            shifted = parts[1].coords + np.array([0, 0, TINY.n_z])
            assert as_set(shifted) <= as_set(ev.coords)
    with pytest.raises(InputFileError, match="TPC 9"):
        join_tpcs(xy, [1, 9], progress=False)


def _corrupt(src: Path, dst: Path, edit) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


@pytest.mark.parametrize("edit, exc, needle", [
    (lambda f: f.__delitem__("X/plane_1"), InputFileError, "plane 1 is missing"),
    (lambda f: (f.__delitem__("X/plane_0"), f.create_dataset("X/plane_0", data=np.zeros((3, 32), np.float32))),
     DataError, "wires"),
    (lambda f: f["X/plane_2"].__setitem__((0, 0), np.nan), DataError, "NaN"),
    (lambda f: f["X/plane_2"].__setitem__((0, 0), -1.0), DataError, "negative"),
])
def test_bad_parsed_files(parsed_dir: Path, tmp_path: Path, edit, exc, needle) -> None:
    bad = _corrupt(next(parsed_dir.glob("*.h5")), tmp_path / "bad.h5", edit)
    with pytest.raises(exc, match=needle) as info:
        read_parsed(bad)
    assert str(bad) in str(info.value)
