"""``autocomp sensitivity``: per-block pruning sensitivity of a trained network.

For every inverted-residual block that has an expansion (the blocks whose hidden channels can be
pruned), prune *only that block* to each keep ratio and record the validation accuracy and its drop
against the unpruned network. Writes ``sensitivity.csv`` and a plot (``sensitivity.png`` through
headless Chromium, as the report's PNG; ``sensitivity.html`` where no Chromium is found).
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console

from autocomp.errors import UserError

app = typer.Typer(help="Per-block pruning sensitivity: validation accuracy drop against keep ratio.", add_completion=False,
                  pretty_exceptions_enable=False)

DEFAULT_KEEPS = "1.0,0.75,0.5,0.25"
CSV_FIELDS = ["block", "stage", "index", "hidden", "keep", "kept_channels", "accuracy", "drop", "importance"]


def _parse_keeps(s: str) -> list[float]:
    try:
        keeps = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UserError("--keeps", f"{s!r} is not a comma-separated list of numbers", "e.g. 1.0,0.75,0.5,0.25") from None
    if not keeps or any(not 0.0 < k <= 1.0 for k in keeps):
        raise UserError("--keeps", f"{s!r} has values outside (0, 1]", "ratios in (0, 1], e.g. 1.0,0.75,0.5,0.25")
    return keeps


def _load_candidate(spec: str, space):
    if spec in ("largest", "smallest"):
        return getattr(space, spec)()
    p = Path(spec)
    text = p.read_text() if p.is_file() else spec
    from autocomp.space import Candidate

    cand = Candidate.from_json(text)
    space.validate_candidate(cand)
    return cand


def _accuracy(model, data, split) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in data.batches(split, 500):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def sensitivity_table(model, candidate, data, val, keeps: list[float], importance: str = "l1", grad_batches=None) -> list[dict]:
    """Rows of (block, keep, accuracy, drop) for every prunable block of ``model`` (a Net)."""
    from autocomp.compress import prune

    model.eval()
    base = _accuracy(model, data, val)
    where = [(si, bi) for si, s in enumerate(candidate.stages) for bi in range(s.depth)]
    rows = []
    for i, block in enumerate(model.blocks):
        if not isinstance(block.expand, torch.nn.Sequential):
            continue  # expansion 1: no hidden channels to prune
        hidden = block.dw[0].out_channels
        for keep in keeps:
            if keep >= 1.0:
                acc = base
            else:
                m = copy.deepcopy(model)
                ks = [1.0] * len(m.blocks)
                ks[i] = keep
                prune.prune_blocks(m, ks, importance, grad_batches)
                acc = _accuracy(m.eval(), data, val)
            rows.append({"block": i, "stage": where[i][0], "index": where[i][1], "hidden": hidden, "keep": keep,
                         "kept_channels": prune.kept_channels(hidden, keep), "accuracy": round(acc, 5),
                         "drop": round(base - acc, 5), "importance": importance})
    return rows


def write_plot(rows: list[dict], out: Path, title: str) -> Path:
    """Accuracy drop against keep ratio, one line per block; PNG where Chromium is found, else HTML."""
    import plotly.graph_objects as go

    from autocomp.report.png import figure_png

    fig = go.Figure()
    for b in sorted({r["block"] for r in rows}):
        rs = sorted((r for r in rows if r["block"] == b), key=lambda r: -r["keep"])
        fig.add_trace(go.Scatter(x=[r["keep"] for r in rs], y=[100 * r["drop"] for r in rs], mode="lines+markers",
                                 name=f"block {b} (stage {rs[0]['stage']}, {rs[0]['hidden']} ch)"))
    fig.update_layout(title=title, xaxis_title="keep ratio (share of hidden channels kept)",
                      yaxis_title="validation accuracy drop (points)", xaxis_autorange="reversed", template="plotly_white")
    try:
        return figure_png(fig, out / "sensitivity.png", 1000, 600)
    except UserError:  # no (working) Chromium: a self-contained HTML file instead
        html = out / "sensitivity.html"
        fig.write_html(str(html), include_plotlyjs=True)
        return html


@app.callback(invoke_without_command=True)
def sensitivity(
    ctx: typer.Context,
    space: str = typer.Option("mnist-mbv2", help="search space name or YAML path"),
    candidate: str = typer.Option("smallest", help="'largest', 'smallest', a Candidate JSON string or a path to one"),
    checkpoint: Optional[Path] = typer.Option(None, help="state dict of the candidate's Net (torch.save of model.state_dict())"),
    train_steps: int = typer.Option(200, help="without --checkpoint: train the candidate this many steps first"),
    keeps: str = typer.Option(DEFAULT_KEEPS, help="comma-separated keep ratios"),
    importance: str = typer.Option("l1", help="importance criterion: l1, l2, bn or taylor"),
    val_size: int = typer.Option(2000, help="validation images per accuracy"),
    data: str = typer.Option("mnist", help="dataset: mnist or imagefolder:PATH"),
    out: Path = typer.Option(Path("reports/sensitivity"), help="output folder"),
    seed: int = typer.Option(0),
) -> None:
    """Each block's validation accuracy drop against keep ratio; writes a CSV table and a plot."""
    if ctx.invoked_subcommand is not None:
        return
    from autocomp.compress.prune import IMPORTANCES
    from autocomp.data import load_dataset
    from autocomp.evaluate import train
    from autocomp.models import load_weights
    from autocomp.models.mbv2 import build
    from autocomp.space import get_space

    if importance not in IMPORTANCES:
        raise UserError("--importance", f"unknown criterion {importance!r}", f"one of {sorted(IMPORTANCES)}")
    if val_size <= 0:
        raise UserError("--val-size", f"{val_size} is not positive", "a positive number of images")
    keep_list = _parse_keeps(keeps)
    sp = get_space(space)
    cand = _load_candidate(candidate, sp)
    ds = load_dataset(data, (sp.input.channels, sp.input.height, sp.input.width))
    torch.manual_seed(seed)
    model = build(cand, sp, ds.num_classes)
    if checkpoint is not None:
        sd = load_weights(checkpoint, "--checkpoint", "a state dict saved with torch.save")
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        try:
            model.load_state_dict(sd)
        except Exception as e:
            raise UserError("--checkpoint", f"cannot load it into the candidate's network ({type(e).__name__}: {str(e)[:160]})",
                            "a state dict of autocomp.models.mbv2.build(candidate)") from None
    else:
        Console(stderr=True).print(f"[dim]training {cand.summary()} for {train_steps} steps[/]")
        model = train(model, ds, train_steps, 128, 1e-2, seed)
    val = ds.val.subset(val_size, seed=seed)
    grad = list(ds.batches(ds.train.subset(256, seed=seed), 128)) if importance == "taylor" else None
    rows = sensitivity_table(model, cand, ds, val, keep_list, importance, grad)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "sensitivity.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / "sensitivity.json").write_text(json.dumps({"schema_version": 1, "candidate": cand.to_dict(), "rows": rows}, indent=1))
    plot = write_plot(rows, out, f"Pruning sensitivity — {cand.summary()}")
    Console().print(f"{len(rows)} rows -> {csv_path}; plot -> {plot}")


if __name__ == "__main__":  # python -m autocomp.compress.cli: the same as `autocomp sensitivity`
    from autocomp.cliutil import run_app

    run_app(app)
