from __future__ import annotations

import pytest

from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.core.parallel import run_tasks


def square_plus(x: int, y: int) -> int:
    return x * x + y


def fail_on_three(x: int) -> int:
    if x == 3:
        raise DataError("bad chunk", field="chunk", fix="none")
    return x


def test_serial_and_dask_give_same_ordered_results() -> None:
    tasks = [(i, 1) for i in range(7)]
    serial = run_tasks(square_plus, tasks, progress=False)
    dask = run_tasks(square_plus, tasks, workers=2, progress=False)
    assert serial == dask == [i * i + 1 for i in range(7)]


def test_user_error_from_a_worker_comes_back_as_is() -> None:
    with pytest.raises(DataError, match="bad chunk"):
        run_tasks(fail_on_three, [(i,) for i in range(5)], workers=2, progress=False)


def test_bad_scheduler_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlfastsim.core.parallel.CONNECT_TIMEOUT_S", 2)
    with pytest.raises(ConfigError, match="scheduler"):
        run_tasks(square_plus, [(1, 1)], scheduler="tcp://127.0.0.1:1", progress=False)


# ------------------------------------------------------------------ idempotent jobs
CALLS: list[int] = []


def record_square(x: int) -> int:
    CALLS.append(x)
    if x == FAIL_AT[0]:
        raise DataError("worker killed", field="chunk", fix="rerun")
    return x * x


FAIL_AT = [-1]


def test_task_cache_resumes_a_killed_run_and_drops_stale_results(tmp_path) -> None:
    from mlfastsim.core.parallel import TaskCache

    tasks = [(i,) for i in range(6)]
    CALLS.clear()
    FAIL_AT[0] = 3
    with pytest.raises(DataError):
        run_tasks(record_square, tasks, progress=False, cache=TaskCache(tmp_path / "parts", "fp1"))
    assert len(TaskCache(tmp_path / "parts", "fp1")) == 3  # tasks 0-2 finished before the "kill"
    CALLS.clear()
    FAIL_AT[0] = -1
    cache = TaskCache(tmp_path / "parts", "fp1")
    assert run_tasks(record_square, tasks, progress=False, cache=cache) == [i * i for i in range(6)]
    assert CALLS == [3, 4, 5]  # only the missing ones
    CALLS.clear()
    other = TaskCache(tmp_path / "parts", "fp2")  # other inputs/settings: nothing reused
    assert len(other) == 0
    run_tasks(record_square, tasks, progress=False, cache=other)
    assert CALLS == list(range(6))
    other.clear()
    assert not (tmp_path / "parts").exists()


def test_done_marker(tmp_path) -> None:
    from mlfastsim.core.parallel import ParallelConfig as P
    from mlfastsim.core.parallel import clear_done, config_fingerprint, is_done, mark_done

    out = tmp_path / "out.h5"
    assert not is_done(out, "x")
    out.write_bytes(b"data")
    mark_done(out, "x")
    assert is_done(out, "x") and not is_done(out, "y")
    # not HDF5: the record lives in the directory's one hidden folder, not beside the output
    assert (tmp_path / ".mlfastsim-done" / "out.h5.json").is_file() and not (tmp_path / ".out.h5.done.json").exists()
    clear_done(out)
    assert not is_done(out, "x")
    mark_done(out, "x")
    out.unlink()
    assert not is_done(out, "x")  # a marker without its output is not a finished job
    # the parallel settings never change an output, so they are not part of the fingerprint
    from mlfastsim.showers.config import SimulateConfig

    a = SimulateConfig(n_per_point=3)
    b = a.model_copy(update={"parallel": P(workers=4)})
    assert config_fingerprint(a) == config_fingerprint(b) != config_fingerprint(a.model_copy(update={"seed": 9}))


def test_showers_simulate_resumes_after_a_killed_run_and_skips_when_done(tmp_path, monkeypatch) -> None:
    from mlfastsim.showers import pipeline
    from mlfastsim.showers.config import SimulateConfig

    real = pipeline._simulate_task
    calls: list[int] = []

    def flaky(*args):
        calls.append(args[-1])
        if args[-1] == 2 and fail[0]:
            raise DataError("worker killed", field="chunk", fix="rerun")
        return real(*args)

    fail = [True]
    monkeypatch.setattr(pipeline, "_simulate_task", flaky)
    monkeypatch.chdir(tmp_path)
    cfg = SimulateConfig(detector="SiW", mesh="ds2", energies_gev=[5.0], n_per_point=10, chunk_size=2, seed=3,
                         output=tmp_path / "a" / "out.h5")
    with pytest.raises(DataError):
        pipeline.simulate_to_file(cfg)
    assert calls == [0, 1, 2] and not cfg.output.exists()
    calls.clear()
    fail[0] = False
    pipeline.simulate_to_file(cfg)
    assert calls == [2, 3, 4]  # chunks 0 and 1 came from the killed run's cache
    assert not (tmp_path / "a" / ".out.h5.parts").exists()
    calls.clear()
    pipeline.simulate_to_file(cfg)
    assert calls == []  # finished with the same settings: skipped
    fresh = cfg.model_copy(update={"output": tmp_path / "b" / "out.h5"})
    pipeline.simulate_to_file(fresh)
    # same bytes as an uninterrupted run (the recorded config names the output; both are "out.h5" in
    # their own directory, written from the same relative position)
    import h5py
    import numpy as np

    with h5py.File(cfg.output) as fa, h5py.File(fresh.output) as fb:
        assert np.array_equal(fa["showers"][:], fb["showers"][:])
        assert np.array_equal(fa["incident_energies"][:], fb["incident_energies"][:])
