"""Throughput and memory of the reference EM shower simulator.

Prints showers/s on the CaloChallenge ds2 mesh (6480 voxels) with the SiW detector, electrons of
1-1000 GeV (log-uniform) at 50-90 degrees:

* ``simulate()`` serially in one fresh process;
* a ProcessPoolExecutor over fixed-size chunks (the decomposition the Dask fan-out uses) with 1 and with
  ``--workers`` processes, the showers gathered in the parent;

and the peak resident memory (``resource.getrusage``) of each.  It also checks that every parallel run
returns bit-identical showers to the serial one.

    python benchmarks/bench_simulate.py [--n 20000] [--chunk-size 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from mlfastsim.showers.geometry import DETECTOR_PRESETS, MESH_PRESETS
from mlfastsim.showers.sim.em import make_kinematics, simulate, simulate_chunk

DETECTOR = DETECTOR_PRESETS["SiW"]
MESH = MESH_PRESETS["ds2"]
SEED = 7


def _kinematics(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    return make_kinematics(
        energy_range_gev=(1.0, 1000.0), angle_range_deg=(50.0, 90.0), n_per_point=n, seed=seed
    )


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _warm(_: int) -> int:
    """Import scipy and build the incidence-angle tables in a worker before the clock starts."""
    e, a = _kinematics(400, seed=1)
    simulate_chunk(DETECTOR, MESH, e, a, particle="electron", seed=0, chunk_index=0)
    return os.getpid()


def _chunk(args: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    energies, angles, index = args
    return simulate_chunk(DETECTOR, MESH, energies, angles, particle="electron", seed=SEED, chunk_index=index)


def _worker_peak(_: int) -> tuple[int, float]:
    time.sleep(0.05)  # let every worker pick up one of these
    return os.getpid(), _peak_rss_mib()


def _serial(n: int, chunk_size: int) -> tuple[float, float, str]:
    """Run in a fresh process: (seconds, peak RSS MiB, digest of the showers)."""
    _warm(0)
    energies, angles = _kinematics(n)
    t0 = time.perf_counter()
    data = simulate(DETECTOR, MESH, energies, angles, seed=SEED, chunk_size=chunk_size)
    dt = time.perf_counter() - t0
    return dt, _peak_rss_mib(), hashlib.sha256(data.showers.tobytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="showers per measurement")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    # "forkserver": workers fork from a small server process, so their peak RSS is their own.
    ctx = multiprocessing.get_context("forkserver")
    rows: list[tuple[str, int, float, float, float]] = []

    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        dt, peak, reference = pool.submit(_serial, args.n, args.chunk_size).result()
    rows.append(("simulate(), serial", 1, args.n / dt, dt, peak))

    energies, angles = _kinematics(args.n)
    tasks = [
        (energies[s : s + args.chunk_size], angles[s : s + args.chunk_size], i)
        for i, s in enumerate(range(0, args.n, args.chunk_size))
    ]
    identical = True
    for workers in sorted({1, args.workers}, reverse=True):
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            list(pool.map(_warm, range(workers)))
            # Hash the chunks as they arrive (in order), so the parent holds only a few at a time.
            digest = hashlib.sha256()
            t0 = time.perf_counter()
            for part in pool.map(_chunk, tasks):
                digest.update(part.tobytes())
            dt = time.perf_counter() - t0
            peaks = dict(pool.map(_worker_peak, range(4 * workers)))
        identical &= digest.hexdigest() == reference
        rows.append(("ProcessPool over chunks", workers, args.n / dt, dt, max(peaks.values())))

    print(
        f"mlfastsim EM shower simulator: {DETECTOR.name} on mesh {MESH.describe()} = {MESH.n_voxels} voxels"
    )
    print(
        f"{args.n} electrons, 1-1000 GeV log-uniform, 50-90 deg, chunk size {args.chunk_size}, "
        f"{os.cpu_count()} cpus"
    )
    print()
    print(f"{'mode':<26}{'procs':>6}{'showers/s':>12}{'seconds':>10}{'peak RSS/proc':>16}")
    for name, procs, rate, secs, peak in rows:
        print(f"{name:<26}{procs:>6}{rate:>12.0f}{secs:>10.2f}{peak:>12.0f} MiB")
    print()
    array_mib = args.n * MESH.n_voxels * 4 / 2**20
    print(f"showers array: {array_mib:.0f} MiB float32, held whole by the serial process; pool workers hold")
    print(f"one chunk at a time, the pool's parent streams them (parent peak RSS {_peak_rss_mib():.0f} MiB)")
    print(f"pool results bit-identical to serial: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
