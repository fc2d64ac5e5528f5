"""``autocomp measure``: a resumable latency-measurement campaign (mounted by autocomp.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Measure sampled candidates on a device; append to predictors/<device>/measurements.parquet.")
console = Console()


@app.callback(invoke_without_command=True)
def measure(
    ctx: typer.Context,
    space: str = typer.Option("mnist-mbv2", help="Search space name (search_spaces/) or YAML path."),
    device: str = typer.Option("cpu-ort", help="Device to measure on (see `autocomp devices`)."),
    n: int = typer.Option(50, min=0, help="Candidates of the seeded campaign (ids already measured are skipped)."),
    seed: int = typer.Option(0, help="Campaign seed: candidate i is the i-th sample of this seed."),
    out: Optional[Path] = typer.Option(None, help="Folder of the table: <out>/<device>/<fingerprint id>/measurements.parquet (default: predictors/, or predictors/spaces/<space>/ for any space but the default)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster ('auto', 'ray://host:port'): measure on the node holding the device."),
    noise: int = typer.Option(0, min=0, help="Also measure the first candidate this many times and report the noise floor."),
    repeats: Optional[int] = typer.Option(None, min=1, help="Timed runs per measurement (default: the device's)."),
    retries: Optional[int] = typer.Option(None, min=0, help="Re-measurements when CV exceeds the threshold (default: the backend's)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    model: Optional[str] = typer.Option(None, help="Measure candidates of your own network instead of --space: 'torchvision:NAME' or 'package.module:factory'."),
    weights: Optional[str] = typer.Option(None, help="Weights of --model (a state_dict)."),
    input: Optional[str] = typer.Option(None, "--input", help="Input size CxHxW of --model (default 3x224x224)."),
    passes: int = typer.Option(1, min=1, help="Measure every candidate this many times, a whole pass apart, and keep the fastest (a shared host's slow phases can outlast one measurement)."),
    json_out: bool = typer.Option(False, "--json", help="Print the campaign's figures as JSON on stdout (messages go to stderr)."),
) -> None:
    """Sample, export and measure candidates on a device (resumable)."""
    if ctx.invoked_subcommand is not None:
        return
    from autocomp.measure.base import get_device
    from autocomp.predictor.campaign import campaign_candidates, noise_floor, run_campaign, table_path
    from autocomp.families.network import space_for

    con = Console(stderr=True) if json_out else console
    dev = get_device(device)
    sp = space_for(space, model, weights, input).restrict_precisions(list(dev.precisions))
    con.print(f"[bold]autocomp measure[/] {n} candidates of {sp.name} (seed {seed}) on {dev.name}")
    overrides = {k: v for k, v in (("repeats", repeats), ("retries", retries)) if v is not None}
    import contextlib
    import sys

    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()  # --json: stdout is the JSON
    with quiet_stdout:
        df = run_campaign(sp, dev, n, out, seed, progress=progress, address=address, overrides=overrides, passes=passes)
    ok = df[df["id"].notna()]
    from autocomp.predictor import space_root
    from autocomp.resources import predictors_dir

    root = out if out is not None else space_root(predictors_dir(), sp.name)
    path = table_path(dev.name, str(ok["fingerprint_id"].iloc[-1]), root) if len(ok) else None
    out_json = {"device": dev.name, "space": sp.name, "seed": seed, "measurements": int(len(ok)), "table": str(path) if path else None,
                "flagged": int(ok["flagged"].sum()) if len(ok) else 0,
                "median_ms": float(ok["median_ms"].median()) if len(ok) else None,
                "min_ms": float(ok["median_ms"].min()) if len(ok) else None, "max_ms": float(ok["median_ms"].max()) if len(ok) else None,
                "fingerprint_id": str(ok["fingerprint_id"].iloc[-1]) if len(ok) else None}
    con.print(f"{len(ok)} measurements in {path} ({int(ok['flagged'].sum())} flagged, "
                  f"median {ok['median_ms'].median():.3f} ms, range {ok['median_ms'].min():.3f}–{ok['median_ms'].max():.3f} ms)")
    if noise:
        cand = campaign_candidates(sp, 1, seed)[0]
        with contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext():
            nf = noise_floor(cand, sp, dev, noise, **overrides)
        out_json["noise_floor"] = nf
        con.print(f"noise floor ({cand.id}, {noise} runs): between-run CV {nf['between_run_cv']:.3f}, within-run CV {nf['within_run_cv']:.3f}")
        if not json_out:
            console.print(json.dumps(nf))
    if json_out:
        from autocomp.cliutil import print_json

        print_json(out_json)


def main() -> None:
    """``python -m autocomp.measure.cli`` (the same as ``autocomp measure``)."""
    from autocomp.cliutil import run_app

    run_app(app)


if __name__ == "__main__":
    main()
