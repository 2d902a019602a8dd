"""Rebuild the pre-trained flow-matching model ``cfm_ds2`` (weights, model card, index entry), in two stages.

1. **data**: the three pre-training geometries (SiW, SciPb, PbWO4 on the ds2 mesh, electrons 1-1000 GeV
   log-uniform, 50-90 degrees), ``--n-per-geometry`` showers each in ``--parts`` seeded parts
   (seed ``1000 + 10 * slot + part``) under ``--work-dir`` (``build/gpu_cfm``); FCCeeSiW stays unseen;
2. **stage 1, shapes** (``configs/showers/cfm_gpu.yaml``): the layer transformer, trained on a GPU.  Pass the
   weights a GPU run wrote (``benchmarks/gpu_cfm_study.py --variants ship`` returns ``ship.pt``) with
   ``--shape-checkpoint``; without it this script trains the config here (``--gpu-ids 0`` on a GPU; hours on a CPU);
3. **stage 2, energies** (``configs/showers/cfm_energy.yaml``): a total-first energy network on the frozen stage-1
   shape network (``transfer_from`` + ``trainable: [energy]``), minutes on a CPU, resumable with ``--resume``;
4. strip the last checkpoint to float32 weights + model metadata with a fixed archive name (same run, same bytes);
   with ``--metrics runs/fidelity_study/fidelity_study.json`` (``benchmarks/fidelity_study.py``) write the card's
   numbers; write ``cfm_ds2.pt``, ``cfm_ds2.md`` and the model's entry in ``index.json`` (sha256; the other
   entries are kept) into ``--out-dir``.

    OMP_NUM_THREADS=1 python scripts/make_cfm_pretrained.py --shape-checkpoint runs/gpu_cfm/ship.pt \\
        [--shape-seconds 320 --shape-device "one NVIDIA H200"] [--resume] [--threads 1] \\
        [--work-dir build/gpu_cfm] [--out-dir src/mlfastsim/data/pretrained] [--metrics FILE] [--checkpoint CKPT]

``--checkpoint`` skips both stages and ships an existing stage-2 checkpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.config import dump_config, load_config
from mlfastsim.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mlfastsim.showers.config import TrainConfig
from mlfastsim.showers.models import load_model
from mlfastsim.showers.pretrained import INDEX_NAME, sha256_file
from mlfastsim.showers.training.train import train_from_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_pretrained import ANGLE_RANGE_DEG, ENERGY_RANGE_GEV, GEOMETRIES, simulate  # noqa: E402

NAME = "cfm_ds2"
SHAPE_CONFIG = ROOT / "configs" / "showers" / "cfm_gpu.yaml"
ENERGY_CONFIG = ROOT / "configs" / "showers" / "cfm_energy.yaml"
OUT_DIR = ROOT / "src" / "mlfastsim" / "data" / "pretrained"
N_PER_GEOMETRY, PARTS = 32000, 4
DESCRIPTION = ("Conditional flow-matching layer transformer (E_tot/E_inc first, then layer shares, then cells; exact "
               "zeros at 15.15 keV) on the CaloChallenge ds2 mesh, pre-trained on SiW, SciPb and PbWO4 electron "
               "showers; adapt it to a new geometry at one-hot slot 0")


def _simulate_part(job: tuple[str, int, int, str]) -> str:
    detector, n, seed, path = job
    if not Path(path).is_file():
        simulate(detector, n, seed, Path(path))
    return path


def part_jobs(work: Path, n_per_geometry: int = N_PER_GEOMETRY, parts: int = PARTS) -> list[tuple[str, int, int, str]]:
    """(detector, showers, seed, file) of every pre-training part, in the configs' file order."""
    per_part = -(-n_per_geometry // parts)
    return [(det, per_part, 1000 + 10 * slot + p, str(work / f"{det}_{p}.h5"))
            for slot, (det, _) in enumerate(GEOMETRIES) for p in range(parts)]


def simulate_parts(work: Path, n_per_geometry: int = N_PER_GEOMETRY, parts: int = PARTS,
                   workers: int | None = None) -> list[Path]:
    """Simulate the missing parts in parallel processes (files already there are kept: the job is resumable)."""
    jobs = part_jobs(work, n_per_geometry, parts)
    workers = workers or max(1, min(len(jobs), (os.cpu_count() or 2) - 1))
    with ProcessPoolExecutor(workers) as pool:
        return [Path(p) for p in pool.map(_simulate_part, jobs)]


def portable(cfg: TrainConfig) -> str:
    """A config as YAML with paths under the repository written relative to it (cards and payloads carry no
    machine's folders)."""
    return dump_config(cfg).replace(str(ROOT) + "/", "")


def strip(checkpoint: Path, cfg: TrainConfig, provenance: dict[str, Any] | None = None) -> bytes:
    """Weights (float32) and model metadata only, serialised in memory (fixed archive name, no local paths)."""
    state = load_checkpoint(checkpoint)
    weights = {k: (v.float() if v.is_floating_point() else v).contiguous()
               for k, v in state["modules"]["model"].items()}
    payload = {
        "modules": {"model": weights},
        "step": int(state["step"]),
        "model_type": state["model_type"],
        "model_config": state["model_config"],
        "mesh": state["mesh"],
        "conditioning": state["conditioning"],
        "pretrained": {"name": NAME, "config": portable(cfg), **(provenance or {})},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _relative(cfg: TrainConfig, work: Path, threads: int, out: Path) -> TrainConfig:
    """A stage's config with its data under ``work`` and its run under ``work/out``."""
    files = [work / Path(f).name for f in cfg.data.files]
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"files": files}), "output_dir": work / out,
        "device": cfg.device.model_copy(update={"num_threads": threads}),
    })
    cfg.tracking.dir = work / "tracking"
    return cfg


def card(shape_cfg: TrainConfig, energy_cfg: TrainConfig, info: dict[str, Any]) -> str:
    parts = ", ".join(f"{d} (slot {i}, seeds {1000 + 10 * i}-{1000 + 10 * i + PARTS - 1})"
                      for i, (d, _) in enumerate(GEOMETRIES))
    lines = [
        f"# {NAME}: pre-trained flow-matching shower model for the ds2 mesh", "", DESCRIPTION + ".", "",
        "## Data", "",
        f"{info['n_per_geometry']} electrons per geometry in {PARTS} seeded parts, {ENERGY_RANGE_GEV[0]:g}-"
        f"{ENERGY_RANGE_GEV[1]:g} GeV log-uniform, {ANGLE_RANGE_DEG[0]:g}-{ANGLE_RANGE_DEG[1]:g} deg uniform: "
        f"{parts}.  FCCeeSiW is never seen.", "",
        "## Training (two stages)", "",
        f"1. **Shapes**: `configs/showers/cfm_gpu.yaml` (width {shape_cfg.model.width}, {shape_cfg.model.depth} "
        f"blocks), {info['shape_step']} steps at batch {shape_cfg.trainer.batch_size} on {info['shape_device']} "
        f"({info['shape_seconds']}); `benchmarks/gpu_cfm_study.py --variants mid`.",
        f"2. **Energies**: `configs/showers/cfm_energy.yaml`: a total-first energy network (E_tot/E_inc as its own "
        f"coordinate, {energy_cfg.model.energy_steps or energy_cfg.model.steps} solver steps) on the frozen shape "
        f"network, {info['step']} steps at batch {energy_cfg.trainer.batch_size}, {info['train_seconds']:.0f} s on "
        f"{info['threads']} CPU thread(s) ({info['machine']}), torch {torch.__version__}.",
        "",
        f"* file: {info['size_bytes'] / 2**20:.2f} MiB ({info['n_parameters']:,} float32 parameters)",
        f"* sha256: `{info['sha256']}`",
        "* rebuild: `python scripts/make_cfm_pretrained.py --shape-checkpoint SHIP.pt` (stage 1 from a GPU run of "
        "`benchmarks/gpu_cfm_study.py`; without it stage 1 trains here). GPU runs are not bit-reproducible on "
        "another GPU or CPU; stage 2 is, from the same stage-1 weights.", "",
        "## Metrics", "",
    ]
    metrics = info.get("metrics")
    if metrics:
        lines += ["From `benchmarks/fidelity_study.py` (4k vs 4k unless said; 15.15 keV; CaloChallenge binning):", "",
                  "| row | AUC low | AUC high | FPD | mean SP | n_hits SP | E_tot/E_inc SP |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in metrics.get("rows", {}).items():
            lines.append(f"| {name} | " + " | ".join("-" if r.get(k) is None else f"{r[k]:.4g}" for k in
                                                    ("auc_low", "auc_high", "fpd", "mean_sp", "n_hits_sp",
                                                     "e_ratio_sp")) + " |")
        lines += ["", "It beats the VAE on every summary, but a low-level classifier still tells it from the "
                  "reference (read the AUCs against the floor rows): a fast starting point for adaptation, not a "
                  "finished simulator.  Its weakest observables are the radial moments and the per-layer centres of "
                  "energy and widths of the first layers.  On FCCeeSiW the FPD floor itself is 5.4e4 (near-constant "
                  "features of layers the reference rarely reaches), so compare FPD there as the excess over it."]
    else:
        lines.append("Not measured in this build (pass `--metrics`).")
    lines += ["", "## Configs", "", "```yaml", portable(shape_cfg).rstrip(), "```", "", "```yaml",
              portable(energy_cfg).rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "gpu_cfm")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-per-geometry", type=int, default=N_PER_GEOMETRY)
    parser.add_argument("--shape-checkpoint", type=Path, default=None, help="stage-1 weights from a GPU run")
    parser.add_argument("--shape-seconds", default="wall time not recorded", help="for the card")
    parser.add_argument("--shape-device", default="this machine", help="for the card, e.g. 'one NVIDIA H200'")
    parser.add_argument("--gpu-ids", default=None, help="stage 1 here on these GPUs, e.g. 0")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint", type=Path, default=None, help="ship this stage-2 checkpoint (no training)")
    parser.add_argument("--train-seconds", type=float, default=None, help="with --checkpoint: stage 2's wall time")
    parser.add_argument("--metrics", type=Path, default=None, help="fidelity_study.json for the card")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    simulate_parts(work, args.n_per_geometry)
    shape_cfg = _relative(load_config(TrainConfig, SHAPE_CONFIG), work, args.threads, Path("cfm_gpu"))
    if args.gpu_ids:
        shape_cfg = shape_cfg.model_copy(update={"device": shape_cfg.device.model_copy(
            update={"gpu_ids": [int(g) for g in args.gpu_ids.split(",")]})})
    energy_cfg = _relative(load_config(TrainConfig, ENERGY_CONFIG), work, args.threads, Path("cfm_energy"))
    shape_ckpt = args.shape_checkpoint
    if shape_ckpt is None and args.checkpoint is None:
        t0 = time.perf_counter()
        shape_ckpt = train_from_config(shape_cfg, resume=args.resume, progress=sys.stderr.isatty()).last_checkpoint
        args.shape_seconds = f"{time.perf_counter() - t0:.0f} s"
    t0 = time.perf_counter()
    if args.checkpoint is None:
        energy_cfg = energy_cfg.model_copy(update={"transfer_from": shape_ckpt})
        result = train_from_config(energy_cfg, resume=args.resume, progress=sys.stderr.isatty())
        assert result.last_checkpoint is not None
        checkpoint = result.last_checkpoint
        seconds = time.perf_counter() - t0
    else:
        checkpoint, seconds = args.checkpoint, args.train_seconds or float("nan")
    shape_step = int(load_checkpoint(shape_ckpt)["step"]) if shape_ckpt is not None else -1
    provenance = {"shape_step": shape_step, "shape_device": args.shape_device, "shape_seconds": args.shape_seconds,
                  "shape_config": portable(shape_cfg)}
    model_path = atomic_write_bytes(args.out_dir / f"{NAME}.pt", strip(checkpoint, energy_cfg, provenance))
    loaded = load_model(model_path)
    info = {
        "step": int(loaded.state["step"]), "train_seconds": seconds, "threads": args.threads,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "n_per_geometry": args.n_per_geometry,
        "shape_step": shape_step, "shape_device": args.shape_device, "shape_seconds": args.shape_seconds,
        "size_bytes": model_path.stat().st_size, "sha256": sha256_file(model_path),
        "n_parameters": sum(p.numel() for p in loaded.model.parameters()),
        "metrics": json.loads(args.metrics.read_text()) if args.metrics else None,
    }
    atomic_write_text(args.out_dir / f"{NAME}.md", card(shape_cfg, energy_cfg, info))
    index_path = args.out_dir / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"models": []}
    entry = {
        "name": NAME, "file": f"{NAME}.pt", "card": f"{NAME}.md", "mesh": "ds2", "model_type": loaded.model_type,
        "description": DESCRIPTION, "geometries": {det: slot for slot, (det, _) in enumerate(GEOMETRIES)},
        "new_geometry_slot": 0, "particle": "electron", "energy_range_gev": list(ENERGY_RANGE_GEV),
        "angle_range_deg": list(ANGLE_RANGE_DEG), "sha256": info["sha256"], "size_bytes": info["size_bytes"],
    }
    index["models"] = [m for m in index["models"] if m.get("name") != NAME] + [entry]
    atomic_write_json(index_path, index)
    print(json.dumps({k: v for k, v in info.items() if k != "metrics"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
