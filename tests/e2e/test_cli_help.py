"""The command line's help: fast (nothing heavy imported for it), readable at 80 columns, no noise."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import typer
from rich.console import Console

from mlfastsim.cli import showers
from mlfastsim.cli.main import app


def test_the_cli_imports_no_heavy_module_for_help() -> None:
    """`mlfastsim --help` took 7-11 s when every workflow (torch, pydantic configs) was imported first."""
    code = ("import sys, mlfastsim.cli.main; "
            "print(','.join(m for m in ('torch', 'pydantic', 'numpy', 'dask', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def _commands(group: typer.core.TyperGroup, prefix: str = "") -> list[tuple[str, object]]:
    found = []
    for name, cmd in group.commands.items():
        found.append((f"{prefix}{name}", cmd))
        if hasattr(cmd, "commands"):
            found.extend(_commands(cmd, f"{prefix}{name} "))
    return found


def test_short_help_is_one_paragraph_without_stray_line_breaks() -> None:
    """The command lists show a docstring's first paragraph: a line break inside it shows up as is."""
    for name, cmd in _commands(typer.main.get_command(app)):
        first = (cmd.help or "").strip().split("\n\n")[0]
        assert "\n" not in first, f"{name}: first paragraph of its docstring spans lines: {first!r}"


@pytest.mark.parametrize("args", [["--help"], ["showers", "simulate", "--help"], ["showers", "validate", "--help"]])
def test_flags_show_no_bool_type(cli: Callable[..., Any], args: list[str]) -> None:
    res = cli(*args)
    assert res.code == 0 and "<bool>" not in res.out


def test_presets_fit_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(showers, "console", Console(file=buffer, width=80))
    showers.presets()
    text = buffer.getvalue()
    assert "…" not in text, text  # nothing cut short
    assert "SciPb: 45 x [1.4 mm Pb + 1.2 mm scint.]" in text
