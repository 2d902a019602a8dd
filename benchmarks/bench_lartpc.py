"""LArTPC figures: sparse vs dense convolution, make-batches throughput, training throughput.

    OMP_NUM_THREADS=1 python benchmarks/bench_lartpc.py                 # everything, 256^3 at 1 %
    OMP_NUM_THREADS=1 python benchmarks/bench_lartpc.py --only conv --size 128

Each measurement that reports memory runs in its own spawned process, so "peak RSS" is that measurement's
own high-water mark (minus the process's baseline after imports), not the whole script's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sparse_input(size: int, occupancy: float, channels: int, seed: int):
    from mlfastsim.lartpc.sparse import batch_sparse

    g = torch.Generator().manual_seed(seed)
    n = int(occupancy * size**3)
    flat = torch.randperm(size**3, generator=g)[:n]
    coords = torch.stack([flat // (size * size), (flat // size) % size, flat % size], 1)
    feats = torch.randn(n, channels, generator=g)
    return batch_sparse([coords], [feats], (size, size, size))


def _conv_child(kind: str, size: int, occupancy: float, channels: int, repeats: int, threads: int, q) -> None:
    torch.set_num_threads(threads)
    from mlfastsim.lartpc.sparse import SubmanifoldConv3d, submanifold_map

    torch.manual_seed(0)
    conv = SubmanifoldConv3d(channels, channels, 3)
    x = _sparse_input(size, occupancy, channels, 1)
    base = _rss_mb()
    out: dict[str, float] = {"sites": float(x.n)}
    if kind == "sparse":
        t0 = time.perf_counter()
        submanifold_map(x, conv.kernel)
        out["map_s"] = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            f = x.feats.clone().requires_grad_(True)
            t0 = time.perf_counter()
            y = conv(x.with_feats(f))
            y.feats.sum().backward()
            times.append(time.perf_counter() - t0)
        out["fwd_bwd_s"] = float(np.median(times))
        out["result"] = y.feats.detach()[:1000].numpy().copy()  # numpy: torch tensors go through shared memory
    else:
        w = conv.dense_weight().detach().clone().requires_grad_(True)
        times = []
        for _ in range(repeats):
            dense = x.to_dense().requires_grad_(True)
            t0 = time.perf_counter()
            y = torch.nn.functional.conv3d(dense, w, padding=1)
            y.sum().backward()
            times.append(time.perf_counter() - t0)
            del y
        out["fwd_bwd_s"] = float(np.median(times))
        c = x.coords[:1000]
        with torch.no_grad():
            y = torch.nn.functional.conv3d(x.to_dense(), w, padding=1)
        out["result"] = y[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]].numpy().copy()
    out["peak_mb"] = _rss_mb() - base
    q.put(out)


def _spawned(fn, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def bench_conv(size: int, occupancy: float, channels: int, repeats: int, threads: int) -> list[tuple[str, str]]:
    sp = _spawned(_conv_child, "sparse", size, occupancy, channels, repeats, threads)
    de = _spawned(_conv_child, "dense", size, occupancy, channels, max(1, repeats // 2), threads)
    diff = float(np.abs(sp["result"] - de["result"]).max())
    return [
        (f"sparse conv {size}^3 @ {occupancy:.0%} ({int(sp['sites'])} sites), {channels}->{channels}, 3^3",
         f"map {sp['map_s'] * 1e3:.0f} ms once; fwd+bwd {sp['fwd_bwd_s'] * 1e3:.0f} ms; peak +{sp['peak_mb']:.0f} MB"),
        (f"dense conv3d {size}^3, {channels}->{channels}, 3^3",
         f"fwd+bwd {de['fwd_bwd_s'] * 1e3:.0f} ms; peak +{de['peak_mb']:.0f} MB"),
        ("sparse speed-up / max |difference|", f"{de['fwd_bwd_s'] / sp['fwd_bwd_s']:.1f}x / {diff:.2e}"),
    ]


def bench_tiling(n_events: int) -> list[tuple[str, str]]:
    import numba

    from mlfastsim.lartpc.simulate import SimulateConfig, simulate_to_dir
    from mlfastsim.lartpc.tiling import MakeBatchesConfig, process_xy

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parsed = Path(tmp) / "parsed"
        simulate_to_dir(SimulateConfig(n_events=n_events, tpc_ids=[1], output_dir=parsed), progress=False)
        # compile (or load the numba cache) outside the timing
        process_xy(MakeBatchesConfig(input_dir=parsed, output_dir=Path(tmp) / "warm", tpc=1, batch_size=n_events),
                   progress=False)
        for threads in (1, 2):
            if threads > numba.config.NUMBA_NUM_THREADS:
                continue
            s = process_xy(MakeBatchesConfig(input_dir=parsed, output_dir=Path(tmp) / f"xy{threads}", tpc=1,
                                             batch_size=10, threads=threads, downsample=(8, 4, 4)), progress=False)
            rows.append((f"make-batches, numba threads {threads} (256 ticks x 128 x 128, 3 planes)",
                         f"{s.events_per_second:.1f} events/s ({s.events} events, ghost fraction "
                         f"{s.ghost_fraction:.2f})"))
    return rows


def bench_training(n_events: int, steps: int) -> list[tuple[str, str]]:
    from mlfastsim.lartpc.config import LArTPCTrainConfig
    from mlfastsim.lartpc.data import load_events
    from mlfastsim.lartpc.models import build_model
    from mlfastsim.lartpc.simulate import SimulateConfig, simulate_to_dir
    from mlfastsim.lartpc.tiling import MakeBatchesConfig, process_xy
    from mlfastsim.lartpc.train import make_loss, targets

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parsed, xy = Path(tmp) / "parsed", Path(tmp) / "xy"
        simulate_to_dir(SimulateConfig(n_events=n_events, tpc_ids=[1], output_dir=parsed), progress=False)
        process_xy(MakeBatchesConfig(input_dir=parsed, output_dir=xy, tpc=1, downsample=(4, 2, 2)), progress=False)
        cfg = LArTPCTrainConfig.model_validate({
            "data": {"data_path": [str(xy)], "train_i": [0, 4], "downsample": [4, 2, 2]},
            "model": {"spatial_size": [64, 64, 64], "nChannels": 8, "nStrides": 3, "n_2D": 1}, "batch_size": 4})
        events = load_events(cfg.data, cfg.model.spatial_size, need_truth=True)
        torch.manual_seed(0)
        model = build_model(cfg.model, events.n_features)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        loss_fn = make_loss(cfg.loss, "binary")
        g = torch.Generator().manual_seed(0)
        n_vox, t_total = 0, 0.0
        for step in range(steps + 1):
            idx = torch.randperm(events.n_events, generator=g)[: cfg.batch_size]
            t0 = time.perf_counter()
            x, q = events.batch(idx, cfg.model.spatial_size)
            opt.zero_grad()
            loss = loss_fn(model(x), targets(q, "binary", 0.0, 0.1))
            loss.backward()
            opt.step()
            if step:  # the first step warms up allocators
                t_total += time.perf_counter() - t0
                n_vox += x.n
        rows.append((f"training, SparseCellNet nChannels 8, nStrides 3, 64^3 (downsample 4,2,2), batch "
                     f"{cfg.batch_size}", f"{steps * cfg.batch_size / t_total:.1f} events/s, "
                     f"{n_vox / t_total / 1e3:.0f} k voxels/s ({n_vox / steps / cfg.batch_size:.0f} voxels/event)"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["conv", "tiling", "training"], default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--occupancy", type=float, default=0.01)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the convolution benchmark")
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []
    if args.only in (None, "conv"):
        rows += bench_conv(args.size, args.occupancy, args.channels, args.repeats, args.threads)
    if args.only in (None, "tiling"):
        rows += bench_tiling(args.events)
    if args.only in (None, "training"):
        rows += bench_training(args.events, args.steps)
    width = max(len(r[0]) for r in rows)
    print(f"torch {torch.__version__}, torch threads {args.threads}, CPU")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
