"""Small parsers and shared options for the CLI modules."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from mlfastsim.core.errors import ConfigError

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (keys as in configs/).", show_default=False)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set section.key=value (repeatable).", show_default=False),
]

# Every data job (showers simulate/convert, lartpc simulate/make-batches, belle2 produce/preprocess) takes
# these two, mapped onto its config's ``parallel:`` section (core.parallel.ParallelConfig).
WorkersOpt = Annotated[int | None, typer.Option(help="Local Dask workers (processes).", show_default=False)]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(help="An existing Dask scheduler: its address (tcp://host:8786) or the JSON file it wrote with "
                      "--scheduler-file (dask-jobqueue, dask-kubernetes...).", show_default=False),
]


def parallel_cli(workers: int | None, scheduler: str | None) -> dict[str, object]:
    """The ``--workers``/``--scheduler`` flags as config keys for ``load_config(cli=...)``."""
    return {"parallel.workers": workers, "parallel.scheduler": scheduler}


def _parse_list(text: str | None, option: str, cast: type, what: str, example: str, n: int | None = None,
                *, empty_message: str | None = None) -> list | None:
    """'a,b,c' -> [cast(a), cast(b), cast(c)], exactly ``n`` values when ``n`` is given; None stays None."""
    if text is None:
        return None
    try:
        values = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma-separated list of {what}", field=option,
                          fix=f"write e.g. {option} {example}") from None
    if not values or (n is not None and len(values) != n):
        message = (empty_message if not values and empty_message
                   else f"{text!r} must have {n or 'one or more'} values")
        raise ConfigError(message, field=option, fix=f"write e.g. {option} {example}")
    return values


def parse_floats(text: str | None, option: str) -> list[float] | None:
    """'1,10,100' -> [1.0, 10.0, 100.0]."""
    return _parse_list(text, option, float, "numbers", "1,10,100", empty_message="empty list")


def parse_ints(text: str | None, option: str, n: int | None = None) -> list[int] | None:
    """'8,4,4' -> [8, 4, 4] (exactly ``n`` values when ``n`` is given)."""
    return _parse_list(text, option, int, "integers", "8,4,4" if n == 3 else "1,5,9", n)


def parse_range(text: str | None, option: str) -> tuple[float, float] | None:
    """'1:1000' -> (1.0, 1000.0)."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        lo, hi = (float(parts[0]), float(parts[1])) if len(parts) == 2 else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None:
        raise ConfigError(f"{text!r} is not a range LOW:HIGH", field=option, fix=f"write e.g. {option} 1:1000")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"range {text!r} has a bound that is not a finite number", field=option,
                          fix=f"write two numbers, e.g. {option} 1:1000")
    if lo == hi:
        raise ConfigError(f"range {text!r} is empty (LOW must be < HIGH)", field=option,
                          fix=f"give two different bounds, or one value with {option.replace('-range', '')}")
    if lo > hi:
        raise ConfigError(f"range {text!r} is empty (LOW must be < HIGH)", field=option,
                          fix=f"swap the bounds: {option} {parts[1]}:{parts[0]}")
    return lo, hi
