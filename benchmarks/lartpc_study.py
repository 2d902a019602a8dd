"""LArTPC study: how far do more events and more epochs take deghosting, and does the charge add up?

    OMP_NUM_THREADS=1 python benchmarks/lartpc_study.py --size cpu  --work runs/lartpc_study   # ~25 min, 1 core
    OMP_NUM_THREADS=1 python benchmarks/lartpc_study.py --size tiny --work /tmp/lartpc_tiny    # ~1 min smoke run
    python benchmarks/lartpc_study.py --size full --gpu 0 --work runs/lartpc_full              # one GPU

One simulated sample (``lartpc simulate`` + ``make-batches``, TPC 5, downsampling 4,2,2, wire + shared
features), a fixed held-out set, and the deghosting net trained on growing numbers of events (cpu: 250,
500, 1000); every run writes one summary row per epoch, so the events x epochs grid comes from len(events)
runs.  Per cell: ghost rejection at 95 % real-voxel efficiency, AUC, and training throughput (events/s).
Then the charge net (log-charge on real voxels + its own deghosting logit), started from the largest
ghost net's backbone: charge bias and resolution overall, per bin of true charge and per wire plane.

Each stage's result is cached in the work directory (``results.json``), so a rerun resumes.  The tables
are printed and written to ``WORK/report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    # smoke test of the script itself
    "tiny": {"events": [16, 32], "n_test": 16, "epochs": 2, "charge_epochs": 2, "batch": 4,
             "model": {"nChannels": 4, "nStrides": 3}},
    # ~25 min wall on a busy shared 2-core machine (load ~7; ~8 min of one quiet core): the 30-min CPU budget
    "cpu": {"events": [250, 500, 1000], "n_test": 200, "epochs": 10, "charge_epochs": 6, "batch": 4,
            "model": {"nChannels": 8, "nStrides": 3}},
    # one GPU (>= 16 GB): ProtoDUNE-like network width, ten times the events
    "full": {"events": [1000, 3000, 10000], "n_test": 500, "epochs": 30, "charge_epochs": 20, "batch": 8,
             "model": {"nChannels": 32, "nStrides": 5, "n_2D": 2}},
}
TPC = 5
DOWNSAMPLE = (4, 2, 2)


def _sample(work: Path, n_events: int, seed: int) -> Path:
    """Simulate and tile ``n_events`` events once (make-batches skips finished files on a rerun)."""
    from mlfastsim.lartpc.simulate import SimulateConfig, simulate_to_dir
    from mlfastsim.lartpc.tiling import MakeBatchesConfig, process_xy

    parsed, xy = work / "parsed", work / "xy"
    if not (work / "parsed.done").exists():
        simulate_to_dir(SimulateConfig(n_events=n_events, seed=seed, tpc_ids=[TPC], output_dir=parsed), progress=False)
        (work / "parsed.done").write_text(str(n_events))
    process_xy(MakeBatchesConfig(input_dir=parsed, output_dir=xy, tpc=TPC, batch_size=50, downsample=DOWNSAMPLE,
                                 x_type="both"), progress=False)
    return xy


def _config(xy: Path, out: Path, size: dict[str, Any], n_train: int, n_total: int, seed: int, gpu: list[int],
            **over: Any):
    from mlfastsim.lartpc.config import LArTPCTrainConfig

    base: dict[str, Any] = {
        "output_dir": str(out), "seed": seed, "n_epochs": size["epochs"], "batch_size": size["batch"],
        "store_inference": {"everyNepoch": 0},
        "data": {"data_path": [str(xy)], "train_i": [0, n_train], "inference_i": [n_total - size["n_test"], n_total],
                 "tpcs": [TPC], "downsample": list(DOWNSAMPLE)},
        "model": {"type": "binary", "spatial_size": [64, 64, 64], "n_2D": 1, "downsample_t": 2, **size["model"]},
        "loss": {"name": "bce", "pos_weight": 2.0},
        "optimizer": {"name": "adam", "lr": 0.003, "scheduler": "cosine"},
        "device": {"gpu_ids": gpu or None},
        "tracking": {"backend": "local", "dir": str(out.parent / "tracking"), "run_name": out.name},
    }
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return LArTPCTrainConfig.model_validate(base)


def _n_events(xy: Path) -> int:
    from mlfastsim.lartpc.tiling import list_xy, read_xy

    return sum(len(read_xy(p).event_ids) for p in list_xy([xy]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--work", type=Path, default=Path("runs/lartpc_study"))
    ap.add_argument("--seed", type=int, default=1, help="simulation and training seed")
    ap.add_argument("--gpu", type=int, nargs="*", default=[], help="GPU ids (default: CPU)")
    args = ap.parse_args()
    import torch

    from mlfastsim.lartpc.train import run

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    size = SIZES[args.size]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    res_path = work / "results.json"
    results: dict[str, Any] = json.loads(res_path.read_text()) if res_path.exists() else {}
    if results.get("size") not in (None, args.size):
        raise SystemExit(f"{res_path} holds a '{results['size']}' study; use another --work directory")
    results["size"] = args.size
    n_max = max(size["events"])
    t0 = time.perf_counter()
    xy = _sample(work, n_max + size["n_test"] + 20, args.seed)  # a few spare: empty events are skipped
    n_total = _n_events(xy)
    if n_total < n_max + size["n_test"]:
        raise SystemExit(f"only {n_total} non-empty events; lower the sizes")
    results["sample_s"] = results.get("sample_s", time.perf_counter() - t0)

    ghost = results.setdefault("ghost", {})
    for n in size["events"]:
        if str(n) in ghost:
            continue
        cfg = _config(xy, work / f"ghost_{n}", size, n, n_total, args.seed, args.gpu)
        r = run(cfg, progress=False)
        ghost[str(n)] = {"seconds": r.seconds, "events_per_s": n * size["epochs"] / r.seconds,
                         "rows": [{k: row[k] for k in ("epoch", "rejection_at_95", "auc", "val_loss", "purity",
                                                       "efficiency", "rejection") if k in row}
                                  for row in r.summaries]}
        res_path.write_text(json.dumps(results, indent=1))

    if "charge" not in results:
        cfg = _config(xy, work / "charge", size, n_max, n_total, args.seed, args.gpu,
                      n_epochs=size["charge_epochs"], metric="charge_resolution",
                      model={"type": "charge", "nHiddenLayers": 1}, loss={"name": "huber", "pos_weight": 2.0},
                      transfer={"checkpoint": str(work / f"ghost_{n_max}"), "modules": "backbone"})
        r = run(cfg, progress=False)
        results["charge"] = {"seconds": r.seconds, "events_per_s": n_max * size["charge_epochs"] / r.seconds,
                             "last": r.summaries[-1], "rows": r.summaries}
        res_path.write_text(json.dumps(results, indent=1))
    text = report(results, size)
    (work / "report.md").write_text(text)
    print(text)


def report(results: dict[str, Any], size: dict[str, Any]) -> str:
    """The events x epochs tables and the charge summary, as markdown."""
    ghost = results["ghost"]
    ns = sorted(ghost, key=int)
    epochs = [int(r["epoch"]) for r in ghost[ns[0]]["rows"]]
    lines = [f"# LArTPC study ({results['size']}: model {size['model']}, test events {size['n_test']})", "",
             "Ghost rejection at 95 % real-voxel efficiency (rows: training events, columns: epochs)", "",
             "| events | " + " | ".join(str(e) for e in epochs) + " | AUC (last) | events/s |",
             "|---" * (len(epochs) + 3) + "|"]
    for n in ns:
        rows = ghost[n]["rows"]
        lines.append(f"| {n} | " + " | ".join(f"{r['rejection_at_95']:.3f}" for r in rows)
                     + f" | {rows[-1]['auc']:.4f} | {ghost[n]['events_per_s']:.1f} |")
    c = results.get("charge")
    if c:
        last = c["last"]
        lines += ["", f"Charge net ({len(c['rows'])} epochs on {ns[-1]} events, {c['events_per_s']:.1f} events/s): "
                  f"bias {last['charge_bias']:+.3f}, resolution {last['charge_resolution']:.3f}, summed-charge "
                  f"closure {last['charge_sum_bias']:+.3f}; its own deghosting: rejection at 95 % "
                  f"{last['rejection_at_95']:.3f}, AUC {last['auc']:.4f}", "",
                  "| true charge bin (MeV) | share of real voxels | bias | resolution |", "|---|---|---|---|"]
        for k in last:
            if k.startswith("charge_bias_q"):
                b = k[len("charge_bias_q"):]
                lines.append(f"| {b} | {last['charge_fraction_q' + b]:.3f} | {last[k]:+.3f} | "
                             f"{last['charge_resolution_q' + b]:.3f} |")
        lines += ["", "| wire plane | bias of per-(tick, wire) charge | resolution |", "|---|---|---|"]
        for p in range(3):
            if f"charge_bias_plane{p}" in last:
                bias, res = last[f"charge_bias_plane{p}"], last[f"charge_resolution_plane{p}"]
                lines.append(f"| {p} | {bias:+.3f} | {res:.3f} |")
    lines += ["", f"Sample (simulate + make-batches): {results['sample_s']:.0f} s", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
