"""One error hierarchy for the whole package.

Every error a user can provoke with bad input is an :class:`MlfastsimError` carrying *what* is wrong,
*where* (file and field) and *how to fix it*, so the CLI can print it as a single line and exit 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MlfastsimError(Exception):
    """Base class: a problem with the user's input, config or environment (not a bug)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        self.fix = fix

    def one_line(self) -> str:
        """The message as the CLI prints it: ``file: field: message (fix: ...)``."""
        parts = []
        if self.file:
            parts.append(self.file)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        line = ": ".join(parts)
        if self.fix:
            line += f" (fix: {self.fix})"
        return line.replace("\n", " ")

    def __str__(self) -> str:
        return self.one_line()


def clip_words(text: str, width: int = 160) -> str:
    """``text`` on one line, cut at a word boundary with an ellipsis when longer than ``width``.

    Library messages quoted in an error can be long; cutting them mid-word ("unexpected pickle o")
    reads like a bug of its own.
    """
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    cut = line[: width - 1]
    space = cut.rfind(" ")
    if space >= width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


class ConfigError(MlfastsimError):
    """A config file, a ``--set`` override or a command-line option is invalid."""


class InputFileError(MlfastsimError):
    """An input file is missing, unreadable, corrupt or has the wrong layout."""


class DataError(MlfastsimError):
    """The content of a file is physically invalid (NaN, negative energies, shape mismatch...)."""


class OutputError(MlfastsimError):
    """An output cannot be written (directory missing or not writable...)."""


class GeometryError(MlfastsimError):
    """Unknown preset, malformed binning XML or inconsistent geometry."""
