"""Reference LArTPC events: 3D charge from tracks and showers, read out on three wire planes.

Stands in for Geant4 + the detector simulation in demos and tests, with published facts:

* muon-like tracks: minimum ionising, dE/dx ≈ 2.1 MeV/cm in liquid argon with Landau-like fluctuations
  (a gamma-distributed step energy), and multiple scattering with the Highland width
  θ0 = 13.6 MeV / p · sqrt(s / X0) (X0(LAr) = 140 mm);
* proton-like tracks: short and dense with a Bragg peak, dE/dx(R) = 17 R^-0.42 MeV/cm (R = residual range
  in cm; the ArgoNeuT/MicroBooNE parametrisation);
* shower-like deposits: a branching tree (pair production / bremsstrahlung splits every ~X0 with the
  energy shared and an opening angle ~ 1/E) until the critical energy (≈ 32 MeV in LAr), each branch
  ionising at the minimum-ionising rate, the remaining energy dumped as a short blob.

The deposits are voxelised into each TPC's grid (tick, y, z), projected onto the wires under the voxel
centres (see :mod:`mlfastsim.lartpc.geometry`), given Gaussian noise and zero-suppressed below a
threshold.  One "parsed" file per event and TPC holds the waveforms (X) and the true voxel charge (Y).
Charges are in MeV of deposited energy (recombination and electronics gain are one scale factor away).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from mlfastsim.core.config import StrictModel
from mlfastsim.core.io import atomic_h5, ensure_writable_dir
from mlfastsim.core.parallel import ParallelConfig, run_tasks
from mlfastsim.lartpc.geometry import N_PLANES, TPCGeometry

LAR_X0_MM = 140.0
LAR_CRITICAL_MEV = 32.0
MIP_DEDX_MEV_PER_MM = 0.21
MUON_MASS_MEV = 105.66
STEP_MM = 0.5
PARSED_VERSION = 1


class SimulateConfig(StrictModel):
    """``lartpc simulate``: how many events of what, in which detector, with which readout."""

    n_events: int = Field(20, ge=1)
    seed: int = 1
    tpc_ids: list[int] = Field(default_factory=lambda: [1, 5, 9])
    geometry: TPCGeometry = TPCGeometry()
    muons: tuple[int, int] = (1, 3)  # inclusive range of the number per event
    protons: tuple[int, int] = (0, 3)
    showers: tuple[int, int] = (0, 2)
    muon_momentum_mev: tuple[float, float] = (500.0, 5000.0)
    proton_range_mm: tuple[float, float] = (10.0, 80.0)
    shower_energy_mev: tuple[float, float] = (100.0, 800.0)
    noise_mev: float = Field(0.01, ge=0)  # Gaussian noise per wire and tick
    threshold_mev: float = Field(0.05, ge=0)  # zero suppression of the waveforms
    chunk_size: int = Field(10, ge=1)  # events per task (fixes nothing: every event has its own seed)
    output_dir: Path = Path("lartpc/parsed")
    parallel: ParallelConfig = ParallelConfig()


@dataclass
class Deposits:
    """Energy deposits of one event in detector coordinates (mm, MeV)."""

    xyz: np.ndarray  # (n, 3)
    energy: np.ndarray  # (n,)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _perpendicular_kicks(d: np.ndarray, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tilt unit vectors ``d`` by angles ``theta`` in random azimuths (vectorised over rows)."""
    a = _unit(rng, d.shape[0])
    p1 = np.cross(d, a)
    p1 /= np.maximum(np.linalg.norm(p1, axis=1, keepdims=True), 1e-12)
    p2 = np.cross(d, p1)
    phi = rng.uniform(0, 2 * np.pi, d.shape[0])[:, None]
    t = theta[:, None]
    out = d * np.cos(t) + np.sin(t) * (np.cos(phi) * p1 + np.sin(phi) * p2)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _points_along(starts: np.ndarray, dirs: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points every STEP_MM along segments; returns (points, segment index of each point)."""
    n_steps = np.maximum(np.ceil(lengths / STEP_MM).astype(np.int64), 1)
    seg = np.repeat(np.arange(len(lengths)), n_steps)
    first = np.repeat(np.cumsum(n_steps) - n_steps, n_steps)
    k = np.arange(n_steps.sum()) - first
    s = (k + 0.5) * (lengths / n_steps)[seg]
    return starts[seg] + dirs[seg] * s[:, None], seg


def muon_track(vertex: np.ndarray, momentum_mev: float, length_mm: float, rng: np.random.Generator) -> Deposits:
    """A minimum-ionising track scattering with the Highland width along 5 mm segments."""
    seg_mm = 5.0
    n = max(int(length_mm / seg_mm), 1)
    beta = momentum_mev / np.hypot(momentum_mev, MUON_MASS_MEV)
    theta0 = 13.6 / (beta * momentum_mev) * np.sqrt(seg_mm / LAR_X0_MM) * (1 + 0.038 * np.log(seg_mm / LAR_X0_MM))
    d0 = _unit(rng, 1)
    # scattering angles are small: a random walk of the direction, renormalised
    kicks = rng.normal(0.0, theta0 / np.sqrt(2), size=(n, 3))
    dirs = d0 + np.cumsum(kicks, axis=0)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    starts = vertex + np.concatenate([np.zeros((1, 3)), np.cumsum(dirs[:-1] * seg_mm, axis=0)])
    pts, _ = _points_along(starts, dirs, np.full(n, seg_mm))
    mean = MIP_DEDX_MEV_PER_MM * STEP_MM
    # Landau-like fluctuations: a skewed gamma with the MIP mean
    e = rng.gamma(4.0, mean / 4.0, size=len(pts))
    return Deposits(pts, e)


def proton_track(vertex: np.ndarray, range_mm: float, rng: np.random.Generator) -> Deposits:
    """A short straight track with the Bragg rise of dE/dx towards its end."""
    d = _unit(rng, 1)
    pts, _ = _points_along(vertex[None], d, np.array([range_mm]))
    s = np.linalg.norm(pts - vertex, axis=1)
    residual_cm = np.maximum(range_mm - s, STEP_MM / 2) / 10.0
    dedx = 17.0 * residual_cm ** -0.42 / 10.0  # MeV/mm
    e = dedx * STEP_MM * rng.gamma(20.0, 1 / 20.0, size=len(pts))
    return Deposits(pts, e)


def shower(vertex: np.ndarray, energy_mev: float, rng: np.random.Generator) -> Deposits:
    """A branching electromagnetic cascade down to the critical energy (vectorised per generation)."""
    starts = vertex[None].astype(float)
    dirs = _unit(rng, 1)
    energies = np.array([energy_mev])
    seg_starts, seg_dirs, seg_lens, blobs_xyz, blobs_e = [], [], [], [], []
    for _ in range(12):  # generations; 2^12 branches is far below any critical-energy cut-off
        if len(energies) == 0:
            break
        lengths = rng.exponential(LAR_X0_MM * 9 / 7 / 2, size=len(energies))
        seg_starts.append(starts)
        seg_dirs.append(dirs)
        seg_lens.append(lengths)
        lost = np.minimum(lengths * MIP_DEDX_MEV_PER_MM, energies)
        energies = energies - lost
        ends = starts + dirs * lengths[:, None]
        stop = energies < LAR_CRITICAL_MEV
        blobs_xyz.append(ends[stop])
        blobs_e.append(energies[stop])
        go = ~stop
        ends, dirs, energies = ends[go], dirs[go], energies[go]
        frac = rng.uniform(0.1, 0.9, size=len(energies))
        children_e = np.concatenate([energies * frac, energies * (1 - frac)])
        parent_dirs = np.concatenate([dirs, dirs])
        theta = np.minimum(rng.exponential(1.0, size=len(children_e)) * 0.511 * 10 / np.maximum(children_e, 1), 1.0)
        dirs = _perpendicular_kicks(parent_dirs, theta, rng)
        starts = np.concatenate([ends, ends])
        energies = children_e
    pts, _ = _points_along(np.concatenate(seg_starts), np.concatenate(seg_dirs), np.concatenate(seg_lens))
    e = np.full(len(pts), MIP_DEDX_MEV_PER_MM * STEP_MM) * rng.gamma(4.0, 0.25, size=len(pts))
    # the energy left below the critical energy: a blob of a few mm
    bx, be = np.concatenate(blobs_xyz), np.concatenate(blobs_e)
    n_blob = 8
    blob_pts = np.repeat(bx, n_blob, axis=0) + rng.normal(0, 3.0, size=(len(bx) * n_blob, 3))
    blob_e = np.repeat(be / n_blob, n_blob)
    return Deposits(np.concatenate([pts, blob_pts]), np.concatenate([e, blob_e]))


def simulate_event(cfg: SimulateConfig, event_id: int) -> Deposits:
    """All deposits of one event in the global frame (x drift, y up, TPCs side by side along z)."""
    rng = np.random.default_rng([cfg.seed, event_id])
    g = cfg.geometry
    size = np.array([g.drift_mm, g.size_y_mm, g.size_z_mm * len(cfg.tpc_ids)])
    parts: list[Deposits] = []

    def vertex() -> np.ndarray:
        return rng.uniform(0.1, 0.9, 3) * size

    for _ in range(rng.integers(cfg.muons[0], cfg.muons[1] + 1)):
        p = float(np.exp(rng.uniform(*np.log(cfg.muon_momentum_mev))))
        parts.append(muon_track(vertex(), p, float(rng.uniform(0.3, 1.0) * size.max()), rng))
    for _ in range(rng.integers(cfg.protons[0], cfg.protons[1] + 1)):
        parts.append(proton_track(vertex(), float(rng.uniform(*cfg.proton_range_mm)), rng))
    for _ in range(rng.integers(cfg.showers[0], cfg.showers[1] + 1)):
        parts.append(shower(vertex(), float(rng.uniform(*cfg.shower_energy_mev)), rng))
    if not parts:
        return Deposits(np.zeros((0, 3)), np.zeros(0))
    return Deposits(np.concatenate([d.xyz for d in parts]), np.concatenate([d.energy for d in parts]))


def voxelise(dep: Deposits, g: TPCGeometry, tpc_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Deposits inside TPC ``tpc_index`` -> unique voxels ``(n, 3) [tick, iy, iz]`` and their charge."""
    x, y, z = dep.xyz[:, 0], dep.xyz[:, 1], dep.xyz[:, 2] - tpc_index * g.size_z_mm
    idx = np.stack([np.floor(x / g.tick_mm), np.floor(y / g.voxel_mm), np.floor(z / g.voxel_mm)], 1)
    inside = np.all((idx >= 0) & (idx < np.array(g.grid_shape)), axis=1)
    idx = idx[inside].astype(np.int64)
    if len(idx) == 0:
        return np.zeros((0, 3), np.int32), np.zeros(0, np.float32)
    key = (idx[:, 0] * g.n_y + idx[:, 1]) * g.n_z + idx[:, 2]
    uniq, inv = np.unique(key, return_inverse=True)
    charge = np.bincount(inv, weights=dep.energy[inside])
    coords = np.stack([uniq // (g.n_y * g.n_z), (uniq // g.n_z) % g.n_y, uniq % g.n_z], 1)
    return coords.astype(np.int32), charge.astype(np.float32)


def project(coords: np.ndarray, charge: np.ndarray, g: TPCGeometry) -> list[np.ndarray]:
    """Noise-free wire waveforms ``(n_wires, n_ticks)`` per plane: each voxel onto the wire under it."""
    out = []
    for p in range(N_PLANES):
        n_w = g.n_wires(p)
        wires = g.voxel_wires[p][coords[:, 1], coords[:, 2]]
        flat = np.bincount(wires.astype(np.int64) * g.n_ticks + coords[:, 0], weights=charge,
                           minlength=n_w * g.n_ticks)
        out.append(flat.reshape(n_w, g.n_ticks))
    return out


def readout(waveforms: list[np.ndarray], noise: float, threshold: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Add Gaussian noise and zero-suppress below the threshold (what a DAQ keeps)."""
    out = []
    for w in waveforms:
        v = w + rng.normal(0.0, noise, size=w.shape) if noise > 0 else w.copy()
        v[v < threshold] = 0.0
        out.append(v.astype(np.float32))
    return out


def write_parsed(path: Path, waveforms: list[np.ndarray], coords: np.ndarray | None, charge: np.ndarray | None,
                 g: TPCGeometry, *, event_id: int, tpc_id: int, tpc_index: int, threshold: float) -> None:
    """One parsed file: X = waveforms per plane, Y = true voxel charge (absent for real data)."""
    with atomic_h5(path) as f:  # built in memory: a full disk fails cleanly in one plain write
        f.attrs.update({"version": PARSED_VERSION, "event_id": event_id, "tpc_id": tpc_id, "tpc_index": tpc_index,
                        "geometry": g.to_json(), "threshold_mev": threshold})
        for p, w in enumerate(waveforms):
            f.create_dataset(f"X/plane_{p}", data=w, compression="gzip", compression_opts=1, shuffle=True)
        if coords is not None and charge is not None:
            f.create_dataset("Y/coords", data=coords.astype(np.int32))
            f.create_dataset("Y/charge", data=charge.astype(np.float32))


def parsed_name(event_id: int, tpc_id: int) -> str:
    return f"event_{event_id:06d}_tpc{tpc_id:02d}.h5"


def simulate_chunk(cfg_json: str, first: int, n: int) -> dict[str, int]:
    """Simulate events ``first .. first+n-1`` and write their parsed files (a Dask task)."""
    cfg = SimulateConfig.model_validate_json(cfg_json)
    g = cfg.geometry
    stats = {"events": 0, "files": 0, "empty_tpcs": 0, "true_voxels": 0}
    for event_id in range(first, first + n):
        dep = simulate_event(cfg, event_id)
        for k, tpc_id in enumerate(cfg.tpc_ids):
            coords, charge = voxelise(dep, g, k)
            rng = np.random.default_rng([cfg.seed, event_id, tpc_id, 7])
            waves = readout(project(coords, charge, g), cfg.noise_mev, cfg.threshold_mev, rng)
            write_parsed(cfg.output_dir / parsed_name(event_id, tpc_id), waves, coords, charge, g,
                         event_id=event_id, tpc_id=tpc_id, tpc_index=k, threshold=cfg.threshold_mev)
            stats["files"] += 1
            stats["empty_tpcs"] += int(len(coords) == 0)
            stats["true_voxels"] += len(coords)
        stats["events"] += 1
    return stats


#: A lower bound of one parsed file's bytes (HDF5's own structure): to refuse what cannot fit, nothing else.
MIN_FILE_BYTES = 2048


def simulate_to_dir(cfg: SimulateConfig, *, progress: bool = True) -> dict[str, int]:
    """Write ``n_events x len(tpc_ids)`` parsed files; every event has its own seed (worker-independent).

    Idempotent like every data job (:mod:`mlfastsim.core.parallel`): a directory finished with the same
    settings is not simulated again, and a killed run resumes from its finished chunks.
    """
    from mlfastsim.core.io import check_free_space
    from mlfastsim.core.parallel import (
        TaskCache,
        cache_dir_for,
        clear_done,
        config_fingerprint,
        done_info,
        is_done,
        mark_done,
    )

    # before any work or folder (the task list of n_events = 1e12 alone fills the memory): every event and
    # TPC is one HDF5 file of at least MIN_FILE_BYTES
    check_free_space(cfg.output_dir, cfg.n_events * len(cfg.tpc_ids) * MIN_FILE_BYTES,
                     what=f"{cfg.n_events} events x {len(cfg.tpc_ids)} TPCs of parsed files")
    # absolute: a Dask worker's working directory is not ours
    out = ensure_writable_dir(cfg.output_dir).resolve()
    cfg = cfg.model_copy(update={"output_dir": out})
    fingerprint = config_fingerprint(cfg)
    if is_done(out, fingerprint) and done_info(out):
        return {k: int(v) for k, v in done_info(out).items()}
    text = cfg.model_dump_json()
    tasks = [(text, s, min(cfg.chunk_size, cfg.n_events - s)) for s in range(0, cfg.n_events, cfg.chunk_size)]

    def finished(i: int, value: Any) -> bool:
        """A stored chunk counts only if it is its task's counts and its events' files are all there."""
        _, first, n = tasks[i]
        return (isinstance(value, dict) and value.get("events") == n
                and all((out / parsed_name(e, t)).is_file() for e in range(first, first + n) for t in cfg.tpc_ids))

    cache = TaskCache(cache_dir_for(out), fingerprint, accept=finished)
    results = run_tasks(simulate_chunk, tasks, workers=cfg.parallel.workers, scheduler=cfg.parallel.scheduler,
                        description="lartpc simulate", progress=progress, cache=cache)
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.items():
            total[k] = total.get(k, 0) + v
    clear_done(out)
    mark_done(out, fingerprint, total)
    cache.clear()
    return total
