"""File- or chunk-parallel execution on Dask.

mlfastsim never runs its own scheduler: ``workers > 1`` starts a ``distributed.LocalCluster`` of
single-threaded worker processes, ``scheduler="tcp://host:8786"`` connects to any running Dask cluster
(dask-jobqueue on Slurm, dask-kubernetes...).  Tasks must be pure functions of their arguments (each
carries its own seed), so results are identical whatever the number of workers; they are returned in
task order.

Idempotent jobs (:mod:`mlfastsim.core.resume`, re-exported here): a job names a :class:`TaskCache`
(finished task results stored as data, kept until the job's output is written; opening it makes the job
the one writer of its output) so a rerun after a killed run recomputes only the missing tasks, and marks
its finished output with :func:`mark_done` so a rerun with the same inputs and settings skips it while
the output still holds the bytes it wrote (:func:`is_done`).  Both are keyed by a
:func:`job_fingerprint` of everything that determines the output except the parallel settings, which by
construction do not change it.  :func:`iter_tasks` yields results in task order with a bounded number
in flight, for jobs that append each chunk to their output as it comes (memory flat in N).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field

from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.io import check_interrupt, watch_interrupts
from mlfastsim.core.progress import progress_bar
from mlfastsim.core.resume import (
    TaskCache,
    cache_dir_for,
    clear_done,
    done_info,
    is_done,
    job_lock,
    mark_done,
)

__all__ = [
    "ParallelConfig",
    "TaskCache",
    "cache_dir_for",
    "clear_done",
    "config_fingerprint",
    "dask_client",
    "done_info",
    "file_signatures",
    "is_done",
    "iter_tasks",
    "job_fingerprint",
    "job_lock",
    "mark_done",
    "run_tasks",
]

_MISSING = object()

T = TypeVar("T")

# How long to wait for an existing scheduler before telling the user it is unreachable.
CONNECT_TIMEOUT_S = 10


class ParallelConfig(StrictModel):
    """The ``parallel:`` section: how many local Dask workers, or which existing scheduler."""

    workers: int = Field(1, ge=1)
    scheduler: str | None = None


def _is_scheduler_file(scheduler: str) -> bool:
    """``--scheduler sched.json``: the file ``dask scheduler --scheduler-file`` writes, not an address."""
    return "://" not in scheduler and scheduler.endswith(".json")


def _wait_for_file(path: str) -> Path:
    """A scheduler started a moment ago writes its file when it is up: wait for it a little."""
    import time

    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not Path(path).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no scheduler file {path} after {CONNECT_TIMEOUT_S} s")
        time.sleep(0.2)
    return Path(path)


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client``: to ``scheduler`` if given, else to a fresh LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            if _is_scheduler_file(scheduler):
                client = Client(scheduler_file=str(_wait_for_file(scheduler)), timeout=f"{CONNECT_TIMEOUT_S}s")
            else:
                client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot connect to Dask scheduler {scheduler!r} ({exc})",
                field="--scheduler",
                fix="check the address (tcp://host:8786, or the --scheduler-file the scheduler wrote) and that "
                    "the scheduler is running",
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
    cache: TaskCache | None = None,
) -> list[T]:
    """Run ``fn(*task)`` for every task, serially or on Dask, and return results in task order.

    With a ``cache``, tasks whose result is already on disk are not run again, and every result is
    stored as soon as it arrives (a killed run loses only the tasks in flight).  An
    :class:`MlfastsimError` raised inside a task is re-raised unchanged, so the CLI still prints one
    clean line whether the task ran here or on a remote worker.
    """
    # the streaming runner with every task in flight at once: one implementation of caching, order,
    # interrupts and error passing for both
    return list(iter_tasks(fn, tasks, workers=workers, scheduler=scheduler, description=description,
                           progress=progress, cache=cache, window=max(len(tasks), 1)))


def iter_tasks(
    fn: Callable[..., T],
    tasks: Sequence[tuple[Any, ...]],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    description: str = "working",
    progress: bool = True,
    cache: TaskCache | None = None,
    window: int | None = None,
) -> Iterator[T]:
    """Yield ``fn(*task)`` for every task **in task order**, as a stream: what a job that appends each
    chunk to its output needs so that its memory does not grow with the number of tasks.

    Serially, one task at a time; on Dask, at most ``window`` tasks (default twice the workers) are
    submitted ahead of the one being consumed, so finished-but-unconsumed results stay bounded too.
    With a ``cache``, a stored result is read back when its turn comes (a corrupt or foreign one is
    recomputed) and every new result is stored before it is yielded.
    """
    n = len(tasks)
    if n == 0:
        return
    with watch_interrupts():
        yield from _iter_tasks(fn, tasks, workers, scheduler, description, progress, cache, window)


def _iter_tasks(fn: Callable[..., T], tasks: Sequence[tuple[Any, ...]], workers: int, scheduler: str | None,
                description: str, progress: bool, cache: TaskCache | None, window: int | None) -> Iterator[T]:
    n = len(tasks)
    todo = [i for i in range(n) if cache is None or not cache.has(i)]
    if workers <= 1 and not scheduler:
        with progress_bar(len(todo), description, enabled=progress) as bar:
            for i in range(n):
                value = cache.get(i, _MISSING) if cache is not None else _MISSING
                if value is _MISSING:
                    value = fn(*tasks[i])
                    check_interrupt()  # a Ctrl-C swallowed inside a library stops the job here
                    if cache is not None:
                        cache.save(i, value)
                    bar.advance()
                yield value
                del value  # the next task must not keep this chunk alive
        return

    name = getattr(fn, "__name__", "task")
    with dask_client(workers, scheduler) as client:
        n_workers = max(len(client.scheduler_info().get("workers", {})), workers, 1)
        ahead = max(int(window or 2 * n_workers), 1)
        queue = iter(todo)
        pending: dict[int, Any] = {}

        def refill() -> None:
            while len(pending) < ahead:
                j = next(queue, None)
                if j is None:
                    return
                pending[j] = client.submit(fn, *tasks[j], pure=False, key=f"{name}-{j}")

        label = f"{description} ({'cluster' if scheduler else f'{n_workers} workers'})"
        with progress_bar(len(todo), label, enabled=progress) as bar:
            for i in range(n):
                refill()
                if i in pending:
                    value = pending.pop(i).result()  # re-raises a task's MlfastsimError unchanged
                else:
                    value = cache.get(i, _MISSING) if cache is not None else _MISSING
                    if value is _MISSING:  # its record proved corrupt: run it now
                        value = client.submit(fn, *tasks[i], pure=False, key=f"{name}-{i}-again").result()
                    else:
                        yield value
                        del value
                        continue
                check_interrupt()
                if cache is not None:
                    cache.save(i, value)
                bar.advance()
                yield value
                del value  # the next wait must not keep this chunk alive


# ------------------------------------------------------------------ idempotent jobs
def job_fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (configs as ``model_dump(mode="json")`` minus ``parallel``, file
    signatures...): equal fingerprints mean the job would write the same bytes."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_signatures(paths: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each input: part of a fingerprint, so a changed input is redone."""
    out = []
    for p in paths:
        try:
            st = Path(p).stat()
        except FileNotFoundError:  # the fingerprint is the first thing to touch an input: say it plainly
            raise InputFileError("input file does not exist", file=p, fix="check the path") from None
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


#: Config fields that name where a job writes, not what: left out of the fingerprint.
OUTPUT_FIELDS = ("output", "output_dir")


def config_fingerprint(cfg: Any, *extra: Any) -> str:
    """:func:`job_fingerprint` of a pydantic config without its ``parallel`` section and its output path
    (and ``extra``).

    Neither changes a byte of the output, and the fingerprint is stamped into it: files written with 1
    or 64 workers, to ``-o a.h5`` or ``-o runs/b.h5``, stay byte for byte identical, and a copy of a
    finished output put where the same job would write it is that job's output (done).  Caches and
    locks are per output path anyway, so two jobs on two paths never share one."""
    dump = cfg.model_dump(mode="json")
    dump.pop("parallel", None)
    for key in OUTPUT_FIELDS:
        dump.pop(key, None)
    return job_fingerprint(dump, *extra)
