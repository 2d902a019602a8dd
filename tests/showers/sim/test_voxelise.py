"""Hits -> mesh: frame conventions, binning, conservation, the numba kernel against numpy, bad inputs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from mlfastsim.core.errors import DataError, InputFileError
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.io.formats import convert
from mlfastsim.showers.sim.voxelise import (
    Voxelised,
    event_offsets_from_counts,
    incidence_angles,
    mesh_frames,
    read_hits,
    voxelise,
    write_hits,
)

MESH = CylindricalMesh(n_r=5, n_phi=8, n_z=6, size_r=2.0, size_z=3.0, name="t")
# non-uniform radial edges, as a CaloChallenge XML allows
UNEVEN = CylindricalMesh(n_r=4, n_phi=6, n_z=7, size_r=1.0, size_z=2.5, r_edges_mm=(0.0, 1.0, 2.5, 5.0, 9.0))
Z = np.array([0.0, 0.0, 1.0])


def voxel(mesh: CylindricalMesh, iz: int, ip: int, ir: int) -> int:
    return (iz * mesh.n_phi + ip) * mesh.n_r + ir


def tilted(alpha_deg: float) -> np.ndarray:
    """Direction tilted by alpha from the +z normal towards +x: incidence angle 90 - alpha."""
    a = math.radians(alpha_deg)
    return np.array([math.sin(a), 0.0, math.cos(a)])


def one_event(points: np.ndarray, direction: np.ndarray, mesh: CylindricalMesh = MESH) -> Voxelised:
    """Voxelise one event entering at the origin, every hit with 1 MeV."""
    pts = np.atleast_2d(points)
    return voxelise(
        pts[:, 0], pts[:, 1], pts[:, 2], np.ones(len(pts)), np.array([0, len(pts)]),
        np.zeros((1, 3)), direction[None, :], mesh,
    )


# ------------------------------------------------------------------------------------------- frames
def test_frames_are_orthonormal_right_handed_and_phi0_goes_deeper() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(200, 3))
    d[:, 2] = np.abs(d[:, 2]) + 0.05
    f = mesh_frames(d)
    assert np.allclose(np.einsum("nij,nkj->nik", f, f), np.eye(3), atol=1e-12)
    assert np.allclose(np.cross(f[:, 0], f[:, 1]), f[:, 2], atol=1e-12)
    assert np.all(f[:, 0] @ Z > 0)  # x' points deeper into the detector


def test_frame_matches_the_geometry_depth_formula() -> None:
    # geometry.py: a mesh point (r, phi, z) sits at depth z sin(theta) + r cos(phi) cos(theta)
    d = tilted(35.0)
    theta = math.radians(float(incidence_angles(d[None])[0]))
    f = mesh_frames(d[None])[0]
    for r, phi, z in [(3.0, 0.4, 7.0), (10.0, 2.5, 1.0), (5.0, 5.9, 20.0)]:
        p = z * f[2] + r * (math.cos(phi) * f[0] + math.sin(phi) * f[1])
        assert p @ Z == pytest.approx(z * math.sin(theta) + r * math.cos(phi) * math.cos(theta))


def test_head_on_frames_use_the_detector_axes() -> None:
    f = mesh_frames(np.array([[0.0, 0.0, 2.0]]))[0]
    assert np.allclose(f, np.eye(3))
    # a face normal along x, particle along x: detector x is the axis, so x' falls back to y
    g = mesh_frames(np.array([[1.0, 0.0, 0.0]]), normal=(1.0, 0.0, 0.0))[0]
    assert np.allclose(g[0], [0, 1, 0]) and np.allclose(g[2], [1, 0, 0])


# ------------------------------------------------------------------------------------------ binning
def test_hits_on_axis_land_in_r_bin_0_of_their_z_bin() -> None:
    depths = MESH.z_centres
    for direction in (Z, tilted(40.0)):
        res = one_event(depths[:, None] * direction[None, :], direction)
        grid = MESH.to_grid(res.showers)[0]
        for iz in range(MESH.n_z):
            assert grid[iz, :, 0].sum() == 1.0
        assert grid[:, :, 1:].sum() == 0.0
        assert res.hits_outside[0] == 0


def test_inclined_hits_at_known_r_phi_land_in_the_right_bins() -> None:
    alpha = math.radians(30.0)
    d = tilted(30.0)
    x_prime = np.array([-math.cos(alpha), 0.0, math.sin(alpha)])  # in the x-z plane, pointing deeper
    y_prime = np.array([0.0, -1.0, 0.0])  # d x x'
    entry = np.array([[5.0, -3.0, 0.0]])
    cases = []
    for iz in (0, 2, 5):
        for ip in range(UNEVEN.n_phi):
            for ir in range(UNEVEN.n_r):
                cases.append((iz, ip, ir))
    pts = []
    for iz, ip, ir in cases:
        r, phi, z = UNEVEN.r_centres[ir], UNEVEN.phi_centres[ip], UNEVEN.z_centres[iz]
        pts.append(entry[0] + z * d + r * (math.cos(phi) * x_prime + math.sin(phi) * y_prime))
    pts_arr = np.array(pts)
    offsets = np.arange(len(cases) + 1)
    res = voxelise(
        pts_arr[:, 0], pts_arr[:, 1], pts_arr[:, 2], np.ones(len(cases)), offsets,
        np.repeat(entry, len(cases), axis=0), np.repeat(d[None], len(cases), axis=0), UNEVEN,
    )
    for row, (iz, ip, ir) in enumerate(cases):
        assert np.flatnonzero(res.showers[row]).tolist() == [voxel(UNEVEN, iz, ip, ir)], (iz, ip, ir)


def test_phi_zero_is_the_deeper_side() -> None:
    d = tilted(45.0)
    deeper = 5.0 * d + 3.0 * np.array([-1.0, 0.0, 1.0]) / math.sqrt(2)  # towards +z, perpendicular to d
    shallower = 5.0 * d - 3.0 * np.array([-1.0, 0.0, 1.0]) / math.sqrt(2)
    res = one_event(np.array([deeper, shallower]), d)
    grid = MESH.to_grid(res.showers)[0]
    assert grid[1, 0, 1] == 1.0  # phi bin 0
    assert grid[1, MESH.n_phi // 2, 1] == 1.0  # phi = pi


def test_bins_include_their_lower_edge() -> None:
    # head-on through the origin: rho is exactly |x|, z' exactly z, so edges are hit exactly
    edges = UNEVEN.r_edges
    pts = np.array([[edges[1], 0.0, 0.0], [edges[2], 0.0, 2.5], [edges[3], 0.0, 5.0], [0.0, 0.0, 2.5]])
    res = one_event(pts, Z, UNEVEN)
    grid = UNEVEN.to_grid(res.showers)[0]
    assert grid[0, 0, 1] == grid[1, 0, 2] == grid[2, 0, 3] == grid[1, 0, 0] == 1.0
    assert res.hits_outside[0] == 0


def test_out_of_mesh_hits_are_dropped_and_counted() -> None:
    pts = np.array([
        [0.0, 0.0, -0.5],  # behind the face
        [0.0, 0.0, MESH.length + 0.1],  # beyond the last layer
        [MESH.radius + 0.01, 0.0, 4.0],  # outside the radius
        [MESH.radius - 0.01, 0.0, 4.0],  # just inside
        [0.0, 0.0, 0.0],  # on the face, on the axis: inside
    ])
    energies = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    res = voxelise(pts[:, 0], pts[:, 1], pts[:, 2], energies, [0, 5], np.zeros((1, 3)), Z[None], MESH)
    assert res.hits_outside.tolist() == [3]
    assert res.energy_outside.tolist() == [7.0]
    assert res.showers.sum() == 24.0


def random_events(n_events: int, seed: int, mesh: CylindricalMesh) -> dict[str, np.ndarray]:
    """Shower-like hits around random axes, ~15 % of them outside the mesh."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 400, n_events)
    counts[3] = 0  # an empty event
    offsets = event_offsets_from_counts(counts)
    h = int(offsets[-1])
    alpha = np.radians(rng.uniform(0, 50, n_events))
    az = rng.uniform(0, 2 * np.pi, n_events)
    directions = np.stack([np.sin(alpha) * np.cos(az), np.sin(alpha) * np.sin(az), np.cos(alpha)], axis=1)
    directions[5] = Z  # head-on
    entry = np.zeros((n_events, 3))
    entry[:, :2] = rng.uniform(-50, 50, (n_events, 2))
    ev = np.repeat(np.arange(n_events), counts)
    f = mesh_frames(directions)[ev]
    zp = rng.uniform(-0.1, 1.1, h) * mesh.length
    rho = rng.exponential(0.4, h) * mesh.radius
    phi = rng.uniform(0, 2 * np.pi, h)
    pts = (
        entry[ev]
        + zp[:, None] * f[:, 2]
        + (rho * np.cos(phi))[:, None] * f[:, 0]
        + (rho * np.sin(phi))[:, None] * f[:, 1]
    ).astype(np.float32)
    return {
        "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
        "energy": rng.exponential(0.5, h).astype(np.float32),
        "event_offsets": offsets,
        "incident_energies": rng.uniform(1e3, 1e5, n_events).astype(np.float32),
        "entry_points": entry.astype(np.float32),
        "directions": directions.astype(np.float32),
    }


def run(ev: dict[str, np.ndarray], mesh: CylindricalMesh) -> Voxelised:
    """The kernel on an event dict from :func:`random_events`."""
    cols = [ev[k] for k in ("x", "y", "z", "energy", "event_offsets", "entry_points", "directions")]
    return voxelise(*cols, mesh)


def reference_voxelise(ev: dict[str, np.ndarray], mesh: CylindricalMesh) -> tuple[np.ndarray, np.ndarray]:
    """Slow, obvious numpy version of the kernel (same float64 arithmetic, same float32 accumulation)."""
    offsets = ev["event_offsets"]
    n = offsets.size - 1
    event = np.repeat(np.arange(n), np.diff(offsets))
    origin = ev["entry_points"].astype(np.float64)[event]
    f = mesh_frames(ev["directions"])[event]
    v = [ev[k].astype(np.float64) - origin[:, i] for i, k in enumerate("xyz")]
    zp = v[0] * f[:, 2, 0] + v[1] * f[:, 2, 1] + v[2] * f[:, 2, 2]
    a = v[0] * f[:, 0, 0] + v[1] * f[:, 0, 1] + v[2] * f[:, 0, 2]
    b = v[0] * f[:, 1, 0] + v[1] * f[:, 1, 1] + v[2] * f[:, 1, 2]
    q = zp / mesh.size_z
    rho = np.sqrt(a * a + b * b)
    inside = (q >= 0) & (q < mesh.n_z) & (rho < mesh.radius)
    phi = np.arctan2(b, a)
    phi = np.where(phi < 0, phi + 2 * math.pi, phi)
    ip = np.minimum((phi * (mesh.n_phi / (2 * math.pi))).astype(np.int64), mesh.n_phi - 1)
    ir = np.searchsorted(mesh.r_edges, rho, side="right") - 1
    iz = np.where(inside, q, 0).astype(np.int64)
    out = np.zeros((n, mesh.n_voxels), dtype=np.float32)
    np.add.at(out, (event[inside], ((iz * mesh.n_phi + ip) * mesh.n_r + ir)[inside]), ev["energy"][inside])
    outside = np.bincount(event[~inside], minlength=n)
    return out, outside


@pytest.mark.parametrize("mesh", [MESH, UNEVEN], ids=["uniform", "uneven"])
def test_kernel_is_identical_to_the_numpy_reference(mesh: CylindricalMesh) -> None:
    ev = random_events(60, seed=7, mesh=mesh)
    res = run(ev, mesh)
    ref, outside = reference_voxelise(ev, mesh)
    assert np.array_equal(res.showers, ref)
    assert np.array_equal(res.hits_outside, outside)
    assert 0.05 < outside.sum() / ev["x"].size < 0.4  # the test covers both branches


def test_energy_is_conserved_for_hits_inside_the_mesh() -> None:
    ev = random_events(40, seed=11, mesh=MESH)
    res = run(ev, MESH)
    per_event = np.add.reduceat(ev["energy"].astype(np.float64), ev["event_offsets"][:-1])
    per_event[np.diff(ev["event_offsets"]) == 0] = 0.0
    inside = res.showers.sum(axis=1, dtype=np.float64)
    assert np.allclose(inside + res.energy_outside, per_event, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- hits files
def test_read_hits_matches_in_memory_and_chunking_changes_nothing(tmp_path: Path) -> None:
    ev = random_events(30, seed=3, mesh=UNEVEN)
    path = write_hits(tmp_path / "hits.h5", **ev)
    whole = read_hits([path], UNEVEN)
    chunked = read_hits([path], UNEVEN, chunk_hits=17)
    direct = run(ev, UNEVEN)
    assert np.array_equal(whole.showers, direct.showers)
    assert np.array_equal(chunked.showers, direct.showers)
    assert np.array_equal(whole.energies, ev["incident_energies"])
    summary = whole.meta["voxelisation"]
    assert summary["hits_total"] == ev["x"].size
    assert summary["hits_outside_mesh"] == int(direct.hits_outside.sum())
    assert summary["hits_outside_fraction"] == pytest.approx(direct.hits_outside.sum() / ev["x"].size)
    assert 0 < summary["energy_outside_fraction"] < 1
    assert whole.angles is not None
    assert np.allclose(whole.angles, incidence_angles(ev["directions"]), atol=1e-4)


def test_convert_hits_concatenates_files_and_sums_counts(tmp_path: Path) -> None:
    a, b = random_events(10, seed=1, mesh=MESH), random_events(12, seed=2, mesh=MESH)
    pa = write_hits(tmp_path / "a.h5", **a, incident_angles=np.full(10, 77.0))
    pb = write_hits(tmp_path / "b.h5", **b, incident_angles=np.full(12, 66.0))
    data = convert("hits", [pa, pb], mesh=MESH)
    assert len(data) == 22
    assert data.angles is not None and data.angles[0] == 77.0 and data.angles[-1] == 66.0
    assert data.meta["voxelisation"]["hits_total"] == a["x"].size + b["x"].size
    assert data.meta["front_face_normal"] == [0.0, 0.0, 1.0]


def test_angle_defaults_from_direction_and_normal(tmp_path: Path) -> None:
    ev = {
        "x": [0.0], "y": [0.0], "z": [1.0], "energy": [1.0], "event_offsets": [0, 1],
        "incident_energies": [1000.0], "entry_points": [[0.0, 0.0, 0.0]], "directions": [tilted(30.0)],
    }
    data = read_hits([write_hits(tmp_path / "h.h5", **ev)], MESH)  # type: ignore[arg-type]
    assert data.angles is not None and data.angles[0] == pytest.approx(60.0, abs=1e-4)


def _corrupt(path: Path, edit: Any) -> Path:
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(key: str, value: Any) -> Any:
    def edit(f: h5py.File) -> None:
        del f[key]
        f.create_dataset(key, data=value)

    return edit


@pytest.mark.parametrize(
    ("edit", "error", "field"),
    [
        (lambda f: f.__delitem__("hits/energy"), InputFileError, "hits/energy"),
        (lambda f: f.__delitem__("hits"), InputFileError, "hits"),
        (lambda f: f.__delitem__("directions"), InputFileError, "directions"),
        (_replace("incident_energies", np.ones((9, 1), np.float32)), DataError, "incident_energies"),
        (_replace("entry_points", np.zeros((8, 3), np.float32)), DataError, "entry_points"),
        (_replace("hits/y", np.zeros(3, np.float32)), DataError, "hits/energy"),
        (_replace("hits/event_offsets", np.arange(11.0)), InputFileError, "hits/event_offsets"),
        (_replace("hits/event_offsets", np.array([0, 5, 3, 6, 7, 8, 9, 9, 9, 9, 10])), DataError,
         "hits/event_offsets"),
        (_replace("hits/event_offsets", np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11])), DataError,
         "hits/event_offsets"),
        (_replace("hits/x", np.array([0, 0, 0, np.nan, 0, 0, 0, 0, 0, 0], np.float32)), DataError, "hits/x"),
        (_replace("hits/energy", -np.ones(10, np.float32)), DataError, "hits/energy"),
        (_replace("directions", np.tile([0.0, 0.0, -1.0], (10, 1))), DataError, "directions"),
        (_replace("directions", np.full((10, 3), np.nan)), DataError, "directions"),
        (_replace("incident_energies", np.zeros((10, 1), np.float32)), DataError, "incident_energies"),
        (lambda f: f.attrs.__setitem__("front_face_normal", [0.0, 0.0, 0.0]), DataError, "front_face_normal"),
    ],
)
def test_bad_hits_files_name_file_and_field(tmp_path: Path, edit: Any, error: type, field: str) -> None:
    n = 10
    ev = {
        "x": np.zeros(n), "y": np.zeros(n), "z": np.linspace(0, 10, n), "energy": np.ones(n),
        "event_offsets": np.arange(n + 1), "incident_energies": np.full(n, 1e4),
        "entry_points": np.zeros((n, 3)), "directions": np.tile(Z, (n, 1)),
    }
    path = _corrupt(write_hits(tmp_path / "bad.h5", **ev), edit)
    with pytest.raises(error) as err:
        read_hits([path], MESH)
    assert err.value.file == str(path)
    assert err.value.field == field


def test_write_hits_checks_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        write_hits(
            tmp_path / "h.h5", x=[0.0], y=[0.0], z=[0.0], energy=[1.0], event_offsets=[0, 2],  # type: ignore[arg-type]
            incident_energies=[1.0], entry_points=[[0, 0, 0]], directions=[[0, 0, 1]],  # type: ignore[arg-type]
        )
    assert not (tmp_path / "h.h5").exists()


def test_hits_land_in_the_right_cells_of_a_cartesian_grid() -> None:
    """Head-on along +z: x' = x, y' = y; the axis runs through the centre of cell (axis_x, axis_y)."""
    from mlfastsim.showers.geometry import CartesianGrid

    grid = CartesianGrid(n_x=5, n_y=4, n_z=3, cell_x=10.0, cell_y=20.0, cell_z=30.0, axis_x=2, axis_y=1)
    points = np.array([[0.0, 0.0, 5.0],       # axis, layer 0 -> (0, 1, 2)
                       [4.9, -9.9, 35.0],     # still the axis cell in x and y, layer 1
                       [5.1, 10.1, 65.0],     # one cell up in x and y, layer 2 -> (2, 2, 3)
                       [-25.1, 0.0, 5.0],     # left of the grid: dropped
                       [0.0, 0.0, 95.0]])     # behind the last layer: dropped
    res = one_event(points, Z, grid)
    cells = grid.to_grid(res.showers)[0]
    assert cells[0, 1, 2] == 1.0 and cells[1, 1, 2] == 1.0 and cells[2, 2, 3] == 1.0
    assert cells.sum() == 3.0 and res.hits_outside[0] == 2 and res.energy_outside[0] == 2.0
