"""The stories ``mlfastsim demo`` tells, as functions returning their numbers (the CLI prints them).

* :func:`metahep_story`: a detector the shipped model never saw (FCCeeSiW), a few hundred simulated
  showers, and three ways to get a fast simulation for it: (a) the shipped meta-trained model as it is,
  (b) the shipped model adapted to the few showers (then exported to ONNX and sampled from the ONNX file,
  as Geant4 would), (c) the same network trained from scratch on the same few showers, and (d) the shipped
  flow-matching model (``cfm_ds2``) adapted to the same showers.  All are validated against a large reference
  sample (the cfm row against every k-th reference shower, at most ``cfm_validate`` of them, since it is the
  slowest generator here: milliseconds, not microseconds, per shower).
* :func:`detectors_story`: two detectors, same-vs-same and different-vs-same validation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlfastsim.core.io import ensure_writable_dir
from mlfastsim.core.parallel import ParallelConfig
from mlfastsim.core.tracking import TrackingConfig
from mlfastsim.core.trainer import TrainerConfig
from mlfastsim.showers.config import (
    AdaptConfig,
    DataConfig,
    ExportConfig,
    SimulateConfig,
    TrainConfig,
    ValidateConfig,
)
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.pipeline import simulate_to_file, validate_files
from mlfastsim.showers.validation.observables import apply_threshold

NEW_DETECTOR = "FCCeeSiW"
ENERGIES_GEV = [2.0, 8.0, 32.0, 128.0, 512.0]
ANGLES_DEG = [50.0, 70.0, 90.0]
CFM_TRAINABLE = ("energy", "shape.final_mod", "shape.out")


def _validate(reference: ShowerData, candidate: ShowerData, outdir: Path, *, seed: int, classifier: bool
              ) -> dict[str, Any]:
    from mlfastsim.showers.validation.validate import run_validation

    return run_validation(apply_threshold(reference), apply_threshold(candidate), outdir, classifier=classifier,
                          seed=seed, labels=("reference", outdir.name), exclude_empty=True, progress=True)


def metahep_story(out: Path, *, n_few: int = 100, n_reference: int = 400, adaptation_steps: int = 400,
                  seed: int = 1, classifier: bool = True, cfm_steps: int = 100, cfm_validate: int = 1000
                  ) -> dict[str, dict[str, Any]]:
    """Run the MetaHEP story; return {label: {"metrics": ..., "train_s": ..., "generator": ...}}."""
    from mlfastsim.showers.inference.export import export_onnx
    from mlfastsim.showers.inference.generate import generate, load_onnx_generator
    from mlfastsim.showers.io.formats import read_native
    from mlfastsim.showers.models import load_model
    from mlfastsim.showers.pretrained import pretrained_path
    from mlfastsim.showers.training.meta import adapt, sample_like
    from mlfastsim.showers.training.train import train_from_config

    out = ensure_writable_dir(out)
    few_path, ref_path = out / "new_geometry_few.h5", out / "new_geometry_reference.h5"
    for path, n, s in ((few_path, n_few, seed), (ref_path, n_reference, seed + 1000)):
        simulate_to_file(SimulateConfig(detector=NEW_DETECTOR, mesh="ds2", energies_gev=ENERGIES_GEV,
                                        angles_deg=ANGLES_DEG, n_per_point=n, seed=s, output=path), progress=True)
    reference = read_native(ref_path)
    tracking = TrackingConfig(dir=out / "tracking")
    results: dict[str, dict[str, Any]] = {}

    # (a) the shipped meta-trained model, no adaptation: the new geometry takes one-hot slot 0
    shipped = load_model(pretrained_path(), expect_mesh=reference.mesh)
    cand = sample_like(shipped, reference, geometry_index=0, seed=seed)
    results["shipped, no adaptation"] = {
        "metrics": _validate(reference, cand, out / "validate_shipped", seed=seed, classifier=classifier),
        "train_s": 0.0, "n_showers": 0, "generator": "torch"}

    # (b) adapted to the few showers, exported to ONNX, generated from the ONNX file
    t0 = time.perf_counter()
    adapted = adapt(AdaptConfig(
        data=DataConfig(files=[few_path], geometry_index=[0], val_fraction=0.1),
        adaptation_steps=adaptation_steps, checkpoint_step=max(1, adaptation_steps // 4), plot_freq=0,
        seed=seed, study_name="demo", run_name="adapted", output_dir=out / "runs", tracking=tracking))
    adapt_s = time.perf_counter() - t0
    onnx_path = export_onnx(ExportConfig(study_name="demo", run_name="adapted", output_dir=out / "runs",
                                         onnx_file_name=out / "adapted.onnx"))
    onnx_gen = load_onnx_generator(onnx_path)
    showers = generate(onnx_gen, reference.energies, reference.angles, 0, seed=seed,
                       batch_size=10000)
    cand = ShowerData(reference.energies, showers, reference.mesh, reference.angles, {"source": str(onnx_path)})
    results["adapted (ONNX)"] = {
        "metrics": _validate(reference, cand, out / "validate_adapted", seed=seed, classifier=classifier),
        "train_s": adapt_s, "n_showers": n_few * len(ENERGIES_GEV) * len(ANGLES_DEG), "generator": "onnxruntime",
        "best_step": adapted.best_step}

    # (c) the same network from scratch on the same few showers, same number of steps
    t0 = time.perf_counter()
    scratch = train_from_config(TrainConfig(
        data=DataConfig(files=[few_path], geometry_index=[0], val_fraction=0.1,
                        conditioning=shipped.conditioning),
        model=shipped.model_config,
        trainer=TrainerConfig(max_steps=adaptation_steps, batch_size=64, eval_every=max(1, adaptation_steps // 4),
                              checkpoint_every=adaptation_steps, seed=seed),
        tracking=tracking, output_dir=out / "runs" / "scratch"))
    scratch_s = time.perf_counter() - t0
    scratch_model = load_model(scratch.last_checkpoint)
    cand = sample_like(scratch_model, reference, geometry_index=0, seed=seed)
    results["from scratch"] = {
        "metrics": _validate(reference, cand, out / "validate_scratch", seed=seed, classifier=classifier),
        "train_s": scratch_s, "n_showers": n_few * len(ENERGIES_GEV) * len(ANGLES_DEG), "generator": "torch"}
    for row in results.values():
        row["n_validated"] = len(reference)

    # (d) the shipped flow-matching model adapted to the same few showers: its energy network and the shape
    # network's output head only (benchmarks/fidelity_study.py: better than tuning every weight, in a third of
    # the time: FCCeeSiW mean SP 0.058 against 0.066)
    if cfm_steps > 0:
        t0 = time.perf_counter()
        cfm_run = adapt(AdaptConfig(
            data=DataConfig(files=[few_path], geometry_index=[0], val_fraction=0.1),
            checkpoint=Path("pretrained:cfm_ds2"), adaptation_steps=cfm_steps, trainable=list(CFM_TRAINABLE),
            checkpoint_step=max(1, cfm_steps // 2), plot_freq=0, learning_rate=5e-4, seed=seed, study_name="demo",
            run_name="cfm", output_dir=out / "runs", tracking=tracking))
        cfm_s = time.perf_counter() - t0
        every = max(1, -(-len(reference) // max(1, cfm_validate)))
        sub = reference.subset(slice(None, None, every))
        cand = sample_like(load_model(cfm_run.last_checkpoint), sub, geometry_index=0, seed=seed)
        results["cfm adapted (energy + head)"] = {
            "metrics": _validate(sub, cand, out / "validate_cfm", seed=seed, classifier=classifier),
            "train_s": cfm_s, "n_showers": n_few * len(ENERGIES_GEV) * len(ANGLES_DEG), "generator": "torch",
            "best_step": cfm_run.best_step, "n_validated": len(sub)}
    return results


def detectors_story(out: Path, *, n_per_point: int = 1000, energies_gev: list[float] | None = None,
                    workers: int = 1, classifier: bool = True, seed: int = 1) -> dict[str, dict[str, Any]]:
    """Simulate SiW twice and SciPb once; validate SiW_b and SciPb against SiW_a."""
    out = ensure_writable_dir(out)
    energies = energies_gev or [2.0, 8.0, 32.0, 128.0, 512.0]
    samples = {"SiW_a": ("SiW", seed), "SiW_b": ("SiW", seed + 1000), "SciPb": ("SciPb", seed + 2000)}
    for name, (detector, s) in samples.items():
        simulate_to_file(SimulateConfig(detector=detector, mesh="ds2", energies_gev=energies, angles_deg=[90.0],
                                        n_per_point=n_per_point, seed=s, output=out / f"{name}.h5",
                                        parallel=ParallelConfig(workers=workers)), progress=True)
    results = {}
    for name in ("SiW_b", "SciPb"):
        results[name] = validate_files(ValidateConfig(
            reference=out / "SiW_a.h5", candidate=out / f"{name}.h5", output=out / f"validate_{name}",
            classifier=classifier, seed=seed, tracking=TrackingConfig(dir=out / "runs")), progress=True)
    return results
