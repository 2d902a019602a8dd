"""Pre-train the flow-matching family (``cfm``) at several sizes on one GPU under a wall-clock budget, and score them.

Issue 13 asks for the ``full`` preset to be run whenever a GPU is available and for the shipped model to be as good
as a short lease allows.  A GPU lease here is minutes, so this study makes every minute count:

1. **data**: the three pre-training geometries (SiW, SciPb, PbWO4 on the ds2 mesh, electrons 1-1000 GeV
   log-uniform, 50-90 degrees) with ``--n-per-geometry`` showers each, simulated in ``--parts`` seeded parts per
   geometry in parallel processes (seed ``1000 + 10 * slot + part``), plus the fidelity study's SiW reference
   (seed 201) and floor (seed 202) samples;
2. **training**: every ``--variants`` size trains at the same time on the one GPU (each in its own process, small
   models are launch-bound, so they share the chip well).  Each measures its own seconds per step on the real
   shapes first and sets ``trainer.max_steps`` so that its cosine schedule ends inside ``--budget-s``; the config it
   trained with (steps included) is written next to the results, so the run is reproducible with
   ``mlfastsim showers train --config THAT.yaml`` on the same data;
3. **scoring**: each variant's last checkpoint generates the SiW reference's kinematics on the GPU and is scored
   exactly as ``benchmarks/fidelity_study.py`` scores (15.15 keV, CaloChallenge binning, classifier AUCs, FPD, KPD,
   mean SP, n_hits SP), next to the same-vs-same floor; plus GPU ms/shower at batch 1, 100 and 10k;
4. **results** in ``--out``: ``gpu_cfm_study.json`` (every variant's config included), the table, and the float32
   weights of the variants small enough to ship (``VARIANT.pt``, for ``make_cfm_pretrained.py --checkpoint``).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_cfm_study.py --out OUT [--work /tmp/gpu_cfm] [--budget-s 300] \\
        [--n-per-geometry 40000] [--parts 4] [--variants small,ship,mid,full] [--n-ref 4000] [--gpu 0]

Sizing a lease (one H200, 2026-11-29): simulating 3 x 32000 showers took 24 s on 16 cores; with four variants at
``--budget-s 270`` training filled 360 s and the classifier scoring of five samples did not fit in the remaining
180 s of a 570 s command, so give scoring about 4 minutes, or score the returned weights on your own machine
(``benchmarks/fidelity_study.py --cfm VARIANT.pt``).  The JSON is written as each variant is generated.

Without a GPU it runs on the CPU (``--gpu -1``), which is only useful as a smoke test at tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

from make_cfm_pretrained import simulate_parts, strip  # noqa: E402
from make_pretrained import GEOMETRIES  # noqa: E402

from fidelity_study import candidate, reference_kinematics, score  # noqa: E402
from fidelity_study import simulate as simulate_sample  # noqa: E402
from mlfastsim.core.checkpoint import list_checkpoints  # noqa: E402
from mlfastsim.core.config import dump_config, load_config  # noqa: E402
from mlfastsim.showers.config import TrainConfig  # noqa: E402
from mlfastsim.showers.geometry import load_mesh  # noqa: E402
from mlfastsim.showers.io.formats import ShowerData, read_native  # noqa: E402
from mlfastsim.showers.models import load_model  # noqa: E402

#: name -> (base config, model overrides, trainer overrides, ship the weights back)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], bool]] = {
    "small": ("cfm_cpu.yaml", {}, {"learning_rate": 6e-4}, True),  # the shipped cfm_ds2 architecture
    "ship": ("cfm_cpu.yaml", {"width": 128, "depth": 4, "heads": 4}, {"learning_rate": 6e-4}, True),
    "mid": ("cfm_cpu.yaml", {"width": 192, "depth": 6, "heads": 6}, {"learning_rate": 4e-4}, True),
    "full": ("cfm_full.yaml", {}, {"learning_rate": 3e-4}, False),  # ~70 MB: over the 25 MB shipping limit
}
BATCH = 512  # per step, every variant (override with --batch for CPU smoke tests)


def make_data(work: Path, n_per_geometry: int, parts: int, n_ref: int) -> tuple[list[Path], list[int]]:
    """Simulate the pre-training parts (``make_cfm_pretrained``'s seeds) and the SiW reference/floor in parallel."""
    t0 = time.perf_counter()
    workers = max(1, (os.cpu_count() or 2) - 1)
    with ProcessPoolExecutor(2) as pool:  # the two reference samples beside the parts' own pool
        kin = reference_kinematics(n_ref)
        refs = [pool.submit(simulate_sample, work, name, "SiW", seed, **kin)
                for name, seed in (("siw_ref", 201), ("siw_floor", 202))]
        files = simulate_parts(work, n_per_geometry, parts, workers=max(1, workers - 2))
        for r in refs:
            r.result()
    print(f"data: {len(files)} parts, {n_per_geometry} showers per geometry, in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return files, [slot for slot in range(len(GEOMETRIES)) for _ in range(parts)]


def variant_config(name: str, work: Path, files: list[Path], slots: list[int], gpu: int, threads: int,
                   batch: int) -> TrainConfig:
    base, model_over, trainer_over, _ = VARIANTS[name]
    cfg = load_config(TrainConfig, ROOT / "configs" / "showers" / base)
    trainer = cfg.trainer.model_copy(update={"batch_size": batch, "scheduler": "cosine", "grad_clip": 1.0,
                                             "plot_freq": 0, "seed": 0, **trainer_over})
    cfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update=model_over), "trainer": trainer,
        "data": cfg.data.model_copy(update={"files": files, "geometry_index": slots}),
        "device": cfg.device.model_copy(update={"gpu_ids": [gpu] if gpu >= 0 else None, "num_threads": threads}),
        "output_dir": work / name,
    })
    cfg.tracking.dir = work / "tracking"
    return cfg


def _bare_model(cfg: TrainConfig, n_cond: int) -> torch.nn.Module:
    """The cfm network of this size on the ds2 mesh (seeded; for timing and counting parameters only)."""
    from mlfastsim.showers.models.cfm import ShowerCFM

    mesh = load_mesh("ds2")
    torch.manual_seed(0)
    return ShowerCFM(mesh.n_z, mesh.n_phi * mesh.n_r, n_cond, 1e6, cfg.model)


def seconds_per_step(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, n_cond: int) -> float:
    """One optimisation step of this size at this batch on real shapes (random data), median of 20 after warm-up."""
    model = model.to(device)
    mesh = load_mesh("ds2")
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    b = cfg.trainer.batch_size
    x = (torch.rand(b, mesh.n_voxels, device=device) ** 8) * 1e-2
    c = torch.rand(b, n_cond, device=device)
    times = []
    for i in range(28):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = model(x, c)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 8:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def train_variant(name: str, work: Path, budget_s: float, gpu: int, threads: int, batch: int, sharing: int) -> None:
    """(Subprocess) measure the step time, fit max_steps into the budget, train, write the config used."""
    from mlfastsim.showers.training.train import train_from_config

    torch.set_num_threads(threads)
    files = json.loads((work / "data.json").read_text())
    cfg = variant_config(name, work, [Path(f) for f in files["files"]], files["slots"], gpu, threads, batch)
    device = torch.device("cuda", gpu) if gpu >= 0 else torch.device("cpu")
    bare = _bare_model(cfg, 2 + len(GEOMETRIES))
    n_par = sum(p.numel() for p in bare.parameters())
    t_step = seconds_per_step(bare, cfg, device, 2 + len(GEOMETRIES))
    # 0.7: data loading, evaluations, checkpoints.  Sharing the chip: on an H200 with four variants at once, each
    # step took 1.6x (3.3M parameters) to 2.4x (0.5M) its time alone, so count half a step per other variant.
    slowdown = max(1.0, (1 + sharing) / 2)
    steps = max(50, int(0.7 * budget_s / (t_step * slowdown)) // 50 * 50)
    every = max(50, steps // 10)
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={
        "max_steps": steps, "eval_every": every // 2, "checkpoint_every": every,
        "keep_checkpoints": None if VARIANTS[name][3] else 2})})
    (work / f"{name}.yaml").write_text(dump_config(cfg))
    print(f"[{name}] {n_par:,} parameters, {1e3 * t_step:.1f} ms/step alone -> {steps} steps at batch "
          f"{cfg.trainer.batch_size}", flush=True)
    t0 = time.perf_counter()
    result = train_from_config(cfg, resume=False, progress=False)
    seconds = time.perf_counter() - t0
    hist = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history]
    (work / f"{name}.done.json").write_text(json.dumps({
        "name": name, "steps": steps, "train_s": seconds, "ms_per_step_alone": 1e3 * t_step, "n_parameters": n_par,
        "last_checkpoint": str(result.last_checkpoint), "history": hist[-50:]}))
    print(f"[{name}] trained {steps} steps in {seconds:.0f} s", flush=True)


def gpu_ms_per_shower(model: Any, batch: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` ms/shower of the torch sampler on the model's device (synchronised), incl. host copies."""
    from mlfastsim.showers.inference.generate import generate

    e = np.full(batch, 50e3, dtype=np.float32)
    a = np.full(batch, 90.0, dtype=np.float32)
    generate(model, e[: min(batch, 100)], a[: min(batch, 100)], 0, seed=0, batch_size=batch)  # warm-up
    best = float("inf")
    for r in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(model, e, a, 0, seed=r, batch_size=batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / batch


def _score_job(job: tuple[str, str, str, int]) -> tuple[str, dict[str, Any]]:
    name, ref_path, cand_path, threads = job
    torch.set_num_threads(threads)
    ref = read_native(Path(ref_path))
    if cand_path.endswith(".h5"):  # the floor: a second simulated sample, with its own kinematics
        cand = read_native(Path(cand_path))
    else:  # generated at the reference's kinematics
        cand = ShowerData(ref.energies, np.load(cand_path), ref.mesh, ref.angles, {"source": "generated"})
    t0 = time.perf_counter()
    r = score(ref, cand, Path(cand_path).with_suffix(""), classifier=True, seed=0)
    return name, {**r, "score_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_cfm"))
    parser.add_argument("--budget-s", type=float, default=300.0, help="training wall time per variant")
    parser.add_argument("--n-per-geometry", type=int, default=40000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--n-ref", type=int, default=4000)
    parser.add_argument("--variants", default="small,ship,mid,full")
    parser.add_argument("--gpu", type=int, default=0 if torch.cuda.is_available() else -1)
    parser.add_argument("--threads", type=int, default=3, help="CPU threads per training process")
    parser.add_argument("--timing-batches", default="1,100,10000")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--train-variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sharing", type=int, default=1, help=argparse.SUPPRESS)  # variants on the chip at once
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.train_variant:
        train_variant(args.train_variant, work, args.budget_s, args.gpu, args.threads, args.batch, args.sharing)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    t_start = time.perf_counter()
    files, slots = make_data(work, args.n_per_geometry, args.parts, args.n_ref)
    (work / "data.json").write_text(json.dumps({"files": [str(f) for f in files], "slots": slots}))

    # ---- train every variant at once, one process each
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1",
           "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name in names:
        log = open(work / f"{name}.log", "w")  # closed after the process ends
        cmd = [sys.executable, __file__, "--out", str(args.out), "--work", str(work), "--budget-s",
               str(args.budget_s), "--gpu", str(args.gpu), "--threads", str(args.threads), "--batch",
               str(args.batch), "--sharing", str(len(names)), "--train-variant", name]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log)
    deadline = time.perf_counter() + args.budget_s + 90  # the lease is short: never run over
    while any(p.poll() is None for p, _ in procs.values()):
        if time.perf_counter() > deadline:
            for name, (p, _) in procs.items():
                if p.poll() is None:
                    print(f"[{name}] over its deadline: stopped, scored at its last checkpoint", flush=True)
                    p.kill()
            break
        time.sleep(5)
    for name, (p, log) in procs.items():
        p.wait()
        log.close()
        print(f"---- {name} (exit {p.returncode}):\n" + "\n".join(
            (work / f"{name}.log").read_text().splitlines()[-8:]), flush=True)

    # ---- generate on the GPU, score on the CPU (parallel), time the GPU
    ref = read_native(work / "siw_ref.h5")
    results: dict[str, Any] = {"budget_s": args.budget_s, "n_per_geometry": args.n_per_geometry,
                               "n_ref": args.n_ref, "batch": args.batch, "device": _device_name(args.gpu),
                               "variants": {}}
    jobs = [("floor", str(work / "siw_ref.h5"), str(work / "siw_floor.h5"), 2)]
    device = torch.device("cuda", args.gpu) if args.gpu >= 0 else torch.device("cpu")
    for name in names:
        ckpts = list_checkpoints(work / name / "checkpoints")
        if not ckpts:
            print(f"[{name}] no checkpoint: not scored", flush=True)
            continue
        step, path = ckpts[-1]
        info = json.loads((work / f"{name}.done.json").read_text()) if (work / f"{name}.done.json").is_file() else {}
        model = load_model(path).to(device)
        cand = candidate(model, ref, 0, 0)
        np.save(work / f"{name}.npy", cand.showers)
        timing = {f"gpu_ms_b{b}": round(gpu_ms_per_shower(model, int(b)), 4) for b in args.timing_batches.split(",")}
        results["variants"][name] = {"step": step, **{k: v for k, v in info.items() if k != "history"}, **timing,
                                     "loss_history": info.get("history", [])}
        jobs.append((name, str(work / "siw_ref.h5"), str(work / f"{name}.npy"), 2))
        if VARIANTS[name][3]:
            cfg = load_config(TrainConfig, work / f"{name}.yaml")
            (args.out / f"{name}.pt").write_bytes(strip(path, cfg))
        results["variants"][name]["config"] = (work / f"{name}.yaml").read_text()
        (args.out / "gpu_cfm_study.json").write_text(json.dumps(results, indent=1))  # kept if scoring runs over
        del model
    # spawned, not forked: this process has initialised CUDA
    with ProcessPoolExecutor(min(len(jobs), max(1, (os.cpu_count() or 2) // 2)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, r in pool.map(_score_job, jobs):
            results["variants"].setdefault(name, {}).update(r)
            print(name, json.dumps(r), flush=True)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    (args.out / "gpu_cfm_study.json").write_text(json.dumps(results, indent=1))
    table = render(results, args.timing_batches.split(","))
    (args.out / "gpu_cfm_study.md").write_text(table)
    print(table, flush=True)


def _device_name(gpu: int) -> str:
    return torch.cuda.get_device_name(gpu) if gpu >= 0 and torch.cuda.is_available() else "cpu"


def render(results: dict[str, Any], batches: list[str]) -> str:
    cols = ("auc_low", "auc_high", "fpd", "kpd", "mean_sp", "n_hits_sp", "e_ratio_sp")
    lines = [f"cfm pre-trained on one {results['device']}, {results['budget_s']:.0f} s budget per variant, "
             f"{results['n_per_geometry']} showers per geometry, batch {results['batch']}; scored on SiW "
             f"({results['n_ref']} vs {results['n_ref']}, 15.15 keV, CaloChallenge binning)", "",
             "| variant | params | steps | train s | AUC low | AUC high | FPD | KPD | mean SP | n_hits SP | "
             "E_tot/E_inc SP | " + " | ".join(f"GPU ms/shower b{b}" for b in batches) + " |",
             "|---|" + "---|" * (3 + len(cols) + len(batches))]
    for name, r in results["variants"].items():
        def f(k: str, spec: str = ".4g", r: dict[str, Any] = r) -> str:
            v = r.get(k)
            return "-" if v is None else format(v, spec)
        lines.append(f"| {name} | {f('n_parameters', ',')} | {f('step', 'd')} | {f('train_s', '.0f')} | "
                     + " | ".join(f(k) for k in cols) + " | " + " | ".join(f(f"gpu_ms_b{b}", ".3g") for b in batches)
                     + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
