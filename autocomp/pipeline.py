"""One search run, end to end: validate inputs, evaluate candidates on Ray, report the front.

Everything that can be wrong with the user's input is checked before Ray starts or anything is
written; the run directory is never overwritten.
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autocomp.config import SearchConfig
from autocomp.data import load_dataset
from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings
from autocomp.measure import get_device
from autocomp.runner import ResultsTable, init_ray, run_trials, write_json
from autocomp.search import get_controller
from autocomp.search.pareto import budget_verdict, pareto_front
from autocomp.space import get_space

SCHEMA_VERSION = 1


def run_search(cfg: SearchConfig, train_steps: int = 100, console: Console | None = None) -> dict:
    console = console or Console()
    device = get_device(cfg.device)
    space = get_space(cfg.space).restrict_precisions(list(device.precisions))
    controller = get_controller(cfg.controller, space, cfg.seed)
    if (cfg.out / "results.csv").exists():
        raise UserError("--out", f"{cfg.out} already holds a run (results.csv)", "a new run directory")
    data = load_dataset(cfg.data, (space.input.channels, space.input.height, space.input.width))
    if data.num_classes != space.num_classes:
        console.print(f"[yellow]dataset has {data.num_classes} classes; the space's classifier is sized to match[/]")
    settings = EvalSettings(train_steps=train_steps, seed=cfg.seed)

    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / "config.json", {"schema_version": SCHEMA_VERSION, **json.loads(cfg.model_dump_json()),
                                         "eval": settings.model_dump(), "device_protocol": device.options})
    init_ray(cfg.address, device)
    import ray

    concurrency = cfg.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
    console.print(f"[bold]autocomp search[/] budget {cfg.budget_ms:g} ms on {device.name} ({device.description}); "
                  f"space {space.name}, {cfg.trials} trials, {concurrency} in flight, run dir {cfg.out}")
    table = ResultsTable(cfg.out / "results.csv")
    t0 = time.time()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("evaluating", total=cfg.trials)

        def on_row(row: dict) -> None:
            progress.advance(task)
            if row["status"] == "ok":
                progress.console.print(f"  {row['id']} acc {row['accuracy']:.4f}  {row['latency_ms']:.3f} ms  {row['summary']}")
            else:
                progress.console.print(f"  {row['id']} [red]error[/] {row['error']}")

        try:
            rows = run_trials(controller, space, data, device, settings, cfg.trials, table, concurrency, on_row)
        finally:
            table.close()
    summary = summarise(rows, cfg.budget_ms)
    summary["wall_s"] = round(time.time() - t0, 1)
    write_json(cfg.out / "summary.json", summary)
    print_summary(summary, cfg.budget_ms, console)
    return summary


def summarise(rows: list[dict], budget_ms: float) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    verdict = budget_verdict(ok, budget_ms)
    keep = ("id", "accuracy", "latency_ms", "latency_p90_ms", "params", "summary")
    slim = lambda r: {k: r[k] for k in keep} if r else None  # noqa: E731
    return {
        "schema_version": SCHEMA_VERSION,
        "budget_ms": budget_ms,
        "evaluated": len(rows),
        "failed": len(rows) - len(ok),
        "pareto_front": [slim(r) for r in pareto_front(ok)],
        "best_under_budget": slim(verdict.best_under_budget),
        "best_overall": slim(verdict.best_overall),
        "binding": verdict.binding,
        "over_budget": verdict.n_over_budget,
        "tightest_changing_budget_ms": verdict.tightest_changing_budget_ms,
        "verdict": verdict.message(budget_ms),
    }


def print_summary(summary: dict, budget_ms: float, console: Console) -> None:
    t = Table(title=f"Pareto front (accuracy vs latency), budget {budget_ms:g} ms")
    for col in ("id", "accuracy", "latency ms", "p90 ms", "params", "fits", "candidate"):
        t.add_column(col)
    for r in summary["pareto_front"]:
        t.add_row(r["id"], f"{r['accuracy']:.4f}", f"{r['latency_ms']:.3f}", f"{r['latency_p90_ms']:.3f}", f"{r['params']:,}",
                  "yes" if r["latency_ms"] <= budget_ms else "[red]no[/]", r["summary"])
    console.print(t)
    best = summary["best_under_budget"]
    if best:
        console.print(f"[bold green]best under {budget_ms:g} ms:[/] {best['id']} accuracy {best['accuracy']:.4f}, "
                      f"{best['latency_ms']:.3f} ms, {best['params']:,} params — {best['summary']}")
    else:
        console.print(f"[bold red]no evaluated candidate fits {budget_ms:g} ms[/]")
    console.print(summary["verdict"])
    if summary["failed"]:
        console.print(f"[yellow]{summary['failed']} evaluation(s) failed; see the error column of results.csv[/]")
