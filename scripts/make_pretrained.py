"""Rebuild the shipped pre-trained model ``vae_ds2_meta`` (weights, model card, index) from scratch.

1. simulate the three pre-training geometries (SiW, SciPb, PbWO4; FCCeeSiW stays unseen) on the ds2 mesh
   with fixed seeds: electrons 1-1000 GeV log-uniform, 50-90 degrees uniform;
2. meta-train with ``configs/showers/meta.yaml`` (Reptile over the three geometry tasks);
3. strip the final checkpoint to float32 weights + model metadata (no optimiser, no RNG state) and write
   it with a fixed archive name, so the same run gives the same bytes;
4. measure it: validation loss per geometry, and separation powers / classifier AUCs of generated
   showers against held-out simulated samples of each geometry;
5. write ``vae_ds2_meta.pt``, the model card ``vae_ds2_meta.md`` and ``index.json`` (sha256).

Everything is seeded and runs on the CPU with ``--threads`` threads (2 by default), so rerunning on the
same machine type and torch version reproduces the file bit for bit; ``--check`` rebuilds into a
temporary directory and compares the sha256 with the shipped index.

    python scripts/make_pretrained.py [--work-dir build/pretrained] [--out-dir src/mlfastsim/data/pretrained]
                                      [--threads 2] [--check] [--no-validation]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.config import dump_config, load_config
from mlfastsim.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mlfastsim.showers.config import MetaConfig, SimulateConfig
from mlfastsim.showers.io.formats import ShowerData, read_native
from mlfastsim.showers.models import load_model
from mlfastsim.showers.pipeline import simulate_to_file
from mlfastsim.showers.pretrained import sha256_file
from mlfastsim.showers.training.meta import (
    MAIN_OBSERVABLES,
    OCCUPANCY_OBSERVABLES,
    load_tasks,
    mean_main_separation_power,
    meta_train,
    sample_like,
    separation_powers,
    task_losses,
)
from mlfastsim.showers.validation.observables import CELL_ENERGY_MIN_MEV

ROOT = Path(__file__).resolve().parents[1]
NAME = "vae_ds2_meta"
CONFIG = ROOT / "configs" / "showers" / "meta.yaml"
OUT_DIR = ROOT / "src" / "mlfastsim" / "data" / "pretrained"
DESCRIPTION = ("Par04/MetaHEP conditional VAE on the CaloChallenge ds2 mesh, meta-trained (Reptile) on SiW, SciPb "
               "and PbWO4 electron showers; adapt it to a new geometry at one-hot slot 0")

# (detector, simulation seed) in the order of meta.yaml's data.files; held-out samples use seed + 100
GEOMETRIES = (("SiW", 101), ("SciPb", 102), ("PbWO4", 103))
N_PER_GEOMETRY = 5000
N_HELD_OUT = 2000
ENERGY_RANGE_GEV = (1.0, 1000.0)
ANGLE_RANGE_DEG = (50.0, 90.0)


def simulate(detector: str, n: int, seed: int, output: Path) -> Path:
    cfg = SimulateConfig(detector=detector, mesh="ds2", particle="electron", energy_range_gev=ENERGY_RANGE_GEV,
                         angle_range_deg=ANGLE_RANGE_DEG, n_per_point=n, seed=seed, output=output)
    simulate_to_file(cfg)
    return output


def strip(checkpoint: Path, cfg: MetaConfig) -> bytes:
    """Weights (float32) and model metadata only; serialised in memory so the archive name is fixed.

    Nothing run-dependent goes in (no timings, no local paths: ``cfg`` is the config as in meta.yaml), so the
    same training gives the same bytes.
    """
    state = load_checkpoint(checkpoint)
    weights = {k: (v.float() if v.is_floating_point() else v).contiguous()
               for k, v in state["modules"]["model"].items()}
    tasks = [{**t, "file": Path(t["file"]).name} for t in state["meta_training"]["tasks"]]
    payload = {
        "modules": {"model": weights},
        "step": int(state["step"]),
        "model_type": state["model_type"],
        "model_config": state["model_config"],
        "mesh": state["mesh"],
        "conditioning": state["conditioning"],
        "meta_training": {"algorithm": state["meta_training"]["algorithm"], "tasks": tasks},
        "pretrained": {"name": NAME, "config": dump_config(cfg)},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def measure(model_path: Path, cfg: MetaConfig, work: Path, *, classifier: bool) -> dict[str, Any]:
    """Validation loss per geometry and agreement with held-out simulated showers of each geometry."""
    from mlfastsim.showers.validation.validate import run_validation

    loaded = load_model(model_path)
    model = loaded.model.eval()
    tasks, _ = load_tasks(cfg.data, seed=cfg.seed)
    losses = task_losses(model, tasks, loaded.spec.loss)
    out: dict[str, Any] = {"val_loss": losses, "held_out": {}}
    for (detector, seed), task in zip(GEOMETRIES, tasks, strict=True):
        path = simulate(detector, N_HELD_OUT, seed + 100, work / f"{detector}_held_out.h5")
        reference = read_native(path)
        candidate = sample_like(loaded, reference, geometry_index=task.slot, seed=1,
                                threshold_mev=CELL_ENERGY_MIN_MEV)
        sp = separation_powers(reference, candidate)
        entry: dict[str, Any] = {"slot": task.slot, "n": len(reference), "separation_power": sp,
                                 "mean_main_separation_power": mean_main_separation_power(sp)}
        if classifier:
            zs = np.where(reference.showers >= CELL_ENERGY_MIN_MEV, reference.showers, 0.0)
            ref_zs = ShowerData(reference.energies, zs, reference.mesh, reference.angles, {"source": str(path)})
            metrics = run_validation(ref_zs, candidate, work / "validation" / detector, classifier=True, seed=0,
                                     labels=(f"{detector} simulated", f"{NAME} slot {task.slot}"), exclude_empty=True)
            entry["auc_low_level"] = metrics["classifier"]["low_level"]["auc"]
            entry["auc_high_level"] = metrics["classifier"]["high_level"]["auc"]
        out["held_out"][detector] = entry
    return out


def card(cfg: MetaConfig, info: dict[str, Any]) -> str:
    m = info["metrics"]
    lines = [
        f"# {NAME}: meta-trained shower VAE for the ds2 mesh",
        "",
        DESCRIPTION + ".",
        "",
        "## Data",
        "",
        "Reference simulator `gflash-gp` (Grindhammer-Peters parametrisation, `mlfastsim showers simulate`), "
        "electrons, scored into the CaloChallenge ds2 mesh (9 r x 16 phi x 45 z = 6480 voxels, 4.65 mm x 3.4 mm).",
        "",
        "| geometry | detector | one-hot slot | showers | energies | angles | seed | held-out seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (detector, seed), slot in zip(GEOMETRIES, cfg.data.geometry_index or range(3), strict=True):
        from mlfastsim.showers.geometry import load_detector

        lines.append(f"| {detector} | {load_detector(detector).description} | {slot} | {N_PER_GEOMETRY} | "
                     f"{ENERGY_RANGE_GEV[0]:g}-{ENERGY_RANGE_GEV[1]:g} GeV log-uniform | "
                     f"{ANGLE_RANGE_DEG[0]:g}-{ANGLE_RANGE_DEG[1]:g} deg uniform | {seed} | {seed + 100} |")
    lines += [
        "",
        f"{cfg.data.val_fraction:.0%} of each geometry is held out for the validation loss.  FCCeeSiW "
        "(40 x [1.8 mm W + 0.5 mm Si]) is never seen: it is the demo's new geometry, adapted at slot 0.",
        "",
        "## Training",
        "",
        f"Reptile over the three geometry tasks: {cfg.meta_steps} meta-steps x {cfg.tasks_per_step} tasks x "
        f"{cfg.inner_steps} inner {cfg.inner_optimizer} steps (lr {cfg.inner_lr:g}, batch {cfg.batch_size}), "
        f"meta_lr {cfg.meta_lr:g}; batch-norm statistics interpolated like the weights; voxel-layer bias started "
        "at the logit of the mean normalised voxel energy.",
        "",
        f"* meta-training time: {info['train_seconds']:.0f} s on {info['threads']} CPU thread(s) "
        f"({info['machine']}), torch {torch.__version__}",
        f"* file: {info['size_bytes'] / 2**20:.2f} MiB ({info['n_parameters']:,} float32 parameters; "
        "optimiser and RNG states stripped)",
        f"* sha256: `{info['sha256']}`",
        "* rebuild: `python scripts/make_pretrained.py` (same seeds; `--check` compares the sha256)",
        "",
        "## Metrics",
        "",
        "Validation loss (BCE summed over voxels + kl_weight x KL, per shower; eval mode, fixed noise) of the "
        "meta-model at each geometry's slot:",
        "",
        "| geometry | val loss |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in m["val_loss"].items()]
    obs = (*MAIN_OBSERVABLES, *OCCUPANCY_OBSERVABLES)
    has_auc = all("auc_low_level" in e for e in m["held_out"].values())
    lines += [
        "",
        f"Generated vs held-out simulated showers ({N_HELD_OUT} each, same energies and angles; both zero-suppressed "
        f"at the CaloChallenge readout threshold {CELL_ENERGY_MIN_MEV * 1e3:.1f} keV).  Separation power: 0 = "
        "identical, 1 = disjoint; 'mean' averages the main (shape) observables.  This is the *un-adapted* "
        "meta-model, a starting point for adaptation rather than a finished simulator for these geometries.",
        "",
        "| geometry | mean SP | " + " | ".join(obs) + (" | AUC low-level | AUC high-level |" if has_auc else " |"),
        "|---|---|" + "---|" * len(obs) + ("---|---|" if has_auc else ""),
    ]
    for det, e in m["held_out"].items():
        row = f"| {det} | {e['mean_main_separation_power']:.3f} | " + " | ".join(
            f"{e['separation_power'][k]:.3f}" for k in obs)
        row += f" | {e['auc_low_level']:.3f} | {e['auc_high_level']:.3f} |" if has_auc else " |"
        lines.append(row)
    lines += [
        "",
        "Occupancy (`n_hits`, `cell_energy`) is reported but not averaged: the VAE's sigmoid output has no zero "
        "suppression, so which cells pass the threshold depends on the smooth floor of the output rather than "
        "on the geometry.",
        "",
        "## Config",
        "",
        "```yaml",
        dump_config(cfg).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def build(out_dir: Path, work: Path, threads: int, *, classifier: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    shipped_cfg = load_config(MetaConfig, CONFIG)
    cfg = shipped_cfg
    files = [work / Path(f).name for f in cfg.data.files]
    for (detector, seed), path in zip(GEOMETRIES, files, strict=True):
        if not path.is_file():
            print(f"simulating {N_PER_GEOMETRY} {detector} showers -> {path}", flush=True)
            simulate(detector, N_PER_GEOMETRY, seed, path)
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"files": files}),
        "output_dir": work / "meta",
        "tracking": cfg.tracking.model_copy(update={"dir": work / "tracking", "run_name": "meta"}),
        "device": cfg.device.model_copy(update={"num_threads": threads}),
    })
    t0 = time.perf_counter()
    result = meta_train(cfg, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    assert result.last_checkpoint is not None
    print(f"meta-training: {result.step} steps in {seconds:.0f} s", flush=True)
    blob = strip(result.last_checkpoint, shipped_cfg)
    model_path = atomic_write_bytes(out_dir / f"{NAME}.pt", blob)
    metrics = measure(model_path, cfg, work, classifier=classifier)
    loaded = load_model(model_path)
    info = {
        "train_seconds": seconds,
        "threads": threads,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "size_bytes": model_path.stat().st_size,
        "sha256": sha256_file(model_path),
        "n_parameters": sum(p.numel() for p in loaded.model.parameters()),
        "metrics": metrics,
    }
    atomic_write_text(out_dir / f"{NAME}.md", card(shipped_cfg, info))
    index = {"models": [{
        "name": NAME,
        "file": f"{NAME}.pt",
        "card": f"{NAME}.md",
        "mesh": "ds2",
        "model_type": loaded.model_type,
        "description": DESCRIPTION,
        "geometries": {det: slot for (det, _), slot in zip(GEOMETRIES, cfg.data.geometry_index or range(3),
                                                           strict=True)},
        "new_geometry_slot": 0,
        "particle": "electron",
        "energy_range_gev": [1.0, 1000.0],
        "angle_range_deg": [50.0, 90.0],
        "sha256": info["sha256"],
        "size_bytes": info["size_bytes"],
    }]}
    # the other shipped models' entries (e.g. cfm_ds2 from scripts/make_cfm_pretrained.py) are kept after this one
    previous = out_dir / "index.json"
    if previous.is_file():
        index["models"] += [m for m in json.loads(previous.read_text())["models"] if m.get("name") != NAME]
    atomic_write_json(out_dir / "index.json", index)
    atomic_write_json(work / "metrics.json", info)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "pretrained")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="rebuild into a temporary directory, compare sha256")
    parser.add_argument("--no-validation", action="store_true", help="skip the classifier part of the card metrics")
    args = parser.parse_args(argv)
    if args.check:
        shipped = json.loads((args.out_dir / "index.json").read_text())["models"][0]["sha256"]
        with tempfile.TemporaryDirectory() as tmp:
            info = build(Path(tmp), args.work_dir, args.threads, classifier=False)
        same = info["sha256"] == shipped
        print(f"rebuilt sha256 {info['sha256']} {'==' if same else '!='} shipped {shipped}")
        return 0 if same else 1
    info = build(args.out_dir, args.work_dir, args.threads, classifier=not args.no_validation)
    print(json.dumps({k: v for k, v in info.items() if k != "metrics"}, indent=2))
    print(json.dumps(info["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
