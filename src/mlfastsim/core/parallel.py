"""File- or chunk-parallel execution on Dask.

mlfastsim never runs its own scheduler: ``workers > 1`` starts a ``distributed.LocalCluster`` of
single-threaded worker processes, ``scheduler="tcp://host:8786"`` connects to any running Dask cluster
(dask-jobqueue on Slurm, dask-kubernetes...).  Tasks must be pure functions of their arguments (each
carries its own seed), so results are identical whatever the number of workers; they are returned in
task order.

Idempotent jobs: a job names a :class:`TaskCache` (finished task results on disk, kept until the job's
output is written) so a rerun after a killed run recomputes only the missing tasks, and marks its
finished output with :func:`mark_done` so a rerun with the same inputs and settings skips it
(:func:`is_done`).  Both are keyed by a :func:`job_fingerprint` of everything that determines the output
except the parallel settings, which by construction do not change it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field

from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, MlfastsimError
from mlfastsim.core.io import atomic_path, atomic_write_json
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
    cache: TaskCache | None = None,
) -> list[T]:
    """Run ``fn(*task)`` for every task, serially or on Dask, and return results in task order.

    With a ``cache``, tasks whose result is already on disk are not run again, and every result is
    stored as soon as it arrives (a killed run loses only the tasks in flight).  An
    :class:`MlfastsimError` raised inside a task is re-raised unchanged, so the CLI still prints one
    clean line whether the task ran here or on a remote worker.
    """
    if not tasks:
        return []
    out: list[Any] = [None] * len(tasks)
    todo = []
    for i in range(len(tasks)):
        if cache is not None and cache.has(i):
            out[i] = cache.load(i)
        else:
            todo.append(i)
    if not todo:
        return out
    if workers <= 1 and not scheduler:
        with progress_bar(len(todo), description, enabled=progress) as bar:
            for i in todo:
                out[i] = fn(*tasks[i])
                if cache is not None:
                    cache.save(i, out[i])
                bar.advance()
        return out

    from distributed import as_completed

    with dask_client(workers, scheduler) as client:
        name = getattr(fn, "__name__", "task")
        futures = {client.submit(fn, *tasks[i], pure=False, key=f"{name}-{i}"): i for i in todo}
        with progress_bar(len(todo), f"{description} ({'cluster' if scheduler else f'{workers} workers'})",
                          enabled=progress) as bar:
            for fut in as_completed(list(futures)):
                i = futures[fut]
                try:
                    out[i] = fut.result()
                except MlfastsimError:
                    raise
                if cache is not None:
                    cache.save(i, out[i])
                bar.advance()
        return out


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
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


def config_fingerprint(cfg: Any, *extra: Any) -> str:
    """:func:`job_fingerprint` of a pydantic config without its ``parallel`` section (and ``extra``)."""
    dump = cfg.model_dump(mode="json")
    dump.pop("parallel", None)
    return job_fingerprint(dump, *extra)


def _marker(output: str | Path) -> Path:
    p = Path(output)
    return p.parent / f".{p.name}.done.json"


def is_done(output: str | Path, fingerprint: str) -> bool:
    """True when ``output`` exists and was finished by a job with this fingerprint (safe to skip)."""
    marker = _marker(output)
    if not (Path(output).exists() and marker.is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def mark_done(output: str | Path, fingerprint: str, info: dict[str, Any] | None = None) -> None:
    """Record that ``output`` is complete for ``fingerprint`` (a hidden ``.NAME.done.json`` beside it),
    with ``info`` (e.g. the job's counts) for a skipped rerun to report."""
    atomic_write_json(_marker(output), {"fingerprint": fingerprint, "output": Path(output).name,
                                        "info": info or {}})


def done_info(output: str | Path) -> dict[str, Any]:
    """The ``info`` :func:`mark_done` stored for ``output`` ({} when none)."""
    try:
        return dict(json.loads(_marker(output).read_text()).get("info") or {})
    except (OSError, ValueError):
        return {}


def clear_done(output: str | Path) -> None:
    """Forget that ``output`` was finished (before rewriting it)."""
    _marker(output).unlink(missing_ok=True)


class TaskCache:
    """Finished task results of one job on disk (``task_000012.pkl``), so a killed job resumes.

    The directory holds a ``fingerprint`` file; results of a job with another fingerprint (other inputs or
    settings) are discarded on open.  Results are pickled by this process, atomically, as they arrive;
    :meth:`clear` removes the directory once the job's output is written.
    """

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        stamp = self.directory / "fingerprint"
        if self.directory.exists() and (not stamp.is_file() or stamp.read_text().strip() != fingerprint):
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            stamp.write_text(fingerprint + "\n")

    def _path(self, i: int) -> Path:
        return self.directory / f"task_{i:06d}.pkl"

    def has(self, i: int) -> bool:
        return self._path(i).is_file()

    def load(self, i: int) -> Any:
        with open(self._path(i), "rb") as fh:
            return pickle.load(fh)

    def save(self, i: int, result: Any) -> None:
        with atomic_path(self._path(i)) as tmp, open(tmp, "wb") as fh:
            pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("task_*.pkl"))

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def cache_dir_for(output: str | Path) -> Path:
    """Where a job writing ``output`` keeps its finished tasks: a hidden ``.NAME.parts`` beside it."""
    p = Path(output)
    return p.parent / f".{p.name}.parts"
