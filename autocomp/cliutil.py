"""Running a command-line app: the one place where a :class:`~autocomp.errors.UserError` becomes one
line on stderr and exit code 2 (no traceback). ``autocomp.cli`` and every stage's sub-CLI
(``python -m autocomp.measure.cli`` ...) run through :func:`run_app`."""

from __future__ import annotations

import sys

import typer

from autocomp.errors import UserError, clip

MAX_LINE = 600  # an error line never grows past this, whatever the user's value was


class spinner:
    """A rich status line on stderr while slow work runs (a terminal only; nothing when ``show`` is false)."""

    def __init__(self, text: str, show: bool = True):
        self.text, self.status, self.show = text, None, show

    def __enter__(self):
        if self.show and sys.stderr.isatty():
            from rich.console import Console

            self.status = Console(stderr=True).status(self.text)
            self.status.__enter__()
        return self

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)


def fail(message: str) -> None:
    """Print ``message`` as one literal line on stderr (no markup, no wrapping) and exit 2."""
    sys.stderr.write(clip(f"error: {message}", MAX_LINE) + "\n")
    sys.stderr.flush()
    sys.exit(2)


def run_app(typer_app: typer.Typer) -> None:
    """Run a Typer app; a UserError or a usage error (unknown flag, bad value) becomes one line on stderr
    and exit code 2."""
    try:  # Typer >= 0.22 vendors click as typer._click; before, it is click itself
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover
        from click import exceptions as cx

    try:
        code = typer_app(standalone_mode=False)
    except UserError as e:
        fail(str(e))
    except cx.NoArgsIsHelpError as e:  # a bare command group: its help
        sys.stderr.write(e.format_message() + "\n")
        sys.exit(2)
    except cx.UsageError as e:  # a bad flag or value: one line too, with the command it was for
        where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
        fail(f"{where}{e.format_message()}")
    except cx.ClickException as e:
        fail(e.format_message())
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


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
