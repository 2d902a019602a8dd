"""The shower commands as functions: what the CLI and the demo call, usable from Python too.

Each function takes a validated config, fails fast on bad input (before any expensive work) and writes
its outputs atomically.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlfastsim.core.config import dump_config
from mlfastsim.core.io import atomic_write_text, check_output_file, ensure_writable_dir
from mlfastsim.core.parallel import (
    ParallelConfig,
    TaskCache,
    cache_dir_for,
    clear_done,
    config_fingerprint,
    is_done,
    iter_tasks,
    job_lock,
)
from mlfastsim.core.tracking import tracker_from_config
from mlfastsim.showers.config import ConvertConfig, SimulateConfig, ValidateConfig
from mlfastsim.showers.geometry import CylindricalMesh, load_detector, load_mesh, read_binning_xml
from mlfastsim.showers.io.formats import ShowerData, read_native
from mlfastsim.showers.io.native import StoredShowers, native_writer
from mlfastsim.showers.io.stream import Converted


def resolve_mesh(mesh: str | None, binning: Path | None) -> CylindricalMesh | None:
    """The mesh a user asked for with ``--binning FILE.xml`` or ``--mesh NAME``, or None (use the file's)."""
    if binning is not None:
        return read_binning_xml(binning)
    if mesh is not None:
        return load_mesh(mesh)
    return None


def _recorded_config(cfg: SimulateConfig) -> str:
    """The config stored in the file, without the parallel settings and the output path: neither changes
    a single byte of the showers (per-chunk seeds), so files made with 1 or 64 workers, or written to
    ``-o a.h5`` and ``-o runs/b.h5``, are byte for byte identical."""
    recorded = cfg.model_dump(mode="json", exclude={"output"})
    recorded["parallel"] = ParallelConfig().model_dump(mode="json")
    return yaml.safe_dump(recorded, sort_keys=False)


def expected_showers(cfg: SimulateConfig) -> int:
    """How many showers ``cfg`` asks for, from the options alone (before anything is allocated).

    The same rules as :func:`~mlfastsim.showers.sim.em.make_kinematics` and
    :func:`~mlfastsim.showers.sim.hadronic.make_pion_energies`: lists multiply, ranges do not.
    """
    n = int(cfg.n_per_point)
    n_e = len(cfg.energies_gev) if cfg.energies_gev is not None else 1
    if cfg.particle == "pion":
        return n * n_e
    n_a = (len(cfg.angles_deg) if cfg.angles_deg else 1) if cfg.angle_range_deg is None else 1
    return n * n_e * n_a


def _check_sizes(cfg: SimulateConfig, n_voxels: int) -> None:
    """Refuse a run whose output cannot fit on its disk, or whose kinematics cannot fit in memory, before
    any work: the resume cache holds every chunk (uncompressed) until the output is complete, and the
    output is at most as large again."""
    from mlfastsim.core.io import check_allocation, check_free_space

    n = expected_showers(cfg)
    raw = n * n_voxels * 4
    check_free_space(cfg.output, 2 * raw, what=f"{n} showers of {n_voxels} cells (resume cache + output)")
    check_allocation(n * 32, what=f"the kinematics of {n} showers", field="--n-per-point",
                     fix="ask for fewer showers, or split the run over several outputs")


def simulate_to_file(cfg: SimulateConfig, *, progress: bool = False) -> StoredShowers:
    """Run the reference simulator as configured (serially or on Dask) and write the native file.

    Chunks are appended to the file as they finish, in task order (:func:`~mlfastsim.core.parallel.iter_tasks`),
    so memory does not grow with the number of showers; the result describes the file (energies, mesh,
    per-shower totals) with the showers left on disk.

    Idempotent: an output that still holds the bytes this job wrote is not simulated again, and a run
    killed midway resumes from its finished chunks (``.NAME.parts`` beside the output, stored as data;
    see :mod:`mlfastsim.core.resume`).  One job per output: a second one stops with one line.
    """
    from mlfastsim.showers.sim.em import make_kinematics

    check_output_file(cfg.output)  # a directory, a device, /proc or a read-only disk: refused now
    fingerprint = config_fingerprint(cfg)
    if is_done(cfg.output, fingerprint):
        return StoredShowers.open(cfg.output)
    if cfg.particle == "pion":
        return _simulate_pions_to_file(cfg, fingerprint, progress=progress)
    detector = load_detector(cfg.detector)
    mesh = load_mesh(cfg.mesh)
    _check_sizes(cfg, mesh.n_voxels)
    energies, angles = make_kinematics(
        energies_gev=cfg.energies_gev,
        energy_range_gev=cfg.energy_range_gev,
        angles_deg=cfg.angles_deg if (cfg.angles_deg or cfg.angle_range_deg) else [90.0],
        angle_range_deg=cfg.angle_range_deg,
        n_per_point=cfg.n_per_point,
        seed=cfg.seed,
    )
    bounds = list(range(0, len(energies), cfg.chunk_size))
    tasks = [
        (detector, mesh, energies[lo : lo + cfg.chunk_size], angles[lo : lo + cfg.chunk_size], cfg.particle,
         cfg.seed, i)
        for i, lo in enumerate(bounds)
    ]
    meta = {
        "detector": detector.to_dict(),
        "particle": cfg.particle,
        "seed": cfg.seed,
        "simulator": "gflash-gp",
        "config": _recorded_config(cfg),
    }
    # takes the output's job lock; a stored chunk must be the (showers, cells) array its task makes
    cache = TaskCache(cache_dir_for(cfg.output), fingerprint,
                      accept=lambda i, v: _rows_of(v, len(tasks[i][2]), mesh.n_voxels))
    return _stream_to_file(cfg, fingerprint, cache, _simulate_task, tasks, mesh=mesh, energies=energies,
                           angles=angles, meta=meta,
                           description=f"simulating {len(energies)} showers ({detector.name})", progress=progress)


def _rows_of(value: Any, n: int, n_voxels: int) -> bool:
    """``value`` is an (n, n_voxels) array of finite float32 cell energies: a chunk a task could return."""
    return isinstance(value, np.ndarray) and value.dtype == np.float32 and value.shape == (n, n_voxels)


def _stream_to_file(cfg: SimulateConfig, fingerprint: str, cache: TaskCache, fn: Any, tasks: list[tuple[Any, ...]],
                    *, mesh: Any, energies: np.ndarray, angles: np.ndarray | None, meta: dict[str, Any],
                    description: str, progress: bool) -> StoredShowers:
    """Append every task's showers to the output as they come (task order), mark it done, drop the cache."""
    clear_done(cfg.output)
    # the file carries the job's fingerprint (stamped before it is renamed into place): "done" is the file
    with native_writer(cfg.output, mesh=mesh, energies=energies, angles=angles, meta=meta,
                       job=fingerprint) as writer:
        for chunk in iter_tasks(fn, tasks, workers=cfg.parallel.workers, scheduler=cfg.parallel.scheduler,
                                description=description, progress=progress, cache=cache):
            writer.append(chunk)
            del chunk
    cache.clear()
    return StoredShowers(path=cfg.output, energies=np.asarray(energies, np.float32), mesh=mesh,
                         angles=None if angles is None else np.asarray(angles, np.float32), meta=meta,
                         totals=writer.totals)


def _simulate_pions_to_file(cfg: SimulateConfig, fingerprint: str, *, progress: bool) -> StoredShowers:
    """Charged pions on a Cartesian grid with the reference hadron simulator, chunks farmed out to Dask.

    Shower i draws from the stream (seed, i) whatever chunk it lands in, so the file is identical for
    any chunk size and worker count.
    """
    from mlfastsim.core.errors import ConfigError
    from mlfastsim.showers.geometry import CartesianGrid
    from mlfastsim.showers.sim.hadronic import PARTICLE, SIMULATOR_NAME, load_calorimeter, make_pion_energies

    grid = load_mesh(cfg.grid)
    if not isinstance(grid, CartesianGrid):
        raise ConfigError(f"pions are scored on a Cartesian grid, {cfg.grid!r} is {grid.describe()}", field="--grid",
                          fix="use --grid hcal48 or a grid YAML with kind: cartesian")
    calo = load_calorimeter(cfg.calorimeter)
    if cfg.angles_deg not in (None, [90.0]) or cfg.angle_range_deg is not None:
        raise ConfigError("the hadron simulator models normal incidence only", field="--angle-deg",
                          fix="drop the angle options for pions (90 degrees is implied)")
    _check_sizes(cfg, grid.n_voxels)
    # fixed energies, or uniform in a range (as the hadron-shower studies sample them, not log-uniform)
    energies = make_pion_energies(energies_gev=cfg.energies_gev, energy_range_gev=cfg.energy_range_gev,
                                  n_per_point=cfg.n_per_point, seed=cfg.seed)
    angles = np.full(len(energies), 90.0, dtype=np.float32)
    tasks = [(energies[lo : lo + cfg.chunk_size], grid, calo, cfg.seed, lo)
             for lo in range(0, len(energies), cfg.chunk_size)]
    meta = {"particle": PARTICLE, "calorimeter": calo.to_dict(), "seed": cfg.seed, "simulator": SIMULATOR_NAME,
            "config": _recorded_config(cfg)}
    cache = TaskCache(cache_dir_for(cfg.output), fingerprint,  # takes the output's job lock
                      accept=lambda i, v: _rows_of(v, len(tasks[i][0]), grid.n_voxels))
    return _stream_to_file(cfg, fingerprint, cache, _simulate_pion_task, tasks, mesh=grid, energies=energies,
                           angles=angles, meta=meta,
                           description=f"simulating {len(energies)} pion showers ({calo.name})", progress=progress)


def convert_to_file(cfg: ConvertConfig, *, progress: bool = False) -> tuple[Converted | None, bool]:
    """``showers convert``: plan from the inputs' small arrays, then stream blocks of rows to the output.

    Memory does not grow with the number of showers (:mod:`mlfastsim.showers.io.stream`: blocks of rows
    are tasks, serially or on Dask, appended in order; a Par04 output that needs another order goes
    through a scratch file).  Returns what was written (None when skipped) and whether the output was
    already finished by the same inputs and settings (then nothing is read or written: the output's
    stamp says so, :func:`~mlfastsim.core.resume.is_done`).  A killed run resumes from its finished
    blocks (``.NAME.parts`` beside the output); the output is identical whatever the worker count.
    """
    from mlfastsim.core.errors import ConfigError
    from mlfastsim.showers.io import formats

    if cfg.target_format not in formats.WRITERS:
        raise ConfigError(f"unknown output layout {cfg.target_format!r}", field="--to",
                          fix=f"use one of {', '.join(formats.WRITERS)}")
    formats.get_reader(cfg.source_format)
    if cfg.target_format != "par04":  # par04 writes one file per angle into a directory
        check_output_file(cfg.output)  # a directory, a device or a read-only disk: refused before reading
        return _convert(cfg, progress=progress)
    from mlfastsim.core.resume import job_output_dir

    with job_output_dir(cfg.output):  # a refused or failed first run leaves no empty folder
        return _convert(cfg, progress=progress)


def _convert(cfg: ConvertConfig, *, progress: bool) -> tuple[Converted | None, bool]:
    from mlfastsim.core.errors import MlfastsimError, OutputError
    from mlfastsim.core.parallel import file_signatures
    from mlfastsim.showers.io import formats
    from mlfastsim.showers.io.stream import STREAM_VERSION, plan_conversion, run_conversion

    # the given paths for the joined file's provenance, their absolute form for the fingerprint and tasks
    paths = [p.resolve() for p in formats.expand_inputs(cfg.inputs, what=cfg.source_format)]
    fingerprint = config_fingerprint(cfg, file_signatures(paths), STREAM_VERSION)
    if is_done(cfg.output, fingerprint):
        return None, True
    mesh = resolve_mesh(cfg.mesh, cfg.binning)
    plan = plan_conversion(cfg.source_format, cfg.inputs, mesh=mesh)  # every layout checked, no shower read
    plan.require_showers()
    cache = TaskCache(cache_dir_for(cfg.output), fingerprint)  # takes the output's job lock
    try:
        written = run_conversion(plan, cfg.target_format, cfg.output, job=fingerprint, cache=cache,
                                 workers=cfg.parallel.workers, scheduler=cfg.parallel.scheduler, progress=progress)
    except MlfastsimError as exc:
        if not isinstance(exc, OutputError):
            cache.clear()  # the inputs are at fault: nothing worth resuming (a full disk keeps its blocks)
        raise
    clear_done(cfg.output)
    cache.clear()
    return written, False


def _simulate_pion_task(energies: np.ndarray, grid: Any, calo: Any, seed: int, first_event: int) -> np.ndarray:
    from mlfastsim.showers.sim.hadronic import simulate_pions

    return simulate_pions(energies, grid, calo, seed, first_event=first_event)


def _simulate_task(detector, mesh, energies, angles, particle: str, seed: int, chunk_index: int) -> np.ndarray:
    from mlfastsim.showers.sim.em import simulate_chunk

    return simulate_chunk(detector, mesh, energies, angles, particle=particle, seed=seed, chunk_index=chunk_index)


def _common_crop(reference: ShowerData, candidate: ShowerData) -> tuple[ShowerData, ShowerData]:
    """Hadron models generate on a crop around the axis (25 x 25 of 48 x 48): crop the larger sample to it.

    Only a centred crop of the same grid (same cells and layers) qualifies; anything else is left for
    the mesh check of the validation to report.
    """
    import logging

    from mlfastsim.showers.conditioning.grid import crop_showers
    from mlfastsim.showers.geometry import CartesianGrid

    a, b = reference.mesh, candidate.mesh
    if not (isinstance(a, CartesianGrid) and isinstance(b, CartesianGrid)) or a.shape == b.shape:
        return reference, candidate
    same_cells = (a.n_z, a.cell_x, a.cell_y, a.cell_z) == (b.n_z, b.cell_x, b.cell_y, b.cell_z)
    if not same_cells:
        return reference, candidate
    log = logging.getLogger(__name__)
    if a.n_x >= b.n_x and a.n_y >= b.n_y:
        log.info("cropping the reference to the candidate's %d x %d cells around the axis", b.n_x, b.n_y)
        return crop_showers(reference, (b.n_x, b.n_y)), candidate
    if b.n_x >= a.n_x and b.n_y >= a.n_y:
        log.info("cropping the candidate to the reference's %d x %d cells around the axis", a.n_x, a.n_y)
        return reference, crop_showers(candidate, (a.n_x, a.n_y))
    return reference, candidate


def validate_files(cfg: ValidateConfig, *, progress: bool = False) -> dict[str, Any]:
    """Read both samples, run the validation and write metrics, figures and the HTML report."""
    from mlfastsim.core.errors import ConfigError
    from mlfastsim.showers.validation.validate import run_validation

    if cfg.reference is None or cfg.candidate is None:
        missing = "--reference" if cfg.reference is None else "--candidate"
        raise ConfigError("no file given", field=missing, fix=f"pass {missing} FILE.h5")
    mesh = resolve_mesh(cfg.mesh, cfg.binning)
    reference = read_native(cfg.reference, mesh=mesh)
    candidate = read_native(cfg.candidate, mesh=mesh)
    reference, candidate = _common_crop(reference, candidate)
    created = not cfg.output.exists()
    outdir = ensure_writable_dir(cfg.output)
    reference.meta.setdefault("source", str(cfg.reference))
    candidate.meta.setdefault("source", str(cfg.candidate))
    try:
        # one validation per output directory: a second run on the same -o stops with one line instead of
        # leaving a mix of both runs' figures and metrics
        with job_lock(outdir):
            tracker = tracker_from_config(cfg.tracking, default_name=f"validate-{outdir.name}")
            # without a run name the tracker's folder is new (timestamped): a refused run removes it again
            new_run_dir = getattr(tracker, "run_dir", None) if cfg.tracking.run_name is None else None
            try:
                tracker.log_params({"reference": str(cfg.reference), "candidate": str(cfg.candidate),
                                    "classifier": cfg.classifier, "seed": cfg.seed})
                metrics = run_validation(
                    reference, candidate, outdir, classifier=False if cfg.classifier == "off" else cfg.classifier,
                    tracker=tracker, seed=cfg.seed, labels=(cfg.reference.stem, cfg.candidate.stem),
                    progress=progress, exclude_empty=cfg.exclude_empty, threshold_mev=cfg.threshold_mev,
                    binning_mode=cfg.binning_mode, match=cfg.match_conditions,
                )
            except BaseException:
                tracker.close()
                if new_run_dir is not None:
                    import shutil

                    shutil.rmtree(new_run_dir, ignore_errors=True)
                    with contextlib.suppress(OSError):  # runs/ itself, when this run made it
                        Path(new_run_dir).parent.rmdir()
                raise
            tracker.close()
            atomic_write_text(outdir / "config.yaml", dump_config(cfg))
    except BaseException:
        # refused input: never leave an empty output folder behind
        if created and outdir.is_dir() and not any(outdir.iterdir()):
            outdir.rmdir()
        raise
    return metrics
