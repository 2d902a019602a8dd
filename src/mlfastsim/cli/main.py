"""Entry point of the ``mlfastsim`` command.

Errors a user can cause (:class:`MlfastsimError`) are printed as one line on stderr with exit code 2;
``--debug`` shows the traceback instead.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer

from mlfastsim import __version__
from mlfastsim.cli import belle2, demo, deploy, lartpc, showers
from mlfastsim.core.errors import MlfastsimError


def _flags_without_type() -> None:
    """Show no ``<bool>`` type beside flags in ``--help``: a flag takes no value (typer >= 0.2x labels it)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_mlfastsim", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return shown(self, ctx)

    display_type_rich._mlfastsim = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_type()
# Warnings of the workflows (extrapolated energies, empty generated showers, quick mode) reach the user
# through logging's last-resort handler, which prints the bare message: say what it is.
if logging.lastResort is not None:
    logging.lastResort.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))

app = typer.Typer(
    name="mlfastsim",
    help="Machine-learning fast simulation: calorimeter showers, LArTPC, selective background simulation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(showers.app, name="showers")
app.add_typer(demo.app, name="demo")
app.add_typer(belle2.app, name="belle2")
app.add_typer(lartpc.app, name="lartpc")
app.add_typer(deploy.app, name="deploy")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlfastsim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _click_exceptions() -> Any:
    """click's exception classes, as the installed typer raises them (typer >= 0.2x vendors click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - a typer that uses click itself
        from click import exceptions
    return exceptions


def _given(argv: list[str], opts: list[str]) -> str | None:
    """The value typed after one of ``opts`` (``--opt VALUE`` or ``--opt=VALUE``), for the message."""
    for i, arg in enumerate(argv):
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1 :]
    return None


def _usage_line(exc: Exception, argv: list[str]) -> str:
    """A click usage error (an option's value of the wrong type, an unknown option...) as our one line."""
    message = str(getattr(exc, "format_message", lambda: str(exc))()).rstrip(".")
    param = getattr(exc, "param", None)
    value = _given(argv, list(getattr(param, "opts", []))) if param is not None else None
    if value is not None:
        message += f" (got {value!r})"
    ctx = getattr(exc, "ctx", None)
    fix = f"see `{ctx.command_path if ctx is not None else 'mlfastsim'} --help`"
    if "valid integer" in message:
        fix = "write a whole number in digits (1000000, not 1e6)"
    return f"{message} (fix: {fix})"


def _run(argv: list[str] | None) -> int:
    """The app without click's own error box: a usage error is one line too (exit 2)."""
    cx = _click_exceptions()
    try:
        rv = app(args=argv, prog_name="mlfastsim", standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:
        exc.show()  # no arguments: the help, as click shows it
        return exc.exit_code
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        return 1
    except cx.ClickException as exc:
        typer.secho(f"error: {_usage_line(exc, argv if argv is not None else sys.argv[1:])}", err=True,
                    fg=typer.colors.RED)
        return exc.exit_code
    if type(rv) is not int:
        return 0
    if rv == 130:  # typer turns a Ctrl-C inside a command into exit code 130: say what it left behind
        raise KeyboardInterrupt
    return rv  # typer.Exit(code); --help and --version come back as 0


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; translate user errors into one line and exit code 2."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = _run(argv)
    except MlfastsimError as exc:
        if debug:
            raise
        typer.secho(f"error: {exc.one_line()}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        # Outputs are written atomically, so nothing half-done is left; say how to pick up from here.
        typer.secho("interrupted: no output was published; rerun the same command to continue (data jobs "
                    "resume from their finished chunks, training runs with --resume from the last checkpoint)",
                    err=True)
        sys.exit(130)
    if code:
        sys.exit(code)
