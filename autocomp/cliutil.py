"""Running a command-line app: the one place where a :class:`~autocomp.errors.UserError` becomes one
line on stderr and exit code 2 (no traceback). ``autocomp.cli`` and every stage's sub-CLI
(``python -m autocomp.measure.cli`` ...) run through :func:`run_app`."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from autocomp.errors import UserError

err_console = Console(stderr=True)


def run_app(typer_app: typer.Typer) -> None:
    """Run a Typer app; a UserError becomes one line on stderr and exit code 2."""
    try:
        typer_app()
    except UserError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
