"""``autocomp report RUN [--compare RUN2 ...]``: regenerate a run's report (mounted by autocomp.cli as ``report``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

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
    from autocomp.report import export_png, write_report

    path = write_report(run, compare=list(compare or []), out_dir=out)
    typer.echo(f"wrote {path}")
    typer.echo(f"wrote {path.parent / 'summary.md'}")
    typer.echo(f"wrote {path.parent / 'results.parquet'}")
    if png:
        typer.echo(f"wrote {export_png(run, path.parent / 'pareto.png')}")


if __name__ == "__main__":  # python -m autocomp.report.cli: the same as `autocomp report`
    from autocomp.cliutil import run_app

    run_app(app)
