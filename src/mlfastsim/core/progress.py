"""Rich progress bars with one call, so every long loop in the package looks the same."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, **kwargs: object) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def progress_bar(total: float | None, description: str, *, enabled: bool = True) -> Iterator[_Bar]:
    """A progress bar on stderr; a no-op when ``enabled`` is False (library use, tests)."""
    if not enabled:
        yield _Bar(None, None)
        return
    columns = (
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # Off a terminal (a log file, a pipe, a captured stderr) rich cannot animate and would leave one frozen
    # bar line per stage, which then sits above an error line: keep such streams to results and errors.
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        try:
            yield _Bar(progress, task)
        except BaseException:
            # a failed run's half-drawn bar would sit above the one-line error: erase it instead
            progress.live.transient = True
            raise
