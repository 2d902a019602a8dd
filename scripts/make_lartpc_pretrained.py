"""Rebuild the shipped LArTPC networks (deghosting and charge) from the CPU study, with cards and sha256.

    OMP_NUM_THREADS=1 python scripts/make_lartpc_pretrained.py            # runs the study if needed (~25 min)
    OMP_NUM_THREADS=1 python scripts/make_lartpc_pretrained.py --check    # ... and compare with the index

The shipped weights are the largest cells of ``benchmarks/lartpc_study.py --size cpu`` (same seeds): the
deghosting net trained on all its training events and the charge net started from that net's backbone.
Checkpoints are stripped to what inference needs (weights, architecture, data scaling, the per-epoch
summaries); optimiser and RNG states are dropped.  ``configs/lartpc/ghost_inf.yaml`` applies
``pretrained:lartpc_ghost`` with no training first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "src" / "mlfastsim" / "data" / "pretrained"
INDEX = DATA / "lartpc_index.json"
KEEP = ("model_type", "model_config", "n_features", "data_meta", "step")


def strip(src: Path, dest: Path) -> dict[str, Any]:
    """Keep the inference part of a training checkpoint; returns it."""
    from mlfastsim.core.checkpoint import load_checkpoint

    state = load_checkpoint(src)
    out = {k: state[k] for k in KEEP}
    out["modules"] = {"model": {k: v.clone() for k, v in state["modules"]["model"].items()}}
    out["task"] = {"summaries": state.get("task", {}).get("summaries", [])}
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dest)
    return out


def _card(name: str, title: str, state: dict[str, Any], study: dict[str, Any], n_train: int, seconds: float,
          sha: str, size: int) -> str:
    from benchmarks.lartpc_study import DOWNSAMPLE, SIZES, TPC  # the study defines the data

    cfg = SIZES["cpu"]
    last = state["task"]["summaries"][-1]
    weights = state["modules"]["model"]
    n_par = sum({v.data_ptr(): v.numel() for k, v in weights.items()
                 if "running" not in k and "num_batches" not in k and "calibration" not in k}.values())
    lines = [
        f"# {name}: {title}", "",
        "## Data", "",
        f"`mlfastsim lartpc simulate` (seed 1, TPC {TPC}, default ProtoDUNE-like geometry: muons, Bragg protons, "
        f"branching showers), `make-batches --downsample {','.join(map(str, DOWNSAMPLE))} --x-type both` "
        "(features: wire and shared charge of the three planes).  Training events "
        f"[0, {n_train}); metrics on {cfg['n_test']} held-out events of the same simulation.", "",
        "## Training", "",
        f"`model` {json.dumps(state['model_config'])}; {len(state['task']['summaries'])} epochs, batch 4 events, "
        "adam lr 0.003 with a cosine schedule; "
        + ("loss BCE (pos_weight 2)." if state["model_config"]["type"] == "binary" else
           "loss Huber on log(charge / 0.1 MeV) of real voxels + BCE (pos_weight 2) of its real-voxel logit; "
           "backbone started from lartpc_ghost; after each epoch a charge-scale calibration measured on the "
           "first 200 training events (median predicted / true = 1; last: "
           f"x{last.get('charge_calibration', 1.0):.3f})."),
        "",
        f"* training time: {seconds:.0f} s of one CPU thread on a shared machine, torch {torch.__version__}",
        f"* {n_par:,} parameters; file {size / 1024:.0f} KiB (optimiser and RNG states stripped)",
        f"* sha256: `{sha}`",
        "* rebuild: `python scripts/make_lartpc_pretrained.py` (`--check` compares the sha256)", "",
        "## Metrics (held-out events, last epoch)", "",
        f"* ghost rejection at 95 % real-voxel efficiency: {last['rejection_at_95']:.3f}; AUC {last['auc']:.4f}",
        f"* at score 0.5: efficiency {last['efficiency']:.3f}, rejection {last['rejection']:.3f}, "
        f"purity {last['purity']:.3f} (keep-everything purity {last['baseline_purity']:.3f})",
    ]
    if "charge_bias" in last:
        lines += [f"* charge of real voxels: bias (median of (pred - true) / true) {last['charge_bias']:+.3f}, "
                  f"resolution (half 16-84 % width) {last['charge_resolution']:.3f}, summed-charge closure "
                  f"{last['charge_sum_bias']:+.3f}", "",
                  "| true charge (MeV) | share | bias | resolution |", "|---|---|---|---|"]
        for k in last:
            if k.startswith("charge_bias_q"):
                b = k[len("charge_bias_q"):]
                lines.append(f"| {b} | {last['charge_fraction_q' + b]:.3f} | {last[k]:+.3f} | "
                             f"{last['charge_resolution_q' + b]:.3f} |")
        lines += ["", "| wire plane | bias (per tick and wire) | resolution |", "|---|---|---|"]
        lines += [f"| {p} | {last[f'charge_bias_plane{p}']:+.3f} | {last[f'charge_resolution_plane{p}']:.3f} |"
                  for p in range(3) if f"charge_bias_plane{p}" in last]
    lines += ["", "## Limits", "",
              "Trained on the package's reference simulation only (no Geant4, no real detector); apply it to xy "
              f"files made with `--downsample {','.join(map(str, DOWNSAMPLE))} --x-type both` (checked on load).  "
              "The CPU study's curve (benchmarks/lartpc_study.py) still rises with events: the GPU size in the "
              "configs is the way to a better net.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "lartpc_study")
    ap.add_argument("--check", action="store_true", help="fail if the rebuilt files differ from the index")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.lartpc_study import SIZES

    from mlfastsim.core.checkpoint import latest_checkpoint

    results_file = args.work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if "charge" not in results:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lartpc_study.py"), "--size", "cpu", "--work",
                        str(args.work)], check=True)
        results = json.loads(results_file.read_text())
    n_max = max(SIZES["cpu"]["events"])
    old = {m["name"]: m for m in json.loads(INDEX.read_text())["models"]} if INDEX.exists() else {}
    models, differ = [], []
    for name, run, title, secs in (
            ("lartpc_ghost", f"ghost_{n_max}", "deghosting net (SparseCellNet, binary)",
             results["ghost"][str(n_max)]["seconds"]),
            ("lartpc_charge", "charge", "charge net (log-charge on real voxels + real-voxel logit)",
             results["charge"]["seconds"])):
        src = latest_checkpoint(args.work / run / "checkpoints")
        if src is None:
            raise SystemExit(f"no checkpoint in {args.work / run}; rerun the study")
        dest = DATA / f"{name}.pt"
        state = strip(src, dest)
        sha = hashlib.sha256(dest.read_bytes()).hexdigest()
        size = dest.stat().st_size
        (DATA / f"{name}.md").write_text(_card(name, title, state, results, n_max, secs, sha, size))
        last = state["task"]["summaries"][-1]
        models.append({"name": name, "file": dest.name, "card": f"{name}.md", "model_type": state["model_type"],
                       "description": title, "features": state["data_meta"]["feature_names"],
                       "downsample": state["data_meta"]["downsample"], "sha256": sha, "size_bytes": size,
                       "rejection_at_95": last["rejection_at_95"]})
        if name in old and old[name]["sha256"] != sha:
            differ.append(name)
        print(f"{name}: {dest} ({size} bytes) sha256 {sha}")
    INDEX.write_text(json.dumps({"models": models}, indent=2) + "\n")
    if args.check and differ:
        raise SystemExit(f"rebuilt weights differ from the previous index: {', '.join(differ)}")


if __name__ == "__main__":
    main()
