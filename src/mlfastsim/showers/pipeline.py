"""The shower commands as functions: what the CLI and the demo call, usable from Python too.

Each function takes a validated config, fails fast on bad input (before any expensive work) and writes
its outputs atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlfastsim.core.config import dump_config
from mlfastsim.core.io import atomic_write_text, ensure_writable_dir
from mlfastsim.core.parallel import run_tasks
from mlfastsim.core.tracking import tracker_from_config
from mlfastsim.showers.config import SimulateConfig, ValidateConfig
from mlfastsim.showers.formats import ShowerData, read_native, write_native
from mlfastsim.showers.geometry import CylindricalMesh, load_detector, load_mesh, read_binning_xml


def resolve_mesh(mesh: str | None, binning: Path | None) -> CylindricalMesh | None:
    """The mesh a user asked for with ``--binning FILE.xml`` or ``--mesh NAME``, or None (use the file's)."""
    if binning is not None:
        return read_binning_xml(binning)
    if mesh is not None:
        return load_mesh(mesh)
    return None


def simulate_to_file(cfg: SimulateConfig, *, progress: bool = False) -> ShowerData:
    """Run the reference simulator as configured (serially or on Dask) and write the native file."""
    from mlfastsim.showers.simulate import make_kinematics

    detector = load_detector(cfg.detector)
    mesh = load_mesh(cfg.mesh)
    ensure_writable_dir(cfg.output.parent if str(cfg.output.parent) else Path("."))
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
        (detector, mesh, energies[lo : lo + cfg.chunk_size], angles[lo : lo + cfg.chunk_size])
        for lo in bounds
    ]
    chunks = run_tasks(
        _simulate_task,
        [(*task, cfg.particle, cfg.seed, i) for i, task in enumerate(tasks)],
        workers=cfg.parallel.workers,
        scheduler=cfg.parallel.scheduler,
        description=f"simulating {len(energies)} showers ({detector.name})",
        progress=progress,
    )
    data = ShowerData(
        energies=energies,
        showers=np.concatenate(chunks, axis=0),
        mesh=mesh,
        angles=angles,
        meta={
            "detector": detector.to_dict(),
            "particle": cfg.particle,
            "seed": cfg.seed,
            "simulator": "gflash-gp",
            "config": dump_config(cfg),
        },
    )
    write_native(data, cfg.output)
    return data


def _simulate_task(detector, mesh, energies, angles, particle: str, seed: int, chunk_index: int) -> np.ndarray:
    from mlfastsim.showers.simulate import simulate_chunk

    return simulate_chunk(detector, mesh, energies, angles, particle=particle, seed=seed, chunk_index=chunk_index)


def validate_files(cfg: ValidateConfig, *, progress: bool = False) -> dict[str, Any]:
    """Read both samples, run the validation and write metrics, figures and the HTML report."""
    from mlfastsim.core.errors import ConfigError
    from mlfastsim.showers.validate import run_validation

    if cfg.reference is None or cfg.candidate is None:
        missing = "--reference" if cfg.reference is None else "--candidate"
        raise ConfigError("no file given", field=missing, fix=f"pass {missing} FILE.h5")
    mesh = resolve_mesh(cfg.mesh, cfg.binning)
    reference = read_native(cfg.reference, mesh=mesh)
    candidate = read_native(cfg.candidate, mesh=mesh)
    outdir = ensure_writable_dir(cfg.output)
    reference.meta.setdefault("source", str(cfg.reference))
    candidate.meta.setdefault("source", str(cfg.candidate))
    tracker = tracker_from_config(cfg.tracking, default_name=f"validate-{outdir.name}")
    try:
        tracker.log_params({"reference": str(cfg.reference), "candidate": str(cfg.candidate),
                            "classifier": cfg.classifier, "seed": cfg.seed})
        metrics = run_validation(
            reference, candidate, outdir, classifier=cfg.classifier, tracker=tracker, seed=cfg.seed,
            labels=(cfg.reference.stem, cfg.candidate.stem), progress=progress,
            exclude_empty=cfg.exclude_empty,
        )
    finally:
        tracker.close()
    atomic_write_text(outdir / "config.yaml", dump_config(cfg))
    return metrics
