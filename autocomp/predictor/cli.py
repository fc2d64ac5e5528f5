"""``autocomp predictor train|eval|profile`` (mounted by autocomp.cli as ``predictor``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train and evaluate latency predictors on measured tables (predictors/<device>/).")
console = Console()


def _table(device: str, root: Optional[Path], fp_id: Optional[str]):
    """The measurement table of ``device`` for fingerprint ``fp_id``; by default the only one, else
    the one of this machine's fingerprint."""
    from autocomp.errors import UserError
    from autocomp.measure import get_device
    from autocomp.measure.fingerprint import fingerprint_id
    from autocomp.predictor.campaign import read_table, table_path, tables

    found = tables(device, root)
    if fp_id is None:
        fp_id = found[0].parent.name if len(found) == 1 else fingerprint_id(get_device(device).fingerprint())
    path = table_path(device, fp_id, root)
    if not path.exists():
        have = ", ".join(p.parent.name for p in found) or "none"
        raise UserError("--fingerprint", f"no measurements for {device!r} at {path} (fingerprints measured: {have})",
                        f"a table from `autocomp measure --device {device}` or one of the measured fingerprints")
    return read_table(path), path


FINGERPRINT_HELP = "Device fingerprint id (a folder under predictors/<device>/); default: the only one, else this machine's."


@app.command()
def train(
    device: str = typer.Option("cpu-ort", help="Device whose measurement table to fit."),
    root: Optional[Path] = typer.Option(None, help="Predictors folder (default: predictors/)."),
    max_train: int = typer.Option(300, min=10, help="At most this many training measurements."),
    kind: Optional[str] = typer.Option(None, help="Force a model kind (sum, whole, sum+gbm); default: chosen by cross-validation."),
    fingerprint: Optional[str] = typer.Option(None, help=FINGERPRINT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the fit's report as JSON."),
) -> None:
    """Fit a predictor on predictors/<device>/measurements.parquet and save it next to the table (with
    the table's layer profile, if `autocomp predictor profile` wrote one, sum+layers is compared too)."""
    from autocomp.predictor import predictor_dir
    from autocomp.predictor.model import KINDS, fit

    if kind is not None and kind not in KINDS:
        from autocomp.errors import UserError

        raise UserError("--kind", f"{kind[:40]!r} is not a model kind", f"one of {', '.join(KINDS)}")
    from autocomp.predictor.layers import table_profile

    df, path = _table(device, root, fingerprint)
    kinds = KINDS if kind is None else (kind,)
    pred, report = fit(df, kinds=kinds, max_train=max_train, profile=table_profile(path))
    out = pred.save(predictor_dir(device, path.parent.name, root))
    if as_json:
        from autocomp.cliutil import print_json

        print_json({"device": device, "kind": pred.kind, "out": str(out), "fingerprint_id": path.parent.name, **report})
        return
    sel = report.get("selection", {})
    for k, m in sel.items():
        console.print(f"  cv {k:12s} rmspe {m['rmspe']:.3f}  within10 {m['within_10pct']:.2f}  spearman {m['spearman']:.3f}")
    t = report.get("test")
    console.print(f"[bold]{pred.kind}[/] predictor for {device}: {report['n_train']} training rows -> {out}")
    if t:
        console.print(f"held-out ({t['n_test']}): within ±10% {t['within_10pct']:.3f}, Spearman {t['spearman']:.3f}, RMSPE {t['rmspe']:.3f}")


@app.command("profile")
def profile_table(
    device: str = typer.Option("cpu-ort", help="An ONNX Runtime device whose table of this machine to profile."),
    root: Optional[Path] = typer.Option(None, help="Predictors folder (default: predictors/)."),
    fingerprint: Optional[str] = typer.Option(None, help=FINGERPRINT_HELP),
    runs: int = typer.Option(25, min=1, max=10_000, help="Profiled runs per candidate (the median of each conv is kept)."),
    again: bool = typer.Option(False, "--again", help="Profile every candidate again (default: only those not yet profiled)."),
) -> None:
    """Per-conv times of every candidate of this machine's table under ONNX Runtime's profiler, written
    beside the table (layers.parquet): the labels of the sum+layers predictor. Resumable: candidates
    already profiled are kept. Run it alone on the machine."""
    import pandas as pd

    from rich.progress import Progress

    from autocomp.errors import UserError
    from autocomp.measure import get_device
    from autocomp.measure.fingerprint import fingerprint_id
    from autocomp.predictor.campaign import extend_profile
    from autocomp.predictor.layers import PROFILE_NAME, read_profile
    from autocomp.predictor.model import candidates_of
    from autocomp.space import get_space

    dev = get_device(device)
    if dev.backend != "onnxruntime":
        raise UserError("--device", f"{device!r} runs on {dev.backend}", "an ONNX Runtime device (the profiler is ONNX Runtime's)")
    df, path = _table(device, root, fingerprint)
    here = fingerprint_id(dev.fingerprint())
    if path.parent.name != here:
        raise UserError("--fingerprint", f"the table {path.parent.name} was measured on another machine (this one is {here})",
                        "this machine's table: a profile belongs to the host that ran it")
    space = get_space(str(df["space"].iloc[0]))
    out = path.parent / PROFILE_NAME
    before = read_profile(out) if out.exists() and not again else pd.DataFrame(columns=["id", "conv", "us", "run_ms"])
    todo = df[~df["id"].astype(str).isin(set(before["id"]))]
    cands = candidates_of(df)
    with Progress(console=console) as bar:
        task = bar.add_task(f"profiling {len(todo)} candidates", total=len(todo))
        prof = extend_profile(path, cands, space, dev, runs, progress=lambda: bar.advance(task), again=again)
    new = prof[~prof["id"].isin(set(before["id"]))] if not again else prof
    console.print(f"{new['id'].nunique()} of {len(todo)} candidates profiled now, {prof['id'].nunique()} of {len(df)} in all "
                  f"({len(prof)} convs) -> {out}")


@app.command("eval")
def evaluate(
    device: str = typer.Option("cpu-ort", help="Device whose predictor to evaluate."),
    root: Optional[Path] = typer.Option(None, help="Predictors folder (default: predictors/)."),
    noise: int = typer.Option(0, min=0, help="Also re-measure one held-out model this many times here (noise floor)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    fingerprint: Optional[str] = typer.Option(None, help=FINGERPRINT_HELP),
) -> None:
    """Held-out accuracy of a device's predictor (RMSPE, ±5/±10%, Spearman, Kendall) and the noise floor."""
    from autocomp.errors import UserError
    from autocomp.predictor import load_predictor
    from autocomp.predictor.model import candidates_of, metrics, split_table

    df, path = _table(device, root, fingerprint)
    pred = load_predictor(device, path.parent.name, root)
    if pred is None:
        raise UserError("--device", f"no predictor for {device!r} ({path.parent.name})", f"one trained with `autocomp predictor train --device {device}`")
    _, test = split_table(df, pred.meta.get("n_train", 300))
    if not len(test):
        raise UserError("measurements", "no held-out rows in the table", "a table with more measurements")
    y = test["median_ms"].to_numpy(float)
    res = metrics(pred.predict(candidates_of(test)), y)
    res.update(device=device, kind=pred.kind, n_train=pred.meta.get("n_train"),
               within_run_cv_median=float(test["cv"].median()), flagged_share=float(test["flagged"].mean()))
    if noise:
        from autocomp.measure.base import get_device
        from autocomp.predictor.campaign import noise_floor

        c = candidates_of(test.sort_values("median_ms").iloc[[len(test) // 2]])[0]
        nf = noise_floor(c, pred.space, get_device(device), noise)
        res["noise_floor_cv"] = nf["between_run_cv"]
        res["noise_floor"] = nf
    elif pred.meta.get("noise_floor"):
        res["noise_floor_cv"] = pred.meta["noise_floor"].get("between_run_cv")
    if as_json:
        from autocomp.cliutil import print_json

        print_json(res)
        return
    t = Table(title=f"{device}: {pred.kind} predictor, {res['n_train']} training / {res['n_test']} held-out measurements")
    t.add_column("metric")
    t.add_column("value")
    for k in ("rmspe", "mape", "within_5pct", "within_10pct", "spearman", "kendall", "within_run_cv_median", "noise_floor_cv"):
        if res.get(k) is not None:
            t.add_row(k, f"{res[k]:.4f}")
    console.print(t)


def main() -> None:
    from autocomp.cliutil import run_app

    run_app(app)


if __name__ == "__main__":
    main()
