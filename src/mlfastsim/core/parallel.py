"""File- or chunk-parallel execution on Dask.

mlfastsim never runs its own scheduler: ``workers > 1`` starts a ``distributed.LocalCluster`` of
single-threaded worker processes, ``scheduler="tcp://host:8786"`` connects to any running Dask cluster
(dask-jobqueue on Slurm, dask-kubernetes...).  Tasks must be pure functions of their arguments (each
carries its own seed), so results are identical whatever the number of workers; they are returned in
task order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pydantic import Field

from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, MlfastsimError
from mlfastsim.core.progress import progress_bar

T = TypeVar("T")

# How long to wait for an existing scheduler before telling the user it is unreachable.
CONNECT_TIMEOUT_S = 10


class ParallelConfig(StrictModel):
    """The ``parallel:`` section: how many local Dask workers, or which existing scheduler."""

    workers: int = Field(1, ge=1)
    scheduler: str | None = None


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client``: to ``scheduler`` if given, else to a fresh LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot connect to Dask scheduler {scheduler!r} ({exc})",
                field="--scheduler",
                fix="check the address (tcp://host:8786) and that the scheduler is running",
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}", field="--workers", fix="use --workers 1 or more")
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_tasks(
    fn: Callable[..., T],
    tasks: Sequence[tuple[Any, ...]],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    description: str = "working",
    progress: bool = True,
) -> list[T]:
    """Run ``fn(*task)`` for every task, serially or on Dask, and return results in task order.

    An :class:`MlfastsimError` raised inside a task is re-raised unchanged, so the CLI still prints one
    clean line whether the task ran here or on a remote worker.
    """
    if not tasks:
        return []
    if workers <= 1 and not scheduler:
        results = []
        with progress_bar(len(tasks), description, enabled=progress) as bar:
            for task in tasks:
                results.append(fn(*task))
                bar.advance()
        return results

    from distributed import as_completed

    with dask_client(workers, scheduler) as client:
        futures = [client.submit(fn, *task, pure=False, key=f"{getattr(fn, '__name__', 'task')}-{i}")
                   for i, task in enumerate(tasks)]
        index = {f.key: i for i, f in enumerate(futures)}
        out: list[Any] = [None] * len(tasks)
        with progress_bar(len(tasks), f"{description} ({'cluster' if scheduler else f'{workers} workers'})",
                          enabled=progress) as bar:
            for fut in as_completed(futures):
                try:
                    out[index[fut.key]] = fut.result()
                except MlfastsimError:
                    raise
                bar.advance()
        return out
