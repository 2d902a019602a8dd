"""Issue 15, as a hostile user would try it: one table, one row per case.

Each row sets a trap in a fresh directory and runs the CLI once.  Bad input and broken environments
expect one ``error:`` line naming the problem and exit 2 with nothing half-written; the cases where the
promise is a *correct* rerun (a planted pickle, a corrupt or foreign cache chunk, a replaced output)
expect exit 0 and the very bytes of a clean run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

SIM = ["showers", "simulate", "--energy-gev", "10", "--n-per-point", "4", "--chunk-size", "2", "--seed", "1"]


def sim(out: Path | str, *extra: str) -> list[str]:
    return [*SIM, *extra, "-o", str(out)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Boom:
    """What a planted pickle does when it is loaded: run a command."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


_HOLD = textwrap.dedent("""
    import sys, time
    from mlfastsim.core.resume import acquire_job_lock
    acquire_job_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def hold_lock(stack: ExitStack, output: Path) -> int:
    """Another job writing ``output``: a process holding its job lock until the row ends."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(output)], stdout=subprocess.PIPE, text=True)
    stack.callback(proc.wait)
    stack.callback(proc.kill)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc.pid


@dataclass
class Ctx:
    """What a row's setup gets: its directory, a way to run the CLI first (a previous run), cleanups."""

    tmp: Path
    cli: Callable[..., object]
    stack: ExitStack
    small_file: Path
    saved: dict[str, object] = field(default_factory=dict)


@dataclass
class Case:
    setup: Callable[[Ctx], list[str]]
    code: int = 2
    needles: tuple[str, ...] = ()
    check: Callable[[Ctx], None] | None = None
    fsize_limit: int | None = None  # run in a subprocess with ulimit -f (bytes): a disk that fills up


# ------------------------------------------------------------------ resume cache: cannot run code or mix jobs
def _cache_of_a_killed_run(c: Ctx, plant: Callable[[Path], None]) -> list[str]:
    """A finished run gives the job's fingerprint and the clean bytes; then the output is removed and the
    cache of a 'killed' rerun is planted with whatever ``plant`` writes."""
    out = c.tmp / "out.h5"
    assert c.cli(*sim(out)).code == 0
    c.saved["clean"] = sha(out)
    import json

    with h5py.File(out) as f:  # the output says which job wrote it
        fingerprint = json.loads(f.attrs["mlfastsim_job"])["fingerprint"]
    out.unlink()
    parts = c.tmp / ".out.h5.parts"
    parts.mkdir()
    (parts / "fingerprint").write_text(fingerprint + "\n")
    plant(parts)
    return sim(out)


def _same_as_clean(c: Ctx) -> None:
    assert sha(c.tmp / "out.h5") == c.saved["clean"]
    assert not (c.tmp / "PWNED").exists()
    assert not (c.tmp / ".out.h5.parts").exists()


def planted_pickle(c: Ctx) -> list[str]:
    def plant(parts: Path) -> None:
        (parts / "task_000000.pkl").write_bytes(pickle.dumps(Boom()))
        (parts / "task_000001.npz").write_bytes(pickle.dumps(Boom()))

    return _cache_of_a_killed_run(c, plant)


def corrupt_chunk(c: Ctx) -> list[str]:
    def plant(parts: Path) -> None:
        from mlfastsim.core.records import record_bytes

        good = record_bytes(np.zeros((2, 6480), np.float32), {"fingerprint": "x", "task": 0})
        (parts / "task_000000.npz").write_bytes(good[: len(good) // 3])  # truncated by a kill -9

    return _cache_of_a_killed_run(c, plant)


def foreign_chunk(c: Ctx) -> list[str]:
    """The other job's chunk (seed 2) in this job's cache: issue 15's mixed output."""

    def plant(parts: Path) -> None:
        from mlfastsim.core.records import record_bytes

        other = record_bytes(np.ones((2, 6480), np.float32), {"fingerprint": "seed-2-job", "task": 0})
        (parts / "task_000000.npz").write_bytes(other)

    return _cache_of_a_killed_run(c, plant)


def two_jobs_one_output(c: Ctx) -> list[str]:
    c.saved["pid"] = hold_lock(c.stack, c.tmp / "same.h5")
    return sim(c.tmp / "same.h5", "--seed", "2")


def _refused_second_job(c: Ctx) -> None:
    assert not (c.tmp / "same.h5").exists() and not (c.tmp / ".same.h5.parts").exists()


# ------------------------------------------------------------------ "done" is a property of the output
def replaced_output(c: Ctx) -> list[str]:
    out = c.tmp / "out.h5"
    assert c.cli(*sim(out)).code == 0
    c.saved["clean"] = sha(out)
    assert c.cli(*sim(c.tmp / "other.h5", "--seed", "2")).code == 0
    shutil.copy2(c.tmp / "other.h5", out)  # cp -p: another job's data under the finished name
    return sim(out)


def own_copy(c: Ctx) -> list[str]:
    """A byte copy of the job's own output where the same job writes: done, left untouched."""
    assert c.cli(*sim(c.tmp / "a.h5")).code == 0
    shutil.copy(c.tmp / "a.h5", c.tmp / "b.h5")
    c.saved["ino"] = (c.tmp / "b.h5").stat().st_ino
    return sim(c.tmp / "b.h5")


def _kept_copy(c: Ctx) -> None:
    assert (c.tmp / "b.h5").stat().st_ino == c.saved["ino"]  # not rewritten
    assert sha(c.tmp / "b.h5") == sha(c.tmp / "a.h5")
    assert sorted(p.name for p in c.tmp.iterdir()) == ["a.h5", "b.h5"]  # no marker beside the outputs


def edited_output(c: Ctx) -> list[str]:
    """An edit that keeps the job's stamp: the digest no longer matches, the job runs again."""
    out = c.tmp / "out.h5"
    assert c.cli(*sim(out)).code == 0
    c.saved["clean"] = sha(out)
    with h5py.File(out, "r+") as f:
        f["showers"][0, :10] = 1.0
    return sim(out)


def convert_replaced_output(c: Ctx) -> list[str]:
    """Another conversion's file under a finished conversion's name: converted again."""
    conv = ["showers", "convert", str(c.small_file), "--from", "native", "--to", "calochallenge", "-o"]
    assert c.cli(*conv, str(c.tmp / "out.h5")).code == 0
    c.saved["clean"] = sha(c.tmp / "out.h5")
    assert c.cli(*sim(c.tmp / "other.h5")).code == 0
    shutil.copy2(c.tmp / "other.h5", c.tmp / "out.h5")
    return [*conv, str(c.tmp / "out.h5")]


def _same_as_clean_conversion(c: Ctx) -> None:
    assert sha(c.tmp / "out.h5") == c.saved["clean"]
    assert not [p.name for p in c.tmp.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ sizes before work
def huge_n(c: Ctx) -> list[str]:
    return ["showers", "simulate", "--energy-gev", "10,50", "--n-per-point", "1000000000", "-o", str(c.tmp / "big.h5")]


def _nothing_written(c: Ctx) -> None:
    assert [p.name for p in c.tmp.iterdir() if p.name not in ("small.h5", "det.yaml")] == [], list(c.tmp.iterdir())


def forged_shape(c: Ctx) -> list[str]:
    forged = c.tmp / "forged.h5"
    with h5py.File(forged, "w") as f:
        f.create_dataset("incident_energies", data=np.ones((5, 1), np.float32) * 1e3)
        f.create_dataset("showers", shape=(200_000_000, 6480), dtype="f4")
    assert forged.stat().st_size < 10_000
    return ["showers", "validate", "--reference", str(c.small_file), "--candidate", str(forged), "-o",
            str(c.tmp / "v"), "--no-classifier"]


# ------------------------------------------------------------------ outputs go only to regular files
def sim_to_directory(c: Ctx) -> list[str]:
    (c.tmp / "adir").mkdir()
    return sim(c.tmp / "adir")


def convert_to_directory(c: Ctx) -> list[str]:
    (c.tmp / "adir").mkdir()
    return ["showers", "convert", str(c.small_file), "--from", "native", "--to", "native", "-o", str(c.tmp / "adir")]


def produce_to_directory(c: Ctx) -> list[str]:
    (c.tmp / "adir").mkdir()
    return ["belle2", "produce", "-n", "5", "-o", str(c.tmp / "adir")]


def generate_to_directory(c: Ctx) -> list[str]:
    """Refused before the checkpoint is even read (the 'checkpoint' here is not one)."""
    (c.tmp / "adir").mkdir()
    return ["showers", "generate", "--checkpoint", str(c.small_file), "--energy-gev", "10", "--n-per-point", "2",
            "-o", str(c.tmp / "adir")]


def generate_to_proc(c: Ctx) -> list[str]:
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    return ["showers", "generate", "--checkpoint", str(c.small_file), "--energy-gev", "10", "--n-per-point", "2",
            "-o", "/proc/x.h5"]


def absurd_mesh_checkpoint(c: Ctx) -> list[str]:
    """The shipped VAE with its mesh edited to n_r = 1e6: 579 GB of weights, refused before allocating."""
    import torch

    from mlfastsim.showers.pretrained import pretrained_dir

    state = torch.load(pretrained_dir() / "vae_ds2_meta.pt", weights_only=True)
    state["mesh"]["n_r"] = 1_000_000
    state["mesh"].pop("r_edges_mm", None)
    torch.save(state, c.tmp / "absurd.pt")
    return ["showers", "generate", "--checkpoint", str(c.tmp / "absurd.pt"), "--energy-gev", "10", "--n-per-point",
            "2", "-o", str(c.tmp / "out.h5")]


def sim_to_fifo(c: Ctx) -> list[str]:
    os.mkfifo(c.tmp / "pipe.h5")  # like /dev/full: a special file must never be replaced
    return sim(c.tmp / "pipe.h5")


def sim_to_proc(c: Ctx) -> list[str]:
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    return sim("/proc/x.h5")


# ------------------------------------------------------------------ filesystem errors
def sim_disk_fills(c: Ctx) -> list[str]:
    return sim(c.tmp / "out.h5")


def _no_litter(c: Ctx) -> None:
    left = [p.name for p in c.tmp.rglob("*") if p.name.endswith(".tmp") or p.name == "out.h5"]
    assert left == [], left


def sim_output_fills(c: Ctx) -> list[str]:
    """The cache chunks fit (52 kB each), the streamed output does not: HDF5 must not crash (exit 139)."""
    return ["showers", "simulate", "--energy-gev", "10", "--n-per-point", "200", "--chunk-size", "2", "-o",
            str(c.tmp / "out.h5")]


def _resumable(c: Ctx) -> None:
    _no_litter(c)
    assert len(list((c.tmp / ".out.h5.parts").glob("task_*.npz"))) > 0  # kept: a rerun resumes from them


def produce_disk_fills(c: Ctx) -> list[str]:
    return ["belle2", "produce", "-n", "200", "--chunk-size", "100", "-o", str(c.tmp / "out.h5")]


def preprocess_disk_fills(c: Ctx) -> list[str]:
    assert c.cli("belle2", "produce", "-n", "200", "--chunk-size", "100", "-o", str(c.tmp / "ev.h5")).code == 0
    return ["belle2", "preprocess", "-i", str(c.tmp / "ev.h5"), "-o", str(c.tmp / "pre")]


def _no_arrays(c: Ctx) -> None:
    assert not list(c.tmp.rglob("*.npy")) and not list(c.tmp.rglob("*.tmp"))
    assert not (c.tmp / "pre").exists()  # a failed first run leaves no empty output folder


def _planted_events(c: Ctx) -> Path:
    """A produced events file whose table attribute pandas reads (non_index_axes) is a pickle that runs code."""
    ev = c.tmp / "ev.h5"
    assert c.cli("belle2", "produce", "-n", "40", "--chunk-size", "40", "-o", str(ev)).code == 0
    with h5py.File(ev, "r+") as f:
        f["events"].attrs["non_index_axes"] = np.bytes_(pickle.dumps(Boom(), protocol=0))
    return ev


def preprocess_planted_pickle(c: Ctx) -> list[str]:
    return ["belle2", "preprocess", "-i", str(_planted_events(c)), "-o", str(c.tmp / "pre")]


def evaluate_planted_pickle(c: Ctx) -> list[str]:
    return ["belle2", "evaluate", "--events", str(_planted_events(c)), "--scores", str(c.tmp / "ev.h5"), "-o",
            str(c.tmp / "eval")]


def _nothing_ran(c: Ctx) -> None:
    assert not (c.tmp / "PWNED").exists()
    assert not (c.tmp / "pre").exists() and not (c.tmp / "eval").exists()


LARTPC_SIM = {"n_events": 4, "seed": 2, "tpc_ids": [1], "muons": [1, 2], "protons": [0, 1], "showers": [0, 1],
              "geometry": {"n_ticks": 32, "size_y_mm": 32.0, "size_z_mm": 32.0, "voxel_mm": 2.0}}


def make_batches_disk_fills(c: Ctx) -> list[str]:
    (c.tmp / "sim.yaml").write_text(yaml.safe_dump(LARTPC_SIM))
    assert c.cli("lartpc", "simulate", "-c", str(c.tmp / "sim.yaml"), "-o", str(c.tmp / "parsed")).code == 0
    batches = ["lartpc", "make-batches", "-i", str(c.tmp / "parsed"), "-t", "1", "-b", "2", "-n", "1"]
    # once without the limit: numba writes its compiled-code cache on first use (a harness detail)
    assert c.cli(*batches, "-o", str(c.tmp / "warm")).code == 0
    return [*batches, "-o", str(c.tmp / "xy")]


def lartpc_simulate_disk_fills(c: Ctx) -> list[str]:
    (c.tmp / "sim.yaml").write_text(yaml.safe_dump(LARTPC_SIM))
    assert c.cli("lartpc", "simulate", "-c", str(c.tmp / "sim.yaml"), "-o", str(c.tmp / "warm")).code == 0
    return ["lartpc", "simulate", "-c", str(c.tmp / "sim.yaml"), "-o", str(c.tmp / "parsed")]


def _no_parsed(c: Ctx) -> None:
    assert not list((c.tmp / "parsed").glob("*.h5")) and not list(c.tmp.rglob("*.tmp"))


def _no_xy(c: Ctx) -> None:
    assert not list((c.tmp / "xy").glob("*")), list((c.tmp / "xy").glob("*"))


def validate_disk_fills(c: Ctx) -> list[str]:
    """Small figures fit under the limit, the 3D one (~0.5 MB) does not: none may be left without metrics."""
    return ["showers", "validate", "--reference", str(c.small_file), "--candidate", str(c.small_file), "-o",
            str(c.tmp / "v"), "--no-classifier"]


def _no_figures(c: Ctx) -> None:
    left = [p.name for p in c.tmp.rglob("*")
            if p.suffix == ".png" or p.name in ("metrics.json", "report.html") or ".staging." in p.name]
    assert left == [], left


def convert_zero_showers(c: Ctx) -> list[str]:
    empty = c.tmp / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("incident_energies", data=np.zeros((0, 1), np.float32))
        f.create_dataset("showers", data=np.zeros((0, 6480), np.float32))
    return ["showers", "convert", str(empty), "--from", "native", "--to", "calochallenge", "-o", str(c.tmp / "cc.h5")]


def _no_cc(c: Ctx) -> None:
    assert sorted(p.name for p in c.tmp.iterdir()) == ["empty.h5"], list(c.tmp.iterdir())


def stale_tmp(c: Ctx) -> list[str]:
    (c.tmp / ".out.h5.k2j3h4g5.tmp").write_bytes(b"half of a killed run")
    return sim(c.tmp / "out.h5")


def _stale_tmp_gone(c: Ctx) -> None:
    assert not (c.tmp / ".out.h5.k2j3h4g5.tmp").exists() and (c.tmp / "out.h5").is_file()


# ------------------------------------------------------------------ impossible detectors, bad files, names
def _detector(c: Ctx, **changes: object) -> Path:
    absorber = {"name": "Weird", "z": 74, "a": 183.84, "density": 19.3, "x0": 3.5, "rm": 9.3, "ec": 8.0,
                "dedx_mip": 2.2}
    det = {"name": "weird", "absorber": absorber, "absorber_mm": 1.4, "n_layers": 10}
    for k, v in changes.items():
        (absorber if k in absorber else det)[k] = v
    path = c.tmp / "det.yaml"
    path.write_text(yaml.safe_dump(det))
    return path


def impossible_material(c: Ctx) -> list[str]:
    return sim(c.tmp / "out.h5", "--detector", str(_detector(c, z=-60, density=0, x0=-5)))


def nan_thickness(c: Ctx) -> list[str]:
    return sim(c.tmp / "out.h5", "--detector", str(_detector(c, absorber_mm=float("nan"))))


def angle_400(c: Ctx) -> list[str]:
    bad = c.tmp / "angles.h5"
    shutil.copy(c.small_file, bad)
    with h5py.File(bad, "r+") as f:
        n = f["showers"].shape[0]
        angles = np.full((n, 1), 90.0, np.float32)
        angles[3] = 400.0
        if "incident_angles" in f:
            del f["incident_angles"]
        f.create_dataset("incident_angles", data=angles)
    return ["showers", "validate", "--reference", str(c.small_file), "--candidate", str(bad), "-o", str(c.tmp / "v"),
            "--no-classifier"]


def two_validates(c: Ctx) -> list[str]:
    hold_lock(c.stack, c.tmp / "v")
    return ["showers", "validate", "--reference", str(c.small_file), "--candidate", str(c.small_file), "-o",
            str(c.tmp / "v"), "--no-classifier"]


def run_name_escape(c: Ctx) -> list[str]:
    return ["showers", "validate", "--reference", str(c.small_file), "--candidate", str(c.small_file), "-o",
            str(c.tmp / "v"), "--no-classifier", "--set", "tracking.run_name=../../../escaped"]


def adapt_run_name_escape(c: Ctx) -> list[str]:
    return ["showers", "adapt", "--data", str(c.small_file), "--checkpoint", str(c.small_file), "--study-name", "s",
            "--run-name", "../../../escaped", "--adaptation-steps", "1"]


def adapt_one_shower(c: Ctx) -> list[str]:
    """One shower of the new geometry: batch norm cannot train on it (was a BatchNorm traceback)."""
    from mlfastsim.showers.io.native import read_native, write_native

    write_native(read_native(c.small_file).subset(slice(0, 1)), c.tmp / "one.h5")
    return ["showers", "adapt", "--data", str(c.tmp / "one.h5"), "--study-name", "s", "--adaptation-steps", "1"]


def _no_run(c: Ctx) -> None:
    assert not (c.tmp / "runs").exists(), list((c.tmp / "runs").rglob("*"))


def n_per_point_1e12(c: Ctx) -> list[str]:
    return ["showers", "simulate", "--energy-gev", "10", "--n-per-point", "1e12", "-o", str(c.tmp / "out.h5")]


def nan_range(c: Ctx) -> list[str]:
    return ["showers", "simulate", "--energy-range-gev", "nan:10", "--n-per-point", "2", "-o", str(c.tmp / "out.h5")]


def _not_escaped(c: Ctx) -> None:
    assert not (c.tmp.parent.parent / "escaped").exists()


CASES: dict[str, Case] = {
    # high
    "two jobs on one -o: the second stops": Case(two_jobs_one_output, 2, ("another job (pid", "is writing"),
                                                 _refused_second_job),
    "replaced output is recomputed, not trusted": Case(replaced_output, 0, (), _same_as_clean),
    "planted pickle in the cache never runs": Case(planted_pickle, 0, (), _same_as_clean),
    "another job's chunk is not mixed in": Case(foreign_chunk, 0, (), _same_as_clean),
    "a byte copy of the job's own output is done": Case(own_copy, 0, (), _kept_copy),
    "an edited output (stamp kept) is recomputed": Case(edited_output, 0, (), _same_as_clean),
    "convert: a replaced output is converted again": Case(convert_replaced_output, 0, (), _same_as_clean_conversion),
    # medium
    "corrupt cache chunk is recomputed": Case(corrupt_chunk, 0, (), _same_as_clean),
    "output larger than the free disk": Case(huge_n, 2, ("is free",),
                                             _nothing_written),
    "declared HDF5 shape cannot fit the file": Case(forged_shape, 2, ("declares shape (200000000, 6480)",)),
    "simulate -o DIR": Case(sim_to_directory, 2, ("existing directory",)),
    "convert -o DIR": Case(convert_to_directory, 2, ("existing directory",)),
    "belle2 produce -o DIR": Case(produce_to_directory, 2, ("existing directory",)),
    "generate -o DIR": Case(generate_to_directory, 2, ("existing directory",)),
    "generate -o /proc/x.h5": Case(generate_to_proc, 2, ("/proc/x.h5",)),
    "checkpoint declaring an absurd mesh (n_r = 1e6)": Case(absurd_mesh_checkpoint, 2, ("of memory", "absurd.pt"),
                                                            _no_litter),
    "simulate -o special file": Case(sim_to_fifo, 2, ("not a regular file",)),
    "disk fills up (ulimit -f)": Case(sim_disk_fills, 2, ("file too large", "fix:"), _no_litter, fsize_limit=20_000),
    "disk fills during the streamed output": Case(sim_output_fills, 2, ("file too large", "out.h5"), _resumable,
                                                  fsize_limit=120_000),
    "belle2 produce: disk fills up": Case(produce_disk_fills, 2, ("file too large",), _no_litter, fsize_limit=30_000),
    "belle2 preprocess: disk fills up": Case(preprocess_disk_fills, 2, ("file too large",), _no_arrays,
                                             fsize_limit=30_000),
    "lartpc make-batches: disk fills up": Case(make_batches_disk_fills, 2, ("file too large",), _no_xy,
                                               fsize_limit=8_000),
    "lartpc simulate: disk fills up": Case(lartpc_simulate_disk_fills, 2, ("file too large",), _no_parsed,
                                           fsize_limit=8_000),
    "validate: disk fills up (no PNGs without metrics.json)": Case(validate_disk_fills, 2, ("file too large",),
                                                                  _no_figures, fsize_limit=200_000),
    "belle2 preprocess: a pickle planted in the events file never runs": Case(
        preprocess_planted_pickle, 2, ("ev.h5", "would call", "system"), _nothing_ran),
    "belle2 evaluate: a pickle planted in the events file never runs": Case(
        evaluate_planted_pickle, 2, ("ev.h5", "would call", "system"), _nothing_ran),
    "convert of a 0-shower file": Case(convert_zero_showers, 2, ("no showers",), _no_cc),
    "impossible detector material": Case(impossible_material, 2, ("must be a finite number > 0",), _nothing_written),
    "NaN detector thickness": Case(nan_thickness, 2, ("thicknesses must be finite",), _nothing_written),
    "two validates on one -o": Case(two_validates, 2, ("another job (pid", "is writing")),
    # low
    "simulate -o /proc/x.h5": Case(sim_to_proc, 2, ("/proc/x.h5",)),
    "400 degree angle in a file": Case(angle_400, 2, ("outside 0..180",)),
    "run name ../../../escaped": Case(run_name_escape, 2, ("not a plain folder name",), _not_escaped),
    "adapt --run-name ../../../escaped": Case(adapt_run_name_escape, 2, ("not a plain folder name",), _not_escaped),
    "adapt on one shower": Case(adapt_one_shower, 2, ("one.h5", "at least 2", "a few dozen showers"), _no_run),
    "--n-per-point 1e12: one line, not click's usage box": Case(n_per_point_1e12, 2, ("--n-per-point", "1e12",
                                                                                     "whole number"),
                                                                _nothing_written),
    "--energy-range-gev nan:10": Case(nan_range, 2, ("--energy-range-gev", "not a finite number"), _nothing_written),
    "killed run's .NAME.xxxx.tmp is cleaned": Case(stale_tmp, 0, (), _stale_tmp_gone),
}


def _run_limited(args: list[str], limit: int, cwd: Path) -> tuple[int, str]:
    """The CLI in a subprocess whose files cannot grow past ``limit`` bytes (EFBIG, as a full disk)."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the errno instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = "import sys; from mlfastsim.cli.main import main; main(sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                         preexec_fn=limit_files, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    return res.returncode, res.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_reliability(name: str, cli, small_file: Path, tmp_path: Path) -> None:
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    os.chdir(work)
    with ExitStack() as stack:
        ctx = Ctx(work, cli, stack, small_file)
        args = case.setup(ctx)
        if case.fsize_limit is not None:
            code, err = _run_limited(args, case.fsize_limit, work)
        else:
            res = cli(*args)
            code, err = res.code, res.err
        assert code == case.code, (code, err)
        assert "Traceback" not in err
        if case.code == 2:
            lines = [x for x in err.strip().splitlines() if x.strip()]
            assert len(lines) == 1 and lines[0].startswith("error:"), err
            for needle in case.needles:
                assert needle in lines[0], (needle, lines[0])
        if case.check is not None:
            case.check(ctx)
