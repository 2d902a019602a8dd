"""Throughput and memory of the reference hadron-shower simulator at hcal48 (48 x 48 x 48 cells).

Prints, for charged pions of ``--energy-gev`` (default 50 GeV):

* showers/s for one call of ``--n`` showers (default 1000) and the peak resident memory of the process
  (``resource.getrusage``; the output array alone is n x 110592 x 4 bytes = 442 MB for 1000 showers);
* the time per shower for batches of 100 (median of ``--repeats`` batches), the number the issue compares
  against the generative models' batch-100 generation time;
* the number of numba threads (set ``NUMBA_NUM_THREADS=1`` for the single-core figure).

Compilation happens in a warm-up call before any clock starts (numba caches it on disk afterwards).

    NUMBA_NUM_THREADS=1 python benchmarks/bench_hadronic.py [--n 1000] [--energy-gev 50] [--repeats 10]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numba
import numpy as np

from mlfastsim.showers.geometry import GRID_PRESETS
from mlfastsim.showers.sim.hadronic import HADRON_CALORIMETERS, simulate_pions

GRID = GRID_PRESETS["hcal48"]
CALO = HADRON_CALORIMETERS["steel_scint"]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="showers in the throughput call")
    parser.add_argument("--energy-gev", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=10, help="batches of 100 to time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    simulate_pions(np.full(2, args.energy_gev * 1e3), GRID, CALO, 0)
    print(f"warm-up (numba compile or cache load): {time.perf_counter() - t0:.2f} s")
    print(f"numba threads: {numba.get_num_threads()}, grid {GRID.describe()}, {GRID.n_voxels} voxels")
    rss_before = _peak_rss_mib()

    energies = np.full(args.n, args.energy_gev * 1e3)
    # Twice: the first call also pays the kernel's first-touch zeroing of the fresh output pages (n x 442 kB),
    # the second reuses memory the allocator already holds, as a long-running producer would.
    for label in ("first call (fresh memory)", "second call (memory reused)"):
        t0 = time.perf_counter()
        showers = simulate_pions(energies, GRID, CALO, args.seed)
        dt = time.perf_counter() - t0
        hits = float((showers > 0).sum(axis=1).mean())
        print(f"{label}: {args.n} pions at {args.energy_gev:g} GeV in {dt:.2f} s = {args.n / dt:.0f} showers/s, "
              f"<hits> = {hits:.0f}, peak RSS {_peak_rss_mib():.0f} MiB (before: {rss_before:.0f} MiB, "
              f"output array {showers.nbytes / 2**20:.0f} MiB)")
        del showers

    batch = np.full(100, args.energy_gev * 1e3)
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        simulate_pions(batch, GRID, CALO, args.seed + 1 + r)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"batch of 100: median {med * 1e3:.1f} ms per batch = {med * 10:.2f} ms per shower "
          f"(min {min(times) * 10:.2f}, max {max(times) * 10:.2f} ms per shower)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
