"""The ``autocomp`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autocomp.errors import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Hardware-aware compression search: architecture, pruning, low-rank and quantization under a latency budget.",
)
console = Console()
err_console = Console(stderr=True)


@app.command()
def search(
    budget: str = typer.Option(..., help="Latency budget on the device, e.g. 10ms, 0.5 ms, 2e-3s, 1500us."),
    trials: int = typer.Option(16, min=1, help="Number of candidates evaluated."),
    seed: int = typer.Option(0, help="Seed: same seed, same candidates."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default reports/<timestamp>)."),
    space: str = typer.Option("mnist-mbv2", help="Search space name (search_spaces/) or YAML path."),
    device: str = typer.Option("cpu-ort", help="Target device (see `autocomp devices`)."),
    data: str = typer.Option("mnist", help="'mnist' or 'imagefolder:PATH'."),
    controller: str = typer.Option("random", help="Search strategy: random, evolution (regularized, aging) or nsga2."),
    address: Optional[str] = typer.Option(None, help="Ray cluster: 'auto' or 'ray://host:port' (default: local Ray)."),
    concurrency: Optional[int] = typer.Option(None, min=1, help="Evaluations in flight (default: the cluster's CPUs)."),
    train_steps: int = typer.Option(100, min=0, help="Training steps per candidate when no supernet checkpoint exists."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out (same options): finished evaluations are kept, not repeated."),
    val_size: Optional[int] = typer.Option(None, min=1, help="Validation images that score a candidate (default 5000)."),
) -> None:
    """Search the space for the most accurate candidates under the latency budget."""
    from autocomp.config import SearchConfig, default_run_dir, parse_budget
    from autocomp.pipeline import run_search

    cfg = SearchConfig(
        budget_ms=parse_budget(budget), trials=trials, seed=seed, space=space, device=device, data=data,
        out=out or default_run_dir(), controller=controller, address=address, concurrency=concurrency,
    )
    if resume and out is None:
        raise UserError("--resume", "needs the run directory to continue", "--out DIR of the interrupted run")
    run_search(cfg, train_steps=train_steps, console=console, resume=resume, val_size=val_size)


@app.command()
def spaces() -> None:
    """List the search spaces shipped with autocomp."""
    from autocomp.space import get_space, list_spaces

    for name in list_spaces():
        s = get_space(name)
        console.print(f"{name}: {len(s.stages)} stages, precisions {s.compression.precision}")


@app.command()
def devices() -> None:
    """List the known measurement devices."""
    from autocomp.measure import DEVICES

    t = Table("device", "backend", "precisions", "description")
    for d in DEVICES.values():
        t.add_row(d.name, d.backend, ",".join(d.precisions), d.description)
    console.print(t)


def main() -> None:
    try:
        app()
    except UserError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
