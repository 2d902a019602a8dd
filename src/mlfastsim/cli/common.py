"""Small parsers and shared options for the CLI modules."""

from __future__ import annotations

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


def parse_floats(text: str | None, option: str) -> list[float] | None:
    """'1,10,100' -> [1.0, 10.0, 100.0]."""
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma-separated list of numbers", field=option,
                          fix=f"write e.g. {option} 1,10,100") from None
    if not values:
        raise ConfigError("empty list", field=option, fix=f"write e.g. {option} 1,10,100")
    return values


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
    if not lo < hi:
        raise ConfigError(f"range {text!r} is empty (LOW must be < HIGH)", field=option, fix="swap the bounds")
    return lo, hi
