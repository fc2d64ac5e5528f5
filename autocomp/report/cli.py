"""``autocomp report RUN [--compare RUN2 ...]``: regenerate a run's report (mounted by autocomp.cli as ``report``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from autocomp.errors import UserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, context_settings={"allow_interspersed_args": True}, subcommand_metavar="",
                  help="Pareto report of a run: report.html (self-contained), summary.md, results.parquet.")


@app.callback(invoke_without_command=True)
def report(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory (holds config.json and results.csv), e.g. reports/<run>."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", help="Another run directory to compare with (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report here instead of into the run directory."),
    png: bool = typer.Option(False, "--png", help="Also write pareto.png of the accuracy/latency plot (needs Chromium)."),
) -> None:
    """Regenerate the report of RUN; with --compare, draw the fronts of several runs on one plot and tabulate them."""
    from contextlib import ExitStack

    from autocomp.report import export_png, write_report
    from autocomp.rundir import RUN_EXPECTED, check_out_dir, holds_run, make_dirs, read_json, remove_dirs, run_lock

    if not run.is_dir():
        raise UserError("RUN", f"{str(run)!r} is not a directory", RUN_EXPECTED)
    elsewhere = out is not None and out.resolve() != run.resolve()
    if elsewhere:  # a new directory, or a copy of this same run: never over another run
        check_out_dir(out)
        if holds_run(out) and not _same_run(out, run, read_json):
            raise UserError("--out", f"{str(out)!r} holds another run", f"a new directory, or {str(run)!r} itself")
    with ExitStack() as stack:
        stack.enter_context(run_lock(run, "RUN"))
        if elsewhere:
            made = make_dirs(out)
            try:
                stack.enter_context(run_lock(out, "--out"))
            except UserError:
                remove_dirs(made, lock_file=False)
                raise
        path = write_report(run, compare=list(compare or []), out_dir=out)
    typer.echo(f"wrote {path}")
    typer.echo(f"wrote {path.parent / 'summary.md'}")
    typer.echo(f"wrote {path.parent / 'results.parquet'}")
    if png:
        typer.echo(f"wrote {export_png(run, path.parent / 'pareto.png')}")


def _same_run(out: Path, run: Path, read_json) -> bool:
    """Whether ``out`` is a copy of ``run`` (an earlier ``--out`` of it): the same config.json."""
    a, b = out / "config.json", run / "config.json"
    return a.is_file() and b.is_file() and read_json(a, "run configuration") == read_json(b, "run configuration")


if __name__ == "__main__":  # python -m autocomp.report.cli: the same as `autocomp report`
    from autocomp.cliutil import run_app

    run_app(app)
