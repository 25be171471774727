"""The `stablesr` command: `upscale`, `info` and the `weights` group.

Importing this package must stay cheap (no torch): `stablesr --help` and `--version` answer in a
blink, and each command imports the heavy API inside its function.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import __version__
from . import weights
from .helpstyle import ManPageGroup
from .info import info
from .streams import quiet_when_reader_gone
from .upscale import EPILOG, upscale

app = typer.Typer(
    name="stablesr",
    cls=ManPageGroup,  # man-page metavars, usage and reflowing help for every command below
    help="StableSR diffusion super-resolution: upscale photos from the command line.",
    no_args_is_help=True,
    add_completion=False,
    # Expected failures are already one line; a traceback means a bug, and its locals may hold
    # whole images or model weights.
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"stablesr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """StableSR diffusion super-resolution: upscale photos from the command line."""


app.command(no_args_is_help=True, epilog=EPILOG)(upscale)
app.command()(info)
app.add_typer(weights.app, name="weights")


def main() -> None:
    """Console-script entry point (`stablesr = stablesr_cli.cli:main`)."""
    with quiet_when_reader_gone():
        app(prog_name="stablesr")
