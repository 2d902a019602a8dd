"""Hadron-shower model comparison: BIB-AE(+post-processor) vs WGAN vs the reference simulator.

Stages (each cached in ``--work-dir``, so a rerun after an interruption resumes):

1. simulate ``--n-train`` charged pions (uniform 10-100 GeV) on hcal48 for training and ``--n-ref`` more
   with another seed as the held-out reference;
2. train the energy regressor, the WGAN (with it), the BIB-AE and its post-processor from
   ``configs/hadrons/*.yaml`` with the step counts and batch size given here (the CPU budget);
3. generate as many showers as the reference, at the reference's energies, from the WGAN, the BIB-AE
   and the BIB-AE+PP, and validate each against the reference (cropped to 25 x 25) with the classifier;
4. time generation per shower at batch 100 (torch and onnxruntime) and the simulator's time per shower.

Prints a table: separation power of every scalar observable, the profiles and the cell (hit-energy)
spectrum, mean SP and the low-level classifier AUC, plus training wall time per model.

    python benchmarks/hadron_study.py --work-dir build/hadron_study [--steps 300] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlfastsim.core.config import load_config
from mlfastsim.core.io import atomic_write_json
from mlfastsim.showers.conditioning.grid import crop_showers
from mlfastsim.showers.config import SimulateConfig
from mlfastsim.showers.hadron_generate import export_hadron_onnx, generate_hadrons, torch_runner
from mlfastsim.showers.hadron_training import HadronTrainConfig, load_hadron_model, train_hadrons
from mlfastsim.showers.io.formats import ShowerData, read_native
from mlfastsim.showers.pipeline import simulate_to_file
from mlfastsim.showers.validation.classifier import ClassifierConfig
from mlfastsim.showers.validation.validate import run_validation

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hadrons"
ROWS = ("e_total", "e_ratio", "n_hits", "first_moment_z", "second_moment_z", "first_moment_r", "second_moment_r",
        "cog_x", "cog_y", "longitudinal_profile", "lateral_profile", "cell_energy")


def _cached(path: Path, run: Any) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    out = run()
    atomic_write_json(path, out)
    return out


def _train(name: str, work: Path, data: Path, steps: int, batch: int, threads: int, extra: dict[str, Any]
           ) -> dict[str, Any]:
    out = work / "runs" / name
    overrides = [f"trainer.max_steps={steps}", f"trainer.batch_size={batch}",
                 f"trainer.eval_every={max(steps // 5, 1)}", f"trainer.checkpoint_every={steps}",
                 f"device.num_threads={threads}", f"tracking.dir={work / 'tracking'}"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    cfg = load_config(HadronTrainConfig, CONFIGS / f"{name}.yaml",
                      cli={"data.files": [str(data)], "output_dir": str(out)}, overrides=overrides)
    t0 = time.perf_counter()
    result = train_hadrons(cfg, progress=True)
    return {"checkpoint": str(result.last_checkpoint), "train_s": time.perf_counter() - t0, "steps": steps,
            "batch": batch, "best_val_loss": result.best_val_loss}


def _sampler_for(model: str, runs: dict[str, dict[str, Any]]) -> tuple[Any, int, Any]:
    loaded = load_hadron_model(runs[model]["checkpoint"])
    return loaded.sampler(), loaded.latent_dim, loaded.norm


def _generation_timing(sampler: torch.nn.Module, latent: int, norm: Any, onnx: Path, threads: int
                       ) -> dict[str, float]:
    from mlfastsim.core.export import OnnxRunner, make_session

    energies = np.full(100, 50e3, np.float32)
    out: dict[str, float] = {}
    for label, run in (("torch", torch_runner(sampler)),
                       ("onnx", OnnxRunner(make_session(onnx, num_threads=threads), source=onnx))):
        generate_hadrons(run, latent, norm, energies, seed=0, batch_size=100)  # warm-up
        t0 = time.perf_counter()
        reps = 3
        for i in range(reps):
            generate_hadrons(run, latent, norm, energies, seed=i + 1, batch_size=100)
        out[f"{label}_ms_per_shower"] = (time.perf_counter() - t0) / (reps * 100) * 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/hadron_study"))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-ref", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the WGAN and of the BIB-AE")
    parser.add_argument("--pp-steps", type=int, default=150)
    parser.add_argument("--regressor-steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    torch.set_num_threads(args.threads)
    work = args.work_dir
    (work / "results").mkdir(parents=True, exist_ok=True)
    res = work / "results"

    train_file, ref_file = work / "pions_train.h5", work / "pions_ref.h5"
    sim_s: dict[str, float] = {}
    for path, n, seed in ((train_file, args.n_train, 1), (ref_file, args.n_ref, 2)):
        if not path.is_file():
            t0 = time.perf_counter()
            simulate_to_file(SimulateConfig(particle="pion", grid="hcal48", energy_range_gev=(10.0, 100.0),
                                            n_per_point=n, seed=seed, output=path), progress=True)
            sim_s[path.name] = time.perf_counter() - t0

    runs: dict[str, dict[str, Any]] = {}
    runs["regressor"] = _cached(res / "train_regressor.json", lambda: _train(
        "regressor", work, train_file, args.regressor_steps, args.batch, args.threads, {}))
    runs["wgan"] = _cached(res / "train_wgan.json", lambda: _train(
        "wgan", work, train_file, args.steps, args.batch, args.threads,
        {"model.regressor_checkpoint": runs["regressor"]["checkpoint"]}))
    runs["bibae"] = _cached(res / "train_bibae.json", lambda: _train(
        "bibae", work, train_file, args.steps, args.batch, args.threads, {}))
    runs["postprocess"] = _cached(res / "train_postprocess.json", lambda: _train(
        "postprocess", work, train_file, args.pp_steps, args.batch, args.threads,
        {"model.bibae_checkpoint": runs["bibae"]["checkpoint"]}))

    reference_full = read_native(ref_file)
    reference = crop_showers(reference_full, (25, 25))
    reference.meta["source"] = str(ref_file)
    results: dict[str, dict[str, Any]] = {}
    for label, model in (("WGAN", "wgan"), ("BIB-AE", "bibae"), ("BIB-AE+PP", "postprocess")):
        def evaluate(model: str = model, label: str = label) -> dict[str, Any]:
            sampler, latent, norm = _sampler_for(model, runs)
            ckpt = Path(runs[model]["checkpoint"])
            showers = generate_hadrons(torch_runner(sampler), latent, norm, reference.energies, seed=7,
                                       batch_size=100)
            cand = ShowerData(reference.energies, showers, norm.grid, reference.angles, {"source": label})
            n_filled = int((cand.showers.max(axis=1) > 0).sum())
            # the classifier needs >= 20 non-empty showers; an under-trained model may leave most empty
            metrics = run_validation(reference, cand, work / "validation" / model, classifier=n_filled >= 20,
                                     seed=0, exclude_empty=True, labels=("reference", label),
                                     classifier_config=ClassifierConfig(threads=args.threads))
            onnx = work / "onnx" / f"{model}.onnx"
            export_hadron_onnx(ckpt, onnx, num_threads=args.threads)
            timing = _generation_timing(sampler, latent, norm, onnx, args.threads)
            return {"sp": {k: metrics["observables"][k]["separation_power"] for k in ROWS},
                    "auc": metrics.get("classifier", {}).get("low_level", {}).get("auc", float("nan")),
                    "auc_high": metrics.get("classifier", {}).get("high_level", {}).get("auc", float("nan")),
                    "n_empty": metrics["n_excluded_empty"]["candidate"],
                    "response": metrics["response"]["candidate"], **timing}
        results[label] = _cached(res / f"eval_{model}.json", evaluate)
        print(f"evaluated {label}", file=sys.stderr, flush=True)

    sim = _cached(res / "simulator_timing.json", lambda: _simulator_timing())
    labels = list(results)
    print(f"\nhadron study: {args.n_train} training / {len(reference)} reference pions (10-100 GeV), grid 48x25x25; "
          f"CPU budget: batch {args.batch}, WGAN/BIB-AE {args.steps} steps, PP {args.pp_steps}, regressor "
          f"{args.regressor_steps}, {args.threads} threads")
    print(f"{'observable (SP, lower is better)':<34}" + "".join(f"{lab:>12}" for lab in labels))
    for key in ROWS:
        print(f"{key:<34}" + "".join(f"{results[lab]['sp'][key]:>12.3f}" for lab in labels))
    print(f"{'mean SP':<34}" + "".join(f"{np.mean(list(results[lab]['sp'].values())):>12.3f}" for lab in labels))
    print(f"{'classifier AUC (low / high level)':<34}"
          + "".join(f"{results[lab]['auc']:>6.3f}/{results[lab]['auc_high']:.3f}" for lab in labels))
    print(f"{'empty generated showers':<34}" + "".join(f"{results[lab]['n_empty']:>12d}" for lab in labels))
    for key, name in (("torch_ms_per_shower", "generation ms/shower, torch b100"),
                      ("onnx_ms_per_shower", "generation ms/shower, ORT b100")):
        print(f"{name:<34}" + "".join(f"{results[lab][key]:>12.2f}" for lab in labels))
    train_s = {"WGAN": runs["regressor"]["train_s"] + runs["wgan"]["train_s"], "BIB-AE": runs["bibae"]["train_s"],
               "BIB-AE+PP": runs["bibae"]["train_s"] + runs["postprocess"]["train_s"]}
    print(f"{'training wall time, s':<34}" + "".join(f"{train_s[lab]:>12.0f}" for lab in labels))
    print(f"reference simulator: {sim['ms_per_shower']:.2f} ms/shower at 50 GeV, batch 100 (full 48^3 grid)")
    if sim_s:
        print("simulation wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in sim_s.items()))
    return 0


def _simulator_timing() -> dict[str, float]:
    from mlfastsim.showers.geometry import GRID_PRESETS
    from mlfastsim.showers.sim.hadronic import HADRON_CALORIMETERS, simulate_pions

    grid, calo = GRID_PRESETS["hcal48"], HADRON_CALORIMETERS["steel_scint"]
    simulate_pions(np.full(100, 50e3), grid, calo, 0)
    t0 = time.perf_counter()
    for i in range(5):
        simulate_pions(np.full(100, 50e3), grid, calo, i + 1)
    return {"ms_per_shower": (time.perf_counter() - t0) / 500 * 1e3}


if __name__ == "__main__":
    sys.exit(main())
