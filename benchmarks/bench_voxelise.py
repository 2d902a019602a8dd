"""Benchmark: hits -> mesh voxelisation throughput and memory.

Generates shower-like hits (gamma longitudinal profile, exponential radial profile, 5-10 % outside the
mesh) around random particle axes, then times :func:`mlfastsim.showers.sim.voxelise.voxelise` into the ds2
and par04 meshes, and :func:`read_hits` end to end from an HDF5 file (I/O, validation, chunking).
JIT compile time is measured apart, in a fresh process with an empty numba cache, so that the
throughput figures are steady-state.

    .venv/bin/python benchmarks/bench_voxelise.py                 # 20M hits, 2000 events
    .venv/bin/python benchmarks/bench_voxelise.py --hits 2e6 --events 200 --no-io
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numba
import numpy as np

from mlfastsim.showers.geometry import MESH_PRESETS, CylindricalMesh
from mlfastsim.showers.sim.voxelise import event_offsets_from_counts, mesh_frames, read_hits, voxelise, write_hits

COMPILE_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
from mlfastsim.showers.sim.voxelise import voxelise
from mlfastsim.showers.geometry import MESH_PRESETS
t1 = time.perf_counter()
voxelise(np.zeros(1), np.zeros(1), np.ones(1), np.ones(1), np.array([0, 1]), np.zeros((1, 3)),
         np.array([[0.0, 0.0, 1.0]]), MESH_PRESETS["par04"])
print(t1 - t0, time.perf_counter() - t1)
"""


def make_hits(n_hits: int, n_events: int, mesh: CylindricalMesh, seed: int = 1) -> dict[str, np.ndarray]:
    """Random shower-like events in the hits layout (float32 columns, detector frame, +z front face)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_hits, np.full(n_events, 1.0 / n_events))
    offsets = event_offsets_from_counts(counts)
    alpha = np.radians(rng.uniform(0.0, 40.0, n_events))  # incidence 50..90 degrees
    az = rng.uniform(0.0, 2 * np.pi, n_events)
    directions = np.stack([np.sin(alpha) * np.cos(az), np.sin(alpha) * np.sin(az), np.cos(alpha)], axis=1)
    entry = np.zeros((n_events, 3))
    entry[:, :2] = rng.uniform(-200.0, 200.0, (n_events, 2))
    frames = mesh_frames(directions)
    cols = {k: np.empty(n_hits, dtype=np.float32) for k in ("x", "y", "z", "energy")}
    step = 256  # events per generation block keeps the float64 temporaries small
    for i0 in range(0, n_events, step):
        i1 = min(i0 + step, n_events)
        h0, h1 = int(offsets[i0]), int(offsets[i1])
        ev = np.repeat(np.arange(i0, i1), counts[i0:i1])
        zp = rng.gamma(4.0, 0.16 * mesh.length / 4.0, h1 - h0)  # shower maximum near 0.12 of the mesh length
        rho = rng.exponential(0.3 * mesh.radius, h1 - h0)  # ~4 % beyond the mesh radius
        phi = rng.uniform(0.0, 2 * np.pi, h1 - h0)
        f = frames[ev]
        pts = entry[ev] + zp[:, None] * f[:, 2] + (rho * np.cos(phi))[:, None] * f[:, 0]
        pts += (rho * np.sin(phi))[:, None] * f[:, 1]
        cols["x"][h0:h1], cols["y"][h0:h1], cols["z"][h0:h1] = pts.T
        cols["energy"][h0:h1] = rng.exponential(0.05, h1 - h0)
    return {
        **cols,
        "event_offsets": offsets,
        "incident_energies": rng.uniform(1e3, 1e6, n_events).astype(np.float32),
        "entry_points": entry.astype(np.float32),
        "directions": directions.astype(np.float32),
    }


def compile_times() -> tuple[float, float, float]:
    """(import s, cold compile s, cached load s), each in a fresh interpreter."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        runs = []
        for _ in range(2):  # first: empty cache (compile); second: cache hit
            cmd = [sys.executable, "-c", COMPILE_SNIPPET]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            runs.append([float(x) for x in out.stdout.split()])
    return runs[0][0], runs[0][1], runs[1][1]


def time_kernel(hits: dict[str, np.ndarray], mesh: CylindricalMesh, repeat: int) -> dict[str, float]:
    args = [hits[k] for k in ("x", "y", "z", "energy", "event_offsets", "entry_points", "directions")]
    voxelise(*args, mesh)  # warm-up (compile or cache load, page faults of a first output)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = voxelise(*args, mesh)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    voxelise(*args, mesh)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = hits["x"].size
    return {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "mhits_s": n / min(times) / 1e6,
        "extra_mib": peak / 2**20,
        "out_mib": res.showers.nbytes / 2**20,
        "outside": float(res.hits_outside.sum()) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hits", type=float, default=20e6)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    ap.add_argument("--no-io", action="store_true", help="skip the end-to-end read_hits timing")
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    n_hits = int(args.hits)

    t_import, t_cold, t_cached = compile_times()
    print(f"numba {numba.__version__}, threads {numba.get_num_threads()}, cores {os.cpu_count()}")
    print(f"import {t_import:.2f} s | first call: cold JIT compile {t_cold:.2f} s, cached {t_cached:.2f} s")

    rows = []
    for name in ("ds2", "par04"):
        mesh = MESH_PRESETS[name]
        t0 = time.perf_counter()
        hits = make_hits(n_hits, args.events, mesh)
        gen = time.perf_counter() - t0
        r = time_kernel(hits, mesh, args.repeat)
        rows.append((f"voxelise {name}", r))
        print(f"[{name}] generated {n_hits / 1e6:.1f}M hits / {args.events} events in {gen:.1f} s")
        if not args.no_io:
            with tempfile.TemporaryDirectory() as tmp:
                path = write_hits(Path(tmp) / "hits.h5", **hits)
                t0 = time.perf_counter()
                data = read_hits([path], mesh)
                t = time.perf_counter() - t0
                rows.append((
                    f"read_hits {name} (file)",
                    {"best_s": t, "median_s": t, "mhits_s": n_hits / t / 1e6, "extra_mib": float("nan"),
                     "out_mib": data.showers.nbytes / 2**20,
                     "outside": data.meta["voxelisation"]["hits_outside_fraction"]},
                ))
        del hits

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print()
    header = [("best s", 9), ("median s", 10), ("M hits/s", 10), ("out MiB", 9), ("extra MiB", 11)]
    header.append(("outside", 9))
    print(f"{'case':<26}" + "".join(f"{h:>{w}}" for h, w in header))
    for label, r in rows:
        print(
            f"{label:<26}{r['best_s']:>9.3f}{r['median_s']:>10.3f}{r['mhits_s']:>10.1f}{r['out_mib']:>9.0f}"
            f"{r['extra_mib']:>11.0f}{r['outside']:>9.3f}"
        )
    print(f"\npeak RSS of the process (inputs, outputs, generation) {peak_rss:.0f} MiB; "
          "'extra MiB' = traced allocations of one voxelise call (output + frames)")


if __name__ == "__main__":
    main()
