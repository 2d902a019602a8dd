"""Peak memory of ``showers simulate`` and ``showers convert`` does not grow with the number of showers.

``--job simulate`` runs the real command, ``mlfastsim showers simulate --mesh par04`` (40 500 cells a
shower), in a fresh process for each N and reads its peak resident set size from
``getrusage(RUSAGE_CHILDREN)`` (each run in its own child of a fresh ``python -c`` so the maximum is
that run's alone).  The chunks go to the output as they finish, so the peak should be the same at
N = 2 000 (324 MB of float32) and N = 100 000 (16.2 GB): the issue asks for the two to stay within 300 MB.

``--job convert`` simulates a native par04-mesh file of N showers at two energies and two angles (not
measured), then measures the conversions that used to hold everything in memory:
native -> par04 (the rows must be regrouped by (angle, energy): the scratch-file pass), par04 -> native
(Par04 input is sorted by (angle, energy): the planned order) and, with ``--calochallenge``,
native -> calochallenge (float64, twice the bytes).

    OMP_NUM_THREADS=1 python benchmarks/bench_stream_memory.py [--job simulate|convert] [--n 2000,100000]
        [--chunk-size 1000] [--dir DIR] [--calochallenge]

Needs about 2 x N x 162 kB of free disk in DIR for simulate (the resume cache and the output), i.e.
~20 GB for 100k; convert needs about 4 x N x 162 kB more while it runs (cache, scratch, output).
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


def _exe() -> str:
    exe = str(Path(sys.executable).parent / "mlfastsim")
    if not Path(exe).is_file():
        exe = shutil.which("mlfastsim") or "mlfastsim"
    return exe


def measure(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall s) of one command run in a fresh process; exits when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    res = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True, env=env, check=True)
    rc, maxrss_kb, wall = res.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}")
    return int(maxrss_kb) / 1024, float(wall)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def run(n: int, chunk_size: int, directory: Path) -> dict[str, float]:
    """One simulate run of ``n`` showers (two energies, n/2 each); its peak RSS, wall time and file size."""
    out = directory / f"par04_{n}.h5"
    cmd = [_exe(), "showers", "simulate", "--mesh", "par04", "--energy-gev", "10,50", "--n-per-point", str(n // 2),
           "--chunk-size", str(chunk_size), "--seed", "3", "-o", str(out)]
    peak, wall = measure(cmd)
    size = out.stat().st_size
    out.unlink()
    return {"n": n, "job": "simulate", "peak_rss_mb": peak, "wall_s": wall, "file_gb": size / 1e9,
            "float32_gb": n * 40500 * 4 / 1e9}


def run_convert(n: int, chunk_size: int, directory: Path, calochallenge: bool) -> list[dict[str, float]]:
    """Simulate ``n`` showers (2 energies x 2 angles), then measure each conversion of them."""
    src = directory / f"native_{n}.h5"
    measure([_exe(), "showers", "simulate", "--mesh", "par04", "--energy-gev", "10,50", "--angle-deg", "70,90",
             "--n-per-point", str(n // 4), "--chunk-size", str(chunk_size), "--seed", "3", "-o", str(src)])
    par04 = directory / f"par04_{n}"
    steps = [("native->par04", src, "native", "par04", par04),
             ("par04->native", par04, "par04", "native", directory / f"back_{n}.h5")]
    if calochallenge:
        steps.append(("native->calochallenge", src, "native", "calochallenge", directory / f"cc_{n}.h5"))
    rows = []
    for name, inp, fmt, to, out in steps:
        peak, wall = measure([_exe(), "showers", "convert", str(inp), "--from", fmt, "--to", to, "-o", str(out)])
        rows.append({"n": n, "job": f"convert {name}", "peak_rss_mb": peak, "wall_s": wall,
                     "file_gb": _size(out) / 1e9, "float32_gb": n * 40500 * 4 / 1e9})
    for path in (src, par04, *(s[4] for s in steps)):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", choices=["simulate", "convert"], default="simulate")
    ap.add_argument("--n", default="2000,100000", help="comma-separated shower counts")
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--calochallenge", action="store_true", help="convert: also native -> calochallenge")
    ap.add_argument("--dir", type=Path, default=None, help="where the outputs go (default: a temp dir)")
    args = ap.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench_stream_"))
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'job':<30} {'N':>8} {'float32 GB':>11} {'file GB':>8} {'wall s':>8} {'peak RSS MB':>12}")
    for n in (int(x) for x in args.n.split(",")):
        t = time.strftime("%H:%M:%S")
        new = (run_convert(n, args.chunk_size, directory, args.calochallenge) if args.job == "convert"
               else [run(n, args.chunk_size, directory)])
        for row in new:
            print(f"{row['job']:<30} {row['n']:>8} {row['float32_gb']:>11.2f} {row['file_gb']:>8.2f} "
                  f"{row['wall_s']:>8.1f} {row['peak_rss_mb']:>12.0f}   (started {t})", flush=True)
        rows += new
    for job in dict.fromkeys(r["job"] for r in rows):
        peaks = [r["peak_rss_mb"] for r in rows if r["job"] == job]
        if len(peaks) > 1:
            print(f"{job}: peak RSS spread over N: {max(peaks) - min(peaks):.0f} MB (issue 15 asks for <= 300 MB)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
