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
