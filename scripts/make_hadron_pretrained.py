"""Rebuild the shipped hadron models ``wgan_hcal48_pion`` and ``bibae_pp_hcal48_pion`` (weights, cards, index),
and on request (``--models cfm_hcal48_pion``) the flow-matching model, which is not shipped (see ``SHIPPED``).

1. simulate the training pions exactly as ``benchmarks/hadron_study.py`` does (4000 charged pions, uniform
   10-100 GeV, seed 1, hcal48, steel/scintillator, 0.5 MIP threshold);
2. train with ``configs/hadrons/*.yaml`` through the CLI, seed 0, on the CPU: regressor -> WGAN,
   BIB-AE -> post-processor, and the flow-matching model (shape + energy, then energy alone), with the step
   counts below (the benchmark's defaults, so a benchmark work directory can be reused with ``--work-dir``:
   existing runs are not retrained);
3. strip each final checkpoint to float32 weights + model metadata (no optimiser, RNG or history) and
   write it with a fixed archive name, so the same run gives the same bytes;
4. write ``<name>.pt``, the model card ``<name>.md`` (with the benchmark's numbers when ``--metrics`` points
   at a ``hadron_study`` results directory) and their entries of ``index.json`` (sha256; other entries
   are kept); ``--models`` writes a subset (the others' files stay as they are).

Runs on the CPU (``OMP_NUM_THREADS=1``; the flow-matching run takes the two threads of its config); same
machine type, thread count and torch version, same bytes.

    OMP_NUM_THREADS=1 python scripts/make_hadron_pretrained.py [--work-dir build/hadron_study]
        [--out-dir src/mlfastsim/data/pretrained] [--metrics build/hadron_study/results] [--models NAME,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mlfastsim.showers.pretrained import sha256_file

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "mlfastsim" / "data" / "pretrained"
STEPS = {"regressor": 200, "wgan": 120, "bibae": 120, "postprocess": 50, "cfm_shape": 6000, "cfm": 8000}
_BASELINE = ("* energy condition: the hit head is the training data's energy baseline (per layer and ring, lines in "
             "log E of the hit log-odds and of the location and width of log E; `energy_baseline: true`) plus the "
             "network's residual, moved along z by one number per shower (`depth_shift: true`, the interaction "
             "depth); the baseline rides in the file's normalisation")
_SAMPLED = ("* output: cell energies in MeV with the calorimeter's 0.5 MIP readout threshold applied; the generator "
            "samples hits (>= 0.5 MIP) with noise derived from the latent code, so one code gives one shower")
MODELS: dict[str, dict[str, Any]] = {
    "wgan_hcal48_pion": {
        "run": "wgan", "label": "WGAN", "stages": ["regressor", "wgan"], "what": [_SAMPLED, _BASELINE],
        "description": "conditional 3D WGAN-GP (hits output, energy constrainer) for charged pions of 10-100 GeV "
                       "on the hcal48 grid, 48 x 25 x 25 crop; small CPU model",
    },
    "bibae_pp_hcal48_pion": {
        "run": "postprocess", "label": "BIB-AE+PP", "stages": ["bibae", "postprocess"], "what": [_SAMPLED, _BASELINE],
        "description": "BIB-AE (hits decoder) + post-processor for charged pions of 10-100 GeV on the hcal48 grid, "
                       "48 x 25 x 25 crop; small CPU model",
    },
    "cfm_hcal48_pion": {
        "run": "cfm", "label": "CFM", "stages": ["cfm_shape", "cfm"],
        "what": ["* output: cell energies in MeV with the 0.5 MIP readout threshold applied (exact zeros below it); "
                 "the input row is noise of the shower's shape (energy coordinates, then one per cell) and the "
                 "energy, and the ODE solver (8 Euler steps for the cells, 32 for the energies) runs inside the "
                 "model and its ONNX graph",
                 "* what it learns: a flow over E_sum/E_inc, each layer's share of it and each layer's number of "
                 "hits (`occupancy: counted`), then a layer transformer with a per-cell head over log(cell / 0.5 "
                 "MIP); each layer keeps its generated number of hits, those of highest value, scaled to its "
                 "generated energy (`src/mlfastsim/showers/models/cfm_grid.py`)",
                 "* built in two stages: `configs/hadrons/cfm.yaml` (both flows), then "
                 "`configs/hadrons/cfm_energy.yaml` (a wider energy network alone on the frozen shape network, "
                 "`trainable: [energy]`)",
                 "* batch generation: at most 256 showers per call (the per-cell head holds rows x 48 x 625 x 8 "
                 "floats)"],
        "description": "conditional flow matching (layer transformer; E_sum, layer energies and hit counts first) "
                       "for charged pions of 10-100 GeV on the hcal48 grid, 48 x 25 x 25 crop; small CPU model",
    },
}


#: what ships (index.json); cfm_hcal48_pion is built on request: it ties the WGAN's classifier AUC and misses the
#: longitudinal-profile target (issue 14's closing note), so it does not beat the shipped two
SHIPPED = ("wgan_hcal48_pion", "bibae_pp_hcal48_pion")


def _study() -> Any:
    """benchmarks/hadron_study.py as a module (its CLI wrapper and training recipe)."""
    spec = importlib.util.spec_from_file_location("hadron_study", ROOT / "benchmarks" / "hadron_study.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_all(work: Path, seed: int, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The runs the ``wanted`` stages need (reused when their last checkpoint exists)."""
    study = _study()
    train_file = work / "pions_train.h5"
    if not train_file.is_file():
        study.cli("showers", "simulate", "--particle", "pion", "--grid", "hcal48", "--energy-range-gev", "10:100",
                  "--n-per-point", 4000, "--seed", 1, "-o", train_file)
    runs: dict[str, dict[str, Any]] = {}
    recipe = (("regressor", "train-regressor", "regressor.yaml", []),
              ("wgan", "train", "wgan.yaml", ["regressor"]),
              ("bibae", "train", "bibae.yaml", []),
              ("postprocess", "train-postprocess", "postprocess.yaml", ["bibae"]),
              ("cfm_shape", "train", "cfm.yaml", []),
              ("cfm", "train", "cfm_energy.yaml", ["cfm_shape"]))
    for name, command, config, needs in recipe:
        if name not in wanted:
            continue
        run_dir = work / "runs" / {"cfm_shape": "cfm", "cfm": "cfm_energy"}.get(name, name)
        cached = work / "results" / f"train_{name}.json"
        if cached.is_file():
            runs[name] = json.loads(cached.read_text())
            continue
        extra: list[str] = []
        for dep in needs:
            key = {"regressor": "model.regressor_checkpoint", "bibae": "model.bibae_checkpoint",
                   "cfm_shape": "transfer_from"}[dep]
            extra += ["--set", f"{key}={runs[dep]['checkpoint']}"]
        runs[name] = study._train(command, config, run_dir, train_file, STEPS[name], seed, extra)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(runs[name], indent=1))
    return runs


def strip(checkpoint: Path, name: str) -> bytes:
    """Weights (float32) and model metadata only, serialised in memory so the archive name is fixed."""
    state = load_checkpoint(checkpoint)
    modules = {m: {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
               for m, sd in state["modules"].items()}
    payload = {key: state[key] for key in ("model_type", "model_config", "normalisation", "mesh") if key in state}
    payload.update(modules=modules, step=int(state["step"]), pretrained={"name": name})
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _metrics_table(metrics_dir: Path | None, label: str, model_key: str) -> list[str]:
    if metrics_dir is None or not (metrics_dir / f"eval_{model_key}.json").is_file():
        return ["(run `benchmarks/hadron_study.py` and pass `--metrics` to fill this in)"]
    r = json.loads((metrics_dir / f"eval_{model_key}.json").read_text())
    floor = json.loads((metrics_dir / "eval_floor.json").read_text()) if (metrics_dir / "eval_floor.json").is_file() \
        else {"sp": {}, "auc": float("nan")}
    lines = ["Against 1000 fresh reference pions (10, 20, ..., 100 GeV, seed 2), 48 x 25 x 25 crop, 0.5 MIP "
             "threshold (`benchmarks/hadron_study.py`); 'floor' is a second reference sample against the first.",
             "", "| observable | separation power | floor |", "|---|---|---|"]
    for key, value in r["sp"].items():
        lines.append(f"| {key} | {value:.3f} | {floor['sp'].get(key, float('nan')):.3f} |")
    p = r["physics"]
    resp = p["response"]
    lines += ["", f"* classifier AUC (low level): {r['auc']:.3f} (floor {floor['auc']:.3f})",
              f"* empty showers: {p['n_empty']} of {p['n']}; mean hits {p['mean_n_hits']:.0f}; "
              f"mean E_sum {p['mean_e_sum_gev']:.2f} GeV; MIP peak {p['mip_peak']:.2f} MIP "
              f"(width {p['mip_width']:.2f}; the reference: 1.28 MIP, width 0.55)",
              f"* generation (ONNX Runtime, 1 thread): {r.get('ms_per_shower_b1', float('nan')):.2f} ms/shower at "
              f"batch 1, {r.get('ms_per_shower_b100', float('nan')):.2f} at batch 100",
              "* response <E_sum>/E_inc / resolution by incident energy (simulation: response 0.80-0.82, "
              "resolution 0.09-0.19): " + ", ".join(f"{e:.0f} GeV {r:.2f}/{s:.2f}" for e, r, s in
                                                     zip(resp["e_gev"], resp["response"], resp["resolution"],
                                                         strict=True))]
    spread = max(resp["response"]) - min(resp["response"])
    if spread > 0.3:  # the reference's response varies by 0.02 between 10 and 100 GeV
        lines.append(f"* the incident-energy condition is not learned at this budget (response spread {spread:.2f})")
    return lines


def card(name: str, info: dict[str, Any], runs: dict[str, dict[str, Any]], metrics_dir: Path | None) -> str:
    spec = MODELS[name]
    stages = spec["stages"]
    train_s = sum(runs[s]["train_s"] for s in stages)
    lines = [
        f"# {name}", "", spec["description"] + ".", "",
        "## What it is", "",
        f"* model type `{info['model_type']}`, mesh `hcal48` (48 layers x 25 x 25 cells of 30 x 30 x 26.5 mm around "
        "the axis), particle `pion`, incident energy 10-100 GeV (outside: extrapolation, with a warning)",
        *spec["what"],
        f"* file: `{name}.pt` ({info['size_bytes']} bytes), float32 weights + model config + normalisation "
        "(optimiser, RNG and history stripped)",
        f"* sha256: `{info['sha256']}`",
        "* rebuild: `OMP_NUM_THREADS=1 python scripts/make_hadron_pretrained.py` (same seeds)",
        "", "## Training", "",
        "* data: 4000 simulated charged pions (`showers simulate --particle pion --grid hcal48 --energy-range-gev "
        "10:100 --n-per-point 4000 --seed 1`; the two-component Bock et al. simulator, not Geant4)",
        "* stages: " + ", ".join(f"`{s}` {runs[s]['steps']} steps ({runs[s]['train_s'] / 60:.1f} min)" for s in stages)
        + f" with `configs/hadrons/*.yaml`, seed 0: {train_s / 60:.0f} min of wall time on the CPU "
        f"({'two threads, a quiet machine' if spec['run'] == 'cfm' else 'one shared core'}; the 1 h / 2-core budget "
        "of issue 14)",
        f"* built with torch {torch.__version__}, Python {platform.python_version()}",
        "* full-size settings for a GPU are in the comments of the configs",
        "", "## Metrics", "", *_metrics_table(metrics_dir, spec["label"], spec["run"]),
        "", "## Limits", "",
        "* a small model trained for minutes: see the metrics; the issue's targets and what misses them are in "
        "the hadron study's report",
        "* trained on the simulator of `mlfastsim.showers.sim.hadronic`, so it reproduces that simulator, not "
        "a real calorimeter",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/hadron_study"))
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--metrics", type=Path, default=None, help="hadron_study results directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(SHIPPED),
                        help="which models to write (default: the shipped ones; cfm_hcal48_pion on request)")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; use some of {', '.join(MODELS)}")
    torch.set_num_threads(1)
    runs = train_all(args.work_dir, args.seed, {s for n in names for s in MODELS[n]["stages"]})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    index_path = args.out_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"models": []}
    for name in names:
        spec = MODELS[name]
        data = strip(Path(runs[spec["run"]]["checkpoint"]), name)
        path = args.out_dir / f"{name}.pt"
        atomic_write_bytes(path, data)
        state = load_checkpoint(path)
        info = {"name": name, "file": path.name, "card": f"{name}.md", "mesh": "hcal48",
                "model_type": state["model_type"], "particle": "pion", "energy_range_gev": [10.0, 100.0],
                "description": spec["description"], "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
        atomic_write_text(args.out_dir / f"{name}.md", card(name, info, runs, args.metrics))
        # in place when the entry exists: index.json is shared with the other shipped models' scripts
        names = [m.get("name") for m in index["models"]]
        if name in names:
            index["models"][names.index(name)] = info
        else:
            index["models"].append(info)
        print(f"wrote {path} ({info['size_bytes']} bytes, sha256 {info['sha256'][:12]}...)")
    atomic_write_json(index_path, index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
