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


def _finite(obj):
    """``obj`` with NaN and infinities as null (valid JSON)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def print_json(obj) -> None:
    """``--json``: one JSON document on stdout (no markup, no wrapping; NaN as null)."""
    import json

    print(json.dumps(_finite(obj), indent=2, default=str, allow_nan=False), flush=True)
