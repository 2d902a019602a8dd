"""Issue 15's hostile-user catalogue, rerun: every data job against every trap, through the real CLI.

Each case builds its trap in a fresh directory, runs ``mlfastsim`` as a subprocess (the installed entry
point, ``OMP_NUM_THREADS=1``) and is classified:

``pass``
    bad input or a broken environment: exit 2, exactly one ``error:`` line on stderr, no traceback and
    nothing half-written (no ``*.tmp``, no lock file, no output); a resumed or rerun job: exit 0 and the
    very content of a clean run (byte for byte, except Belle II's measured CPU-time columns); a
    documented warning: exit 0 and a ``WARNING:`` line.
``fail``
    anything else, with the reason.
``skip``
    the trap cannot be built here (no tmpfs mount, no /proc), with the reason.

Data jobs: showers simulate (EM and pion), convert (native->native, native->par04, par04->native,
native->calochallenge, hits->native), generate, belle2 produce and preprocess, lartpc simulate and
make-batches.  Traps per job: kill -9 then resume, Ctrl-C then resume, a second job on the same -o, a
pickle planted in the resume cache, a corrupt cache chunk, another job's chunk, the output replaced by
another file, a finished rerun, a full disk (tiny tmpfs, up front and filled while the job runs), a
file size limit (EFBIG), a read-only disk, -o naming a directory, /dev/full, /proc, a FIFO or a path
under a regular file, a killed run's temporary file.  Then the bad inputs: impossible detectors, NaN,
inf, negative and forged shower files, bad Par04 and hits files, bad configs and options, huge sizes,
bad checkpoints, and the validate cases.

    OMP_NUM_THREADS=1 python benchmarks/hostile_catalogue.py [--jobs 2] [--only TEXT] [--dir DIR] [--keep]

Prints one row per case and the counts per severity; exits 1 when a high or medium case fails.  Needs
root for the tmpfs cases (mount), else they are skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

EXE = str(Path(sys.executable).parent / "mlfastsim")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


class Skip(Exception):
    """The trap cannot be built on this machine."""


class Fail(Exception):
    """The promise was broken."""


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(args: list[str], cwd: Path, *, fsize: int | None = None, timeout: float = 300) -> Run:
    """The CLI in a subprocess (``fsize``: RLIMIT_FSIZE in bytes, a disk that fills up as EFBIG)."""

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    res = subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout,
                         preexec_fn=limit)
    return Run(res.returncode, res.stdout, res.stderr)


def ok(run: Run, what: str = "run") -> Run:
    if run.code != 0:
        raise Fail(f"{what}: exit {run.code}: {run.err.strip()[-300:]}")
    return run


def one_line(run: Run, *needles: str) -> None:
    """Exit 2, one ``error:`` line naming the problem, no traceback."""
    lines = [x for x in run.err.strip().splitlines() if x.strip()]
    if run.code != 2:
        raise Fail(f"exit {run.code} (want 2): {run.err.strip()[-300:]}")
    if "Traceback" in run.err or len(lines) != 1 or not lines[0].startswith("error:"):
        raise Fail(f"not one error line: {run.err.strip()[-300:]}")
    for needle in needles:
        if needle.lower() not in lines[0].lower():
            raise Fail(f"{needle!r} not in: {lines[0][:200]}")


def no_litter(root: Path, *, allow_parts: bool = False) -> None:
    """No temporary file, no lock file (and no resume cache unless it is kept on purpose) under ``root``."""
    for p in root.rglob("*"):
        name = p.name
        if name.endswith(".tmp") or ".staging." in name or (name.startswith(".") and name.endswith(".lock")):
            raise Fail(f"left behind: {p.relative_to(root)}")
        if not allow_parts and name.endswith(".parts") and p.is_dir():
            raise Fail(f"left behind: {p.relative_to(root)}")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """A data job: its command for an output path, the output's name, and how to compare outputs."""

    name: str
    args: Callable[[Path, Path], list[str]]  # (shared inputs, output) -> CLI args
    out: str  # output name inside the case directory
    is_dir: bool = False
    cache: bool = True  # keeps a .NAME.parts resume cache
    marker: str | None = None  # where a non-HDF5 output records its fingerprint (relative to the case dir)
    progress: str = "parts"  # what shows the job is midway: "parts" (a cache record) or "files" (outputs)
    digest: Callable[[Path], str] = field(default=lambda p: content_digest(p))


def content_digest(path: Path) -> str:
    """Bytes of a file, or of every visible file of a directory (names included)."""
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file() and not any(s.startswith(".") for s in
                                                                           q.relative_to(path).parts)):
            h.update(str(p.relative_to(path)).encode() + sha(p).encode())
        return h.hexdigest()
    return sha(path)


def events_digest(path: Path) -> str:
    """A Belle II events file without its measured times (CPU seconds differ from run to run)."""
    import pandas as pd

    h = hashlib.sha256()
    for key in ("particles", "events"):
        df = pd.read_hdf(path, key)
        df = df[[c for c in df.columns if "cpu" not in c and "wall" not in c]]
        h.update(pd.util.hash_pandas_object(df, index=True).values.tobytes())
    return h.hexdigest()


SIM = ["showers", "simulate", "--energy-gev", "10,50", "--n-per-point", "300", "--chunk-size", "30", "--seed", "1"]
LARTPC_SIM = {"n_events": 30, "seed": 2, "chunk_size": 2, "tpc_ids": [1], "muons": [1, 2], "protons": [0, 1],
              "showers": [0, 1], "geometry": {"n_ticks": 32, "size_y_mm": 32.0, "size_z_mm": 32.0,
                                              "voxel_mm": 2.0}}

JOBS: dict[str, Job] = {
    "simulate": Job("simulate", lambda i, o: [*SIM, "-o", str(o)], "out.h5"),
    "simulate pion": Job("simulate pion", lambda i, o: [
        "showers", "simulate", "--particle", "pion", "--grid", "hcal48", "--energy-gev", "10", "--n-per-point",
        "12", "--chunk-size", "2", "--seed", "1", "-o", str(o)], "out.h5"),
    "convert native->native": Job("convert native->native", lambda i, o: [
        "showers", "convert", str(i / "big.h5"), "--from", "native", "--to", "native", "-o", str(o)], "out.h5"),
    "convert native->par04": Job("convert native->par04", lambda i, o: [
        "showers", "convert", str(i / "big.h5"), "--from", "native", "--to", "par04", "-o", str(o)], "out",
        is_dir=True),
    "convert par04->native": Job("convert par04->native", lambda i, o: [
        "showers", "convert", str(i / "par04"), "--from", "par04", "--to", "native", "-o", str(o)], "out.h5"),
    "convert native->calochallenge": Job("convert native->calochallenge", lambda i, o: [
        "showers", "convert", str(i / "big.h5"), "--from", "native", "--to", "calochallenge", "-o", str(o)],
        "out.h5"),
    "convert hits->native": Job("convert hits->native", lambda i, o: [
        "showers", "convert", str(i / "hits.h5"), "--from", "hits", "--mesh", "ds2", "--to", "native", "-o",
        str(o)], "out.h5"),
    "generate": Job("generate", lambda i, o: [
        "showers", "generate", "--checkpoint", "pretrained:vae_ds2_meta", "--energy-gev", "10,50",
        "--n-per-point", "200", "--seed", "3", "-o", str(o)], "out.h5", cache=False, progress="none"),
    "belle2 produce": Job("belle2 produce", lambda i, o: [
        "belle2", "produce", "-n", "600", "--chunk-size", "60", "--seed", "4", "-o", str(o)], "out.h5",
        digest=events_digest),
    "belle2 preprocess": Job("belle2 preprocess", lambda i, o: [
        "belle2", "preprocess", "-i", str(i / "ev.h5"), "-o", str(o), "--set", "chunk_events=40"], "out",
        is_dir=True, marker="out/.mlfastsim-done/preprocess.json.json"),
    "lartpc simulate": Job("lartpc simulate", lambda i, o: [
        "lartpc", "simulate", "-c", str(i / "sim.yaml"), "-o", str(o)], "out", is_dir=True,
        marker=".mlfastsim-done/out.json"),
    "lartpc make-batches": Job("lartpc make-batches", lambda i, o: [
        "lartpc", "make-batches", "-i", str(i / "parsed"), "-t", "1", "-b", "2", "-n", "1", "-o", str(o)], "out",
        is_dir=True, cache=False, progress="files"),
}


def cache_dir(job: Job, case: Path) -> Path:
    if job.marker and job.marker.startswith("out/"):  # preprocess: the cache sits inside its output dir
        return case / "out" / ".preprocess.json.parts"
    return case / f".{job.out}.parts"


def fingerprint(job: Job, case: Path) -> str:
    """The job's fingerprint, from its finished output (the HDF5 stamp or the hidden done record)."""
    if job.marker:
        return json.loads((case / job.marker).read_text())["fingerprint"]
    out = case / job.out
    if out.is_dir():  # a Par04 directory: every file carries the stamp
        out = sorted(out.glob("*.h5"))[0]
    with h5py.File(out) as f:
        return json.loads(f.attrs["mlfastsim_job"])["fingerprint"]


class Refs:
    """Clean runs, one per job, made once: the content every resumed or rerun job must reproduce."""

    def __init__(self, root: Path, inputs: Path) -> None:
        self.root, self.inputs = root, inputs
        self._lock = threading.Lock()
        self._done: dict[str, tuple[str, str | None]] = {}

    def get(self, job: Job) -> tuple[str, str | None]:
        """(content digest, fingerprint) of a clean run of ``job``."""
        with self._lock:
            if job.name not in self._done:
                case = self.root / ("ref " + job.name.replace(">", "").replace(" ", "_"))
                shutil.rmtree(case, ignore_errors=True)  # a clean run that failed before: start over
                case.mkdir(parents=True)
                ok(cli(job.args(self.inputs, case / job.out), case), f"clean {job.name}")
                fp = fingerprint(job, case) if job.cache else None
                self._done[job.name] = (job.digest(case / job.out), fp)
            return self._done[job.name]


def make_inputs(d: Path) -> None:
    """The shared inputs: a native file (4 blocks of 1280 rows), Par04 files, a hits file, events, parsed."""
    d.mkdir(parents=True, exist_ok=True)
    ok(cli(["showers", "simulate", "--energy-gev", "10,50", "--angle-deg", "70,90", "--n-per-point", "1300",
            "--chunk-size", "650", "--seed", "2", "-o", str(d / "big.h5")], d), "input big.h5")
    ok(cli(["showers", "convert", str(d / "big.h5"), "--from", "native", "--to", "par04", "-o", str(d / "par04")],
           d), "input par04")
    ok(cli(["showers", "simulate", "--energy-gev", "10", "--n-per-point", "30", "--chunk-size", "30", "--seed", "5",
            "-o", str(d / "small.h5")], d), "input small.h5")
    from mlfastsim.showers.examples import showers_to_hits
    from mlfastsim.showers.io.native import read_native

    showers_to_hits(read_native(d / "big.h5").subset(slice(0, 300)), d / "hits.h5")
    ok(cli(["belle2", "produce", "-n", "200", "--chunk-size", "100", "--seed", "6", "-o", str(d / "ev.h5")], d),
       "input ev.h5")
    (d / "sim.yaml").write_text(yaml.safe_dump(LARTPC_SIM))
    small = {**LARTPC_SIM, "n_events": 8}
    (d / "sim_small.yaml").write_text(yaml.safe_dump(small))
    ok(cli(["lartpc", "simulate", "-c", str(d / "sim_small.yaml"), "-o", str(d / "parsed")], d), "input parsed")
    # numba caches its kernels on first use: warm them outside any trap (a harness detail)
    ok(cli(["lartpc", "make-batches", "-i", str(d / "parsed"), "-t", "1", "-b", "2", "-n", "1", "-o",
            str(d / "xy_warm")], d), "warm make-batches")
    ok(cli(["showers", "simulate", "--particle", "pion", "--grid", "hcal48", "--energy-gev", "10", "--n-per-point",
            "2", "-o", str(d / "warm_pion.h5")], d), "warm pion")


# ------------------------------------------------------------------------------------- tmpfs helpers
@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, readonly: bool = False):
    """A tiny tmpfs at ``path`` (a full disk in miniature, or a read-only disk)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise Skip(f"cannot mount a tmpfs ({res.stderr.strip() or 'not root'})")
    try:
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    severity: str
    fn: Callable[[Path], None]


Ctx = tuple[Path, Path, Refs]  # (case dir, inputs, refs)
CASES: list[Case] = []


def case(name: str, severity: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def deco(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        CASES.append(Case(name, severity, fn))
        return fn

    return deco


INPUTS = Path()
REFS: Refs


def same_as_clean(job: Job, d: Path) -> None:
    want, _ = REFS.get(job)
    got = job.digest(d / job.out)
    if got != want:
        raise Fail("output differs from a clean run")
    no_litter(d)


def _midway(job: Job, d: Path) -> bool:
    if job.progress == "parts":
        parts = cache_dir(job, d)
        return parts.is_dir() and any(parts.glob("task_*.npz"))
    if job.progress == "files":
        return (d / job.out).is_dir() and any((d / job.out).glob("*.h5"))
    return False


def interrupt_midway(job: Job, d: Path, sig: int, *, after: Callable[[], None] | None = None) -> Run:
    """Start the job, send ``sig`` once it is midway (a finished task on disk, or after 2.5 s for a job
    without one), wait for it; ``after`` runs instead of the signal (e.g. fill the disk)."""
    proc = subprocess.Popen([EXE, *job.args(INPUTS, d / job.out)], cwd=d, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if _midway(job, d) or (job.progress == "none" and time.time() - t0 > 2.5):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        raise Skip("the job finished before it could be interrupted")
    if after is not None:
        after()
    else:
        os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=300)
    return Run(proc.returncode, out, err)


def add_job_cases(job: Job) -> None:
    j = job.name
    file_out = not job.is_dir

    @case(f"{j}: kill -9 midway, rerun resumes to the clean bytes", "high")
    def _(d: Path) -> None:
        run = interrupt_midway(job, d, signal.SIGKILL)
        if run.code != -signal.SIGKILL:
            raise Fail(f"exit {run.code} after kill -9")
        if file_out and (d / job.out).exists():
            raise Fail("an output appeared from a killed run")
        ok(cli(job.args(INPUTS, d / job.out), d), "rerun")
        same_as_clean(job, d)

    @case(f"{j}: Ctrl-C midway exits 130 with one line, rerun gives the clean bytes", "low")
    def _(d: Path) -> None:
        run = interrupt_midway(job, d, signal.SIGINT)
        lines = [x for x in run.err.strip().splitlines() if x.strip()]
        if run.code != 130 or "Traceback" in run.err or len(lines) != 1:
            raise Fail(f"exit {run.code}: {run.err.strip()[-300:]}")
        if file_out and (d / job.out).exists():
            raise Fail("an interrupted run published its output")
        no_litter(d, allow_parts=True)
        ok(cli(job.args(INPUTS, d / job.out), d), "rerun")
        same_as_clean(job, d)

    @case(f"{j}: a second job on the same -o stops with one line", "high")
    def _(d: Path) -> None:
        hold = textwrap.dedent("""
            import sys, time
            from mlfastsim.core.resume import acquire_job_lock
            acquire_job_lock(sys.argv[1]); print("locked", flush=True); time.sleep(120)
        """)
        target = (d / job.out).resolve() if job.name == "lartpc make-batches" else d / job.out
        if job.marker and job.marker.startswith("out/"):
            (d / "out").mkdir()
            target = d / "out" / "preprocess.json"
        proc = subprocess.Popen([sys.executable, "-c", hold, str(target)], stdout=subprocess.PIPE, text=True, env=ENV)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
            run = cli(job.args(INPUTS, d / job.out), d)
        finally:
            proc.kill()
            proc.wait()
        if not job.cache and job.name == "generate":  # generate writes one file atomically: no lock needed
            ok(run)
            return
        one_line(run, "another job", "is writing")

    if job.cache:
        def plant_and_rerun(d: Path, plant: Callable[[Path], None]) -> None:
            fp = REFS.get(job)[1]
            parts = cache_dir(job, d)
            parts.mkdir(parents=True)
            (parts / "fingerprint").write_text(f"{fp}\n")
            plant(parts)
            ok(cli(job.args(INPUTS, d / job.out), d), "rerun")
            if (d / "PWNED").exists():
                raise Fail("the planted pickle ran")
            same_as_clean(job, d)

        @case(f"{j}: a pickle planted in the resume cache never runs", "high")
        def _(d: Path) -> None:
            def plant(parts: Path) -> None:
                bomb = pickle.dumps(Boom(str(d / "PWNED")))
                (parts / "task_000000.pkl").write_bytes(bomb)
                (parts / "task_000001.npz").write_bytes(bomb)

            plant_and_rerun(d, plant)

        @case(f"{j}: a corrupt (truncated) cache chunk is recomputed", "medium")
        def _(d: Path) -> None:
            from mlfastsim.core.records import record_bytes

            def plant(parts: Path) -> None:
                good = record_bytes(np.zeros((2, 3), np.float32), {"fingerprint": REFS.get(job)[1], "task": 0})
                (parts / "task_000000.npz").write_bytes(good[: len(good) // 3])

            plant_and_rerun(d, plant)

        @case(f"{j}: another job's cache chunk is not mixed in", "high")
        def _(d: Path) -> None:
            from mlfastsim.core.records import record_bytes

            def plant(parts: Path) -> None:
                other = record_bytes(np.ones((2, 3), np.float32), {"fingerprint": "another-job", "task": 0})
                (parts / "task_000000.npz").write_bytes(other)

            plant_and_rerun(d, plant)

        @case(f"{j}: a cache chunk of the right job but garbage shape is recomputed", "medium")
        def _(d: Path) -> None:
            from mlfastsim.core.records import record_bytes

            def plant(parts: Path) -> None:
                # this job's tag on a value of the wrong kind: the job must notice, not write it
                (parts / "task_000000.npz").write_bytes(
                    record_bytes({"x": np.ones(3)}, {"fingerprint": REFS.get(job)[1], "task": 0}))

            fp = REFS.get(job)[1]
            parts = cache_dir(job, d)
            parts.mkdir(parents=True)
            (parts / "fingerprint").write_text(f"{fp}\n")
            plant(parts)
            run = cli(job.args(INPUTS, d / job.out), d)
            if run.code == 0:
                same_as_clean(job, d)
            else:
                one_line(run)

    @case(f"{j}: output replaced by another file is redone", "high")
    def _(d: Path) -> None:
        ok(cli(job.args(INPUTS, d / job.out), d), "first run")
        if job.is_dir:
            victim = sorted(p for p in (d / job.out).iterdir() if p.is_file() and not p.name.startswith("."))[-1]
            shutil.copy2(INPUTS / "small.h5", victim)
        else:
            shutil.copy2(INPUTS / "small.h5", d / job.out)
        ok(cli(job.args(INPUTS, d / job.out), d), "rerun")
        same_as_clean(job, d)

    if job.name != "generate":
        @case(f"{j}: a finished rerun leaves the output untouched", "medium")
        def _(d: Path) -> None:
            ok(cli(job.args(INPUTS, d / job.out), d), "first run")
            target = d / job.out
            before = {p: p.stat().st_ino for p in ([target] if file_out else sorted(target.iterdir()))}
            ok(cli(job.args(INPUTS, d / job.out), d), "rerun")
            after = {p: p.stat().st_ino for p in ([target] if file_out else sorted(target.iterdir()))}
            if before != after:
                raise Fail("rewritten")
            hidden = [p.name for p in d.iterdir() if p.name.startswith(".") and p.name != ".mlfastsim-done"]
            if hidden:
                raise Fail(f"hidden files beside the output: {hidden}")

    @case(f"{j}: full disk (64 KiB tmpfs) is one line and leaves nothing", "medium")
    def _(d: Path) -> None:
        with tmpfs(d / "full", "64k") as full:
            run = cli(job.args(INPUTS, full / job.out), d)
            if run.code == 0:
                raise Skip("the whole output fits in 64 KiB")
            one_line(run, "fix:")
            no_litter(full, allow_parts=True)
            if file_out and (full / job.out).exists():
                raise Fail("output left on the full disk")

    @case(f"{j}: disk filled while it runs: one line, then resumes to the clean bytes", "medium")
    def _(d: Path) -> None:
        with tmpfs(d / "disk", "1g") as disk:
            def fill() -> None:
                with open(disk / "filler", "wb") as fh, contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * (1 << 20))

            wjob = Job(job.name, job.args, job.out, job.is_dir, job.cache, job.marker, job.progress, job.digest)
            run = interrupt_midway(wjob, disk, signal.SIGKILL, after=fill)
            if run.code == 0:
                raise Skip("the job finished before the disk was full")
            one_line(run)
            no_litter(disk, allow_parts=True)
            (disk / "filler").unlink()
            ok(cli(job.args(INPUTS, disk / job.out), disk), "rerun")
            same_as_clean(job, disk)

    @case(f"{j}: file size limit (EFBIG) is one line and leaves nothing", "medium")
    def _(d: Path) -> None:
        run = cli(job.args(INPUTS, d / job.out), d, fsize=40_000)
        if run.code == 0:
            raise Skip("every file of the output fits under 40 kB")
        one_line(run)
        no_litter(d, allow_parts=True)

    @case(f"{j}: read-only disk is one line", "medium")
    def _(d: Path) -> None:
        with tmpfs(d / "ro", "1m", readonly=True) as ro:
            one_line(cli(job.args(INPUTS, ro / job.out), d), "fix:")

    @case(f"{j}: -o under a regular file is one line", "low")
    def _(d: Path) -> None:
        (d / "afile").write_text("x")
        one_line(cli(job.args(INPUTS, d / "afile" / job.out), d))

    if file_out:
        @case(f"{j}: -o an existing directory is one line", "medium")
        def _(d: Path) -> None:
            (d / job.out).mkdir()
            one_line(cli(job.args(INPUTS, d / job.out), d), "directory")

        @case(f"{j}: -o /dev/full is refused and the device kept", "medium")
        def _(d: Path) -> None:
            if not Path("/dev/full").exists():
                raise Skip("no /dev/full")
            one_line(cli(job.args(INPUTS, Path("/dev/full")), d), "/dev/full")
            if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
                raise Fail("/dev/full is no longer a device")

        @case(f"{j}: -o /proc/x.h5 is one line", "low")
        def _(d: Path) -> None:
            if not Path("/proc/self").exists():
                raise Skip("no /proc")
            one_line(cli(job.args(INPUTS, Path("/proc/x.h5")), d), "/proc/x.h5")

        @case(f"{j}: -o a FIFO is refused", "medium")
        def _(d: Path) -> None:
            os.mkfifo(d / job.out)
            one_line(cli(job.args(INPUTS, d / job.out), d), "not a regular file")
            if not stat.S_ISFIFO(os.stat(d / job.out).st_mode):
                raise Fail("the FIFO was replaced")

        @case(f"{j}: a killed run's .NAME.xxxx.tmp is cleaned", "low")
        def _(d: Path) -> None:
            (d / f".{job.out}.k2j3h4g5.tmp").write_bytes(b"half of a killed run")
            ok(cli(job.args(INPUTS, d / job.out), d))
            no_litter(d)


class Boom:
    """What a planted pickle does when loaded: create a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


for _job in JOBS.values():
    add_job_cases(_job)


# -------------------------------------------------------------------------------------- bad inputs
def refuse(args_fn: Callable[[Path], list[str]], *needles: str, severity: str = "medium",
           name: str) -> None:
    @case(name, severity)
    def _(d: Path) -> None:
        run = cli(args_fn(d), d)
        one_line(run, *needles)
        no_litter(d)
        made = [p.name for p in d.iterdir() if p.name in ("out.h5", "out", "v", "runs")]
        if made:
            raise Fail(f"written anyway: {made}")


WEIRD_ABSORBER = dict(name="Weird", z=74, a=183.84, density=19.3, x0=3.5, rm=9.3, ec=8.0, dedx_mip=2.2)


def _detector(d: Path, **changes: object) -> Path:
    """A tungsten-like user detector with ``changes`` applied (absorber fields or detector fields)."""
    det: dict[str, object] = {"name": "weird", "absorber_mm": 1.4, "n_layers": 10,
                              "absorber": {**WEIRD_ABSORBER, **{k: v for k, v in changes.items()
                                                                if k in WEIRD_ABSORBER}}}
    det.update({k: v for k, v in changes.items() if k not in WEIRD_ABSORBER})
    (d / "det.yaml").write_text(yaml.safe_dump(det))
    return d / "det.yaml"


def _sim_det(**changes: object) -> Callable[[Path], list[str]]:
    return lambda d: ["showers", "simulate", "--energy-gev", "10", "--n-per-point", "2", "--detector",
                      str(_detector(d, **changes)), "-o", str(d / "out.h5")]


for _field, _value in [("z", -60), ("density", 0), ("x0", -5), ("rm", 0), ("ec", float("inf")), ("a", -1),
                       ("z", float("nan")), ("dedx_mip", float("nan")), ("absorber_mm", float("nan")),
                       ("absorber_mm", -1.0), ("n_layers", 0), ("n_layers", -3)]:
    refuse(_sim_det(**{_field: _value}), name=f"simulate: detector with {_field} = {_value}")
# finite and positive but absurd (the issue asks for finite and positive): refusing is a design choice
refuse(_sim_det(x0=1e300), severity="low", name="simulate: detector with x0 = 1e300")


@case("simulate: detector YAML with a python tag never runs it", "high")
def _(d: Path) -> None:
    (d / "det.yaml").write_text(f"!!python/object/apply:os.system ['touch {d / 'PWNED'}']\n")
    one_line(cli(["showers", "simulate", "--energy-gev", "10", "--n-per-point", "2", "--detector",
                  str(d / "det.yaml"), "-o", str(d / "out.h5")], d))
    if (d / "PWNED").exists():
        raise Fail("the YAML tag ran")


refuse(lambda d: ((d / "det.yaml").write_text("name: [unclosed\n"), ["showers", "simulate", "--detector",
                  str(d / "det.yaml"), "-o", str(d / "out.h5")])[1], name="simulate: detector YAML syntax error")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "10,50", "--n-per-point", "1000000000", "-o",
                  str(d / "out.h5")], "free", name="simulate: --n-per-point 1e9 (output larger than the disk)")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "10", "--n-per-point", "1e12", "-o", str(d / "out.h5")],
       "--n-per-point", severity="low", name="simulate: --n-per-point 1e12")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "10", "--n-per-point", "0", "-o", str(d / "out.h5")],
       name="simulate: --n-per-point 0")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "10", "--n-per-point", "-5", "-o", str(d / "out.h5")],
       name="simulate: --n-per-point -5")
refuse(lambda d: ["showers", "simulate", "--energy-range-gev", "nan:10", "--n-per-point", "2", "-o",
                  str(d / "out.h5")], "not a finite number", severity="low", name="simulate: range nan:10")
refuse(lambda d: ["showers", "simulate", "--energy-range-gev", "100:10", "--n-per-point", "2", "-o",
                  str(d / "out.h5")], "swap", severity="low", name="simulate: range 100:10")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "nan", "--n-per-point", "2", "-o", str(d / "out.h5")],
       name="simulate: --energy-gev nan")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "-10", "--n-per-point", "2", "-o", str(d / "out.h5")],
       name="simulate: --energy-gev -10")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "1e30", "--n-per-point", "2", "-o", str(d / "out.h5")],
       severity="low", name="simulate: --energy-gev 1e30")
refuse(lambda d: ["showers", "simulate", "--angle-deg", "400", "--energy-gev", "10", "--n-per-point", "2", "-o",
                  str(d / "out.h5")], name="simulate: --angle-deg 400")
refuse(lambda d: ["showers", "simulate", "--energy-gev", "10", "--chunk-size", "0", "-o", str(d / "out.h5")],
       name="simulate: --chunk-size 0")
refuse(lambda d: ["showers", "simulate", "--mesh", "nosuchmesh", "-o", str(d / "out.h5")], "mesh",
       name="simulate: unknown mesh")
refuse(lambda d: ["showers", "simulate", "--set", "no.such.key=1", "-o", str(d / "out.h5")], "no.such",
       severity="low", name="simulate: --set unknown key")
refuse(lambda d: ["showers", "simulate", "--set", "seed=abc", "-o", str(d / "out.h5")], "seed",
       severity="low", name="simulate: --set seed=abc")
refuse(lambda d: ["showers", "simulate", "-c", str(d / "missing.yaml"), "-o", str(d / "out.h5")], "missing.yaml",
       severity="low", name="simulate: -c missing file")
refuse(lambda d: ["showers", "simulate", "--bogus-option", "-o", str(d / "out.h5")], "--bogus-option",
       severity="low", name="simulate: unknown option")
refuse(lambda d: ["showers", "simulate", "--particle", "pion", "--grid", "ds2", "-o", str(d / "out.h5")], "grid",
       name="simulate: pion on a cylindrical mesh")


def _shower_file(d: Path, *, nan_at: tuple[int, int] | None = None, energy: float | None = None,
                 angle: float | None = None, n: int = 10, voxels: int = 6480, cell: float | None = None) -> Path:
    path = d / "in.h5"
    rng = np.random.default_rng(0)
    showers = rng.gamma(0.5, 1.0, (n, voxels)).astype(np.float32)
    energies = np.full((n, 1), 1e4, np.float32)
    angles = np.full((n, 1), 90.0, np.float32)
    if nan_at:
        showers[nan_at] = np.nan
    if cell is not None:
        showers[n - 1, 5] = cell
    if energy is not None:
        energies[n - 1] = energy
    if angle is not None:
        angles[n - 1] = angle
    with h5py.File(path, "w") as f:
        f.create_dataset("incident_energies", data=energies)
        f.create_dataset("showers", data=showers, **({"chunks": (min(n, 4), voxels), "compression": "gzip"}
                                                      if n else {}))
        f.create_dataset("incident_angles", data=angles)
    return path


def _conv(to: str = "native", **kw: object) -> Callable[[Path], list[str]]:
    out = "out" if to == "par04" else "out.h5"
    return lambda d: ["showers", "convert", str(_shower_file(d, **kw)), "--from", "native", "--to", to, "-o",
                      str(d / out)]


for _to in ("native", "par04", "calochallenge"):
    refuse(_conv(_to, nan_at=(7, 100)), "NaN", name=f"convert ->{_to}: NaN deep in the showers")
    refuse(_conv(_to, cell=-1.0), "negative", name=f"convert ->{_to}: negative cell energy")
    refuse(_conv(_to, energy=float("inf")), "incident_energies", name=f"convert ->{_to}: inf incident energy")
    refuse(_conv(_to, energy=0.0), "incident", name=f"convert ->{_to}: zero incident energy")
    refuse(_conv(_to, angle=400.0), "outside 0..180", name=f"convert ->{_to}: 400 degree angle")
    refuse(_conv(_to, angle=float("nan")), "angle", name=f"convert ->{_to}: NaN angle")
    refuse(_conv(_to, n=0), "no showers", name=f"convert ->{_to}: 0-shower file")
refuse(_conv(voxels=77), "voxels", name="convert: voxel count of no mesh, no --mesh")


def _forged(d: Path) -> Path:
    with h5py.File(d / "forged.h5", "w") as f:
        f.create_dataset("incident_energies", data=np.ones((5, 1), np.float32) * 1e3)
        f.create_dataset("showers", shape=(200_000_000, 6480), dtype="f4")
    return d / "forged.h5"


def _write(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def _truncated(d: Path) -> Path:
    raw = (INPUTS / "small.h5").read_bytes()
    return _write(d, "trunc.h5", raw[: len(raw) // 2])


def _h5_with(d: Path, build: Callable[[h5py.File], None]) -> Path:
    with h5py.File(d / "odd.h5", "w") as f:
        build(f)
    return d / "odd.h5"


_INPUT_TRAPS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("declared shape bigger than the file (forged)", _forged, "declares shape"),
    ("truncated HDF5 file", _truncated, "trunc.h5"),
    ("a text file", lambda d: _write(d, "text.h5", b"hello, not HDF5\n" * 10), "text.h5"),
    ("an empty file", lambda d: _write(d, "empty.h5", b""), "empty.h5"),
    ("a missing file", lambda d: d / "missing.h5", "missing.h5"),
    ("an empty directory", lambda d: (d / "emptydir").mkdir() or d / "emptydir", "emptydir"),
    ("showers as a group", lambda d: _h5_with(d, lambda f: (f.create_group("showers"), f.create_dataset(
        "incident_energies", data=np.ones((2, 1))))), "showers"),
    ("3-D showers", lambda d: _h5_with(d, lambda f: (f.create_dataset("showers", data=np.ones((2, 3, 2160))),
                                                     f.create_dataset("incident_energies", data=np.ones((2, 1))))),
     "showers"),
    ("energies (N, 3)", lambda d: _h5_with(d, lambda f: (f.create_dataset("showers", data=np.ones((2, 6480))),
                                                         f.create_dataset("incident_energies",
                                                                          data=np.ones((2, 3))))), "incident"),
    ("fewer energies than showers", lambda d: _h5_with(d, lambda f: (
        f.create_dataset("showers", data=np.ones((4, 6480))), f.create_dataset("incident_energies",
                                                                                data=np.ones((2, 1))))), "incident"),
    ("geometry attribute not JSON", lambda d: _h5_with(d, lambda f: (
        f.create_dataset("showers", data=np.ones((2, 6480))), f.create_dataset("incident_energies",
                                                                                data=np.ones((2, 1))),
        f.attrs.__setitem__("geometry", "{not json"))), "geometry"),
    ("string showers", lambda d: _h5_with(d, lambda f: (
        f.create_dataset("showers", data=np.array([b"a", b"b"])), f.create_dataset("incident_energies",
                                                                                    data=np.ones((2, 1))))), ""),
]
for _label, _make, _needle in _INPUT_TRAPS:
    refuse(lambda d, m=_make: ["showers", "convert", str(m(d)), "--from", "native", "--to", "native", "-o",
                               str(d / "out.h5")], _needle, name=f"convert: input is {_label}")
    refuse(lambda d, m=_make: ["showers", "validate", "--reference", str(INPUTS / "small.h5"), "--candidate",
                               str(m(d)), "-o", str(d / "v"), "--no-classifier"], _needle,
           name=f"validate: candidate is {_label}")


def _par04_file(d: Path, build: Callable[[h5py.File], None], name: str = "SiW_angle_90.h5") -> Path:
    with h5py.File(d / name, "w") as f:
        build(f)
    return d / name


_PAR04_TRAPS: list[tuple[str, Callable[[h5py.File], None], str, str]] = [
    ("a dataset not named by an energy", lambda f: f.create_dataset("abc", data=np.ones((2, 9, 16, 45))), "abc",
     "SiW_angle_90.h5"),
    ("a 3-D dataset", lambda f: f.create_dataset("10", data=np.ones((2, 9, 16))), "10", "SiW_angle_90.h5"),
    ("NaN cells", lambda f: f.create_dataset("10", data=np.full((2, 9, 16, 45), np.nan, np.float32)), "NaN",
     "SiW_angle_90.h5"),
    ("no datasets", lambda f: f.create_group("g"), "datasets", "SiW_angle_90.h5"),
    ("no angle anywhere", lambda f: f.create_dataset("10", data=np.ones((2, 9, 16, 45))), "angle", "plain.h5"),
    ("a negative energy name", lambda f: f.create_dataset("-10", data=np.ones((2, 9, 16, 45))), "-10",
     "SiW_angle_90.h5"),
    ("a shape of no mesh", lambda f: f.create_dataset("10", data=np.ones((2, 7, 7, 7))), "mesh", "SiW_angle_90.h5"),
]
for _label, _build, _needle, _fname in _PAR04_TRAPS:
    refuse(lambda d, b=_build, n=_fname: ["showers", "convert", str(_par04_file(d, b, n)), "--from", "par04",
                                          "--to", "native", "-o", str(d / "out.h5")], _needle,
           name=f"convert par04: {_label}")


def _hits(d: Path, change: Callable[[dict], None]) -> Path:
    from mlfastsim.showers.sim.voxelise import write_hits

    n, per = 3, 5
    rng = np.random.default_rng(1)
    ev = {"x": rng.normal(0, 5, n * per), "y": rng.normal(0, 5, n * per), "z": rng.uniform(0, 100, n * per),
          "energy": rng.uniform(0, 10, n * per), "event_offsets": np.arange(0, n * per + 1, per),
          "incident_energies": np.full(n, 1e4), "entry_points": np.zeros((n, 3)),
          "directions": np.tile([0.0, 0.0, 1.0], (n, 1))}
    change(ev)
    return write_hits(d / "hits.h5", **ev)


_HITS_TRAPS: list[tuple[str, Callable[[dict], None], str]] = [
    ("a NaN hit", lambda ev: ev["x"].__setitem__(7, np.nan), "NaN"),
    ("a negative hit energy", lambda ev: ev["energy"].__setitem__(3, -1.0), "negative"),
    ("decreasing offsets", lambda ev: ev["event_offsets"].__setitem__(2, 2), "decrease"),
    ("a direction away from the face", lambda ev: ev["directions"].__setitem__(1, [0, 0, -1.0]), "direction"),
    ("a zero incident energy", lambda ev: ev["incident_energies"].__setitem__(2, 0.0), "incident"),
]
for _label, _change, _needle in _HITS_TRAPS:
    refuse(lambda d, c=_change: ["showers", "convert", str(_hits(d, c)), "--from", "hits", "--mesh", "ds2", "--to",
                                 "native", "-o", str(d / "out.h5")], _needle, name=f"convert hits: {_label}")
refuse(lambda d: ["showers", "convert", str(_hits(d, lambda ev: None)), "--from", "hits", "--to", "native", "-o",
                  str(d / "out.h5")], "--mesh", name="convert hits: no --mesh")
refuse(lambda d: ["showers", "convert", str(INPUTS / "small.h5"), "--from", "nosuch", "--to", "native", "-o",
                  str(d / "out.h5")], "--from", severity="low", name="convert: unknown --from")
refuse(lambda d: ["showers", "convert", str(INPUTS / "small.h5"), "--from", "native", "--to", "nosuch", "-o",
                  str(d / "out.h5")], "--to", severity="low", name="convert: unknown --to")
refuse(lambda d: ["showers", "convert", str(INPUTS / "small.h5"), str(INPUTS / "warm_pion.h5"), "--from", "native",
                  "--to", "native", "-o", str(d / "out.h5")], "geometry", name="convert: inputs of two geometries")


@case("convert: one input given twice (same file) converts", "low")
def _(d: Path) -> None:
    ok(cli(["showers", "convert", str(INPUTS / "small.h5"), str(INPUTS / "small.h5"), "--from", "native", "--to",
            "native", "-o", str(d / "out.h5")], d))
    with h5py.File(d / "out.h5") as f:
        if f["showers"].shape[0] != 60:
            raise Fail("not both copies")


@case("convert: output is one of its inputs", "medium")
def _(d: Path) -> None:
    shutil.copy(INPUTS / "small.h5", d / "in.h5")
    before = sha(d / "in.h5")
    run = cli(["showers", "convert", str(d / "in.h5"), "--from", "native", "--to", "native", "-o", str(d / "in.h5")],
              d)
    if run.code == 0:  # allowed if the file is replaced whole by the same showers
        from mlfastsim.showers.io.native import read_native

        if not np.array_equal(read_native(d / "in.h5").showers, read_native(INPUTS / "small.h5").showers):
            raise Fail("the input was overwritten with other data")
    else:
        one_line(run)
        if sha(d / "in.h5") != before:
            raise Fail("the input was damaged")


# generate
def _gen(*extra: str, out: str = "out.h5") -> Callable[[Path], list[str]]:
    return lambda d: ["showers", "generate", "--checkpoint", "pretrained:vae_ds2_meta", "--n-per-point", "2",
                      *extra, "-o", str(d / out)]


@case("generate: --energy-gev 50000 warns about extrapolation", "low")
def _(d: Path) -> None:
    run = ok(cli(_gen("--energy-gev", "50000")(d), d))
    if "WARNING" not in run.out + run.err:
        raise Fail("no warning")


refuse(_gen("--energy-gev", "nan"), name="generate: --energy-gev nan")
refuse(_gen("--energy-gev", "-5"), name="generate: --energy-gev -5")
refuse(_gen("--energy-gev", "10", "--n-per-point", "0"), name="generate: --n-per-point 0")
refuse(_gen("--energy-gev", "10", "--n-per-point", "1000000000000"), name="generate: --n-per-point 1e12")
refuse(lambda d: ["showers", "generate", "--checkpoint", "pretrained:nosuch", "--energy-gev", "10", "-o",
                  str(d / "out.h5")], "nosuch", name="generate: unknown pretrained model")


def _ckpt(d: Path, kind: str) -> Path:
    path = d / "ck.pt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "pickle":
        import torch

        torch.save({"model": Boom(str(d / "PWNED"))}, path)
    elif kind == "truncated":
        from mlfastsim.showers.pretrained import pretrained_dir

        raw = (pretrained_dir() / "vae_ds2_meta.pt").read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "absurd":
        import torch

        from mlfastsim.showers.pretrained import pretrained_dir

        state = torch.load(pretrained_dir() / "vae_ds2_meta.pt", weights_only=True)
        state["mesh"]["n_r"] = 1_000_000
        state["mesh"].pop("r_edges_mm", None)
        torch.save(state, path)
    elif kind == "empty dict":
        import torch

        torch.save({}, path)
    return path


for _kind in ("text", "pickle", "truncated", "absurd", "empty dict"):
    @case(f"generate: checkpoint that is {_kind}", "high" if _kind == "pickle" else "medium")
    def _(d: Path, kind: str = _kind) -> None:
        one_line(cli(["showers", "generate", "--checkpoint", str(_ckpt(d, kind)), "--energy-gev", "10",
                      "--n-per-point", "2", "-o", str(d / "out.h5")], d), "ck.pt")
        if (d / "PWNED").exists():
            raise Fail("the pickled checkpoint ran")
        no_litter(d)
        if (d / "out.h5").exists():
            raise Fail("written anyway")


# validate
def _val(cand: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda d: ["showers", "validate", "--reference", str(INPUTS / "small.h5"), "--candidate", str(cand(d)),
                      "-o", str(d / "v"), "--no-classifier", *extra]


refuse(_val(lambda d: _shower_file(d, nan_at=(3, 3))), "NaN", name="validate: NaN in the candidate")
refuse(_val(lambda d: _shower_file(d, angle=400.0)), "outside 0..180", severity="low",
       name="validate: 400 degree angle")
refuse(_val(lambda d: INPUTS / "small.h5", "--set", "tracking.run_name=../../../escaped"), "not a plain folder",
       severity="low", name="validate: run name ../../../escaped")
refuse(_val(lambda d: INPUTS / "warm_pion.h5"), "", name="validate: candidate of another geometry")


@case("validate: two validates on one -o", "medium")
def _(d: Path) -> None:
    hold = "import sys,time\nfrom mlfastsim.core.resume import acquire_job_lock\nacquire_job_lock(sys.argv[1])\n" \
           "print('locked', flush=True)\ntime.sleep(120)\n"
    (d / "v").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", hold, str(d / "v")], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        one_line(cli(_val(lambda _: INPUTS / "small.h5")(d), d), "another job")
    finally:
        proc.kill()
        proc.wait()


@case("validate: disk fills (EFBIG): no figures without metrics.json", "medium")
def _(d: Path) -> None:
    one_line(cli(_val(lambda _: INPUTS / "small.h5")(d), d, fsize=200_000))
    left = [p.name for p in d.rglob("*") if p.suffix == ".png" or p.name in ("metrics.json", "report.html")]
    if left:
        raise Fail(f"left: {left}")


@case("validate: full disk (256 KiB tmpfs)", "medium")
def _(d: Path) -> None:
    with tmpfs(d / "full", "256k") as full:
        one_line(cli(["showers", "validate", "--reference", str(INPUTS / "small.h5"), "--candidate",
                      str(INPUTS / "small.h5"), "-o", str(full / "v"), "--no-classifier"], d))
        if [p for p in full.rglob("*.png")]:
            raise Fail("figures left")


# belle2
refuse(lambda d: ["belle2", "produce", "-n", "0", "-o", str(d / "out.h5")], name="produce: -n 0")
refuse(lambda d: ["belle2", "produce", "-n", "-5", "-o", str(d / "out.h5")], name="produce: -n -5")
refuse(lambda d: ["belle2", "produce", "-n", "1000000000000", "-o", str(d / "out.h5")],
       name="produce: -n 1e12")
refuse(lambda d: ["belle2", "produce", "-n", "5", "--chunk-size", "0", "-o", str(d / "out.h5")],
       name="produce: --chunk-size 0")
refuse(lambda d: ["belle2", "produce", "-n", "5", "--dec-file", str(_write(d, "bad.dec", b"Decay garbage\n%%%\n")),
                  "-o", str(d / "out.h5")], "bad.dec", name="produce: garbage DEC file")
refuse(lambda d: ["belle2", "produce", "-n", "5", "--dec-file", str(d / "missing.dec"), "-o", str(d / "out.h5")],
       "missing.dec", name="produce: missing DEC file")


def _planted_events(d: Path) -> Path:
    ev = d / "ev.h5"
    shutil.copy(INPUTS / "ev.h5", ev)
    with h5py.File(ev, "r+") as f:
        f["events"].attrs["non_index_axes"] = np.bytes_(pickle.dumps(Boom(str(d / "PWNED")), protocol=0))
    return ev


@case("preprocess: a pickle planted in the events file never runs", "high")
def _(d: Path) -> None:
    one_line(cli(["belle2", "preprocess", "-i", str(_planted_events(d)), "-o", str(d / "out")], d), "ev.h5")
    if (d / "PWNED").exists():
        raise Fail("the pickle ran")


@case("evaluate: a pickle planted in the events file never runs", "high")
def _(d: Path) -> None:
    ev = _planted_events(d)
    one_line(cli(["belle2", "evaluate", "--events", str(ev), "--scores", str(ev), "-o", str(d / "out")], d), "ev.h5")
    if (d / "PWNED").exists():
        raise Fail("the pickle ran")


refuse(lambda d: ["belle2", "preprocess", "-i", str(d / "missing.h5"), "-o", str(d / "out")], "missing.h5",
       name="preprocess: missing events file")
refuse(lambda d: ["belle2", "preprocess", "-i", str(INPUTS / "small.h5"), "-o", str(d / "out")], "small.h5",
       name="preprocess: a shower file as events")
refuse(lambda d: ["belle2", "preprocess", "-i", str(_write(d, "t.h5", b"text")), "-o", str(d / "out")], "t.h5",
       name="preprocess: a text file as events")
refuse(lambda d: ["belle2", "preprocess", "-i", str(INPUTS / "ev.h5"), "-k", "nosuch", "-o", str(d / "out")],
       "nosuch", severity="low", name="preprocess: unknown input type")


# lartpc
def _lsim(**changes: object) -> Callable[[Path], list[str]]:
    def args(d: Path) -> list[str]:
        cfg = {**LARTPC_SIM, **changes}
        (d / "s.yaml").write_text(yaml.safe_dump(cfg))
        return ["lartpc", "simulate", "-c", str(d / "s.yaml"), "-o", str(d / "out")]

    return args


refuse(_lsim(n_events=-1), name="lartpc simulate: n_events -1")
refuse(_lsim(n_events=10**12), name="lartpc simulate: n_events 1e12")
refuse(_lsim(geometry={"n_ticks": 32, "size_y_mm": 32.0, "size_z_mm": 32.0, "voxel_mm": 0.0}), "voxel",
       name="lartpc simulate: voxel_mm 0")
refuse(_lsim(geometry={"n_ticks": 32, "size_y_mm": float("nan"), "size_z_mm": 32.0, "voxel_mm": 2.0}), "size_y",
       name="lartpc simulate: NaN size")
refuse(_lsim(bogus=1), "bogus", severity="low", name="lartpc simulate: unknown key")
refuse(lambda d: ["lartpc", "make-batches", "-i", str(d / "missing"), "-t", "1", "-o", str(d / "out")], "missing",
       name="make-batches: missing input dir")
refuse(lambda d: ((d / "emptydir").mkdir(), ["lartpc", "make-batches", "-i", str(d / "emptydir"), "-t", "1", "-o",
                                             str(d / "out")])[1], "emptydir", name="make-batches: empty input dir")
refuse(lambda d: ["lartpc", "make-batches", "-i", str(INPUTS / "parsed"), "-t", "99", "-o", str(d / "out")], "99",
       name="make-batches: no such TPC")
refuse(lambda d: ["lartpc", "make-batches", "-i", str(INPUTS / "parsed"), "-t", "1", "-b", "0", "-o",
                  str(d / "out")], name="make-batches: batch size 0")


@case("make-batches: a corrupt parsed file is one line", "medium")
def _(d: Path) -> None:
    shutil.copytree(INPUTS / "parsed", d / "parsed")
    victim = sorted((d / "parsed").glob("*.h5"))[1]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])
    one_line(cli(["lartpc", "make-batches", "-i", str(d / "parsed"), "-t", "1", "-b", "2", "-n", "1", "-o",
                  str(d / "out")], d), victim.name)


# ---------------------------------------------------------------------------------------------- run
def run_case(c: Case, root: Path, index: int) -> tuple[Case, str, str, float]:
    d = root / f"case_{index:03d}"
    d.mkdir(parents=True)
    t0 = time.time()
    try:
        c.fn(d)
        status, detail = "pass", ""
    except Skip as exc:
        status, detail = "skip", str(exc)
    except Fail as exc:
        status, detail = "fail", str(exc)
    except subprocess.TimeoutExpired:
        status, detail = "fail", "timed out"
    except Exception as exc:  # a harness error is a failure to look at, never a silent pass
        status, detail = "fail", f"harness: {type(exc).__name__}: {exc}"
    return c, status, detail.replace("\n", " ")[:240], time.time() - t0


def main() -> None:
    global INPUTS, REFS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once")
    ap.add_argument("--only", default=None, help="run the cases whose name contains this text (A|B: either)")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the case directories")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    wanted = None if args.only is None else args.only.split("|")
    selected = [c for c in CASES if wanted is None or any(w in c.name for w in wanted)]
    if args.list:
        for c in selected:
            print(f"{c.severity:<7} {c.name}")
        print(len(selected), "cases")
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="hostile_")).resolve()
    INPUTS = root / "inputs"
    t0 = time.time()
    make_inputs(INPUTS)
    REFS = Refs(root / "refs", INPUTS)
    print(f"inputs ready in {time.time() - t0:.0f} s; {len(selected)} cases in {root}", flush=True)
    results = []
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = [pool.submit(run_case, c, root, i) for i, c in enumerate(selected)]
        for fut in futures:
            c, status, detail, secs = fut.result()
            results.append((c, status, detail))
            print(f"{status:<5} {c.severity:<7} {secs:5.1f}s  {c.name}" + (f"  -- {detail}" if detail else ""),
                  flush=True)
    print()
    print(f"{'severity':<8} {'pass':>5} {'fail':>5} {'skip':>5}")
    for sev in ("high", "medium", "low"):
        counts = [sum(1 for c, s, _ in results if c.severity == sev and s == k) for k in ("pass", "fail", "skip")]
        print(f"{sev:<8} {counts[0]:>5} {counts[1]:>5} {counts[2]:>5}")
    total = [sum(1 for _, s, _ in results if s == k) for k in ("pass", "fail", "skip")]
    print(f"{'all':<8} {total[0]:>5} {total[1]:>5} {total[2]:>5}   ({len(results)} cases, {time.time() - t0:.0f} s)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    bad = [c for c, s, _ in results if s == "fail" and c.severity in ("high", "medium")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
