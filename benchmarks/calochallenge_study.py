"""CaloChallenge-mode numbers for same-detector and different-detector pairs of simulated ds2 showers.

Simulates (or reuses) three ds2 samples with the reference simulator, electrons log-uniform in 1-1000 GeV
and uniform in 50-90 degrees, ``--n`` showers each::

    mlfastsim showers simulate --detector SiW   --mesh ds2 --energy-range-gev 1:1000 --angle-range-deg 50:90 \\
        --n-per-point N --seed 1 -o WORK/siw_s1.h5         (and --seed 2 -o WORK/siw_s2.h5)
    mlfastsim showers simulate --detector SciPb ... --seed 1 -o WORK/scipb_s1.h5

then validates SiW seed 2 and SciPb seed 1 against SiW seed 1 with the readout threshold (15.15 keV),
``--binning-mode calochallenge`` and the fast classifier (what ``mlfastsim showers validate --reference
WORK/siw_s1.h5 --candidate WORK/siw_s2.h5 --binning-mode calochallenge`` prints, without the figures), and
prints one table: the official-binning separation powers (E_tot/E_inc; per-layer families as the mean and
maximum over layers; the voxel spectrum) with their floors, the adaptive values, classifier AUCs, FPD and
KPD.  ``--official-classifier`` adds the official network (2048 x 3, 50 epochs, float64) on the high-level
inputs, on ``--official-n`` showers per sample (CPU cost ~ n x 50 epochs x 55 MFLOP per shower).

    python benchmarks/calochallenge_study.py [--n 10000] [--work runs/calochallenge_study] [--official-classifier]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mlfastsim.showers.io.formats import read_native
from mlfastsim.showers.validation.calochallenge import OFFICIAL_CLASSIFIER, official_high_level_inputs
from mlfastsim.showers.validation.classifier import train_classifier
from mlfastsim.showers.validation.observables import PER_LAYER, apply_threshold, compute_observables, layer_prefix
from mlfastsim.showers.validation.validate import run_validation

SAMPLES = {"siw_s1": ("SiW", 1), "siw_s2": ("SiW", 2), "scipb_s1": ("SciPb", 1)}
PAIRS = (("siw_s1", "siw_s2", "SiW vs SiW (seeds 1, 2)"), ("siw_s1", "scipb_s1", "SiW vs SciPb"))


def simulate(work: Path, n: int) -> dict[str, Path]:
    """The three samples, simulated with the CLI unless already there (the command is printed)."""
    paths = {}
    for name, (detector, seed) in SAMPLES.items():
        path = work / f"{name}.h5"
        cmd = [sys.executable, "-m", "mlfastsim", "showers", "simulate", "--detector", detector, "--mesh", "ds2",
               "--energy-range-gev", "1:1000", "--angle-range-deg", "50:90", "--n-per-point", str(n),
               "--seed", str(seed), "-o", str(path)]
        print("$", " ".join(cmd[2:]).replace("-m mlfastsim", "mlfastsim"), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        paths[name] = path
    return paths


def _family(official: dict[str, dict[str, Any]], key: str) -> tuple[float, float, float]:
    """Mean and maximum separation power over the layers of one feature, and the mean floor."""
    prefix = layer_prefix(key)
    layers = [m for n, m in official.items() if n.startswith(prefix) and m["separation_power"] is not None]
    sps = [m["separation_power"] for m in layers]
    floors = [m["separation_power_floor"] for m in layers]
    return float(np.mean(sps)), float(np.max(sps)), float(np.mean(floors))


def official_classifier(reference: Any, candidate: Any, n: int, seed: int) -> dict[str, Any]:
    """The official network and recipe on the official high-level inputs of the first ``n`` showers."""
    ref = apply_threshold(reference.subset(slice(0, n)))
    cand = apply_threshold(candidate.subset(slice(0, n)))
    cfg = replace(OFFICIAL_CLASSIFIER, threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    res = train_classifier(official_high_level_inputs(compute_observables(ref)),
                           official_high_level_inputs(compute_observables(cand)), config=cfg, seed=seed,
                           recipe="calochallenge")
    return {"auc_high_official": res.auc, "jsd_high_official": res.jsd, "official_n": n,
            "official_best_epoch": res.best_epoch, "official_epochs": res.epochs,
            "official_seconds": round(res.seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="showers per sample")
    parser.add_argument("--work", type=Path, default=Path("runs/calochallenge_study"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the metrics and classifiers")
    parser.add_argument("--official-classifier", action="store_true",
                        help="also train the official network on the official high-level inputs")
    parser.add_argument("--official-n", type=int, default=2000, help="showers per sample for the official network")
    parser.add_argument("--official-only", action="store_true",
                        help="only the official network (no validation run): for a separate, long CPU job")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    paths = simulate(args.work, args.n)
    data = {name: read_native(path) for name, path in paths.items()}
    results: dict[str, Any] = {"n": args.n, "pairs": {}}
    if args.official_only:
        for ref_name, cand_name, title in PAIRS:
            results["pairs"][title] = official_classifier(data[ref_name], data[cand_name], args.official_n, args.seed)
            print(title, json.dumps(results["pairs"][title]), flush=True)
        (args.work / "calochallenge_study_official.json").write_text(json.dumps(results, indent=1))
        return
    for ref_name, cand_name, title in PAIRS:
        start = time.perf_counter()
        print(f"$ mlfastsim showers validate --reference {paths[ref_name]} --candidate {paths[cand_name]} "
              "--binning-mode calochallenge", flush=True)
        m = run_validation(data[ref_name], data[cand_name], args.work / f"val_{ref_name}_vs_{cand_name}",
                           seed=args.seed, binning_mode="calochallenge", draw_figures=False,
                           labels=(ref_name, cand_name))
        official = m["observables_calochallenge"]
        row: dict[str, Any] = {
            "title": title,
            "threshold_mev": m["threshold_mev"],
            "cc_e_ratio": official["e_ratio"]["separation_power"],
            "cc_e_ratio_floor": official["e_ratio"]["separation_power_floor"],
            "cc_e_ratio_outside_candidate": official["e_ratio"]["outside_candidate"],
            "cc_cell_energy": official["cell_energy"]["separation_power"],
            "adaptive_e_ratio": m["observables"]["e_ratio"]["separation_power"],
            "adaptive_e_ratio_floor": m["observables"]["e_ratio"]["separation_power_floor"],
            "auc_low_fast": m["classifier"]["low_level"].get("auc"),
            "auc_high_fast": m["classifier"]["high_level"].get("auc"),
            "fpd": (m["fpd"].get("value"), m["fpd"].get("error")),
            "kpd": (m["kpd"].get("value"), m["kpd"].get("error")),
            "seconds": round(time.perf_counter() - start, 1),
        }
        for key in PER_LAYER:
            row[f"cc_{key}"] = _family(official, key)
        if args.official_classifier:
            row.update(official_classifier(data[ref_name], data[cand_name], args.official_n, args.seed))
        results["pairs"][title] = row
        print(json.dumps(row, indent=1), flush=True)
    (args.work / "calochallenge_study.json").write_text(json.dumps(results, indent=1))
    print(f"\nCaloChallenge-mode separation powers, {args.n} vs {args.n} showers, threshold 15.15 keV")
    print("| quantity | " + " | ".join(results["pairs"]) + " |")
    print("|---|" + "---|" * len(results["pairs"]))
    rows = results["pairs"].values()
    print("| E_tot/E_inc (100 bins on [0.5, 1.5]) | "
          + " | ".join(f"{r['cc_e_ratio']:.4f} (floor {r['cc_e_ratio_floor']:.4f})" for r in rows) + " |")
    for key in PER_LAYER:
        print(f"| {key}: mean / max over layers | "
              + " | ".join(f"{r[f'cc_{key}'][0]:.4f} / {r[f'cc_{key}'][1]:.4f} (floor {r[f'cc_{key}'][2]:.4f})"
                           for r in rows) + " |")
    print("| voxel spectrum (49 log bins) | " + " | ".join(f"{r['cc_cell_energy']:.2e}" for r in rows) + " |")
    print("| adaptive E_tot/E_inc | " + " | ".join(
        f"{r['adaptive_e_ratio']:.4f} (floor {r['adaptive_e_ratio_floor']:.4f})" for r in rows) + " |")
    print("| AUC low / high (fast) | " + " | ".join(f"{r['auc_low_fast']:.3f} / {r['auc_high_fast']:.3f}"
                                                     for r in rows) + " |")
    if args.official_classifier:
        print("| AUC high (official network) | " + " | ".join(
            f"{r['auc_high_official']:.3f} ({r['official_n']} showers)" for r in rows) + " |")
    print("| FPD | " + " | ".join(f"{r['fpd'][0]:.4g} ± {r['fpd'][1]:.2g}" for r in rows) + " |")
    print("| KPD | " + " | ".join(f"{r['kpd'][0]:.3g} ± {r['kpd'][1]:.2g}" for r in rows) + " |")


if __name__ == "__main__":
    main()
