"""Hits -> mesh: score hit-level energy deposits into a :class:`CylindricalMesh` around each particle axis
(or a :class:`CartesianGrid` whose axis cell the particle enters: the hadron workflow's 48 x 48 x 48 arrays).

Full simulation (Geant4, or any other) writes energy deposits at points in the *detector* frame; the
models learn showers in the *mesh* frame, whose axis is the incident particle.  This module moves each
hit into the mesh frame of its event and bins it, with a numba kernel parallel over events (every
event owns one output row, so there are no races and the result does not depend on the thread count).

Hits file layout (HDF5; :func:`write_hits` writes it, :func:`read_hits` reads it)::

    hits/x, hits/y, hits/z   (H,)    float32  mm, detector frame, all events back to back
    hits/energy              (H,)    float32  MeV (>= 0)
    hits/event_offsets       (N+1,)  int64    hits of event i are [offsets[i], offsets[i+1]);
                                              offsets[0] == 0, non-decreasing, offsets[N] == H
    incident_energies        (N, 1)  float32  MeV (> 0)
    entry_points             (N, 3)  float32  mm, where the particle enters the front face
    directions               (N, 3)  float32  particle directions (normalised on reading)
    incident_angles          (N, 1)  float32  degrees  [optional; else asin(d . n)]
    attrs["front_face_normal"]  (3,)  float   unit normal of the front face pointing *into* the
                                              detector  [optional; default (0, 0, 1)]

Mesh frame of an event (as documented in :mod:`mlfastsim.showers.geometry`): origin at the entry point,
z' along the direction d, x' = normalise(n - (n.d) d) the in-plane unit vector that goes deeper into the
detector (phi = 0), y' = d x x' (so (x', y', d) is right-handed and phi grows from x' towards y').  At
normal incidence x' is undefined; the detector x axis projected onto the plane normal to d is used
(the y axis if d is along x), so a +z face seen head-on gives x' = x, y' = y.  A hit at
v = hit - entry has z' = v.d, rho = |v - z' d| and phi = atan2(v.y', v.x') in [0, 2 pi).

Bins: z bin = floor(z' / size_z), phi bin = floor(phi n_phi / 2 pi), r bin by binary search in
``mesh.r_edges`` (non-uniform edges allowed).  On a Cartesian grid: z bin as above with the layer pitch,
x bin = floor(x' / cell_x + axis_x + 1/2), likewise y, so the particle axis runs through the centre of
cell (axis_x, axis_y) and cells keep the detector's orientation at normal incidence.  Hits with z' < 0,
z' >= n_z size_z, rho >= r_max (or outside the grid's cells) are dropped and counted; the totals go to
``ShowerData.meta["voxelisation"]``.  Energies are accumulated in float32 in hit order, which makes the
result bit-reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numba
import numpy as np

import mlfastsim.core.numba_setup  # noqa: F401  (threading layer before the kernels)
from mlfastsim.core.errors import DataError, InputFileError
from mlfastsim.core.io import atomic_path, open_h5
from mlfastsim.showers.geometry import CartesianGrid, Mesh
from mlfastsim.showers.io.native import ShowerData, concat_showers

HIT_FIELDS = ("x", "y", "z", "energy")
DEFAULT_NORMAL = (0.0, 0.0, 1.0)
# Hits read from disk per kernel call: bounds the input memory (16 bytes a hit, ~128 MiB) while keeping
# thousands of events per call for the threads to share.
DEFAULT_CHUNK_HITS = 1 << 23
# Below this |n - (n.d) d| the particle is taken as normal to the face (x' from the detector x axis).
_PARALLEL_EPS = 1e-9


# ------------------------------------------------------------------------------------------- frames
def _unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.sqrt(np.einsum("...i,...i->...", v, v))
    return v / np.where(norm > 0, norm, 1.0)[..., None], norm


def mesh_frames(directions: np.ndarray, normal: Sequence[float] | np.ndarray = DEFAULT_NORMAL) -> np.ndarray:
    """Per-event mesh axes ``(N, 3, 3)``: rows x' (phi = 0, deeper), y' = d x x', and d, all unit vectors.

    ``directions`` (N, 3) need not be normalised; ``normal`` is the front-face normal into the detector.
    """
    d, _ = _unit(np.asarray(directions, dtype=np.float64).reshape(-1, 3))
    n, _ = _unit(np.asarray(normal, dtype=np.float64).reshape(3))
    cos_dn = d @ n
    x_prime, size = _unit(n[None, :] - cos_dn[:, None] * d)
    head_on = size < _PARALLEL_EPS
    if head_on.any():
        dh = d[head_on]
        ref = np.where(np.abs(dh[:, :1]) < 1.0 - _PARALLEL_EPS, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        x_prime[head_on], _ = _unit(ref - np.einsum("ij,ij->i", ref, dh)[:, None] * dh)
    y_prime = np.cross(d, x_prime)
    return np.ascontiguousarray(np.stack([x_prime, y_prime, d], axis=1))


def incidence_angles(
    directions: np.ndarray, normal: Sequence[float] | np.ndarray = DEFAULT_NORMAL
) -> np.ndarray:
    """Angle in degrees between each direction and the front face (90 = normal incidence)."""
    d, _ = _unit(np.asarray(directions, dtype=np.float64).reshape(-1, 3))
    n, _ = _unit(np.asarray(normal, dtype=np.float64).reshape(3))
    return np.degrees(np.arcsin(np.clip(d @ n, -1.0, 1.0)))


# ------------------------------------------------------------------------------------------- kernel
@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_hits(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    e: np.ndarray,
    offsets: np.ndarray,
    origins: np.ndarray,
    frames: np.ndarray,
    r_edges: np.ndarray,
    n_phi: int,
    n_z: int,
    size_z: float,
    out: np.ndarray,
    n_outside: np.ndarray,
    e_outside: np.ndarray,
) -> None:  # pragma: no cover - compiled; checked against a numpy reference in the tests
    n_events = offsets.shape[0] - 1
    n_r = r_edges.shape[0] - 1
    r_max = r_edges[n_r]
    two_pi = 2.0 * math.pi
    inv_dphi = n_phi / two_pi
    for i in numba.prange(n_events):
        ox = origins[i, 0]
        oy = origins[i, 1]
        oz = origins[i, 2]
        ux = frames[i, 0, 0]
        uy = frames[i, 0, 1]
        uz = frames[i, 0, 2]
        wx = frames[i, 1, 0]
        wy = frames[i, 1, 1]
        wz = frames[i, 1, 2]
        dx = frames[i, 2, 0]
        dy = frames[i, 2, 1]
        dz = frames[i, 2, 2]
        missed = 0
        lost = 0.0
        for h in range(offsets[i], offsets[i + 1]):
            vx = np.float64(x[h]) - ox
            vy = np.float64(y[h]) - oy
            vz = np.float64(z[h]) - oz
            eh = e[h]
            q = (vx * dx + vy * dy + vz * dz) / size_z
            if q < 0.0 or q >= n_z:
                missed += 1
                lost += eh
                continue
            a = vx * ux + vy * uy + vz * uz
            b = vx * wx + vy * wy + vz * wz
            rho = math.sqrt(a * a + b * b)
            if rho >= r_max:
                missed += 1
                lost += eh
                continue
            lo = 0
            hi = n_r
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if r_edges[mid] <= rho:
                    lo = mid
                else:
                    hi = mid
            phi = math.atan2(b, a)
            if phi < 0.0:
                phi += two_pi
            ip = int(phi * inv_dphi)
            if ip >= n_phi:
                ip = n_phi - 1
            out[i, (int(q) * n_phi + ip) * n_r + lo] += eh
        n_outside[i] = missed
        e_outside[i] = lost


@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_hits_cartesian(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    e: np.ndarray,
    offsets: np.ndarray,
    origins: np.ndarray,
    frames: np.ndarray,
    cells: np.ndarray,
    shape: np.ndarray,
    axis: np.ndarray,
    out: np.ndarray,
    n_outside: np.ndarray,
    e_outside: np.ndarray,
) -> None:  # pragma: no cover - compiled; checked against a numpy reference in the tests
    """The Cartesian-grid twin of :func:`_bin_hits`: cell (iz, iy, ix) in the mesh frame of each event."""
    n_events = offsets.shape[0] - 1
    n_z, n_y, n_x = shape[0], shape[1], shape[2]
    for i in numba.prange(n_events):
        missed = 0
        lost = 0.0
        for h in range(offsets[i], offsets[i + 1]):
            vx = np.float64(x[h]) - origins[i, 0]
            vy = np.float64(y[h]) - origins[i, 1]
            vz = np.float64(z[h]) - origins[i, 2]
            eh = e[h]
            q = (vx * frames[i, 2, 0] + vy * frames[i, 2, 1] + vz * frames[i, 2, 2]) / cells[2]
            a = (vx * frames[i, 0, 0] + vy * frames[i, 0, 1] + vz * frames[i, 0, 2]) / cells[0] + axis[0] + 0.5
            b = (vx * frames[i, 1, 0] + vy * frames[i, 1, 1] + vz * frames[i, 1, 2]) / cells[1] + axis[1] + 0.5
            if q < 0.0 or q >= n_z or a < 0.0 or a >= n_x or b < 0.0 or b >= n_y:
                missed += 1
                lost += eh
                continue
            out[i, (int(q) * n_y + int(b)) * n_x + int(a)] += eh
        n_outside[i] = missed
        e_outside[i] = lost


@dataclass
class Voxelised:
    """Result of :func:`voxelise`: showers (N, n_voxels) float32 MeV and what fell outside the mesh."""

    showers: np.ndarray
    hits_outside: np.ndarray  # (N,) int64
    energy_outside: np.ndarray  # (N,) float64, MeV
    hits_total: int

    def counts(self) -> dict[str, float]:
        """Additive totals (they sum over chunks and files); :func:`outside_summary` makes fractions."""
        return outside_counts(self.hits_total, self.showers.sum(axis=1, dtype=np.float64), self.hits_outside,
                              self.energy_outside)


def outside_summary(counts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Sum :meth:`Voxelised.counts` and add the fractions of hits and energy that missed the mesh.

    Reported because a mesh too small for the showers silently biases every observable downstream.
    """
    n_all = int(sum(c["hits_total"] for c in counts))
    n_out = int(sum(c["hits_outside_mesh"] for c in counts))
    e_in = sum(c["energy_inside_mev"] for c in counts)
    e_out = sum(c["energy_outside_mev"] for c in counts)
    return {
        "hits_total": n_all,
        "hits_outside_mesh": n_out,
        "hits_outside_fraction": n_out / n_all if n_all else 0.0,
        "energy_outside_mev": e_out,
        "energy_outside_fraction": e_out / (e_in + e_out) if (e_in + e_out) > 0 else 0.0,
    }


def _as_f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1)


def voxelise(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    energy: np.ndarray,
    event_offsets: np.ndarray,
    entry_points: np.ndarray,
    directions: np.ndarray,
    mesh: Mesh,
    *,
    front_face_normal: Sequence[float] | np.ndarray = DEFAULT_NORMAL,
    out: np.ndarray | None = None,
) -> Voxelised:
    """Bin in-memory hits into ``mesh`` (arrays as in the file layout; values are not validated here).

    ``out`` may be a zeroed (N, n_voxels) float32 C-contiguous array to fill in place (the file reader
    passes row slices of one big array to avoid a copy per chunk).
    """
    offsets = np.ascontiguousarray(event_offsets, dtype=np.int64).reshape(-1)
    n = offsets.size - 1
    if out is None:
        out = np.zeros((n, mesh.n_voxels), dtype=np.float32)
    n_outside = np.zeros(n, dtype=np.int64)
    e_outside = np.zeros(n, dtype=np.float64)
    origins = np.ascontiguousarray(entry_points, dtype=np.float64).reshape(n, 3)
    frames = mesh_frames(directions, front_face_normal)
    if isinstance(mesh, CartesianGrid):
        _bin_hits_cartesian(
            _as_f32(x), _as_f32(y), _as_f32(z), _as_f32(energy), offsets, origins, frames,
            np.array([mesh.cell_x, mesh.cell_y, mesh.cell_z], dtype=np.float64),
            np.array(mesh.shape, dtype=np.int64), np.array([mesh.axis_x, mesh.axis_y], dtype=np.float64),
            out, n_outside, e_outside,
        )
    else:
        _bin_hits(
            _as_f32(x), _as_f32(y), _as_f32(z), _as_f32(energy), offsets, origins, frames,
            np.ascontiguousarray(mesh.r_edges, dtype=np.float64),
            int(mesh.n_phi), int(mesh.n_z), float(mesh.size_z),
            out, n_outside, e_outside,
        )
    return Voxelised(out, n_outside, e_outside, int(offsets[-1] - offsets[0]))


# ------------------------------------------------------------------------------------------ writing
def event_offsets_from_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """``(N+1,)`` offsets from per-event hit counts."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def write_hits(
    path: str | Path,
    *,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    energy: np.ndarray,
    event_offsets: np.ndarray,
    incident_energies: np.ndarray,
    entry_points: np.ndarray,
    directions: np.ndarray,
    incident_angles: np.ndarray | None = None,
    front_face_normal: Sequence[float] | None = DEFAULT_NORMAL,
    compression: str | None = None,
) -> Path:
    """Write a hits file (layout in the module docstring) atomically.

    Only the *layout* is checked (lengths, shapes), not the values, so tests and converters can write
    files that :func:`read_hits` must then refuse.  No compression by default: hit coordinates hardly
    compress, and uncompressed contiguous datasets are the fastest to read back in chunks.
    """
    columns = (x, y, z, energy)
    hits = {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in zip(HIT_FIELDS, columns, strict=True)}
    offsets = np.asarray(event_offsets, dtype=np.int64).reshape(-1)
    n = offsets.size - 1
    lengths = {k: v.size for k, v in hits.items()}
    if len(set(lengths.values())) != 1 or offsets[-1] != hits["x"].size:
        raise DataError(
            f"hit arrays have lengths {lengths} and offsets end at {int(offsets[-1])}",
            file=path, field="hits",
            fix="give x, y, z, energy of equal length and offsets ending at that length",
        )
    per_event = {
        "incident_energies": (np.asarray(incident_energies, dtype=np.float32).reshape(-1, 1), 1),
        "entry_points": (np.asarray(entry_points, dtype=np.float32).reshape(-1, 3), 3),
        "directions": (np.asarray(directions, dtype=np.float32).reshape(-1, 3), 3),
    }
    if incident_angles is not None:
        per_event["incident_angles"] = (np.asarray(incident_angles, dtype=np.float32).reshape(-1, 1), 1)
    for key, (arr, _) in per_event.items():
        if arr.shape[0] != n:
            raise DataError(
                f"{arr.shape[0]} rows but {n} events in hits/event_offsets",
                file=path, field=key, fix="give one row per event",
            )
    kw = {"compression": compression} if compression else {}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            grp = f.create_group("hits")
            for key, arr in hits.items():
                grp.create_dataset(key, data=arr, **kw)
            grp.create_dataset("event_offsets", data=offsets)
            for key, (arr, _) in per_event.items():
                f.create_dataset(key, data=arr, **kw)
            if front_face_normal is not None:
                f.attrs["front_face_normal"] = np.asarray(front_face_normal, dtype=np.float64)
    return Path(path)


# ------------------------------------------------------------------------------------------ reading
def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise InputFileError(
            f"missing dataset {key!r}" if obj is None else f"{key!r} is not a dataset",
            file=path, field=key,
            fix="write hits files with mlfastsim.showers.sim.voxelise.write_hits (layout in its docs)",
        )
    if obj.dtype.kind not in "iuf":
        raise InputFileError(
            f"dataset {key!r} is not numeric ({obj.dtype})", file=path, field=key, fix="store numbers"
        )
    return obj


def _check_finite(arr: np.ndarray, path: Path, key: str, *, what: str = "row") -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise DataError(
            f"{int(bad.sum())} NaN/inf value(s), first at {what} {first}",
            file=path, field=key, fix="remove or repair the broken hits/events",
        )


def _per_event(f: h5py.File, key: str, path: Path, n: int, width: int) -> np.ndarray:
    arr = np.asarray(_dataset(f, key, path)[()], dtype=np.float64)
    if arr.ndim == 1 and width == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise DataError(
            f"shape {arr.shape}, expected (N, {width})",
            file=path, field=key, fix=f"store {width} value(s) per event",
        )
    if arr.shape[0] != n:
        raise DataError(
            f"{arr.shape[0]} rows but {n} events in hits/event_offsets",
            file=path, field=key, fix="store one row per event",
        )
    _check_finite(arr, path, key)
    return arr


def _offsets(f: h5py.File, path: Path, n_hits: int) -> np.ndarray:
    key = "hits/event_offsets"
    ds = _dataset(f, key, path)
    if ds.dtype.kind not in "iu" or ds.ndim != 1 or ds.shape[0] < 1:
        raise InputFileError(
            f"must be a 1-D integer array of length N+1, got {ds.dtype} {ds.shape}",
            file=path, field=key, fix="store int64 offsets [0, n_0, n_0 + n_1, ..., H]",
        )
    offsets = np.asarray(ds[()], dtype=np.int64)
    if offsets[0] != 0 or offsets[-1] != n_hits:
        raise DataError(
            f"offsets run from {int(offsets[0])} to {int(offsets[-1])}, expected 0 to {n_hits} (hit count)",
            file=path, field=key, fix="offsets must start at 0 and end at the length of hits/x",
        )
    steps = np.diff(offsets)
    if (steps < 0).any():
        event = int(np.argmax(steps < 0))
        raise DataError(
            f"offsets decrease at event {event}", file=path, field=key, fix="offsets must be non-decreasing"
        )
    return offsets


def _normal(f: h5py.File, path: Path) -> np.ndarray:
    raw = f.attrs.get("front_face_normal", DEFAULT_NORMAL)
    n = np.asarray(raw, dtype=np.float64).reshape(-1)
    size = float(np.sqrt(n @ n)) if n.size == 3 and np.isfinite(n).all() else 0.0
    if size == 0.0:
        raise DataError(
            f"front-face normal {n.tolist()} is not a non-zero 3-vector",
            file=path, field="front_face_normal",
            fix="store the unit normal into the detector, e.g. [0, 0, 1]",
        )
    return n / size


def _event_chunks(offsets: np.ndarray, chunk_hits: int) -> Iterator[tuple[int, int]]:
    """Event ranges [i0, i1) of at most ``chunk_hits`` hits each (at least one event per range)."""
    n = offsets.size - 1
    i0 = 0
    while i0 < n:
        i1 = int(np.searchsorted(offsets, offsets[i0] + chunk_hits, side="right")) - 1
        i1 = min(max(i1, i0 + 1), n)
        yield i0, i1
        i0 = i1


@dataclass
class HitsHeader:
    """A hits file's per-event arrays, checked (the hit columns stay on disk and are checked chunk by
    chunk as they are voxelised): what a streaming conversion plans with."""

    path: Path
    offsets: np.ndarray  # (N+1,) int64
    energies: np.ndarray  # (N,) MeV
    entry: np.ndarray  # (N, 3) float64
    directions: np.ndarray  # (N, 3) float64
    angles: np.ndarray  # (N,) degrees
    normal: np.ndarray  # (3,) unit

    @property
    def n(self) -> int:
        return int(self.offsets.size - 1)


def read_hits_header(path: str | Path) -> HitsHeader:
    """Open a hits file and check everything but the hit values (layout, offsets, per-event arrays)."""
    path = Path(path)
    with open_h5(path, what="hits file") as f:
        if "hits" not in f:
            raise InputFileError(
                f"missing group 'hits' (found: {', '.join(f.keys()) or 'nothing'})",
                file=path, field="hits", fix="pass a hits file (layout in mlfastsim.showers.sim.voxelise)",
            )
        columns = {k: _dataset(f, f"hits/{k}", path) for k in HIT_FIELDS}
        for key, ds in columns.items():
            if ds.ndim != 1:
                raise DataError(
                    f"shape {ds.shape}, expected (H,)", file=path, field=f"hits/{key}", fix="store 1-D arrays"
                )
        sizes = {k: int(ds.shape[0]) for k, ds in columns.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(
                f"hit arrays differ in length: {sizes}", file=path, field="hits/energy",
                fix="x, y, z and energy need one entry per hit",
            )
        offsets = _offsets(f, path, sizes["x"])
        n = offsets.size - 1
        energies = _per_event(f, "incident_energies", path, n, 1)[:, 0]
        entry = _per_event(f, "entry_points", path, n, 3)
        directions = _per_event(f, "directions", path, n, 3)
        angles = _per_event(f, "incident_angles", path, n, 1)[:, 0] if "incident_angles" in f else None
        normal = _normal(f, path)
    cos_dn = directions @ normal
    if not (cos_dn > 0).all():
        event = int(np.argmax(~(cos_dn > 0)))
        raise DataError(
            f"direction of event {event} does not enter the detector (zero, or away from the face)",
            file=path, field="directions",
            fix="directions must have a positive component along the face normal",
        )
    if angles is None:
        angles = incidence_angles(directions, normal)
    return HitsHeader(path, offsets, energies, entry, directions, angles, normal)


def voxelise_events(path: str | Path, mesh: Mesh, i0: int, i1: int, *, offsets: np.ndarray, entry: np.ndarray,
                    directions: np.ndarray, normal: np.ndarray,
                    chunk_hits: int = DEFAULT_CHUNK_HITS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxelise events ``[i0, i1)`` of a hits file whose header was checked (:func:`read_hits_header`).

    ``offsets`` (i1 - i0 + 1 values, hit indices in the file), ``entry`` and ``directions`` are those
    events' rows.  Hits are read ``chunk_hits`` at a time and checked as they come, so a NaN deep in a
    large file is reported with its hit and event index.  Returns the showers (float32), and per event
    the hits and energy that fell outside the mesh.  Every event owns its row, so the result does not
    depend on how the events are split into calls.
    """
    path = Path(path)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    out = np.zeros((n, mesh.n_voxels), dtype=np.float32)
    n_outside = np.zeros(n, dtype=np.int64)
    e_outside = np.zeros(n, dtype=np.float64)
    with open_h5(path, what="hits file") as f:
        columns = {k: f[f"hits/{k}"] for k in HIT_FIELDS}
        for j0, j1 in _event_chunks(offsets - offsets[0], max(int(chunk_hits), 1)):
            h0, h1 = int(offsets[j0]), int(offsets[j1])
            cols = {k: np.asarray(ds[h0:h1], dtype=np.float32) for k, ds in columns.items()}
            for key, arr in cols.items():
                bad = ~np.isfinite(arr)
                if bad.any():
                    hit = h0 + int(np.argmax(bad))
                    event = i0 + int(np.searchsorted(offsets, hit, side="right")) - 1
                    raise DataError(
                        f"{int(bad.sum())} NaN/inf value(s), first at hit {hit} (event {event})",
                        file=path, field=f"hits/{key}", fix="remove or repair the broken hits",
                    )
            if (cols["energy"] < 0).any():
                hit = h0 + int(np.argmax(cols["energy"] < 0))
                event = i0 + int(np.searchsorted(offsets, hit, side="right")) - 1
                raise DataError(
                    f"negative hit energy at hit {hit} (event {event})",
                    file=path, field="hits/energy", fix="hit energies must be >= 0 MeV",
                )
            part = voxelise(
                cols["x"], cols["y"], cols["z"], cols["energy"], offsets[j0 : j1 + 1] - h0,
                entry[j0:j1], directions[j0:j1], mesh, front_face_normal=normal, out=out[j0:j1],
            )
            n_outside[j0:j1] = part.hits_outside
            e_outside[j0:j1] = part.energy_outside
    return out, n_outside, e_outside


def outside_counts(hits_total: int, row_sums: np.ndarray, n_outside: np.ndarray,
                   e_outside: np.ndarray) -> dict[str, float]:
    """:meth:`Voxelised.counts` from per-event arrays (row sums of the showers in float64): exact sums, so
    the totals do not depend on how the events were split into chunks."""
    return {
        "hits_total": int(hits_total),
        "hits_outside_mesh": int(np.sum(n_outside)),
        "energy_inside_mev": math.fsum(np.asarray(row_sums, dtype=np.float64)),
        "energy_outside_mev": math.fsum(np.asarray(e_outside, dtype=np.float64)),
    }


def _read_one(
    path: Path, mesh: Mesh, chunk_hits: int
) -> tuple[ShowerData, dict[str, float], np.ndarray]:
    """Validate and voxelise one hits file; returns the showers, the outside counts and the face normal."""
    head = read_hits_header(path)
    out, n_outside, e_outside = voxelise_events(path, mesh, 0, head.n, offsets=head.offsets, entry=head.entry,
                                                directions=head.directions, normal=head.normal,
                                                chunk_hits=chunk_hits)
    counts = outside_counts(int(head.offsets[-1]), out.sum(axis=1, dtype=np.float64), n_outside, e_outside)
    data = ShowerData(energies=head.energies, showers=out, mesh=mesh, angles=head.angles, meta={})
    return data.validate(source=path), counts, head.normal


def read_hits(
    paths: Sequence[str | Path], mesh: Mesh, *, chunk_hits: int = DEFAULT_CHUNK_HITS
) -> ShowerData:
    """Voxelise one or more hits files onto ``mesh`` into one :class:`ShowerData` (events in file order).

    Hits are read ``chunk_hits`` at a time, so the input never needs to fit in memory at once; the
    output (N, n_voxels) does.  ``meta["voxelisation"]`` reports hits and energy that fell outside the
    mesh, summed over all files; ``meta["front_face_normal"]`` is the first file's normal.
    """
    files = [Path(p) for p in paths]
    return combine_hits([read_hits_part(p, mesh, chunk_hits=chunk_hits) for p in files], files)


def read_hits_part(path: str | Path, mesh: Mesh, *, chunk_hits: int = DEFAULT_CHUNK_HITS) -> tuple[Any, ...]:
    """One hits file voxelised: (showers, outside-mesh counts, front-face normal); a task of a parallel
    ``showers convert`` (:func:`combine_hits` joins the parts exactly as :func:`read_hits` does)."""
    return _read_one(Path(path), mesh, max(int(chunk_hits), 1))


def combine_hits(results: Sequence[tuple[Any, ...]], files: Sequence[str | Path]) -> ShowerData:
    """Join :func:`read_hits_part` results (in file order) into one :class:`ShowerData`."""
    parts = [r[0] for r in results]
    counts = [r[1] for r in results]
    normals = [r[2] for r in results]
    data = concat_showers(parts, files)
    data.meta["source_format"] = "hits"
    data.meta["voxelisation"] = outside_summary(counts)
    data.meta["front_face_normal"] = normals[0].tolist()
    return data
