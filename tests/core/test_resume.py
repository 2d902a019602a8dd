"""The resume cache cannot run code or mix jobs, one writer per output, "done" follows the output's bytes."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlfastsim.core.errors import OutputError
from mlfastsim.core.records import RecordError, read_record, record_bytes
from mlfastsim.core.resume import (
    TaskCache,
    acquire_job_lock,
    cache_dir_for,
    holds_job_lock,
    is_done,
    lock_path_for,
    mark_done,
    release_job_lock,
)


def test_records_round_trip_without_pickle(tmp_path: Path) -> None:
    from mlfastsim.core.tracking import TrackingConfig

    df = pd.DataFrame({"a": np.arange(3, dtype=np.int32), "b": [0.5, 1.5, 2.5], "ok": [True, False, True]})
    value = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "n": 3, "f": 0.1, "s": "text", "none": None,
             "t": (1, 2.0), "l": [np.int64(7), Path("a/b")], "df": df, "model": TrackingConfig(run_name="r1"),
             1: "int key"}
    path = tmp_path / "r.npz"
    path.write_bytes(record_bytes(value, {"task": 1}))
    back = read_record(path, {"task": 1})
    assert np.array_equal(back["x"], value["x"]) and back["x"].dtype == np.float32
    assert back["t"] == (1, 2.0) and back["l"][0] == 7 and isinstance(back["l"][0], np.int64)
    assert back["l"][1] == Path("a/b") and back[1] == "int key" and back["model"] == value["model"]
    pd.testing.assert_frame_equal(back["df"], df)
    with pytest.raises(RecordError, match="another job"):
        read_record(path, {"task": 2})


def test_records_rebuild_mlfastsim_dataclasses_only(tmp_path: Path) -> None:
    from mlfastsim.core.records import _allowed_class

    with pytest.raises(RecordError):
        _allowed_class("os:system")
    with pytest.raises(RecordError):
        _allowed_class("subprocess:Popen")
    with pytest.raises(TypeError):
        record_bytes(np.array([object()]), {})
    with pytest.raises(TypeError):
        record_bytes(object(), {})


class Boom:
    def __reduce__(self):  # what a planted pickle does: run a command when loaded
        return (os.system, ("touch PWNED",))


def _square(x: int) -> int:
    return x * x


def test_planted_pickle_and_corrupt_chunks_are_recomputed_not_run(tmp_path: Path, monkeypatch) -> None:
    from mlfastsim.core.parallel import iter_tasks, run_tasks

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.h5"
    cache = TaskCache(cache_dir_for(out), "fp")
    tasks = [(i,) for i in range(4)]
    assert run_tasks(_square, tasks, progress=False, cache=cache) == [0, 1, 4, 9]
    d = cache.directory
    (d / "task_000001.pkl").write_bytes(pickle.dumps(Boom()))  # an old-style planted pickle
    (d / "task_000002.npz").write_bytes(pickle.dumps(Boom()))  # a pickle under the new name
    raw = (d / "task_000003.npz").read_bytes()
    (d / "task_000003.npz").write_bytes(raw[: len(raw) // 2])  # truncated by a kill / bad disk
    cache.clear()
    again = TaskCache(cache_dir_for(out), "fp")
    (again.directory / "task_000002.npz").write_bytes(pickle.dumps(Boom()))
    (again.directory / "task_000003.npz").write_bytes(b"PK\x03\x04garbage")
    assert list(iter_tasks(_square, tasks, progress=False, cache=again)) == [0, 1, 4, 9]
    assert run_tasks(_square, tasks, progress=False, cache=again) == [0, 1, 4, 9]
    assert not (tmp_path / "PWNED").exists()
    assert not list(again.directory.glob("*.pkl"))
    again.clear()


def test_records_of_another_job_are_not_used(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    a = TaskCache(cache_dir_for(out), "job-a")
    a.save(0, np.ones(3))
    a.save(1, np.ones(3))
    # a record copied over from job b's cache (same index, other fingerprint) is refused
    b_record = record_bytes(np.zeros(3), {"fingerprint": "job-b", "task": 0})
    (a.directory / "task_000000.npz").write_bytes(b_record)
    assert a.get(0) is None and np.array_equal(a.get(1), np.ones(3))
    # a record moved to another index is refused too
    shutil.copy(a.directory / "task_000001.npz", a.directory / "task_000005.npz")
    assert a.get(5) is None
    a.clear()


_HOLD = textwrap.dedent("""
    import sys, time
    from mlfastsim.core.resume import TaskCache, cache_dir_for
    c = TaskCache(cache_dir_for(sys.argv[1]), "fp-other")
    print("locked", flush=True)
    time.sleep(60)
""")


def test_second_job_on_one_output_gets_one_line(tmp_path: Path) -> None:
    out = tmp_path / "same.h5"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError) as err:
            TaskCache(cache_dir_for(out), "fp-mine")
        assert err.value.one_line().startswith(f"another job (pid {proc.pid}) is writing {out}")
        # the running job's cache was not touched by the refused one
        assert (cache_dir_for(out) / "fingerprint").read_text().strip() == "fp-other"
    finally:
        proc.kill()
        proc.wait()
    # killed: the kernel dropped its lock, and the rerun starts from its own fingerprint
    cache = TaskCache(cache_dir_for(out), "fp-mine")
    assert (cache.directory / "fingerprint").read_text().strip() == "fp-mine" and len(cache) == 0
    cache.clear()
    assert not lock_path_for(out).exists() and not holds_job_lock(out)


def test_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    acquire_job_lock(out)
    acquire_job_lock(out)
    release_job_lock(out)
    assert holds_job_lock(out)
    release_job_lock(out)
    assert not holds_job_lock(out) and not lock_path_for(out).exists()


def test_done_follows_the_bytes_of_the_output(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    out.write_bytes(b"showers of job A")
    mark_done(out, "A")
    assert is_done(out, "A")
    other = tmp_path / "other.h5"
    other.write_bytes(b"showers of job B")  # same size
    shutil.copy2(other, out)  # cp -p: same size, old mtime
    assert not is_done(out, "A")
    out.write_bytes(b"showers of job A")  # the same bytes again (e.g. copied back): done after all
    assert is_done(out, "A")
    os.utime(out, ns=(1, 1))
    assert is_done(out, "A")  # touched, same bytes


def test_done_of_a_directory_and_companions(tmp_path: Path) -> None:
    d = tmp_path / "parsed"
    d.mkdir()
    (d / "a.h5").write_bytes(b"a")
    (d / "b.h5").write_bytes(b"b")
    mark_done(d, "fp")
    assert is_done(d, "fp")
    (d / "b.h5").unlink()
    assert not is_done(d, "fp")
    summary, arr = tmp_path / "s.json", tmp_path / "x.npy"
    summary.write_text("{}")
    np.save(arr, np.arange(3))
    mark_done(summary, "fp", companions=[arr])
    assert is_done(summary, "fp", companions=[arr])
    np.save(arr, np.arange(4))
    assert not is_done(summary, "fp", companions=[arr])


def test_old_marker_beside_the_output_is_not_trusted_and_removed(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    out.write_bytes(b"x")
    (tmp_path / ".o.h5.done.json").write_text('{"fingerprint": "fp", "output": "o.h5", "info": {}}')
    assert not is_done(out, "fp")
    assert not (tmp_path / ".o.h5.done.json").exists()  # markers no longer pile up beside outputs


def _stamped(path: Path, fingerprint: str, values: np.ndarray, **info: object) -> None:
    import h5py

    from mlfastsim.core.resume import stamp_h5

    with h5py.File(path, "w") as f:
        f.create_dataset("showers", data=values, chunks=(2, values.shape[1]), compression="gzip")
        f.attrs["geometry"] = "{}"
        stamp_h5(f, fingerprint, dict(info))


def test_hdf5_output_carries_its_own_done_stamp(tmp_path: Path) -> None:
    import h5py

    from mlfastsim.core.resume import done_info

    out = tmp_path / "out.h5"
    _stamped(out, "A", np.arange(12, dtype=np.float32).reshape(4, 3), n=4)
    assert is_done(out, "A") and not is_done(out, "B") and done_info(out) == {"n": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]  # nothing hidden beside it
    copy = tmp_path / "copy" / "out.h5"
    copy.parent.mkdir()
    shutil.copy(out, copy)
    assert is_done(copy, "A")  # a byte copy of the job's own output holds what the job wrote
    with h5py.File(out, "r+") as f:  # an edit that keeps the stamp
        f["showers"][1, 1] = 99.0
    assert not is_done(out, "A")
    with h5py.File(copy, "r+") as f:  # an edited attribute counts too
        f.attrs["geometry"] = '{"n_r": 1}'
    assert not is_done(copy, "A")
    _stamped(out, "B", np.zeros((4, 3), np.float32))  # another job's file under the same name
    assert not is_done(out, "A")
    raw = out.read_bytes()
    out.write_bytes(raw[: len(raw) // 2])  # a truncated copy
    assert not is_done(out, "B")


def test_directory_of_stamped_files_is_done_only_whole(tmp_path: Path) -> None:
    d = tmp_path / "par04"
    d.mkdir()
    for name in ("a.h5", "b.h5"):
        _stamped(d / name, "P", np.ones((2, 3), np.float32), files=["a.h5", "b.h5"])
    assert is_done(d, "P") and not is_done(d, "Q")
    (d / "b.h5").unlink()
    assert not is_done(d, "P")


def test_iter_tasks_streams_in_order_serially_and_on_dask(tmp_path: Path) -> None:
    from mlfastsim.core.parallel import iter_tasks

    tasks = [(i,) for i in range(7)]
    cache = TaskCache(cache_dir_for(tmp_path / "o.h5"), "fp")
    cache.save(3, 99)  # a finished task of a killed run is read back in its turn, not recomputed
    assert list(iter_tasks(_square, tasks, progress=False, cache=cache)) == [0, 1, 4, 99, 16, 25, 36]
    assert list(iter_tasks(_square, tasks, workers=2, window=1, progress=False)) == [i * i for i in range(7)]
    cache.clear()


def test_failed_first_run_leaves_no_output_folder(tmp_path: Path) -> None:
    from mlfastsim.core.resume import job_output_dir

    out = tmp_path / "pre"
    with pytest.raises(RuntimeError), job_output_dir(out) as d:
        TaskCache(cache_dir_for(d / "summary.json"), "fp")
        raise RuntimeError("refused input")
    assert not out.exists()
    with pytest.raises(RuntimeError), job_output_dir(out) as d:
        TaskCache(cache_dir_for(d / "summary.json"), "fp").save(0, 1)
        raise RuntimeError("killed midway")
    assert out.is_dir()  # it holds a finished task: the rerun resumes from it


def test_a_record_that_is_not_a_result_of_its_task_is_recomputed(tmp_path: Path) -> None:
    """This job's tag on a value its task could not have made (planted, or a bug): not used, deleted."""
    out = tmp_path / "out.h5"
    cache = TaskCache(cache_dir_for(out), "fp", accept=lambda i, v: isinstance(v, np.ndarray) and v.shape == (2, 3))
    cache.save(0, np.zeros((2, 3), np.float32))
    cache.save(1, {"x": np.ones(3)})
    assert cache.get(0) is not None and cache.get(1, "missing") == "missing" and not cache.has(1)
    cache.accept = lambda i, v: v["no such key"]  # a check that breaks on a wrong value: not accepted either
    assert cache.get(0, "missing") == "missing"
    cache.clear()
