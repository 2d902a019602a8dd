"""Tiling: wire waveforms -> 3D points (real and ghost), and the sparse "xy" files the networks read.

For each tick a voxel is active only where *every* plane has an above-threshold wire crossing it; each
wire's charge is then shared among the active voxels it crosses at that tick.  Points of different tracks
that share a tick produce wire crossings that no track passed through: the ghosts a deghosting network
learns to remove.

``process_xy`` turns a directory of parsed files (one per event and TPC) into xy files of ``batch_size``
events each: integer coordinates ``[tick, y, z]`` (optionally downsampled), per-plane features, and when
truth is present the true charge of every tiled voxel (0 for ghosts).  Output names are a pure function
of the sorted inputs, written atomically, so an interrupted run resumes by skipping finished batches.
``join_tpcs`` merges the per-TPC images of the same events into one image.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numba
import numpy as np
from numba import njit, prange
from pydantic import Field, field_validator

import mlfastsim.core.numba_setup  # noqa: F401  (threading layer before the kernels)
from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, DataError, InputFileError, MlfastsimError
from mlfastsim.core.io import atomic_h5, ensure_writable_dir, open_h5
from mlfastsim.core.parallel import ParallelConfig
from mlfastsim.core.progress import progress_bar
from mlfastsim.lartpc.geometry import N_PLANES, TPCGeometry

logger = logging.getLogger(__name__)

XY_VERSION = 1
XType = Literal["wire", "shared", "both"]
YType = Literal["charge", "none"]


class MakeBatchesConfig(StrictModel):
    """``lartpc make-batches``: parsed files -> xy files."""

    input_dir: Path = Path("lartpc/parsed")
    output_dir: Path = Path("lartpc/xy")
    tpc: int = 1
    batch_size: int = Field(10, ge=1)
    threads: int = Field(1, ge=1)
    downsample: tuple[int, int, int] = (1, 1, 1)
    save_pix: bool = False
    x_type: XType = "wire"
    y_type: YType = "charge"
    overwrite: bool = False
    parallel: ParallelConfig = ParallelConfig()  # batches on Dask: --workers N or --scheduler ADDRESS

    @field_validator("downsample")
    @classmethod
    def _positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(d < 1 for d in v):
            raise ValueError("downsampling factors must be >= 1")
        return v


# ----------------------------------------------------------------------------------------- numba kernels
@njit(parallel=True, cache=True)
def _count_active(w0, w1, w2, voxel_wires, ref_ptr, ref_vox, n_z):  # pragma: no cover - compiled
    n_ticks = w2.shape[1]
    counts = np.zeros(n_ticks, np.int64)
    for t in prange(n_ticks):
        c = 0
        for w in range(w2.shape[0]):
            if w2[w, t] > 0.0:
                for j in range(ref_ptr[w], ref_ptr[w + 1]):
                    v = ref_vox[j]
                    iy = v // n_z
                    iz = v - iy * n_z
                    if w0[voxel_wires[0, iy, iz], t] > 0.0 and w1[voxel_wires[1, iy, iz], t] > 0.0:
                        c += 1
        counts[t] = c
    return counts


@njit(parallel=True, cache=True)
def _fill_active(w0, w1, w2, voxel_wires, ref_ptr, ref_vox, n_z, start, coords, wire_q, wire_id):  # pragma: no cover
    n_ticks = w2.shape[1]
    for t in prange(n_ticks):
        k = start[t]
        for w in range(w2.shape[0]):
            q2 = w2[w, t]
            if q2 > 0.0:
                for j in range(ref_ptr[w], ref_ptr[w + 1]):
                    v = ref_vox[j]
                    iy = v // n_z
                    iz = v - iy * n_z
                    a = voxel_wires[0, iy, iz]
                    b = voxel_wires[1, iy, iz]
                    q0 = w0[a, t]
                    q1 = w1[b, t]
                    if q0 > 0.0 and q1 > 0.0:
                        coords[k, 0] = t
                        coords[k, 1] = iy
                        coords[k, 2] = iz
                        wire_q[k, 0] = q0
                        wire_q[k, 1] = q1
                        wire_q[k, 2] = q2
                        wire_id[k, 0] = a
                        wire_id[k, 1] = b
                        wire_id[k, 2] = w
                        k += 1


@dataclass
class TileIndex:
    """Per-geometry lookup tables for tiling: the voxels under each reference (collection) wire."""

    geometry: TPCGeometry
    ref_ptr: np.ndarray = field(init=False)
    ref_vox: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        g = self.geometry
        ref = g.voxel_wires[N_PLANES - 1].ravel()
        order = np.argsort(ref, kind="stable")
        self.ref_vox = order.astype(np.int64)
        counts = np.bincount(ref, minlength=g.n_wires(N_PLANES - 1))
        self.ref_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


@dataclass
class Tiled:
    """The tiled points of one event: sorted by (tick, y, z)."""

    coords: np.ndarray  # (n, 3) int32 [tick, iy, iz]
    wire_charge: np.ndarray  # (n, 3) float32: the charge of each plane's wire crossing the voxel
    shared_charge: np.ndarray  # (n, 3) float32: that charge divided by the wire's active voxels at this tick
    wire_id: np.ndarray  # (n, 3) int32


def tile(waveforms: list[np.ndarray], index: TileIndex) -> Tiled:
    """3D points where every plane fires at the same tick, with the wire charges shared among them."""
    g = index.geometry
    w0, w1, w2 = (np.ascontiguousarray(w, dtype=np.float32) for w in waveforms)
    vw = g.voxel_wires
    counts = _count_active(w0, w1, w2, vw, index.ref_ptr, index.ref_vox, g.n_z)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n = int(counts.sum())
    coords = np.empty((n, 3), np.int32)
    wire_q = np.empty((n, 3), np.float32)
    wire_id = np.empty((n, 3), np.int32)
    _fill_active(w0, w1, w2, vw, index.ref_ptr, index.ref_vox, g.n_z, start, coords, wire_q, wire_id)
    key = (coords[:, 0].astype(np.int64) * g.n_y + coords[:, 1]) * g.n_z + coords[:, 2]
    order = np.argsort(key, kind="stable")
    coords, wire_q, wire_id = coords[order], wire_q[order], wire_id[order]
    shared = np.empty_like(wire_q)
    for p in range(N_PLANES):  # three planes, each one bincount over all points
        wkey = wire_id[:, p].astype(np.int64) * g.n_ticks + coords[:, 0]
        _, inv, cnt = np.unique(wkey, return_inverse=True, return_counts=True)
        shared[:, p] = wire_q[:, p] / cnt[inv]
    return Tiled(coords, wire_q, shared, wire_id)


def truth_on_tiles(tiled: Tiled, true_coords: np.ndarray, true_charge: np.ndarray,
                   g: TPCGeometry) -> tuple[np.ndarray, int, float]:
    """True charge of each tiled voxel (0 = ghost); also the count and charge of true voxels not tiled."""
    def keys(c: np.ndarray) -> np.ndarray:
        return (c[:, 0].astype(np.int64) * g.n_y + c[:, 1]) * g.n_z + c[:, 2]

    tk = keys(tiled.coords)
    out = np.zeros(len(tk), np.float32)
    if len(true_coords) == 0 or len(tk) == 0:
        return out, len(true_coords), float(np.sum(true_charge))
    qk = keys(true_coords)
    pos = np.clip(np.searchsorted(tk, qk), 0, len(tk) - 1)
    hit = tk[pos] == qk
    out[pos[hit]] = true_charge[hit]
    return out, int((~hit).sum()), float(true_charge[~hit].sum())


def downsample(coords: np.ndarray, feats: np.ndarray, charge: np.ndarray | None, factors: tuple[int, int, int],
               reduce: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Merge voxels into ``factors`` blocks; features sum (charges) or max (wire charges), truth sums."""
    if factors == (1, 1, 1) or len(coords) == 0:
        return coords, feats, charge
    c = coords // np.asarray(factors, dtype=coords.dtype)
    span = c.max(axis=0).astype(np.int64) + 1
    key = (c[:, 0].astype(np.int64) * span[1] + c[:, 1]) * span[2] + c[:, 2]
    uniq, inv = np.unique(key, return_inverse=True)
    out_c = np.stack([uniq // (span[1] * span[2]), (uniq // span[2]) % span[1], uniq % span[2]], 1).astype(np.int32)
    out_f = np.zeros((len(uniq), feats.shape[1]), np.float32)
    for j, how in enumerate(reduce):
        if how == "sum":
            out_f[:, j] = np.bincount(inv, weights=feats[:, j], minlength=len(uniq))
        else:
            np.maximum.at(out_f[:, j], inv, feats[:, j])
    out_q = None if charge is None else np.bincount(inv, weights=charge, minlength=len(uniq)).astype(np.float32)
    return out_c, out_f, out_q


# ----------------------------------------------------------------------------------------- parsed files
@dataclass
class ParsedEvent:
    path: Path
    event_id: int
    tpc_id: int
    tpc_index: int
    geometry: TPCGeometry
    waveforms: list[np.ndarray]
    true_coords: np.ndarray | None
    true_charge: np.ndarray | None


@functools.lru_cache(maxsize=8)
def _geometry(text: str) -> TPCGeometry:
    """Every file of a run carries the same geometry text: parse (and build its wire maps) once."""
    return TPCGeometry.from_json(text)


def _parsed_header(f: h5py.File, path: Path) -> tuple[TPCGeometry, int, int, int]:
    """Attributes and layout of a parsed file (no waveform data read): what can be checked up front."""
    try:
        g = _geometry(str(f.attrs["geometry"]))
        ids = int(f.attrs["event_id"]), int(f.attrs["tpc_id"]), int(f.attrs["tpc_index"])
    except KeyError as exc:
        raise InputFileError(f"missing attribute {exc}", file=path, field="attrs",
                             fix="write parsed files with `mlfastsim lartpc simulate`") from None
    except (ValueError, TypeError) as exc:
        raise InputFileError(f"unreadable geometry ({str(exc).splitlines()[0]})", file=path, field="attrs.geometry",
                             fix="write parsed files with `mlfastsim lartpc simulate`") from None
    for p in range(N_PLANES):
        name = f"X/plane_{p}"
        if name not in f:
            raise InputFileError(f"wire plane {p} is missing", file=path, field=name,
                                 fix=f"a parsed file needs all {N_PLANES} planes X/plane_0..{N_PLANES - 1}")
        shape = f[name].shape
        expected = (g.n_wires(p), g.n_ticks)
        if shape != expected:
            raise DataError(f"plane {p} has shape {shape} but the geometry has {expected[0]} wires x "
                            f"{expected[1]} ticks", file=path, field=name,
                            fix="re-create the file; wire counts must match the geometry attribute")
    if "Y/coords" in f:
        tc = f["Y/coords"].shape
        tq = f["Y/charge"].shape if "Y/charge" in f else None
        if tq is None or len(tc) != 2 or tc[1] != 3 or tq != (tc[0],):
            raise DataError("truth must be Y/coords (n, 3) and Y/charge (n,)", file=path, field="Y",
                            fix="re-create the file")
    return g, *ids


def check_parsed_header(path: Path, need_truth: bool) -> None:
    """Fail fast, before hours of tiling, on a file with missing planes, wrong wire counts or no truth."""
    with open_h5(path, what="parsed file") as f:
        _parsed_header(f, path)
        if need_truth and "Y/coords" not in f:
            raise DataError("no truth (Y) in this file but --y-type is 'charge'", file=path, field="Y",
                            fix="pass --y-type none for data without truth")


def read_parsed(path: Path) -> ParsedEvent:
    """Read and check one parsed file; every defect is an error naming the file, the field and the fix."""
    with open_h5(path, what="parsed file") as f:
        g, event_id, tpc_id, tpc_index = _parsed_header(f, path)
        waves = []
        for p in range(N_PLANES):
            name = f"X/plane_{p}"
            w = f[name][...]
            bad = ~np.isfinite(w)
            if bad.any():
                raise DataError(f"{int(bad.sum())} NaN/inf samples", file=path, field=name, fix="re-create the file")
            if (w < 0).any():
                raise DataError("negative charge in a zero-suppressed waveform", file=path, field=name,
                                fix="waveforms must be >= 0 after zero suppression; re-create the file")
            waves.append(w.astype(np.float32, copy=False))
        tc = tq = None
        if "Y/coords" in f:
            tc, tq = f["Y/coords"][...], f["Y/charge"][...]
            if not np.isfinite(tq).all() or (tq < 0).any():
                raise DataError("truth charge has NaN or negative values", file=path, field="Y/charge",
                                fix="re-create the file")
            if len(tc) and ((tc < 0).any() or (tc >= np.asarray(g.grid_shape)).any()):
                raise DataError("truth coordinates outside the TPC grid", file=path, field="Y/coords",
                                fix="re-create the file")
    return ParsedEvent(Path(path), event_id, tpc_id, tpc_index, g, waves, tc, tq)


def list_parsed(input_dir: Path, tpc: int) -> list[Path]:
    """Parsed files of one TPC, sorted by event id (file names from :func:`simulate.parsed_name`)."""
    d = Path(input_dir)
    if not d.is_dir():
        raise InputFileError("parsed-file directory does not exist", file=d, fix="run `mlfastsim lartpc simulate`")
    files = sorted(d.glob(f"event_*_tpc{tpc:02d}.h5"))
    if not files:
        found = sorted({p.name.rsplit("_tpc", 1)[-1][:-3] for p in d.glob("event_*_tpc*.h5")})
        raise InputFileError(f"no parsed files for TPC {tpc}", file=d, field="--tpc",
                             fix=f"TPCs present: {', '.join(found) or 'none'}")
    return files


# ----------------------------------------------------------------------------------------- xy files
FEATURE_NAMES = {"wire": ["wire_u", "wire_v", "wire_w"], "shared": ["shared_u", "shared_v", "shared_w"]}


def feature_names(x_type: str) -> list[str]:
    return FEATURE_NAMES["wire"] + FEATURE_NAMES["shared"] if x_type == "both" else FEATURE_NAMES[x_type]


def _features(t: Tiled, x_type: str) -> tuple[np.ndarray, list[str]]:
    if x_type == "wire":
        return t.wire_charge, ["max"] * 3
    if x_type == "shared":
        return t.shared_charge, ["sum"] * 3
    return np.concatenate([t.wire_charge, t.shared_charge], 1), ["max"] * 3 + ["sum"] * 3


def xy_name(tpc: int, batch: int) -> str:
    return f"xy_tpc{tpc:02d}_{batch:05d}.h5"


@dataclass
class XYEvent:
    event_id: int
    coords: np.ndarray
    feats: np.ndarray
    charge: np.ndarray | None


def write_xy(path: Path, events: list[XYEvent], attrs: dict) -> None:
    """One xy file: concatenated events with offsets (no per-event groups: one read per array)."""
    n = [len(e.coords) for e in events]
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    n_feat = len(attrs["feature_names"])
    with atomic_h5(path) as f:  # built in memory: a full disk fails cleanly in one write
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, list | dict) else v
        f.create_dataset("event_ids", data=np.asarray([e.event_id for e in events], np.int64))
        f.create_dataset("offsets", data=offsets)
        f.create_dataset("coords", data=np.concatenate([e.coords for e in events]).astype(np.int32)
                         if events else np.zeros((0, 3), np.int32))
        f.create_dataset("features", data=np.concatenate([e.feats for e in events]).astype(np.float32)
                         if events else np.zeros((0, n_feat), np.float32))
        if attrs["y_type"] != "none":
            f.create_dataset("charge", data=np.concatenate([e.charge for e in events]).astype(np.float32)
                             if events else np.zeros(0, np.float32))


def _attr(f: h5py.File, key: str, path: Path) -> object:
    if key not in f.attrs:
        raise InputFileError(f"missing attribute {key!r}", file=path, field=f"attrs.{key}",
                             fix="write xy files with `mlfastsim lartpc make-batches`")
    v = f.attrs[key]
    if isinstance(v, str) and v[:1] in "[{":
        return json.loads(v)
    return v.tolist() if isinstance(v, np.ndarray) else v


@dataclass
class XYFile:
    path: Path
    attrs: dict
    event_ids: np.ndarray
    offsets: np.ndarray
    coords: np.ndarray
    feats: np.ndarray
    charge: np.ndarray | None

    def events(self) -> list[XYEvent]:
        o = self.offsets
        return [XYEvent(int(e), self.coords[o[i]:o[i + 1]], self.feats[o[i]:o[i + 1]],
                        None if self.charge is None else self.charge[o[i]:o[i + 1]])
                for i, e in enumerate(self.event_ids)]


XY_ATTRS = ("version", "tpcs", "downsample", "x_type", "y_type", "grid_shape", "origin_vox", "feature_names")


def read_xy_attrs(path: Path) -> dict:
    with open_h5(path, what="xy file") as f:
        return {k: _attr(f, k, path) for k in XY_ATTRS}


def read_xy(path: Path) -> XYFile:
    """Read and check one xy file (shapes, offsets, finite non-negative values)."""
    with open_h5(path, what="xy file") as f:
        attrs = {k: _attr(f, k, path) for k in (*XY_ATTRS, "sources")}
        try:
            ids, offsets, coords, feats = (f[k][...] for k in ("event_ids", "offsets", "coords", "features"))
        except KeyError as exc:
            raise InputFileError(f"missing dataset {exc}", file=path,
                                 fix="write xy files with `mlfastsim lartpc make-batches`") from None
        charge = f["charge"][...] if "charge" in f else None
    n = len(coords)
    if (offsets.shape != (len(ids) + 1,) or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0)
            or coords.shape != (n, 3) or feats.shape != (n, len(attrs["feature_names"]))
            or (charge is not None and charge.shape != (n,))):
        raise DataError("inconsistent array shapes (offsets, coords, features, charge)", file=path,
                        fix="re-create the file with `mlfastsim lartpc make-batches`")
    if not np.isfinite(feats).all() or (feats < 0).any():
        raise DataError("features have NaN or negative values", file=path, field="features", fix="re-create the file")
    if charge is not None and (not np.isfinite(charge).all() or (charge < 0).any()):
        raise DataError("truth charge has NaN or negative values", file=path, field="charge", fix="re-create the file")
    return XYFile(Path(path), attrs, ids, offsets, coords, feats, charge)


# ----------------------------------------------------------------------------------------- process_xy
@dataclass
class BatchStats:
    files_in: int = 0
    batches_written: int = 0
    batches_skipped: int = 0
    events: int = 0
    empty_events: int = 0
    ghost_fraction: float = 0.0
    lost_true_voxels: int = 0
    lost_true_charge: float = 0.0
    seconds: float = 0.0
    events_per_second: float = 0.0
    outputs: list[Path] = field(default_factory=list)


def _settings(cfg: MakeBatchesConfig) -> dict:
    return {"downsample": list(cfg.downsample), "x_type": cfg.x_type, "y_type": cfg.y_type}


def _done(path: Path, sources: list[str], cfg: MakeBatchesConfig) -> bool:
    """A finished batch (outputs are atomic, so existing = complete) with the same inputs and settings."""
    if not path.exists() or cfg.overwrite:
        return False
    try:
        with open_h5(path, what="xy file") as f:
            old = {k: _attr(f, k, path) for k in ("downsample", "x_type", "y_type", "sources")}
    except MlfastsimError:
        return False  # not an xy file (another file or a damaged one under this batch's name): made again
    if {k: old[k] for k in ("downsample", "x_type", "y_type")} != _settings(cfg):
        raise ConfigError(f"the output directory holds xy files made with other settings "
                          f"({old['downsample']}, x_type={old['x_type']}, y_type={old['y_type']})",
                          file=path, field="--downsample/--x-type/--y-type",
                          fix="use another output directory or pass --overwrite")
    return old["sources"] == sources


def process_xy(cfg: MakeBatchesConfig, *, progress: bool = True) -> BatchStats:
    """Parsed files of one TPC -> xy files of ``batch_size`` events; finished batches are skipped.

    Batches are independent tasks (:func:`_make_batch`), run serially or on Dask (``cfg.parallel``): each
    output is a pure function of its input files and written atomically, so the files are byte-identical
    whatever the worker count, and a rerun after a killed run redoes only the batches not yet on disk.
    """
    from mlfastsim.core.resume import job_lock, job_output_dir

    # one writer per output directory: a second make-batches on it stops with one line instead of
    # interleaving batches made with other settings; a failed first run leaves no empty folder
    with job_output_dir(cfg.output_dir) as made, job_lock(made.resolve()):
        return _process_xy(cfg, made.resolve(), progress=progress)


def _process_xy(cfg: MakeBatchesConfig, out_dir: Path, *, progress: bool) -> BatchStats:
    from mlfastsim.core.parallel import run_tasks

    numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
    # absolute paths: a Dask worker's working directory is not ours
    files = [p.resolve() for p in list_parsed(cfg.input_dir, cfg.tpc)]
    for path in files:
        check_parsed_header(path, need_truth=cfg.y_type != "none")
    stats = BatchStats(files_in=len(files))
    t0 = time.perf_counter()
    batches = [files[i:i + cfg.batch_size] for i in range(0, len(files), cfg.batch_size)]
    todo = []
    for b, group in enumerate(batches):
        if _done(out_dir / xy_name(cfg.tpc, b), [p.name for p in group], cfg):
            stats.batches_skipped += 1
        else:
            todo.append((cfg, b, group, out_dir))
    parts = run_tasks(_make_batch, todo, workers=cfg.parallel.workers, scheduler=cfg.parallel.scheduler,
                      description=f"make-batches tpc {cfg.tpc}", progress=progress)
    ghosts = total = 0
    for part in parts:
        stats.events += part["events"]
        stats.empty_events += part["empty_events"]
        stats.lost_true_voxels += part["lost_true_voxels"]
        stats.lost_true_charge += part["lost_true_charge"]
        ghosts += part["ghosts"]
        total += part["tiled"]
        stats.batches_written += 1
        stats.outputs.append(part["output"])
    stats.seconds = time.perf_counter() - t0
    stats.events_per_second = stats.events / stats.seconds if stats.seconds > 0 else 0.0
    stats.ghost_fraction = ghosts / total if total else 0.0
    return stats


_TILE_INDEX: dict[str, TileIndex] = {}


def _tile_index(geometry: TPCGeometry) -> TileIndex:
    """One wire-crossing index per geometry and process (building it costs more than tiling an event)."""
    key = geometry.to_json()
    if key not in _TILE_INDEX:
        _TILE_INDEX.clear()  # one detector at a time in practice: keep memory bounded
        _TILE_INDEX[key] = TileIndex(geometry)
    return _TILE_INDEX[key]


def _make_batch(cfg: MakeBatchesConfig, b: int, group: list[Path], out_dir: Path) -> dict:
    """Tile the parsed files of batch ``b`` and write its xy (and pixel) file; return its counts.

    A task of :func:`process_xy`: a pure function of its arguments, run here or on a Dask worker.
    """
    numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
    dest = out_dir / xy_name(cfg.tpc, b)
    counts = {"events": 0, "empty_events": 0, "lost_true_voxels": 0, "lost_true_charge": 0.0, "ghosts": 0,
              "tiled": 0, "output": dest}
    events, pix = [], []
    geometry = None
    tpc_index = 0
    for path in group:
        ev = read_parsed(path)
        if geometry is None:
            geometry, tpc_index = ev.geometry, ev.tpc_index
        elif ev.geometry != geometry:
            raise DataError("geometry differs from the other files of this TPC", file=path,
                            field="attrs.geometry", fix="tile files of one detector together")
        if not any(w.any() for w in ev.waveforms):
            counts["empty_events"] += 1
            continue
        t = tile(ev.waveforms, _tile_index(ev.geometry))
        if len(t.coords) == 0:
            counts["empty_events"] += 1
            continue
        feats, reduce = _features(t, cfg.x_type)
        charge = None
        if cfg.y_type != "none":
            charge, lost_n, lost_q = truth_on_tiles(t, ev.true_coords, ev.true_charge, ev.geometry)
            counts["lost_true_voxels"] += lost_n
            counts["lost_true_charge"] += lost_q
            counts["ghosts"] += int((charge == 0).sum())
            counts["tiled"] += len(charge)
        c, f_, q = downsample(t.coords, feats, charge, cfg.downsample, reduce)
        events.append(XYEvent(ev.event_id, c, f_, q))
        if cfg.save_pix:
            pix.append((ev.event_id, ev.waveforms))
        counts["events"] += 1
    assert geometry is not None  # every batch holds at least one file
    ds = np.asarray(cfg.downsample)
    grid = -(-np.asarray(geometry.grid_shape) // ds)
    origin = np.array([0, 0, tpc_index * grid[2]])  # TPCs side by side along z
    attrs = {"version": XY_VERSION, "tpcs": [cfg.tpc], "downsample": list(cfg.downsample),
             "x_type": cfg.x_type, "y_type": cfg.y_type, "grid_shape": grid.tolist(),
             "origin_vox": origin.tolist(), "feature_names": feature_names(cfg.x_type),
             "sources": [p.name for p in group], "geometry": json.loads(geometry.to_json()),
             "batch_size": cfg.batch_size}
    write_xy(dest, events, attrs)
    if cfg.save_pix:
        write_pix(out_dir / dest.name.replace("xy_", "pix_"), pix)
    return counts


def write_pix(path: Path, pix: list[tuple[int, list[np.ndarray]]]) -> None:
    """Pixel files: the above-threshold (wire, tick, charge) of each plane: the 2D views, sparse."""
    with atomic_h5(path) as f:  # built in memory: a full disk fails cleanly in one write
        f.create_dataset("event_ids", data=np.asarray([e for e, _ in pix], np.int64))
        for p in range(N_PLANES):
            nz = [np.nonzero(w[p]) for _, w in pix]
            counts = [len(a) for a, _ in nz]
            f.create_dataset(f"plane_{p}/offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            f.create_dataset(f"plane_{p}/coords", data=np.concatenate(
                [np.stack([a, b], 1) for a, b in nz]).astype(np.int32) if pix else np.zeros((0, 2), np.int32))
            f.create_dataset(f"plane_{p}/charge", data=np.concatenate(
                [w[p][a, b] for (_, w), (a, b) in zip(pix, nz, strict=True)]).astype(np.float32)
                if pix else np.zeros(0, np.float32))


# ----------------------------------------------------------------------------------------- join_tpcs
def list_xy(paths: list[Path]) -> list[Path]:
    """xy files named directly or found in directories (sorted, so event order is reproducible)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(p.glob("xy_*.h5")))
        elif p.exists():
            out.append(p)
        else:
            raise InputFileError("xy path does not exist", file=p, field="data.data_path", fix="check the path")
    return out


def join_tpcs(xy_dir: Path, tpcs: list[int], output_dir: Path | None = None, *, progress: bool = True) -> list[Path]:
    """Merge the per-TPC images of the same events into one image (coordinates shifted by each TPC's origin)."""
    xy_dir = Path(xy_dir)
    if len(tpcs) < 2 or len(set(tpcs)) != len(tpcs):
        raise ConfigError(f"need two or more distinct TPCs, got {tpcs}", field="--tpcs", fix="e.g. --tpcs 1,5,9")
    out_dir = ensure_writable_dir(output_dir or xy_dir / f"joined_{'-'.join(map(str, tpcs))}")
    per_tpc: dict[int, dict[int, XYEvent]] = {}
    ref: dict | None = None
    origins: dict[int, np.ndarray] = {}
    grid: np.ndarray | None = None
    batch_size = 10
    for tpc in tpcs:
        files = sorted(xy_dir.glob(f"xy_tpc{tpc:02d}_*.h5"))
        if not files:
            raise InputFileError(f"no xy files for TPC {tpc}", file=xy_dir, field="--tpcs",
                                 fix=f"run `mlfastsim lartpc make-batches -t {tpc}` first")
        per_tpc[tpc] = {}
        for path in files:
            xy = read_xy(path)
            settings = {k: xy.attrs[k] for k in ("downsample", "x_type", "y_type", "feature_names")}
            if ref is None:
                ref = settings
            elif settings != ref:
                raise DataError(f"made with other settings than the first file ({settings} vs {ref})", file=path,
                                fix="join xy files made with the same make-batches options")
            origins[tpc] = np.asarray(xy.attrs["origin_vox"], np.int64)
            this_grid = np.asarray(xy.attrs["grid_shape"], np.int64)
            if grid is not None and not np.array_equal(grid, this_grid):
                raise DataError(f"grid {this_grid.tolist()} differs from the other TPCs' {grid.tolist()}", file=path,
                                field="attrs.grid_shape", fix="join TPCs of one detector geometry")
            grid = this_grid
            for ev in xy.events():
                per_tpc[tpc][ev.event_id] = ev
            with open_h5(path) as f:
                batch_size = int(f.attrs.get("batch_size", batch_size))
    assert ref is not None and grid is not None
    lo = np.min(np.stack(list(origins.values())), axis=0)
    hi = np.max(np.stack([o + grid for o in origins.values()]), axis=0)
    event_ids = sorted(set().union(*[set(d) for d in per_tpc.values()]))
    joined: list[XYEvent] = []
    with progress_bar(len(event_ids), "join-tpcs", enabled=progress) as bar:
        for eid in event_ids:
            parts = [(per_tpc[t][eid], origins[t] - lo) for t in tpcs if eid in per_tpc[t]]
            coords = np.concatenate([e.coords + o.astype(np.int32) for e, o in parts])
            feats = np.concatenate([e.feats for e, _ in parts])
            charge = None if ref["y_type"] == "none" else np.concatenate([e.charge for e, _ in parts])
            joined.append(XYEvent(eid, coords, feats, charge))
            bar.advance()
    outputs = []
    for b in range(0, len(joined), batch_size):
        dest = out_dir / f"xy_joined_{b // batch_size:05d}.h5"
        attrs = {"version": XY_VERSION, "tpcs": list(tpcs), **{k: ref[k] for k in ("downsample", "x_type", "y_type")},
                 "grid_shape": (hi - lo).tolist(), "origin_vox": lo.tolist(), "feature_names": ref["feature_names"],
                 "sources": [str(t) for t in tpcs], "batch_size": batch_size}
        write_xy(dest, joined[b:b + batch_size], attrs)
        outputs.append(dest)
    return outputs
