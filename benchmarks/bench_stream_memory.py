"""Peak memory of ``showers simulate`` does not grow with the number of showers (streaming writes).

Runs the real command, ``mlfastsim showers simulate --mesh par04`` (40 500 cells a shower), in a fresh
process for each N and reads its peak resident set size from ``getrusage(RUSAGE_CHILDREN)`` (each N in
its own child of a fresh ``python -c`` so the maximum is that run's alone).  The chunks go to the output
as they finish, so the peak should be the same at N = 2 000 (324 MB of float32) and N = 100 000
(16.2 GB): the issue asks for the two to stay within 300 MB.

    OMP_NUM_THREADS=1 python benchmarks/bench_stream_memory.py [--n 2000,100000] [--chunk-size 1000] [--dir DIR]

Needs about 2 x N x 162 kB of free disk in DIR (the resume cache and the output), i.e. ~20 GB for 100k.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc, ru.ru_maxrss, time.perf_counter() - t0)
"""


def run(n: int, chunk_size: int, directory: Path) -> dict[str, float]:
    """One simulate run of ``n`` showers (two energies, n/2 each); its peak RSS, wall time and file size."""
    out = directory / f"par04_{n}.h5"
    exe = str(Path(sys.executable).parent / "mlfastsim")
    if not Path(exe).is_file():
        exe = shutil.which("mlfastsim") or "mlfastsim"
    cmd = [exe, "showers", "simulate", "--mesh", "par04", "--energy-gev", "10,50", "--n-per-point", str(n // 2),
           "--chunk-size", str(chunk_size), "--seed", "3", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    res = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True, env=env, check=True)
    rc, maxrss_kb, wall = res.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"simulate failed (exit {rc}) for N={n}")
    size = out.stat().st_size
    out.unlink()
    return {"n": n, "peak_rss_mb": int(maxrss_kb) / 1024, "wall_s": float(wall), "file_gb": size / 1e9,
            "float32_gb": n * 40500 * 4 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="2000,100000", help="comma-separated shower counts")
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=None, help="where the outputs go (default: a temp dir)")
    args = ap.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench_stream_"))
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'N':>8} {'float32 GB':>11} {'file GB':>8} {'wall s':>8} {'peak RSS MB':>12}")
    for n in (int(x) for x in args.n.split(",")):
        t = time.strftime("%H:%M:%S")
        row = run(n, args.chunk_size, directory)
        rows.append(row)
        print(f"{row['n']:>8} {row['float32_gb']:>11.2f} {row['file_gb']:>8.2f} {row['wall_s']:>8.1f} "
              f"{row['peak_rss_mb']:>12.0f}   (started {t})", flush=True)
    if len(rows) > 1:
        spread = max(r["peak_rss_mb"] for r in rows) - min(r["peak_rss_mb"] for r in rows)
        print(f"peak RSS spread over N: {spread:.0f} MB (issue 15 asks for <= 300 MB)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
