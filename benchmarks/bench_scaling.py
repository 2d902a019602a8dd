"""Scale-out figures: ``showers simulate`` and ``lartpc make-batches`` on 1 and 2 Dask workers.

Each job runs through its real entry point (``simulate_to_file``, ``process_xy``) against an already
started ``distributed.LocalCluster`` (``--scheduler`` semantics), so the times are the job's, not the
cluster start's (printed on its own).  Rows: serial (no Dask), Dask with 1 worker, Dask with N workers;
"vs serial" is the gain over running without Dask at all (what a user gets from --workers N);
speed-up and efficiency are relative to the 1-worker Dask row (same task split, same overheads).  Every
row's output is checked byte for byte against the serial one, and every run starts from an empty output
(no idempotent skip).

The machine may be shared: the 1-minute load average is printed before and after each job, and a row
taken while other work holds the cores understates the speed-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py                 # N = 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py --workers 4 --showers 4000 --events 800
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _load() -> float:
    return os.getloadavg()[0]


def _cluster(n: int):
    from distributed import LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=40)
    return cluster, time.perf_counter() - t0


def _simulate_job(root: Path, showers: int) -> Callable[[str, int, str | None], Path]:
    from mlfastsim.showers.config import SimulateConfig
    from mlfastsim.showers.pipeline import simulate_to_file

    def run(tag: str, workers: int, scheduler: str | None) -> Path:
        out = root / tag / "showers.h5"  # same file name in every row: the recorded config names it
        shutil.rmtree(out.parent, ignore_errors=True)
        cfg = SimulateConfig(detector="SiW", mesh="par04", energies_gev=[10.0, 50.0, 100.0],
                             n_per_point=showers // 3, chunk_size=25, seed=7, output=Path("showers.h5"),
                             parallel={"workers": workers, "scheduler": scheduler})
        out.parent.mkdir(parents=True)
        cwd = Path.cwd()
        os.chdir(out.parent)
        try:
            simulate_to_file(cfg)
        finally:
            os.chdir(cwd)
        return out

    return run


def _make_batches_job(root: Path, events: int) -> Callable[[str, int, str | None], Path]:
    from mlfastsim.lartpc.simulate import SimulateConfig, simulate_to_dir
    from mlfastsim.lartpc.tiling import MakeBatchesConfig, process_xy

    parsed = root / "parsed"
    simulate_to_dir(SimulateConfig(n_events=events, seed=3, tpc_ids=[1], output_dir=parsed,
                                   parallel={"workers": 2}), progress=False)

    def run(tag: str, workers: int, scheduler: str | None) -> Path:
        out = root / tag / "xy"
        shutil.rmtree(out, ignore_errors=True)
        process_xy(MakeBatchesConfig(input_dir=parsed, output_dir=out, tpc=1, batch_size=4, downsample=(2, 2, 2),
                                     parallel={"workers": workers, "scheduler": scheduler}), progress=False)
        return out

    return run


def _same_output(a: Path, b: Path) -> bool:
    if a.is_file():
        return a.read_bytes() == b.read_bytes()
    names = sorted(p.name for p in a.glob("*.h5"))
    return names == sorted(p.name for p in b.glob("*.h5")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _time(fn: Callable[[], Path]) -> tuple[float, Path, float, float]:
    before = _load()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out, before, _load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--showers", type=int, default=1200, help="EM showers on the Par04 mesh (40500 voxels)")
    parser.add_argument("--events", type=int, default=240, help="LArTPC events (ProtoDUNE-like TPC) to tile")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per row")
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # cluster shutdown chatter
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cpus} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {_load():.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = {
            f"showers simulate ({args.showers} EM showers, Par04 mesh)": _simulate_job(root / "sim", args.showers),
            f"lartpc make-batches ({args.events} events, 1 TPC)": _make_batches_job(root / "lartpc", args.events),
        }
        clusters = {}
        for n in (1, args.workers):
            clusters[n], start_s = _cluster(n)
            print(f"LocalCluster with {n} worker(s) started in {start_s:.1f} s (not included below)")
        try:
            for name, job in jobs.items():
                print(f"\n{name}")
                print(f"{'row':<18} {'seconds':>8} {'vs serial':>9} {'speed-up':>9} {'efficiency':>10} "
                      f"{'load before/after':>18} {'identical':>9}")
                rows = [("serial", 1, None), ("dask 1 worker", 1, clusters[1].scheduler_address),
                        (f"dask {args.workers} workers", args.workers, clusters[args.workers].scheduler_address)]
                results = []
                for tag, n, address in rows:
                    best = None
                    for _ in range(args.repeats):
                        r = _time(lambda tag=tag, n=n, address=address, job=job: job(tag.replace(" ", "_"), n, address))
                        best = r if best is None or r[0] < best[0] else best
                    results.append((tag, n, best))
                base = results[1][2][0]
                serial, reference = results[0][2][0], results[0][2][1]
                for tag, n, (secs, out, l0, l1) in results:
                    speed = base / secs
                    eff = f"{speed / n:>9.0%}" if tag.startswith("dask") else f"{'':>9}"
                    print(f"{tag:<18} {secs:>8.2f} {serial / secs:>8.2f}x {speed:>8.2f}x {eff:>10} "
                          f"{l0:>8.2f} / {l1:<7.2f} {_same_output(reference, out)!s:>9}")
        finally:
            for cluster in clusters.values():
                cluster.close()
    print(f"\nload average {_load():.2f} at the end")


if __name__ == "__main__":
    main()
