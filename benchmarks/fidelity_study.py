"""One table comparing the Par04 VAE and the flow-matching family (cfm): pre-trained, adapted, from scratch.

Same data and budget for both families (issue 13 item 8):

* **pre-trained on SiW** (a training geometry, slot 0): the shipped ``vae_ds2_meta`` (or ``--vae``) and a cfm
  checkpoint (``--cfm``, e.g. ``runs/cfm_cpu/checkpoints/step_N.pt`` from ``configs/showers/cfm_cpu.yaml``)
  against ``--n-ref`` simulated SiW showers (1-1000 GeV log-uniform, 50-90 degrees);
* **adapted to FCCeeSiW** (never seen): ``showers adapt`` from each pre-trained model on the demo's 1800 showers
  (1, 4, 16, 64, 256, 1000 GeV x 50, 70, 90 degrees x 100) for ``--adapt-steps`` steps at batch ``--batch``;
* **from scratch on FCCeeSiW**: ``showers train`` of the same architecture on the same showers, same steps;
* the **floor**: a second simulated sample of the same detector (what a perfect model would score).

Every candidate is generated at the reference's energies and angles and validated with the readout threshold
(15.15 keV) and ``--binning-mode calochallenge`` (``showers validate``'s code): AUC low/high (fast
classifier), FPD, KPD, mean SP over every CaloChallenge-binning observable, n_hits SP.  Also: training wall
time, generation ms/shower on CPU (torch, ``--threads``) at batch 1, 100 and 10k, and a sweep of the cfm's
solver steps (1, 2, 4, 8, 16, 32) on the pre-trained SiW row, and, with ``--curve``, the budget -> quality curve
over the pre-training checkpoints of a cfm run directory.

    OMP_NUM_THREADS=1 python benchmarks/fidelity_study.py --cfm runs/cfm_cpu/checkpoints/step_N.pt \\
        [--n-ref 4000] [--adapt-steps 400] [--batch 64] [--steps 1,2,4,8,16,32] [--timing-batches 1,100,10000] \\
        [--curve runs/cfm_cpu/checkpoints] [--work runs/fidelity_study] [--no-classifier] [--sweep-classifier]

Timings on a shared machine are upper bounds; the script says how many threads it used.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlfastsim.core.checkpoint import list_checkpoints
from mlfastsim.core.trainer import TrainerConfig
from mlfastsim.showers.conditioning.em import DataConfig
from mlfastsim.showers.config import AdaptConfig, SimulateConfig, TrainConfig
from mlfastsim.showers.inference.generate import generate
from mlfastsim.showers.io.formats import ShowerData, read_native
from mlfastsim.showers.models import LoadedModel, load_model
from mlfastsim.showers.pipeline import simulate_to_file
from mlfastsim.showers.pretrained import pretrained_path
from mlfastsim.showers.training.meta import adapt
from mlfastsim.showers.training.train import train_from_config
from mlfastsim.showers.validation.validate import run_validation

ADAPT_KINEMATICS = {"energies_gev": [1.0, 4.0, 16.0, 64.0, 256.0, 1000.0], "angles_deg": [50.0, 70.0, 90.0],
                    "n_per_point": 100}


def _cli_value(v: Any) -> str:
    """A kinematics value as the CLI spells it: ranges a:b, lists a,b,c."""
    if isinstance(v, tuple):
        return ":".join(f"{x:g}" for x in v)
    return ",".join(f"{x:g}" for x in v) if isinstance(v, list) else str(v)


def simulate(work: Path, name: str, detector: str, seed: int, **kinematics: Any) -> Path:
    """A ds2 sample of ``detector``, simulated once (the equivalent CLI command is printed)."""
    path = work / f"{name}.h5"
    if not path.is_file():
        cfg = SimulateConfig(detector=detector, mesh="ds2", particle="electron", seed=seed, output=path, **kinematics)
        args = " ".join(f"--{k.replace('_', '-')} {_cli_value(v)}" for k, v in kinematics.items())
        print(f"$ mlfastsim showers simulate --detector {detector} --mesh ds2 {args} --seed {seed} -o {path}",
              flush=True)
        simulate_to_file(cfg)
    return path


def reference_kinematics(n: int) -> dict[str, Any]:
    return {"energy_range_gev": (1.0, 1000.0), "angle_range_deg": (50.0, 90.0), "n_per_point": n}


def candidate(model: LoadedModel, reference: ShowerData, slot: int, seed: int, steps: int | None = None) -> ShowerData:
    """One generated shower per reference shower (same energy and angle), in MeV, readout threshold applied."""
    m = model.with_steps(steps)
    showers = generate(m, reference.energies, reference.angles, slot, seed=seed, batch_size=1000)
    return ShowerData(reference.energies, showers, reference.mesh, reference.angles, {"source": "generated"})


def score(reference: ShowerData, cand: ShowerData, out: Path, *, classifier: bool, seed: int) -> dict[str, Any]:
    """AUC low/high, FPD, KPD, mean SP (CaloChallenge binning, every observable), n_hits SP."""
    m = run_validation(reference, cand, out, classifier=classifier, seed=seed, binning_mode="calochallenge",
                       draw_figures=False, exclude_empty=True)
    cc = m.get("observables_calochallenge") or m["observables"]
    sps = [v["separation_power"] for v in cc.values() if v.get("separation_power") is not None]
    low, high = m.get("classifier", {}).get("low_level", {}), m.get("classifier", {}).get("high_level", {})
    return {"auc_low": low.get("auc"), "auc_high": high.get("auc"), "fpd": m["fpd"].get("value"),
            "kpd": m["kpd"].get("value"), "mean_sp": float(np.mean(sps)) if sps else None,
            "n_hits_sp": m["observables"]["n_hits"]["separation_power"],
            "e_ratio_sp": m["observables"]["e_ratio"]["separation_power"]}


def ms_per_shower(model: LoadedModel, batch: int, *, steps: int | None = None, repeats: int = 2) -> float:
    """Best-of-``repeats`` wall time of one generate call of ``batch`` showers (torch, current threads);
    one repeat from batch 10k on (a long call averages over its own fluctuations)."""
    repeats = 1 if batch >= 10000 else repeats
    m = model.with_steps(steps)
    e = np.full(batch, 50e3, dtype=np.float32)
    a = np.full(batch, 90.0, dtype=np.float32)
    generate(m, e[:1], a[:1], 0, seed=0, batch_size=1)  # warm-up
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(m, e, a, 0, seed=r, batch_size=batch)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / batch


def adapt_run(work: Path, name: str, pretrained: Path, data: Path, steps: int, batch: int, lr: float,
              seed: int, trainable: list[str] | None = None) -> tuple[Path, float]:
    sub = f" --trainable {','.join(trainable)}" if trainable else ""
    print(f"$ mlfastsim showers adapt --checkpoint {pretrained} --data {data} --set adaptation_steps={steps} "
          f"--set batch_size={batch} --set learning_rate={lr} --set plot_freq=0 --set seed={seed}{sub}", flush=True)
    cfg = AdaptConfig(data=DataConfig(files=[data], geometry_index=[0]), checkpoint=pretrained,
                      adaptation_steps=steps, checkpoint_step=steps, plot_freq=0, learning_rate=lr,
                      batch_size=batch, seed=seed, study_name=name, run_name="run", output_dir=work / "adapt",
                      trainable=trainable)
    cfg.tracking.dir = work / "tracking"
    t0 = time.perf_counter()
    result = adapt(cfg, progress=False)
    assert result.last_checkpoint is not None
    return result.last_checkpoint, time.perf_counter() - t0


def scratch_run(work: Path, name: str, model_cfg: Any, data: Path, steps: int, batch: int, lr: float,
                seed: int) -> tuple[Path, float]:
    """The same architecture trained from scratch on the adaptation showers (slot 0 of the same conditioning)."""
    print(f"$ mlfastsim showers train --model-type {model_cfg.type} --data {data} --set trainer.max_steps={steps} "
          f"--set trainer.batch_size={batch} --set trainer.learning_rate={lr} --set trainer.seed={seed}", flush=True)
    out = work / "scratch" / name
    cfg = TrainConfig(model=model_cfg, data=DataConfig(files=[data], geometry_index=[0]),
                      trainer=TrainerConfig(max_steps=steps, batch_size=batch, learning_rate=lr, eval_every=steps,
                                            checkpoint_every=steps, seed=seed), output_dir=out)
    cfg.tracking.dir = work / "tracking"
    t0 = time.perf_counter()
    result = train_from_config(cfg, resume=False, progress=False)
    assert result.last_checkpoint is not None
    return result.last_checkpoint, time.perf_counter() - t0


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfm", type=Path, required=True, help="pre-trained cfm checkpoint")
    parser.add_argument("--vae", type=Path, default=None, help="pre-trained VAE (default: the shipped one)")
    parser.add_argument("--work", type=Path, default=Path("runs/fidelity_study"))
    parser.add_argument("--n-ref", type=int, default=4000)
    parser.add_argument("--adapt-steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="VAE learning rate (adapt and scratch)")
    parser.add_argument("--cfm-lr", type=float, default=5e-4, help="cfm learning rate (adapt and scratch)")
    parser.add_argument("--steps", default="1,2,4,8,16,32", help="cfm solver steps swept on the SiW row")
    parser.add_argument("--timing-batches", default="1,100,10000")
    parser.add_argument("--curve", type=Path, default=None, help="a cfm checkpoints directory: budget -> quality")
    parser.add_argument("--curve-every", type=int, default=1, help="use every k-th checkpoint of --curve")
    parser.add_argument("--no-classifier", action="store_true")
    parser.add_argument("--sweep-classifier", action="store_true", help="AUCs in the solver-step sweep too (slow)")
    parser.add_argument("--sweep-n", type=int, default=None,
                        help="reference showers in the step sweep and the curve (default: --n-ref)")
    parser.add_argument("--skip-scratch", action="store_true")
    parser.add_argument("--cfm-trainable", default="energy,shape.final_mod,shape.out",
                        help="an extra cfm row adapting only these parameter prefixes ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the rows already in WORK/fidelity_study.json (an interrupted study goes on)")
    args = parser.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    clf = not args.no_classifier
    kin = reference_kinematics(args.n_ref)
    siw_ref = read_native(simulate(work, "siw_ref", "SiW", 201, **kin))
    siw_floor = read_native(simulate(work, "siw_floor", "SiW", 202, **kin))
    fcc_ref = read_native(simulate(work, "fcc_ref", "FCCeeSiW", 301, **kin))
    fcc_floor = read_native(simulate(work, "fcc_floor", "FCCeeSiW", 302, **kin))
    fcc_train = simulate(work, "fcc_adapt_1800", "FCCeeSiW", 11, **ADAPT_KINEMATICS)

    vae_path = args.vae or pretrained_path()
    models = {"vae": load_model(vae_path), "cfm": load_model(args.cfm)}
    results: dict[str, Any] = {"threads": threads, "n_ref": args.n_ref, "adapt_steps": args.adapt_steps,
                               "batch": args.batch, "rows": {}, "sweep": {}, "curve": {}}
    saved = work / "fidelity_study.json"
    if args.reuse and saved.is_file():
        results["rows"] = json.loads(saved.read_text())["rows"]
    done = set(results["rows"])

    def row(name: str, ref: ShowerData, cand: ShowerData, **extra: Any) -> None:
        t0 = time.perf_counter()
        r = score(ref, cand, work / "val" / name.split(",")[0].replace(" ", "_"), classifier=clf, seed=args.seed)
        results["rows"][name] = {**r, **extra, "score_s": round(time.perf_counter() - t0, 1)}
        print(name, json.dumps(results["rows"][name]), flush=True)
        (work / "fidelity_study.json").write_text(json.dumps(results, indent=1))

    if "floor SiW (seed 201 vs 202)" not in done:
        row("floor SiW (seed 201 vs 202)", siw_ref, siw_floor)
    if "floor FCCeeSiW (seed 301 vs 302)" not in done:
        row("floor FCCeeSiW (seed 301 vs 302)", fcc_ref, fcc_floor)
    for fam, model in models.items():
        if f"{fam} pre-trained, SiW" in done:
            continue
        timing = {f"ms_b{b}": round(ms_per_shower(model, int(b)), 3) for b in args.timing_batches.split(",")}
        row(f"{fam} pre-trained, SiW", siw_ref, candidate(model, siw_ref, 0, args.seed), **timing)
    for fam, model in models.items():
        lr = args.cfm_lr if fam == "cfm" else args.lr
        if f"{fam} adapted, FCCeeSiW" in done:
            continue
        ckpt, secs = adapt_run(work, f"{fam}_adapt", Path(model.path), fcc_train, args.adapt_steps, args.batch, lr,
                               args.seed)
        row(f"{fam} adapted, FCCeeSiW", fcc_ref, candidate(load_model(ckpt), fcc_ref, 0, args.seed),
            train_s=round(secs, 1))
    subset = [t for t in args.cfm_trainable.split(",") if t]
    label = f"cfm adapted ({'+'.join(subset)} only), FCCeeSiW"
    if subset and label not in done:
        ckpt, secs = adapt_run(work, "cfm_adapt_subset", Path(models["cfm"].path), fcc_train, args.adapt_steps,
                               args.batch, args.cfm_lr, args.seed, trainable=subset)
        row(label, fcc_ref, candidate(load_model(ckpt), fcc_ref, 0, args.seed), train_s=round(secs, 1))
    for fam, model in models.items():
        lr = args.cfm_lr if fam == "cfm" else args.lr
        if not args.skip_scratch and f"{fam} from scratch, FCCeeSiW" not in done:
            ckpt, secs = scratch_run(work, fam, model.config, fcc_train, args.adapt_steps, args.batch, lr, args.seed)
            row(f"{fam} from scratch, FCCeeSiW", fcc_ref, candidate(load_model(ckpt), fcc_ref, 0, args.seed),
                train_s=round(secs, 1))
    cfm = models["cfm"]
    sweep_ref = siw_ref.subset(slice(0, args.sweep_n)) if args.sweep_n else siw_ref
    results["sweep_n"] = len(sweep_ref)
    for steps in [int(s) for s in args.steps.split(",")]:
        r = score(sweep_ref, candidate(cfm, sweep_ref, 0, args.seed, steps), work / "val" / f"sweep_{steps}",
                  classifier=clf and args.sweep_classifier, seed=args.seed)
        results["sweep"][steps] = {**r, "ms_b100": round(ms_per_shower(cfm, 100, steps=steps), 3)}
        print("steps", steps, json.dumps(results["sweep"][steps]), flush=True)
        (work / "fidelity_study.json").write_text(json.dumps(results, indent=1))
    if args.curve is not None:
        for step, path in list_checkpoints(args.curve)[args.curve_every - 1::args.curve_every]:
            r = score(sweep_ref, candidate(load_model(path), sweep_ref, 0, args.seed), work / "val" / f"curve_{step}",
                      classifier=clf and args.sweep_classifier, seed=args.seed)
            results["curve"][step] = r
            print("curve", step, json.dumps(r), flush=True)
            (work / "fidelity_study.json").write_text(json.dumps(results, indent=1))

    cols = ("auc_low", "auc_high", "fpd", "kpd", "mean_sp", "n_hits_sp", "e_ratio_sp")
    tb = args.timing_batches.split(",")
    print(f"\nFidelity study: {args.n_ref} vs {args.n_ref} showers, 15.15 keV threshold, CaloChallenge binning; "
          f"adapt/scratch {args.adapt_steps} steps at batch {args.batch}; {threads} thread(s)")
    print("| model | AUC low | AUC high | FPD | KPD | mean SP | n_hits SP | E_tot/E_inc SP | train s | "
          + " | ".join(f"ms/shower b{b}" for b in tb) + " |")
    print("|---|" + "---|" * (len(cols) + 1 + len(tb)))
    for name, r in results["rows"].items():
        print(f"| {name} | " + " | ".join(fmt(r.get(k), ".4g") for k in cols)
              + f" | {fmt(r.get('train_s'), '.0f')} | " + " | ".join(fmt(r.get(f"ms_b{b}"), ".3g") for b in tb) + " |")
    print(f"\ncfm solver steps (pre-trained, SiW, {results['sweep_n']} vs {results['sweep_n']} showers)")
    print("| steps | AUC low | AUC high | FPD | KPD | mean SP | n_hits SP | E_tot/E_inc SP | ms/shower b100 |")
    print("|---|" + "---|" * (len(cols) + 1))
    for steps, r in results["sweep"].items():
        print(f"| {steps} | " + " | ".join(fmt(r.get(k), ".4g") for k in cols) + f" | {r['ms_b100']:.3g} |")
    if results["curve"]:
        print(f"\ncfm pre-training budget -> quality (SiW, {results['sweep_n']} vs {results['sweep_n']} showers, "
              f"{cfm.config.steps} solver steps)")
        print("| step | AUC low | AUC high | FPD | KPD | mean SP | n_hits SP | E_tot/E_inc SP |")
        print("|---|" + "---|" * len(cols))
        for step, r in results["curve"].items():
            print(f"| {step} | " + " | ".join(fmt(r.get(k), ".4g") for k in cols) + " |")


if __name__ == "__main__":
    main()
